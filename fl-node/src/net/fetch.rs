//! Fetching a whole DAG by CID from the network: the peers the caller knows, plus the
//! providers the DHT finds, asked over Bitswap.

use std::time::Duration;

use cid::Cid;
use libp2p::PeerId;

use super::bitswap::{DagError, fetch_dag_at_most};
use super::node::{Node, NodeError};

/// Blocks wanted at once while fetching a DAG (spread over the providers).
pub const FETCH_WINDOW: usize = 64;
/// How long to wait for a first connection before asking the DHT.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Why a DAG could not be fetched from the network.
#[derive(Debug, thiserror::Error)]
pub enum NetFetchError {
    /// Nobody to ask: no known peer, and the DHT found no provider.
    #[error("no peer to fetch {0} from: no peer given answered and the DHT found no provider")]
    NoProviders(Cid),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Fetching failed part-way.
    #[error("fetching {root}")]
    Dag {
        /// The DAG's root.
        root: Cid,
        /// What failed.
        source: DagError,
    },
}

/// How a DAG was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Blocks that came over the network (those already held are not counted).
    pub blocks: u64,
    /// The peers asked.
    pub providers: Vec<PeerId>,
}

/// Fetches the DAG under `root` into the node's blockstore from `peers` and, when `use_dht`,
/// the providers the DHT names; each peer gets `per_block` to answer a want.
pub async fn fetch(
    node: &Node,
    root: Cid,
    peers: Vec<PeerId>,
    use_dht: bool,
    per_block: Duration,
) -> Result<Fetched, NetFetchError> {
    fetch_at_most(node, root, peers, use_dht, per_block, u64::MAX).await
}

/// Fetches the DAG under `root` as [`fetch`] does, refusing it once its blocks hold more
/// than `max_bytes` ([`fetch_dag_at_most`]).
pub async fn fetch_at_most(
    node: &Node,
    root: Cid,
    mut peers: Vec<PeerId>,
    use_dht: bool,
    per_block: Duration,
    max_bytes: u64,
) -> Result<Fetched, NetFetchError> {
    if use_dht {
        // Give bootstrap connections a moment to come up before asking the DHT.
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        while node.peers().await?.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for provider in node.providers(root).await? {
            if provider != node.peer_id() && !peers.contains(&provider) {
                peers.push(provider);
            }
        }
    }
    if peers.is_empty() {
        return Err(NetFetchError::NoProviders(root));
    }
    tracing::info!(%root, providers = peers.len(), "fetching");
    let blocks = fetch_dag_at_most(
        node.bitswap(),
        root,
        &peers,
        FETCH_WINDOW,
        per_block,
        max_bytes,
    )
    .await
    .map_err(|source| NetFetchError::Dag { root, source })?;
    tracing::info!(%root, blocks, "fetched");
    Ok(Fetched {
        blocks,
        providers: peers,
    })
}
