//! Verified block storage. Every block read is re-hashed before it is returned: a block
//! that fails is an error, never data. Writes only accept [`Block`]s, which are verified
//! when they are made.

mod fs;
mod mem;

use std::path::PathBuf;

use cid::Cid;
use multihash::Multihash;

use super::block::{Block, BlockError};

pub use fs::FsBlockstore;
pub use mem::MemBlockstore;

/// What can go wrong reading or writing blocks.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store does not hold the block.
    #[error("block {cid} not in the store")]
    NotFound {
        /// The block asked for.
        cid: Cid,
    },
    /// The stored bytes do not match the CID (disk corruption or tampering).
    #[error("stored block {cid} is corrupt")]
    Corrupt {
        /// The block asked for.
        cid: Cid,
        /// How it fails verification.
        #[source]
        source: BlockError,
    },
    /// The file system failed.
    #[error("{what} {}", .path.display())]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A place that keeps blocks by their multihash.
pub trait Blockstore {
    /// Returns the verified block `cid` names.
    fn get(&self, cid: &Cid) -> Result<Block, StoreError>;
    /// Stores a block; storing one that is already present does nothing.
    fn put(&self, block: Block) -> Result<(), StoreError>;
    /// Whether the store holds a block with `cid`'s multihash.
    fn has(&self, cid: &Cid) -> Result<bool, StoreError>;
    /// Removes the block with this multihash, if present.
    fn delete(&self, hash: &Multihash<64>) -> Result<(), StoreError>;
    /// The multihashes of all stored blocks, for garbage collection.
    fn hashes(&self) -> Result<Vec<Multihash<64>>, StoreError>;
}

impl<T: Blockstore + ?Sized> Blockstore for &T {
    fn get(&self, cid: &Cid) -> Result<Block, StoreError> {
        (**self).get(cid)
    }
    fn put(&self, block: Block) -> Result<(), StoreError> {
        (**self).put(block)
    }
    fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        (**self).has(cid)
    }
    fn delete(&self, hash: &Multihash<64>) -> Result<(), StoreError> {
        (**self).delete(hash)
    }
    fn hashes(&self) -> Result<Vec<Multihash<64>>, StoreError> {
        (**self).hashes()
    }
}

/// Checks bytes read from storage against the CID they were asked for.
fn verified(cid: &Cid, data: Vec<u8>) -> Result<Block, StoreError> {
    Block::new(*cid, data).map_err(|source| StoreError::Corrupt { cid: *cid, source })
}
