//! Where the round code gets the blocks and files a round names: the repo, then (on a node)
//! the network, from the peer known to hold them first. The participant and `fl verify` get
//! every input this one way, and no DAG is read past the size the caller allows.

use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use fl_core::content::{Blockstore, Repo, StoreError};
use libp2p::PeerId;

use super::RoundError;
use crate::net::bitswap::DagError;
use crate::net::{self, NetFetchError, Node, fetch_dag_at_most};

/// The slowest rate at which a peer may send a bounded DAG (an update) before it is given
/// up on: a member that trickles its blocks must not hold a round (the aggregator, then
/// every next in rank) for longer than an honest, slow link would.
pub const SLOWEST_RATE: u64 = 256 << 10;

/// How long fetching a DAG of at most `max_bytes` may take in all: one block's wait, then
/// the bytes at [`SLOWEST_RATE`]; `None` (no deadline beyond each block's) when unbounded.
pub fn fetch_deadline(per_block: Duration, max_bytes: u64) -> Option<Duration> {
    (max_bytes != u64::MAX).then(|| per_block + Duration::from_secs(max_bytes / SLOWEST_RATE + 1))
}

/// Where a round's inputs come from.
#[derive(Debug, Clone)]
pub struct Inputs {
    repo: Arc<Repo>,
    node: Option<Node>,
    per_block: Duration,
}

impl Inputs {
    /// Inputs from `repo` alone: what it lacks is missing.
    pub fn local(repo: Arc<Repo>) -> Self {
        Self {
            repo,
            node: None,
            per_block: Duration::ZERO,
        }
    }

    /// Inputs from `repo`, and what it lacks from `node`'s peers (then the DHT's providers),
    /// each peer given `per_block` to send a block.
    pub fn networked(repo: Arc<Repo>, node: Node, per_block: Duration) -> Self {
        Self {
            repo,
            node: Some(node),
            per_block,
        }
    }

    /// The repo inputs are kept in.
    pub fn repo(&self) -> &Arc<Repo> {
        &self.repo
    }

    /// One block's bytes (a record: task, manifest, announcement).
    pub async fn block(&self, cid: Cid, what: &'static str) -> Result<Vec<u8>, RoundError> {
        match crate::net::bitswap::lookup(self.repo.blocks(), &cid) {
            Ok(Some(block)) => return Ok(block.data().to_vec()),
            Ok(None) => {}
            Err(e) => return Err(RoundError::Repo(e.into())),
        }
        let Some(node) = &self.node else {
            return Err(RoundError::Missing { what, cid });
        };
        let peers = node.peers().await?;
        match node.bitswap().fetch(cid, &peers, 0, self.per_block).await {
            Ok(block) => Ok(block.data().to_vec()),
            Err(e) => Err(RoundError::Fetch {
                what,
                cid,
                source: NetFetchError::Dag {
                    root: cid,
                    source: e.into(),
                },
            }),
        }
    }

    /// Makes the DAG under `cid` whole in the repo, from `holder` first when one is known
    /// to have it; refused once its distinct blocks hold more than `max_bytes` (an update,
    /// whose size the round's model bounds: what a peer names is not trusted to be small).
    pub async fn dag(
        &self,
        cid: Cid,
        what: &'static str,
        holder: Option<PeerId>,
        max_bytes: u64,
    ) -> Result<(), RoundError> {
        let Some(node) = &self.node else {
            return local_dag(&self.repo, cid, what, max_bytes);
        };
        let fetching = fetch_held(node, cid, holder, self.per_block, true, max_bytes);
        let fetched = match fetch_deadline(self.per_block, max_bytes) {
            Some(deadline) => match tokio::time::timeout(deadline, fetching).await {
                Ok(fetched) => fetched,
                Err(_) => {
                    return Err(RoundError::TooSlow {
                        what,
                        cid,
                        deadline,
                    });
                }
            },
            None => fetching.await,
        };
        match fetched {
            Ok(()) => Ok(()),
            // What the DAG is does not change: no point in trying again.
            Err(NetFetchError::Dag {
                source: DagError::TooLarge { limit, .. },
                ..
            }) => Err(RoundError::TooLarge { what, cid, limit }),
            Err(source) => Err(RoundError::Fetch { what, cid, source }),
        }
    }
}

/// Checks that the DAG under `cid` is whole in `repo` and holds at most `max_bytes`, each
/// distinct block read once (a DAG may link one block many times).
pub(crate) fn local_dag(
    repo: &Repo,
    cid: Cid,
    what: &'static str,
    max_bytes: u64,
) -> Result<(), RoundError> {
    let mut seen = std::collections::HashSet::from([cid]);
    let mut queue = vec![cid];
    let mut held = 0u64;
    while let Some(next) = queue.pop() {
        let block = match repo.blocks().get(&next) {
            Ok(block) => block,
            Err(StoreError::NotFound { .. }) => return Err(RoundError::Missing { what, cid }),
            Err(e) => return Err(RoundError::Repo(e.into())),
        };
        held = held.saturating_add(block.len() as u64);
        if held > max_bytes {
            return Err(RoundError::TooLarge {
                what,
                cid,
                limit: max_bytes,
            });
        }
        let links = fl_core::content::links::links(&block)
            .map_err(|source| RoundError::Links { cid: next, source })?;
        queue.extend(links.into_iter().filter(|l| seen.insert(*l)));
    }
    Ok(())
}

/// Fetches what the repo lacks of the DAG under `cid`: from `holder` first when one is
/// known to have it (the aggregator its model, an author its update) and connected, then from
/// every connected peer, then (with `use_dht`) from the providers the DHT names. Asked first,
/// the holder answers every want at once; asked in turn with the others, each block would
/// wait for a "don't have" from each peer before it, and busy peers are slow to say so.
pub(crate) async fn fetch_held(
    node: &Node,
    cid: Cid,
    holder: Option<PeerId>,
    per_block: Duration,
    use_dht: bool,
    max_bytes: u64,
) -> Result<(), NetFetchError> {
    let window = net::fetch::FETCH_WINDOW;
    let peers = node.peers().await?;
    let too_large = |e: &DagError| matches!(e, DagError::TooLarge { .. });
    // A holder that is not connected (gone, or never met) is not waited for.
    if let Some(holder) = holder.filter(|h| peers.contains(h)) {
        match fetch_dag_at_most(node.bitswap(), cid, &[holder], window, per_block, max_bytes).await
        {
            Ok(_) => return Ok(()),
            // Too large from anyone: the DAG is what it is.
            Err(source) if too_large(&source) => {
                return Err(NetFetchError::Dag { root: cid, source });
            }
            Err(_) => {}
        }
    }
    let from_peers =
        fetch_dag_at_most(node.bitswap(), cid, &peers, window, per_block, max_bytes).await;
    match from_peers {
        Ok(_) => Ok(()),
        Err(source) if too_large(&source) => Err(NetFetchError::Dag { root: cid, source }),
        Err(_) if use_dht => net::fetch_at_most(node, cid, peers, true, per_block, max_bytes)
            .await
            .map(|_| ()),
        Err(source) => Err(NetFetchError::Dag { root: cid, source }),
    }
}

#[cfg(test)]
mod tests {
    use fl_core::content::links::links;
    use fl_core::content::unixfs::ImportOptions;

    use super::*;

    /// An update is held only when every block of it is: its root and some leaves, all a
    /// fetch cut short by its deadline leaves of an update served at a trickle, are not
    /// enough; nor is a whole one larger than the limit.
    #[test]
    fn a_dag_is_held_only_whole_and_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path().join("repo")).unwrap();
        let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let added = repo.add(&bytes[..], &ImportOptions::default()).unwrap();
        assert!(local_dag(&repo, added.root, "an update", 2_000_000).is_ok());
        assert!(matches!(
            local_dag(&repo, added.root, "an update", 500_000),
            Err(RoundError::TooLarge { .. })
        ));
        let root = repo.blocks().get(&added.root).unwrap();
        let leaves = links(&root).unwrap();
        assert!(leaves.len() > 1);
        repo.blocks().delete(leaves[1].hash()).unwrap();
        assert!(repo.blocks().has(&added.root).unwrap());
        assert!(matches!(
            local_dag(&repo, added.root, "an update", 2_000_000),
            Err(RoundError::Missing { .. })
        ));
    }

    /// An update of the reference CNN (7 MB in float32) gets its block wait plus 27 s at
    /// 256 KiB/s; an unbounded DAG (a model, a shard) keeps only the per-block wait.
    #[test]
    fn a_bounded_fetch_has_a_deadline_an_honest_slow_link_meets() {
        let per_block = Duration::from_secs(10);
        assert_eq!(fetch_deadline(per_block, u64::MAX), None);
        let update = 7_026_632;
        assert_eq!(
            fetch_deadline(per_block, update),
            Some(Duration::from_secs(10 + 26 + 1))
        );
        assert!(
            fetch_deadline(per_block, update)
                .is_some_and(|d| { d.as_secs_f64() >= update as f64 / SLOWEST_RATE as f64 })
        );
    }
}
