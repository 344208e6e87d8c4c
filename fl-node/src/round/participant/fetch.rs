//! Getting blocks and DAGs this node needs from the repo or the network, from the peer that
//! holds them first.

use super::*;

impl Participant {
    /// Makes sure the DAG under `cid` is in the repo (see [`fetch_held`]).
    pub(super) async fn ensure(
        &self,
        cid: Cid,
        what: &str,
        holder: Option<PeerId>,
    ) -> Result<(), RoundError> {
        self.ensure_at_most(cid, what, holder, u64::MAX).await
    }

    /// Makes sure the DAG under `cid` is in the repo, refusing it once it holds more than
    /// `max_bytes` (an update, whose size the round's model bounds).
    pub(super) async fn ensure_at_most(
        &self,
        cid: Cid,
        what: &str,
        holder: Option<PeerId>,
        max_bytes: u64,
    ) -> Result<(), RoundError> {
        let per_block = self.config.block_timeout;
        match fetch_held(&self.node, cid, holder, per_block, true, max_bytes).await {
            Ok(()) => Ok(()),
            // What the DAG is does not change: no point in trying again.
            Err(net::NetFetchError::Dag {
                source: DagError::TooLarge { limit, .. },
                ..
            }) => Err(RoundError::Refuted(format!(
                "{what} {cid} holds more than {limit} bytes"
            ))),
            Err(source) => Err(RoundError::Fetch {
                what: format!("{what} {cid}"),
                source,
            }),
        }
    }

    /// One block's bytes, fetched from peers if the repo lacks it.
    pub(super) async fn fetch_block(&self, cid: Cid, what: &str) -> Result<Vec<u8>, RoundError> {
        let peers = self.node.peers().await?;
        match self
            .node
            .bitswap()
            .fetch(cid, &peers, 0, self.config.block_timeout)
            .await
        {
            Ok(block) => Ok(block.data().to_vec()),
            Err(e) => Err(RoundError::Fetch {
                what: format!("{what} {cid}"),
                source: net::NetFetchError::Dag {
                    root: cid,
                    source: e.into(),
                },
            }),
        }
    }

    pub(super) fn block_bytes(&self, cid: &Cid) -> Result<Vec<u8>, RoundError> {
        self.repo
            .blocks()
            .get(cid)
            .map(|b| b.data().to_vec())
            .map_err(|e| RoundError::Task(format!("reading block {cid}: {e}")))
    }

    pub(super) fn load_manifest(&self, cid: &Cid) -> Result<Signed<Manifest>, RoundError> {
        let bytes = self.block_bytes(cid)?;
        Ok(Signed::<Manifest>::from_bytes(cid, &bytes)?)
    }
}

/// Fetches what the repo lacks of the DAG under `cid`: from `holder` first when one is
/// known to have it (the aggregator its model, an author its update) and connected, then from every
/// connected peer, then (with `use_dht`) from the providers the DHT names. Asked first, the
/// holder answers every want at once; asked in turn with the others, each block would wait
/// for a "don't have" from each peer before it, and busy peers are slow to say so.
pub(super) async fn fetch_held(
    node: &Node,
    cid: Cid,
    holder: Option<PeerId>,
    per_block: Duration,
    use_dht: bool,
    max_bytes: u64,
) -> Result<(), net::NetFetchError> {
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
                return Err(net::NetFetchError::Dag { root: cid, source });
            }
            Err(_) => {}
        }
    }
    let from_peers =
        fetch_dag_at_most(node.bitswap(), cid, &peers, window, per_block, max_bytes).await;
    match from_peers {
        Ok(_) => Ok(()),
        Err(source) if too_large(&source) => Err(net::NetFetchError::Dag { root: cid, source }),
        Err(_) if use_dht => net::fetch_at_most(node, cid, peers, true, per_block, max_bytes)
            .await
            .map(|_| ()),
        Err(source) => Err(net::NetFetchError::Dag { root: cid, source }),
    }
}
