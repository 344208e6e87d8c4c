//! Content addressing compatible with the IPFS ecosystem: CIDs, verified blocks, UnixFS
//! files, DAG-CBOR records, CAR archives, and an on-disk store with pins and GC.

pub mod block;
pub mod blockstore;
pub mod car;
pub mod dagcbor;
pub mod links;
pub mod pins;
pub mod repo;
pub mod unixfs;

pub use block::{Block, BlockError};
pub use blockstore::{Blockstore, FsBlockstore, MemBlockstore, StoreError};
pub use cid::Cid;
pub use repo::{Repo, RepoError};

/// Multicodec of raw bytes, used for UnixFS leaves (`bafkrei...`).
pub const RAW: u64 = 0x55;
/// Multicodec of dag-pb, used for UnixFS nodes (`bafybei...`, `Qm...`).
pub const DAG_PB: u64 = 0x70;
/// Multicodec of DAG-CBOR, used for our records (task, announcements, manifests).
pub const DAG_CBOR: u64 = 0x71;

/// Multihash code of sha2-256, the hash every CID we create uses.
pub const SHA2_256: u64 = 0x12;

/// Parses a CID given by a person or a peer, naming the text when it is not one.
pub fn parse_cid(text: &str) -> Result<Cid, ParseCidError> {
    text.trim().parse::<Cid>().map_err(|source| ParseCidError {
        text: text.chars().take(120).collect(),
        source,
    })
}

/// A string that is not a CID.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not a valid CID")]
pub struct ParseCidError {
    /// The offending text (its first 120 characters).
    pub text: String,
    /// What the cid crate found wrong.
    #[source]
    pub source: cid::Error,
}
