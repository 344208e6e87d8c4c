//! DAG-CBOR records (codec 0x71): our task, announcement and manifest records, with CID
//! links as tag 42 so that `ipfs dag get` shows them and can follow their links.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Block, DAG_CBOR};

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum DagCborError {
    /// The value cannot be represented in DAG-CBOR (a float NaN, a map with non-string keys).
    #[error("encoding DAG-CBOR: {0}")]
    Encode(String),
    /// The bytes are not DAG-CBOR of the expected shape.
    #[error("decoding DAG-CBOR block {cid}: {reason}")]
    Decode {
        /// The block in question.
        cid: cid::Cid,
        /// What is wrong.
        reason: String,
    },
}

/// Encodes `value` as a DAG-CBOR block (canonical: map keys sorted, shortest integers).
pub fn encode<T: Serialize>(value: &T) -> Result<Block, DagCborError> {
    let bytes =
        serde_ipld_dagcbor::to_vec(value).map_err(|e| DagCborError::Encode(e.to_string()))?;
    Ok(Block::hashed(DAG_CBOR, bytes))
}

/// Decodes a DAG-CBOR block into `T`.
pub fn decode<T: DeserializeOwned>(block: &Block) -> Result<T, DagCborError> {
    serde_ipld_dagcbor::from_slice(block.data()).map_err(|e| DagCborError::Decode {
        cid: *block.cid(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{RAW, links};
    use cid::Cid;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        version: u32,
        model: Cid,
        note: String,
    }

    #[test]
    fn record_round_trips_and_exposes_its_link() {
        let model = *Block::hashed(RAW, &b"weights"[..]).cid();
        let record = Record {
            version: 1,
            model,
            note: "round 1".into(),
        };
        let block = encode(&record).unwrap();
        assert_eq!(block.cid().codec(), DAG_CBOR);
        assert_eq!(decode::<Record>(&block).unwrap(), record);
        assert_eq!(links::links(&block).unwrap(), vec![model]);
    }

    #[test]
    fn keys_are_in_canonical_order() {
        // DAG-CBOR sorts keys by length, then bytes: "note" < "model" < "version".
        let block = encode(&Record {
            version: 1,
            model: *Block::hashed(RAW, &b""[..]).cid(),
            note: String::new(),
        })
        .unwrap();
        let data = block.data();
        let pos = |k: &[u8]| data.windows(k.len()).position(|w| w == k).unwrap();
        assert!(pos(b"note") < pos(b"model") && pos(b"model") < pos(b"version"));
    }

    #[test]
    fn garbage_is_an_error_naming_the_block() {
        let block = Block::hashed(DAG_CBOR, vec![0xff, 0x00, 0x13]);
        let err = decode::<Record>(&block).unwrap_err();
        assert!(err.to_string().contains(&block.cid().to_string()));
    }
}
