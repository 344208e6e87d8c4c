//! Framing: each message is an unsigned-varint length prefix and that many bytes of protobuf.
//!
//! The reader never trusts the prefix with memory: it refuses lengths over the limit at once,
//! then grows its buffer only as bytes actually arrive ([`READ_CHUNK`] at a time), so a
//! 4 MiB prefix followed by silence costs one chunk, not 4 MiB. A frame must arrive whole
//! within its time once its first byte has come; a stream that brings no frame at all for
//! the idle time is ended.

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read at a time into a frame's buffer (the most allocated ahead of data received).
pub const READ_CHUNK: usize = 64 << 10;
/// Longest unsigned varint (a `u64`) in bytes; a prefix still going after this is malformed.
const MAX_VARINT_BYTES: usize = 10;

/// How long the reader waits, and for how much.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest frame accepted.
    pub max_frame: usize,
    /// How long a stream may go without starting a frame before it is ended.
    pub idle: Duration,
    /// How long a frame may take to arrive once its first byte has.
    pub frame: Duration,
}

/// Why no frame was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The length prefix announces more than the limit (a protocol violation).
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The length prefix is not a valid varint (a protocol violation).
    #[error("malformed length prefix")]
    BadPrefix,
    /// No frame started within the idle time.
    #[error("no frame within {0:?}")]
    Idle(Duration),
    /// A frame started but did not arrive whole in time.
    #[error("frame not complete within {0:?}")]
    Slow(Duration),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// Whether the peer broke the protocol (as opposed to being slow, idle or cut off).
    pub fn is_violation(&self) -> bool {
        matches!(self, ReadError::TooLarge { .. } | ReadError::BadPrefix)
    }
}

/// Reads one frame into `buf` (cleared first); `Ok(false)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: ReadLimits,
    buf: &mut Vec<u8>,
) -> Result<bool, ReadError> {
    buf.clear();
    let mut first = [0u8; 1];
    let n = match tokio::time::timeout(limits.idle, reader.read(&mut first)).await {
        Ok(n) => n?,
        Err(_) => return Err(ReadError::Idle(limits.idle)),
    };
    if n == 0 {
        return Ok(false);
    }
    match tokio::time::timeout(limits.frame, read_rest(reader, first[0], limits, buf)).await {
        Ok(result) => result.map(|()| true),
        Err(_) => Err(ReadError::Slow(limits.frame)),
    }
}

/// The rest of a frame whose first prefix byte was `first`.
async fn read_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    first: u8,
    limits: ReadLimits,
    buf: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let mut prefix = [0u8; MAX_VARINT_BYTES];
    prefix[0] = first;
    let mut used = 1;
    while prefix[used - 1] & 0x80 != 0 {
        if used == MAX_VARINT_BYTES {
            return Err(ReadError::BadPrefix);
        }
        read_exact_or_truncated(reader, &mut prefix[used..=used]).await?;
        used += 1;
    }
    let len = match unsigned_varint::decode::u64(&prefix[..used]) {
        Ok((len, _)) => len,
        Err(_) => return Err(ReadError::BadPrefix),
    };
    let len = match usize::try_from(len) {
        Ok(len) if len <= limits.max_frame => len,
        _ => {
            return Err(ReadError::TooLarge {
                len,
                max: limits.max_frame,
            });
        }
    };
    while buf.len() < len {
        let start = buf.len();
        buf.resize(start + (len - start).min(READ_CHUNK), 0);
        let n = reader.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(ReadError::Truncated);
        }
    }
    Ok(())
}

async fn read_exact_or_truncated<R: AsyncRead + Unpin>(
    reader: &mut R,
    out: &mut [u8],
) -> Result<(), ReadError> {
    match reader.read_exact(out).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ReadError::Truncated),
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// Writes one length-prefixed frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> std::io::Result<()> {
    let mut len = unsigned_varint::encode::usize_buffer();
    writer
        .write_all(unsigned_varint::encode::usize(frame.len(), &mut len))
        .await?;
    writer.write_all(frame).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// Yields `data`, then never anything more (a peer gone silent).
    struct Stalls {
        data: Vec<u8>,
        at: usize,
    }

    impl AsyncRead for Stalls {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.at == self.data.len() {
                return Poll::Pending;
            }
            let n = out.len().min(self.data.len() - self.at);
            let at = self.at;
            out[..n].copy_from_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    fn limits() -> ReadLimits {
        ReadLimits {
            max_frame: 4 << 20,
            idle: Duration::from_millis(200),
            frame: Duration::from_millis(100),
        }
    }

    fn prefix(len: usize) -> Vec<u8> {
        let mut buf = unsigned_varint::encode::usize_buffer();
        unsigned_varint::encode::usize(len, &mut buf).to_vec()
    }

    #[tokio::test]
    async fn a_4_mib_prefix_whose_data_never_comes_times_out_without_allocating_it() {
        let mut data = prefix(4 << 20);
        data.extend_from_slice(&[7; 1000]);
        let mut reader = Stalls { data, at: 0 };
        let mut buf = Vec::new();
        let err = read_frame(&mut reader, limits(), &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::Slow(_)), "{err}");
        assert!(!err.is_violation());
        assert!(buf.capacity() <= 2 * READ_CHUNK, "{} bytes", buf.capacity());
    }

    #[tokio::test]
    async fn frames_are_read_whole_and_a_clean_end_is_not_an_error() {
        let mut data = Vec::new();
        for body in [&b"hello"[..], &[9; 200_000][..], &[][..]] {
            write_frame(&mut data, body).await.unwrap();
        }
        let mut reader = futures::io::Cursor::new(data);
        let mut buf = Vec::new();
        for want in [5, 200_000, 0] {
            assert!(read_frame(&mut reader, limits(), &mut buf).await.unwrap());
            assert_eq!(buf.len(), want);
        }
        assert!(!read_frame(&mut reader, limits(), &mut buf).await.unwrap());
    }

    #[tokio::test]
    async fn an_oversized_prefix_is_a_violation_before_any_data() {
        let mut reader = futures::io::Cursor::new(prefix((4 << 20) + 1));
        let err = read_frame(&mut reader, limits(), &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { .. }) && err.is_violation());
    }

    #[tokio::test]
    async fn an_endless_varint_is_a_violation() {
        let mut reader = futures::io::Cursor::new(vec![0x80; 32]);
        let err = read_frame(&mut reader, limits(), &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::BadPrefix), "{err}");
    }

    #[tokio::test]
    async fn a_silent_stream_is_idle_and_a_cut_frame_is_truncated() {
        let mut silent = Stalls {
            data: Vec::new(),
            at: 0,
        };
        let err = read_frame(&mut silent, limits(), &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::Idle(_)), "{err}");
        let mut data = prefix(100);
        data.extend_from_slice(&[1; 10]);
        let err = read_frame(
            &mut futures::io::Cursor::new(data),
            limits(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ReadError::Truncated), "{err}");
    }
}
