//! Blocks in memory, for tests, benchmarks and staging.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use cid::Cid;
use multihash::Multihash;

use super::{Block, Blockstore, StoreError, verified};

/// A [`Blockstore`] in memory. Reads are verified like the disk store's.
#[derive(Debug, Default)]
pub struct MemBlockstore {
    blocks: Mutex<HashMap<Multihash<64>, Bytes>>,
}

impl MemBlockstore {
    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the bytes stored under `cid`'s multihash without checking them: a test
    /// hook to simulate corruption.
    #[doc(hidden)]
    pub fn overwrite_unchecked(&self, cid: &Cid, data: Vec<u8>) {
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*cid.hash(), data.into());
    }
}

impl Blockstore for MemBlockstore {
    fn get(&self, cid: &Cid) -> Result<Block, StoreError> {
        let data = self
            .blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cid.hash())
            .cloned()
            .ok_or(StoreError::NotFound { cid: *cid })?;
        verified(cid, data.to_vec())
    }

    fn put(&self, block: Block) -> Result<(), StoreError> {
        let (cid, data) = block.into_parts();
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(*cid.hash())
            .or_insert(data);
        Ok(())
    }

    fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self
            .blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(cid.hash()))
    }

    fn delete(&self, hash: &Multihash<64>) -> Result<(), StoreError> {
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(hash);
        Ok(())
    }

    fn hashes(&self) -> Result<Vec<Multihash<64>>, StoreError> {
        Ok(self
            .blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect())
    }
}
