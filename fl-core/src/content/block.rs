//! A block: bytes together with the CID they hash to. A `Block` can only be made by
//! hashing bytes or by checking them against a CID, so holding one means it is genuine.

use bytes::Bytes;
use cid::Cid;
use multihash::Multihash;
use multihash_codetable::{Code, MultihashDigest};

use super::SHA2_256;

/// Largest block we create, store or accept: 2 MiB, Bitswap's hard limit (boxo and Kubo
/// refuse larger blocks), so anything we store can also move over the network.
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// Multihash code of sha2-512, accepted when verifying blocks made elsewhere.
const SHA2_512: u64 = 0x13;
/// Multihash code of the identity "hash", whose digest is the data itself.
const IDENTITY: u64 = 0x00;
/// Largest identity digest we accept, as boxo's `verifcid` does: inline data is for tiny values.
const MAX_IDENTITY_DIGEST: usize = 128;

/// Why bytes are not the block a CID names.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The bytes hash to a different CID.
    #[error("block {cid} fails verification: its bytes hash to {actual}")]
    HashMismatch {
        /// The CID the bytes were supposed to have.
        cid: Cid,
        /// The CID the bytes really have (same version and codec).
        actual: Cid,
    },
    /// The CID uses a hash function we do not verify.
    #[error(
        "block {cid} uses multihash code {code:#x}, which this node cannot verify (supported: sha2-256, sha2-512, identity)"
    )]
    UnsupportedHash {
        /// The CID in question.
        cid: Cid,
        /// Its multihash code.
        code: u64,
    },
    /// The block is larger than [`MAX_BLOCK_SIZE`].
    #[error("block {cid} is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// The CID in question.
        cid: Cid,
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// Bytes and the CID they hash to.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    data: Bytes,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("cid", &self.cid.to_string())
            .field("len", &self.data.len())
            .finish()
    }
}

impl Block {
    /// Makes a CIDv1 sha2-256 block of `codec` from `data`.
    pub fn hashed(codec: u64, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let cid = Cid::new_v1(codec, Code::Sha2_256.digest(&data));
        Self { cid, data }
    }

    /// Makes a CIDv0 block (dag-pb, sha2-256) from `data`, as Kubo's defaults do.
    pub fn hashed_v0(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let hash = Code::Sha2_256.digest(&data);
        // A sha2-256 digest is always a valid CIDv0 multihash.
        let cid = Cid::new_v0(hash).unwrap_or_else(|_| unreachable!("sha2-256 is CIDv0's hash"));
        Self { cid, data }
    }

    /// Checks `data` against `cid` and makes a block of them.
    pub fn new(cid: Cid, data: impl Into<Bytes>) -> Result<Self, BlockError> {
        let data = data.into();
        verify(&cid, &data)?;
        Ok(Self { cid, data })
    }

    /// The block's CID.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The block's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The block's size in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the block holds no bytes (the empty raw block is a valid block).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Splits the block into its CID and bytes.
    pub fn into_parts(self) -> (Cid, Bytes) {
        (self.cid, self.data)
    }
}

/// Checks that `data` is the block `cid` names.
pub fn verify(cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
    if data.len() > MAX_BLOCK_SIZE {
        return Err(BlockError::TooLarge {
            cid: *cid,
            size: data.len(),
            max: MAX_BLOCK_SIZE,
        });
    }
    let expected = cid.hash();
    let actual: Multihash<64> = match expected.code() {
        SHA2_256 => Code::Sha2_256.digest(data),
        SHA2_512 => Code::Sha2_512.digest(data),
        IDENTITY if data.len() <= MAX_IDENTITY_DIGEST => {
            Multihash::wrap(IDENTITY, data).map_err(|_| BlockError::TooLarge {
                cid: *cid,
                size: data.len(),
                max: MAX_IDENTITY_DIGEST,
            })?
        }
        IDENTITY => {
            return Err(BlockError::TooLarge {
                cid: *cid,
                size: data.len(),
                max: MAX_IDENTITY_DIGEST,
            });
        }
        code => return Err(BlockError::UnsupportedHash { cid: *cid, code }),
    };
    if &actual == expected {
        Ok(())
    } else {
        let actual = match cid.version() {
            cid::Version::V0 => Cid::new_v0(actual).unwrap_or(Cid::new_v1(cid.codec(), actual)),
            cid::Version::V1 => Cid::new_v1(cid.codec(), actual),
        };
        Err(BlockError::HashMismatch { cid: *cid, actual })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::RAW;

    #[test]
    fn flipped_byte_fails_verification_naming_both_cids() {
        let block = Block::hashed(RAW, &b"some bytes"[..]);
        let err = Block::new(*block.cid(), &b"some bytez"[..]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&block.cid().to_string()), "{text}");
        assert!(matches!(err, BlockError::HashMismatch { .. }));
    }

    #[test]
    fn genuine_bytes_verify() {
        let block = Block::hashed(RAW, &b"x"[..]);
        assert!(Block::new(*block.cid(), block.data().clone()).is_ok());
    }

    #[test]
    fn unknown_hash_is_refused_not_trusted() {
        let mh = Multihash::<64>::wrap(0xb220, &[0u8; 32]).unwrap();
        let cid = Cid::new_v1(RAW, mh);
        assert!(matches!(
            verify(&cid, b""),
            Err(BlockError::UnsupportedHash { code: 0xb220, .. })
        ));
    }

    #[test]
    fn oversized_block_is_refused() {
        let data = vec![0u8; MAX_BLOCK_SIZE + 1];
        let cid = Block::hashed(RAW, data.clone()).cid().to_owned();
        assert!(matches!(
            verify(&cid, &data),
            Err(BlockError::TooLarge { .. })
        ));
    }
}
