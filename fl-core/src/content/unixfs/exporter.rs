//! A UnixFS file's CID back to its bytes, verifying every block before any of its bytes
//! are written, so a corrupt or forged block stops the output rather than entering it.

use std::io::Write;

use cid::Cid;
use ipld_dagpb::PbNode;
use prost::Message;

use super::pb::{Data, DataType};
use crate::content::{Blockstore, DAG_PB, RAW, StoreError};

/// Deepest tree we follow: 174^16 chunks of 256 KiB is far beyond any file, so a deeper
/// DAG is malformed or hostile.
const MAX_DEPTH: usize = 16;

/// Why a CID could not be read back as a file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A block is missing or corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The block is not a UnixFS file node.
    #[error("{cid} is not a UnixFS file: {reason}")]
    NotAFile {
        /// The block in question.
        cid: Cid,
        /// What it is instead.
        reason: String,
    },
    /// The DAG contradicts itself (sizes, depth).
    #[error("UnixFS node {cid} is malformed: {reason}")]
    Malformed {
        /// The node in question.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// Writing the output failed.
    #[error("writing the output")]
    Write(#[source] std::io::Error),
}

/// Writes the file `root` names to `out`; returns its length.
pub fn export<S: Blockstore, W: Write>(
    store: &S,
    root: &Cid,
    out: &mut W,
) -> Result<u64, ExportError> {
    write_node(store, root, out, 0)
}

fn write_node<S: Blockstore, W: Write>(
    store: &S,
    cid: &Cid,
    out: &mut W,
    depth: usize,
) -> Result<u64, ExportError> {
    if depth > MAX_DEPTH {
        return Err(ExportError::Malformed {
            cid: *cid,
            reason: format!("tree deeper than {MAX_DEPTH} levels"),
        });
    }
    let block = store.get(cid)?;
    match cid.codec() {
        RAW => {
            out.write_all(block.data()).map_err(ExportError::Write)?;
            return Ok(block.len() as u64);
        }
        DAG_PB => {}
        codec => {
            return Err(ExportError::NotAFile {
                cid: *cid,
                reason: format!("codec {codec:#x} is neither raw nor dag-pb"),
            });
        }
    }
    let malformed = |reason: String| ExportError::Malformed { cid: *cid, reason };
    let node = PbNode::from_bytes(block.data().clone())
        .map_err(|e| malformed(format!("bad dag-pb: {e}")))?;
    let data = node
        .data
        .as_ref()
        .ok_or_else(|| malformed("dag-pb node without UnixFS data".into()))?;
    let unixfs =
        Data::decode(data.as_ref()).map_err(|e| malformed(format!("bad UnixFS data: {e}")))?;
    match DataType::try_from(unixfs.r#type) {
        Ok(DataType::File | DataType::Raw) => {}
        Ok(other) => {
            return Err(ExportError::NotAFile {
                cid: *cid,
                reason: format!("it is a UnixFS {other:?}"),
            });
        }
        Err(_) => return Err(malformed(format!("unknown UnixFS type {}", unixfs.r#type))),
    }
    if unixfs.blocksizes.len() != node.links.len() {
        return Err(malformed(format!(
            "{} links but {} block sizes",
            node.links.len(),
            unixfs.blocksizes.len()
        )));
    }
    let mut written = 0u64;
    if let Some(bytes) = &unixfs.data {
        out.write_all(bytes).map_err(ExportError::Write)?;
        written += bytes.len() as u64;
    }
    for (link, expected) in node.links.iter().zip(&unixfs.blocksizes) {
        let got = write_node(store, &link.cid, out, depth + 1)?;
        if got != *expected {
            return Err(malformed(format!(
                "child {} holds {got} bytes, the node says {expected}",
                link.cid
            )));
        }
        written += got;
    }
    if let Some(filesize) = unixfs.filesize
        && filesize != written
    {
        return Err(malformed(format!(
            "file size {filesize} but its blocks hold {written} bytes"
        )));
    }
    Ok(written)
}

/// A file DAG that names far more bytes than it holds: `depth` levels of one dag-pb node
/// linking the level below `fanout` times, over one raw leaf of `leaf` bytes: what a
/// dishonest peer sends (`fl simulate --attack dag-bomb`) and the tests of the limits that
/// stop such a DAG from expanding.
pub fn bomb(
    store: &(impl Blockstore + ?Sized),
    leaf: usize,
    fanout: usize,
    depth: usize,
) -> Result<Cid, StoreError> {
    use ipld_dagpb::PbLink;

    let block = crate::content::Block::hashed(RAW, vec![7u8; leaf]);
    let mut cid = *block.cid();
    store.put(block)?;
    let mut size = leaf as u64;
    for _ in 0..depth {
        let data = Data {
            r#type: DataType::File as i32,
            filesize: Some(size.saturating_mul(fanout as u64)),
            blocksizes: vec![size; fanout],
            ..Data::default()
        };
        let links = (0..fanout)
            .map(|_| PbLink {
                cid,
                name: Some(String::new()),
                size: Some(size),
            })
            .collect();
        let node = PbNode {
            links,
            data: Some(data.encode_to_vec().into()),
        };
        let block = crate::content::Block::hashed(DAG_PB, node.into_bytes());
        cid = *block.cid();
        store.put(block)?;
        size = size.saturating_mul(fanout as u64);
    }
    Ok(cid)
}
