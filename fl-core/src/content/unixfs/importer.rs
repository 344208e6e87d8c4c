//! Bytes to a UnixFS DAG, streaming: memory stays at one chunk plus at most
//! `max_links` links per tree level, whatever the file's size.

use std::io::Read;

use bytes::Bytes;
use cid::Cid;
use ipld_dagpb::{PbLink, PbNode};
use prost::Message;

use super::pb::{Data, DataType};
use super::{DEFAULT_CHUNK_SIZE, DEFAULT_MAX_LINKS};
use crate::content::block::{Block, MAX_BLOCK_SIZE};
use crate::content::{RAW, StoreError};

/// How a file becomes a DAG. `Default` gives `ipfs add --cid-version=1` (Kubo, Helia).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// CID version of the dag-pb nodes: 1 (base32 `bafy...`) or 0 (`Qm...`).
    pub cid_version: cid::Version,
    /// Leaves as raw blocks (`bafkrei...`) rather than dag-pb nodes with UnixFS data.
    pub raw_leaves: bool,
    /// Bytes per chunk (leaf); default 262,144.
    pub chunk_size: usize,
    /// Most links per dag-pb node; default 174.
    pub max_links: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            cid_version: cid::Version::V1,
            raw_leaves: true,
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_links: DEFAULT_MAX_LINKS,
        }
    }
}

impl ImportOptions {
    /// Kubo's plain `ipfs add` defaults: CIDv0, dag-pb leaves.
    pub fn kubo_v0() -> Self {
        Self {
            cid_version: cid::Version::V0,
            raw_leaves: false,
            ..Self::default()
        }
    }

    /// Like Kubo's `--cid-version`: version 1 implies raw leaves, version 0 none.
    pub fn with_cid_version(version: cid::Version) -> Self {
        match version {
            cid::Version::V0 => Self::kubo_v0(),
            cid::Version::V1 => Self::default(),
        }
    }
}

/// What an import produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The file's CID.
    pub root: Cid,
    /// The file's length in bytes.
    pub size: u64,
    /// Number of blocks made.
    pub blocks: u64,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the input failed.
    #[error("reading the input at byte {offset}")]
    Read {
        /// Bytes read before the failure.
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Storing a block failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The options cannot give valid blocks.
    #[error("invalid import options: {0}")]
    Options(&'static str),
}

/// A child of a node: its CID, the bytes of its whole subtree (dag-pb `Tsize`) and the
/// file bytes it holds (UnixFS `blocksizes`).
#[derive(Debug, Clone, Copy)]
struct Link {
    cid: Cid,
    tsize: u64,
    filesize: u64,
}

/// Imports everything `reader` yields as one UnixFS file, handing each block to `sink`
/// as soon as it is made (children before parents).
pub fn import<R, F>(
    mut reader: R,
    options: &ImportOptions,
    mut sink: F,
) -> Result<Added, ImportError>
where
    R: Read,
    F: FnMut(Block) -> Result<(), StoreError>,
{
    if options.chunk_size == 0 || options.chunk_size > MAX_BLOCK_SIZE / 2 {
        return Err(ImportError::Options(
            "chunk size must be between 1 byte and 1 MiB",
        ));
    }
    if options.max_links < 2 {
        return Err(ImportError::Options(
            "a node needs room for at least 2 links",
        ));
    }
    if options.cid_version == cid::Version::V0 && options.raw_leaves {
        // Kubo allows it, but the result mixes versions; keep one way per version.
        return Err(ImportError::Options("raw leaves need CIDv1"));
    }
    let mut builder = Balanced {
        options,
        levels: Vec::new(),
        blocks: 0,
    };
    let mut size = 0u64;
    loop {
        // Each chunk is read straight into the buffer its block will own: no copy.
        let mut chunk = Vec::with_capacity(options.chunk_size);
        let filled = (&mut reader)
            .take(options.chunk_size as u64)
            .read_to_end(&mut chunk)
            .map_err(|source| ImportError::Read {
                offset: size,
                source,
            })?;
        // An empty file is one empty leaf, as in Kubo and Helia.
        if filled == 0 && size > 0 {
            break;
        }
        size += filled as u64;
        let leaf = builder.leaf(chunk);
        let link = Link {
            cid: *leaf.cid(),
            tsize: leaf.len() as u64,
            filesize: filled as u64,
        };
        builder.emit(leaf, &mut sink)?;
        builder.push(0, link, &mut sink)?;
        if filled < options.chunk_size {
            break;
        }
    }
    let root = builder.finish(&mut sink)?;
    Ok(Added {
        root: root.cid,
        size,
        blocks: builder.blocks,
    })
}

/// The balanced layout, built bottom-up: `levels[0]` holds leaves not yet given a
/// parent, `levels[k]` nodes of height k. A level that would overflow is first closed
/// into a node one level up, so every leaf ends at the same depth.
struct Balanced<'a> {
    options: &'a ImportOptions,
    levels: Vec<Vec<Link>>,
    blocks: u64,
}

impl Balanced<'_> {
    fn leaf(&self, bytes: Vec<u8>) -> Block {
        if self.options.raw_leaves {
            return Block::hashed(RAW, Bytes::from(bytes));
        }
        let data = Data {
            r#type: DataType::File as i32,
            filesize: Some(bytes.len() as u64),
            data: (!bytes.is_empty()).then_some(bytes),
            ..Data::default()
        };
        self.dag_pb(PbNode {
            links: Vec::new(),
            data: Some(data.encode_to_vec().into()),
        })
    }

    fn dag_pb(&self, node: PbNode) -> Block {
        let bytes = node.into_bytes();
        match self.options.cid_version {
            cid::Version::V0 => Block::hashed_v0(bytes),
            cid::Version::V1 => Block::hashed(crate::content::DAG_PB, bytes),
        }
    }

    fn emit<F>(&mut self, block: Block, sink: &mut F) -> Result<(), StoreError>
    where
        F: FnMut(Block) -> Result<(), StoreError>,
    {
        self.blocks += 1;
        sink(block)
    }

    fn push<F>(&mut self, level: usize, link: Link, sink: &mut F) -> Result<(), StoreError>
    where
        F: FnMut(Block) -> Result<(), StoreError>,
    {
        if self.levels.len() <= level {
            self.levels.push(Vec::with_capacity(self.options.max_links));
        }
        if self.levels[level].len() == self.options.max_links {
            let full = std::mem::take(&mut self.levels[level]);
            let parent = self.node(full, sink)?;
            self.push(level + 1, parent, sink)?;
        }
        self.levels[level].push(link);
        Ok(())
    }

    /// Makes the dag-pb node over `children` and emits it.
    fn node<F>(&mut self, children: Vec<Link>, sink: &mut F) -> Result<Link, StoreError>
    where
        F: FnMut(Block) -> Result<(), StoreError>,
    {
        let filesize = children.iter().map(|c| c.filesize).sum();
        let data = Data {
            r#type: DataType::File as i32,
            filesize: Some(filesize),
            blocksizes: children.iter().map(|c| c.filesize).collect(),
            ..Data::default()
        };
        let links = children
            .iter()
            .map(|c| PbLink {
                cid: c.cid,
                name: Some(String::new()),
                size: Some(c.tsize),
            })
            .collect();
        let block = self.dag_pb(PbNode {
            links,
            data: Some(data.encode_to_vec().into()),
        });
        let link = Link {
            cid: *block.cid(),
            tsize: block.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>(),
            filesize,
        };
        self.emit(block, sink)?;
        Ok(link)
    }

    /// Closes every open level from the bottom up and returns the root.
    fn finish<F>(&mut self, sink: &mut F) -> Result<Link, StoreError>
    where
        F: FnMut(Block) -> Result<(), StoreError>,
    {
        let mut level = 0;
        // Every pass either returns or moves up a level that `push` has just created.
        while level < self.levels.len() {
            let open = std::mem::take(&mut self.levels[level]);
            let above = self.levels[level + 1..].iter().any(|l| !l.is_empty());
            match open.len() {
                0 => {}
                1 if !above => return Ok(open[0]),
                _ => {
                    let parent = self.node(open, sink)?;
                    self.push(level + 1, parent, sink)?;
                }
            }
            level += 1;
        }
        unreachable!("import always pushes at least one leaf")
    }
}
