//! Networking that interoperates with IPFS: a libp2p node ([`node`]) that serves and fetches
//! blocks over Bitswap ([`bitswap`], whole DAGs with [`fetch()`]), finds providers in the DHT and gossips announcements,
//! with its identity kept in the repo ([`keys`]).

pub mod address_limits;
pub mod bitswap;
mod driver;
pub mod fetch;
pub mod gossip;
pub mod keys;
pub mod node;

pub use bitswap::{Bitswap, fetch_dag, fetch_dag_at_most};
pub use fetch::{Fetched, NetFetchError, fetch, fetch_at_most};
pub use gossip::{Gossip, MessageAcceptance};
pub use node::{Node, NodeConfig, NodeError, Reporter};
