//! The blocking work of Bitswap, run on tokio's blocking pool (never on the async workers, and
//! at most [`Config::max_store_jobs`](super::Config) at once): reading blocks to answer a
//! peer's wants, and hashing and storing the blocks a peer sent.

use std::collections::HashSet;
use std::sync::Arc;

use cid::Cid;
use fl_core::content::{Block, Blockstore, StoreError};
use libp2p::PeerId;

use super::message::{Message, PresenceType, Want, WantType};

/// The blockstore Bitswap serves and fills: any [`Blockstore`], shared with the node.
pub type Store = Arc<dyn Blockstore + Send + Sync>;

/// What an answer job produced for one peer.
#[derive(Debug, Default)]
pub struct Answer {
    /// The reply: blocks, HAVE and DONT_HAVE.
    pub message: Message,
    /// Bytes of block data in it.
    pub bytes: usize,
    /// Blocks in it.
    pub blocks: usize,
    /// Wants not reached before the answer was full, with their places in the queue.
    pub rest: Vec<(u64, Want)>,
}

/// Answers `wants` from `store` in order until the blocks hold `max_bytes`: HAVE from an
/// existence check alone (the block is not read), blocks read and verified.
pub fn answer(store: &dyn Blockstore, wants: Vec<(u64, Want)>, max_bytes: usize) -> Answer {
    let mut out = Answer::default();
    let mut wants = wants.into_iter();
    for (at, want) in wants.by_ref() {
        if out.bytes >= max_bytes {
            out.rest.push((at, want));
            break;
        }
        let have = match want.kind {
            WantType::Have => match store.has(&want.cid) {
                Ok(true) => {
                    out.message.push_presence(&want.cid, PresenceType::Have);
                    continue;
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(cid = %want.cid, "bitswap: store: {e}");
                    false
                }
            },
            WantType::Block => match lookup(store, &want.cid) {
                Ok(Some(block)) => {
                    out.bytes += block.len();
                    out.blocks += 1;
                    out.message.push_block(&block);
                    continue;
                }
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(cid = %want.cid, "bitswap: store: {e}");
                    false
                }
            },
        };
        if !have && want.send_dont_have {
            out.message.push_presence(&want.cid, PresenceType::DontHave);
        }
    }
    out.rest.extend(wants);
    out
}

/// What became of the blocks one message brought.
#[derive(Debug, Default)]
pub struct Received {
    /// The sender.
    pub from: Option<PeerId>,
    /// Wanted blocks, verified and stored.
    pub stored: Vec<Block>,
    /// Blocks refused: unwanted, malformed, oversized, or not storable.
    pub refused: u64,
}

/// Hashes the blocks of `message` (its blocks only), and stores those in `wanted`.
pub fn receive(store: &dyn Blockstore, message: &Message, wanted: &HashSet<Cid>) -> Received {
    let mut out = Received::default();
    for block in message.blocks() {
        match block {
            Ok(block) if wanted.contains(block.cid()) => match store.put(block.clone()) {
                Ok(()) => out.stored.push(block),
                Err(e) => {
                    tracing::warn!(cid = %block.cid(), "bitswap: cannot store a received block: {e}");
                    out.refused += 1;
                }
            },
            Ok(block) => {
                tracing::debug!(cid = %block.cid(), "bitswap: unwanted block dropped");
                out.refused += 1;
            }
            Err(e) => {
                tracing::debug!("bitswap: {e}");
                out.refused += 1;
            }
        }
    }
    out
}

/// The block `cid` names, or `None` when the store lacks it. A stored copy that no longer
/// matches its CID (disk corruption) is deleted and taken as missing, so it is fetched
/// again rather than failing every read from then on.
pub fn lookup(store: &dyn Blockstore, cid: &Cid) -> Result<Option<Block>, StoreError> {
    match store.get(cid) {
        Ok(block) => Ok(Some(block)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(StoreError::Corrupt { .. }) => {
            tracing::warn!(%cid, "a stored block is corrupt: deleted, to be fetched again");
            store.delete(cid.hash())?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    /// A block whose file was damaged on disk reads as missing (and is gone from the
    /// store), so the next fetch brings a good copy instead of failing for good.
    #[test]
    fn a_corrupt_block_is_dropped_and_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = fl_core::content::FsBlockstore::open(dir.path()).unwrap();
        let block = Block::hashed(0x55, &b"a block"[..]);
        let cid = *block.cid();
        store.put(block).unwrap();
        std::fs::write(store.path_of(cid.hash()), b"rotted").unwrap();
        assert!(lookup(&store, &cid).unwrap().is_none());
        assert!(!store.has(&cid).unwrap());
        store.put(Block::hashed(0x55, &b"a block"[..])).unwrap();
        assert!(lookup(&store, &cid).unwrap().is_some());
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    use fl_core::content::MemBlockstore;
    use multihash::Multihash;

    use super::*;

    /// A store that counts block reads.
    #[derive(Default)]
    struct Counting {
        inner: MemBlockstore,
        reads: AtomicUsize,
    }

    impl Blockstore for Counting {
        fn get(&self, cid: &Cid) -> Result<Block, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.inner.get(cid)
        }
        fn put(&self, block: Block) -> Result<(), StoreError> {
            self.inner.put(block)
        }
        fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
            self.inner.has(cid)
        }
        fn delete(&self, hash: &Multihash<64>) -> Result<(), StoreError> {
            self.inner.delete(hash)
        }
        fn hashes(&self) -> Result<Vec<Multihash<64>>, StoreError> {
            self.inner.hashes()
        }
    }

    fn want(cid: Cid, kind: WantType) -> Want {
        Want {
            cid,
            kind,
            cancel: false,
            send_dont_have: true,
        }
    }

    #[test]
    fn have_is_answered_without_reading_the_block() {
        let store = Counting::default();
        let held = Block::hashed(0x55, vec![1; 1000]);
        store.put(held.clone()).unwrap();
        let missing = *Block::hashed(0x55, vec![2]).cid();
        let wants = vec![
            (0, want(*held.cid(), WantType::Have)),
            (1, want(missing, WantType::Have)),
        ];
        let answer = answer(&store, wants, 1 << 20);
        assert_eq!(store.reads.load(Ordering::Relaxed), 0);
        assert_eq!(answer.blocks, 0);
        let presences = answer.message.presences();
        assert_eq!(
            presences,
            vec![
                (*held.cid(), PresenceType::Have),
                (missing, PresenceType::DontHave)
            ]
        );
    }

    #[test]
    fn an_answer_stops_at_its_size_and_hands_back_the_rest() {
        let store = MemBlockstore::default();
        let blocks: Vec<_> = (0..5u8)
            .map(|i| Block::hashed(0x55, vec![i; 400 << 10]))
            .collect();
        let wants = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                store.put(b.clone()).unwrap();
                (i as u64, want(*b.cid(), WantType::Block))
            })
            .collect();
        let answer = answer(&store, wants, 1 << 20);
        assert_eq!(answer.blocks, 3);
        assert_eq!(
            answer.rest.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn only_wanted_blocks_are_stored() {
        let store = MemBlockstore::default();
        let wanted = Block::hashed(0x55, b"wanted".to_vec());
        let gift = Block::hashed(0x55, b"gift".to_vec());
        let mut message = Message::default();
        message.push_block(&wanted);
        message.push_block(&gift);
        let received = receive(&store, &message, &HashSet::from([*wanted.cid()]));
        assert_eq!(received.stored, vec![wanted.clone()]);
        assert_eq!(received.refused, 1);
        assert!(store.has(wanted.cid()).unwrap());
        assert!(!store.has(gift.cid()).unwrap());
    }
}
