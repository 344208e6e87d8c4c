//! The official binary format: records of 1 label byte and 3,072 pixel bytes.

use std::path::Path;

use super::{IMAGE_BYTES, Images, NUM_CLASSES, RECORD_BYTES, ReadError};

/// Parses a binary batch; `path` names the source in errors.
pub fn parse_binary(path: &Path, bytes: &[u8]) -> Result<Images, ReadError> {
    let whole = bytes.len() / RECORD_BYTES;
    if !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(ReadError::Truncated {
            path: path.to_owned(),
            offset: (whole * RECORD_BYTES) as u64,
            have: bytes.len() % RECORD_BYTES,
        });
    }
    let mut labels = Vec::with_capacity(whole);
    let mut pixels = Vec::with_capacity(whole * IMAGE_BYTES);
    for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        if label as usize >= NUM_CLASSES {
            return Err(ReadError::BadLabel {
                path: path.to_owned(),
                offset: (i * RECORD_BYTES) as u64,
                label: label.into(),
            });
        }
        labels.push(label);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok(Images { labels, pixels })
}
