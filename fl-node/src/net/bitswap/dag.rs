//! Whole DAGs over Bitswap: a window of wants at a time, spread over the peers, each distinct
//! block walked once, with a cap on the bytes a DAG may hold.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use cid::Cid;
use fl_core::content::{Block, StoreError};
use futures::StreamExt;
use libp2p::PeerId;

use super::{Bitswap, FetchError};

/// Fetches the whole DAG under `root` from `peers`, `window` blocks at a time spread over
/// the peers, and returns the number of blocks fetched.
pub async fn fetch_dag(
    bitswap: &Bitswap,
    root: Cid,
    peers: &[PeerId],
    window: usize,
    per_peer: Duration,
) -> Result<u64, DagError> {
    fetch_dag_at_most(bitswap, root, peers, window, per_peer, u64::MAX).await
}

/// Fetches the DAG under `root` as [`fetch_dag`] does, stopping with
/// [`DagError::TooLarge`] once its distinct blocks (here already, or fetched) hold more than
/// `max_bytes`: what a peer names is not trusted to be as small as it should be.
pub async fn fetch_dag_at_most(
    bitswap: &Bitswap,
    root: Cid,
    peers: &[PeerId],
    window: usize,
    per_peer: Duration,
    max_bytes: u64,
) -> Result<u64, DagError> {
    let mut held = 0u64;
    let mut hold = |block: &Block| {
        held = held.saturating_add(block.len() as u64);
        if held > max_bytes {
            return Err(DagError::TooLarge {
                root,
                limit: max_bytes,
            });
        }
        Ok(())
    };
    let mut queue = VecDeque::from([root]);
    // Each distinct block is walked once: a block may link the same child many times, and
    // such blocks nest (a few kilobytes could otherwise name billions of visits).
    let mut seen = HashSet::from([root]);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut fetched = 0u64;
    let mut next_peer = 0usize;
    loop {
        while in_flight.len() < window.max(1) {
            let Some(cid) = queue.pop_front() else { break };
            if let Some(block) = bitswap.held(cid).await.map_err(DagError::from_fetch)? {
                hold(&block)?;
                let links = fl_core::content::links::links(&block)?;
                queue.extend(links.into_iter().filter(|c| seen.insert(*c)));
                continue;
            }
            let first = next_peer;
            next_peer += 1;
            let bitswap = bitswap.clone();
            in_flight.push(async move { bitswap.fetch(cid, peers, first, per_peer).await });
        }
        let Some(result) = in_flight.next().await else {
            return Ok(fetched);
        };
        let block = result?;
        hold(&block)?;
        fetched += 1;
        let links = fl_core::content::links::links(&block)?;
        queue.extend(links.into_iter().filter(|c| seen.insert(*c)));
    }
}

/// Why a DAG could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    /// A block could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A block's links could not be read.
    #[error(transparent)]
    Links(#[from] fl_core::content::links::LinksError),
    /// The DAG's distinct blocks hold more bytes than the caller allows.
    #[error("the DAG under {root} holds more than {limit} bytes")]
    TooLarge {
        /// The DAG.
        root: Cid,
        /// The caller's limit.
        limit: u64,
    },
}

impl DagError {
    /// A store failure as [`DagError::Store`], as before blocks were read off the async workers.
    fn from_fetch(e: FetchError) -> Self {
        match e {
            FetchError::Store(e) => DagError::Store(e),
            e => DagError::Fetch(e),
        }
    }
}
