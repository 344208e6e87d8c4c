//! CAR v1 archives (Content Addressable aRchives), as `ipfs dag export` writes and
//! `ipfs dag import` reads them: a DAG-CBOR header `{roots, version: 1}`, then sections
//! of `varint(len) | CID | block bytes`.
//!
//! Written here rather than taken from a crate: the maintained Rust CAR crates (iroh-car,
//! rs-car) are async on tokio, and this layer runs without an async runtime. The format
//! is three lines of spec; the codecs it uses (CIDs, DAG-CBOR, varints) come from crates.

use std::io::{ErrorKind, Read, Write};

use cid::Cid;
use serde::{Deserialize, Serialize};

use super::block::{Block, BlockError, MAX_BLOCK_SIZE};
use super::links::{WalkError, walk};
use super::{Blockstore, StoreError};

/// Largest header we read. go-car allows 32 MiB, but a header only lists roots; 1 MiB
/// is over 25,000 of them and bounds what a hostile file can make us allocate.
pub const MAX_HEADER_SIZE: usize = 1024 * 1024;
/// Largest section: a maximal block plus its CID.
pub const MAX_SECTION_SIZE: usize = MAX_BLOCK_SIZE + 256;

/// The first bytes of a CARv2 file (its fixed pragma).
const CARV2_PRAGMA: [u8; 11] = [
    0x0a, 0xa1, 0x67, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x02,
];

/// A CAR v1 header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarHeader {
    /// The DAGs the archive is about.
    pub roots: Vec<Cid>,
    /// Always 1.
    pub version: u64,
}

/// Why a CAR could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    /// The input ends in the middle of something.
    #[error("CAR truncated at byte {offset}: {what} is incomplete")]
    Truncated {
        /// Where the input ended.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },
    /// The header is not a CAR v1 header.
    #[error("CAR header is invalid: {reason}")]
    BadHeader {
        /// What is wrong.
        reason: String,
    },
    /// A section is larger than any valid one.
    #[error("CAR section at byte {offset} claims {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// Where the section starts.
        offset: u64,
        /// Its claimed size.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A section does not start with a valid CID.
    #[error("CAR section at byte {offset} does not start with a valid CID")]
    BadCid {
        /// Where the section starts.
        offset: u64,
        /// What the cid crate found wrong.
        #[source]
        source: cid::Error,
    },
    /// A block's bytes do not match its CID.
    #[error("CAR section at byte {offset} holds a bad block")]
    BadBlock {
        /// Where the section starts.
        offset: u64,
        /// How it fails.
        #[source]
        source: BlockError,
    },
    /// A length prefix is not a valid varint.
    #[error("CAR has an invalid length prefix at byte {offset}")]
    BadVarint {
        /// Where it starts.
        offset: u64,
    },
    /// Reading or writing failed.
    #[error("CAR I/O at byte {offset}")]
    Io {
        /// Where it failed.
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store failed while exporting or importing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A block's links could not be read while exporting.
    #[error(transparent)]
    Walk(#[from] WalkError),
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// Blocks written.
    pub blocks: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes the DAGs under `roots` from `store` as a CAR v1 to `out`.
pub fn export<S: Blockstore, W: Write>(
    store: &S,
    roots: &[Cid],
    out: W,
) -> Result<Exported, CarError> {
    let mut out = Counting {
        inner: out,
        count: 0,
    };
    let header = serde_ipld_dagcbor::to_vec(&CarHeader {
        roots: roots.to_vec(),
        version: 1,
    })
    .map_err(|e| CarError::BadHeader {
        reason: e.to_string(),
    })?;
    write_section(&mut out, &[&header])?;
    let mut blocks = 0;
    walk(store, roots, |block| {
        let cid = block.cid().to_bytes();
        write_section(&mut out, &[&cid, block.data()])
            .map_err(|e| WalkError::Store(io_to_store(e, block.cid())))?;
        blocks += 1;
        Ok(())
    })?;
    out.inner.flush().map_err(|source| CarError::Io {
        offset: out.count,
        source,
    })?;
    Ok(Exported {
        blocks,
        bytes: out.count,
    })
}

fn io_to_store(e: CarError, cid: &Cid) -> StoreError {
    let source = match e {
        CarError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    };
    StoreError::Io {
        what: "writing CAR section for block",
        path: cid.to_string().into(),
        source,
    }
}

fn write_section<W: Write>(out: &mut Counting<W>, parts: &[&[u8]]) -> Result<(), CarError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = unsigned_varint::encode::u64_buffer();
    let prefix = unsigned_varint::encode::u64(len as u64, &mut buf);
    let offset = out.count;
    let io = |source| CarError::Io { offset, source };
    out.write_all(prefix).map_err(io)?;
    for part in parts {
        out.write_all(part)
            .map_err(|source| CarError::Io { offset, source })?;
    }
    Ok(())
}

struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a CAR v1 one verified block at a time.
pub struct CarReader<R> {
    reader: R,
    offset: u64,
    header: CarHeader,
    buf: Vec<u8>,
}

impl<R: Read> CarReader<R> {
    /// Reads and checks the header.
    pub fn new(mut reader: R) -> Result<Self, CarError> {
        let mut offset = 0;
        let len = read_varint(&mut reader, &mut offset)?.ok_or(CarError::Truncated {
            offset: 0,
            what: "header length",
        })?;
        if len as usize > MAX_HEADER_SIZE || len == 0 {
            return Err(CarError::BadHeader {
                reason: format!("header length {len} is outside 1..={MAX_HEADER_SIZE}"),
            });
        }
        let mut bytes = vec![0u8; len as usize];
        read_exact(&mut reader, &mut bytes, &mut offset, "header")?;
        if len == 10 && bytes[..] == CARV2_PRAGMA[1..] {
            return Err(CarError::BadHeader {
                reason: "this is a CARv2 file; export it as CARv1 (`ipfs dag export` writes v1)"
                    .into(),
            });
        }
        let header: CarHeader =
            serde_ipld_dagcbor::from_slice(&bytes).map_err(|e| CarError::BadHeader {
                reason: format!("not a DAG-CBOR {{roots, version}} map: {e}"),
            })?;
        if header.version != 1 {
            return Err(CarError::BadHeader {
                reason: format!("version {} (only CAR v1 is read)", header.version),
            });
        }
        Ok(Self {
            reader,
            offset,
            header,
            buf: Vec::new(),
        })
    }

    /// The archive's header.
    pub fn header(&self) -> &CarHeader {
        &self.header
    }

    /// The next verified block, or `None` at a clean end of the archive.
    pub fn next_block(&mut self) -> Result<Option<Block>, CarError> {
        let start = self.offset;
        let Some(len) = read_varint(&mut self.reader, &mut self.offset)? else {
            return Ok(None);
        };
        if len as usize > MAX_SECTION_SIZE {
            return Err(CarError::TooLarge {
                offset: start,
                size: len,
                max: MAX_SECTION_SIZE,
            });
        }
        self.buf.resize(len as usize, 0);
        read_exact(
            &mut self.reader,
            &mut self.buf,
            &mut self.offset,
            "block section",
        )?;
        let mut cursor = std::io::Cursor::new(&self.buf[..]);
        let cid = Cid::read_bytes(&mut cursor).map_err(|source| CarError::BadCid {
            offset: start,
            source,
        })?;
        let data = self.buf[cursor.position() as usize..].to_vec();
        let block = Block::new(cid, data).map_err(|source| CarError::BadBlock {
            offset: start,
            source,
        })?;
        Ok(Some(block))
    }
}

impl<R: Read> Iterator for CarReader<R> {
    type Item = Result<Block, CarError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_block().transpose()
    }
}

/// Reads a varint; `None` when the input ends cleanly before its first byte.
fn read_varint(reader: &mut impl Read, offset: &mut u64) -> Result<Option<u64>, CarError> {
    let start = *offset;
    let mut bytes = [0u8; 10];
    for i in 0..bytes.len() {
        let mut byte = [0u8; 1];
        loop {
            match reader.read(&mut byte) {
                Ok(0) if i == 0 => return Ok(None),
                Ok(0) => {
                    return Err(CarError::Truncated {
                        offset: *offset,
                        what: "length prefix",
                    });
                }
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CarError::Io {
                        offset: *offset,
                        source,
                    });
                }
            }
        }
        *offset += 1;
        bytes[i] = byte[0];
        if byte[0] & 0x80 == 0 {
            return unsigned_varint::decode::u64(&bytes[..=i])
                .map(|(v, _)| Some(v))
                .map_err(|_| CarError::BadVarint { offset: start });
        }
    }
    Err(CarError::BadVarint { offset: start })
}

fn read_exact(
    reader: &mut impl Read,
    buf: &mut [u8],
    offset: &mut u64,
    what: &'static str,
) -> Result<(), CarError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(CarError::Truncated {
                    offset: *offset + filled as u64,
                    what,
                });
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(CarError::Io {
                    offset: *offset + filled as u64,
                    source,
                });
            }
        }
    }
    *offset += filled as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{MemBlockstore, unixfs};

    fn sample() -> (MemBlockstore, Cid, Vec<u8>) {
        let store = MemBlockstore::default();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let added = unixfs::import(&data[..], &unixfs::ImportOptions::default(), |b| {
            store.put(b)
        })
        .unwrap();
        (store, added.root, data)
    }

    #[test]
    fn export_then_read_gives_every_block_once() {
        let (store, root, _) = sample();
        let mut car = Vec::new();
        let written = export(&store, &[root], &mut car).unwrap();
        assert_eq!(written.bytes as usize, car.len());
        let mut reader = CarReader::new(&car[..]).unwrap();
        assert_eq!(reader.header().roots, vec![root]);
        let mut n = 0;
        while let Some(block) = reader.next_block().unwrap() {
            assert!(store.has(block.cid()).unwrap());
            n += 1;
        }
        assert_eq!(n, store.len());
        assert_eq!(written.blocks as usize, n);
    }

    #[test]
    fn truncation_anywhere_is_an_error_with_an_offset() {
        let (store, root, _) = sample();
        let mut car = Vec::new();
        export(&store, &[root], &mut car).unwrap();
        for cut in [1, 5, 40, 60, 1000, car.len() - 1] {
            let result: Result<Vec<_>, _> = CarReader::new(&car[..cut]).and_then(|r| r.collect());
            let err = result.unwrap_err();
            assert!(
                matches!(err, CarError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn flipped_byte_in_a_block_is_caught() {
        let (store, root, _) = sample();
        let mut car = Vec::new();
        export(&store, &[root], &mut car).unwrap();
        let last = car.len() - 10;
        car[last] ^= 0x40;
        let result: Result<Vec<_>, _> = CarReader::new(&car[..]).unwrap().collect();
        assert!(matches!(result, Err(CarError::BadBlock { .. })));
    }

    #[test]
    fn garbage_header_is_refused() {
        assert!(matches!(
            CarReader::new(&[3, 1, 2, 3][..]),
            Err(CarError::BadHeader { .. })
        ));
        assert!(matches!(
            CarReader::new(&b"hello world"[..]),
            Err(CarError::Truncated { .. })
        ));
        assert!(matches!(
            CarReader::new(&[0xff; 12][..]),
            Err(CarError::BadVarint { .. })
        ));
        assert!(matches!(
            CarReader::new(&CARV2_PRAGMA[..]),
            Err(CarError::BadHeader { .. })
        ));
        assert!(matches!(
            CarReader::new(&[][..]),
            Err(CarError::Truncated { .. })
        ));
    }
}
