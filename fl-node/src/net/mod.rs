//! Networking that interoperates with IPFS: a libp2p node ([`node`]) that serves and fetches
//! blocks over Bitswap ([`bitswap`]), finds providers in the DHT and gossips announcements,
//! with its identity kept in the repo ([`keys`]).

pub mod bitswap;
pub mod keys;
pub mod node;

pub use bitswap::{Bitswap, fetch_dag};
pub use node::{Gossip, Node, NodeConfig, NodeError};
