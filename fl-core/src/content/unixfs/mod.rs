//! UnixFS v1 files, laid out exactly as Kubo and Helia lay them out, so that the same
//! bytes get the same CID everywhere and `ipfs cat` works on anything we publish.
//!
//! A file is cut into fixed chunks (262,144 bytes) that become leaves: raw blocks for
//! CIDv1, dag-pb nodes holding UnixFS `File` data for CIDv0. Leaves are gathered into a
//! balanced tree of dag-pb nodes with at most 174 links each, every leaf at the same
//! depth (boxo's `importer/balanced`, the js importer's `balanced` layout):
//!
//! ```text
//!                 root (175..=174² chunks)
//!            /                          \
//!   node: 174 leaves                 node: the rest (1..=174 leaves)
//!   / | ... \                        / ... \
//! leaf leaf leaf                   leaf    leaf
//! ```

mod exporter;
mod importer;
mod pb;

pub use exporter::{ExportError, bomb, export};
pub use importer::{Added, ImportError, ImportOptions, import};

/// Chunk size of Kubo's and Helia's default chunker (`size-262144`).
pub const DEFAULT_CHUNK_SIZE: usize = 262_144;
/// Most links per node in Kubo's and Helia's balanced layout.
pub const DEFAULT_MAX_LINKS: usize = 174;
