//! The CIDs a block links to, by codec: what garbage collection, pinning and CAR export
//! walk.

use cid::Cid;
use ipld_core::ipld::Ipld;

use super::{Block, DAG_CBOR, DAG_PB, RAW};

/// A block whose links cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the links of block {cid}: {reason}")]
pub struct LinksError {
    /// The block in question.
    pub cid: Cid,
    /// What is wrong.
    pub reason: String,
}

/// The CIDs `block` links to, in order; raw and unknown codecs link to nothing.
pub fn links(block: &Block) -> Result<Vec<Cid>, LinksError> {
    let err = |reason: String| LinksError {
        cid: *block.cid(),
        reason,
    };
    match block.cid().codec() {
        DAG_PB => {
            let mut out = Vec::new();
            ipld_dagpb::links(block.data(), &mut out).map_err(|e| err(e.to_string()))?;
            Ok(out)
        }
        DAG_CBOR => {
            let ipld: Ipld =
                serde_ipld_dagcbor::from_slice(block.data()).map_err(|e| err(e.to_string()))?;
            let mut out = Vec::new();
            collect(&ipld, &mut out);
            Ok(out)
        }
        RAW => Ok(Vec::new()),
        _ => Ok(Vec::new()),
    }
}

fn collect(ipld: &Ipld, out: &mut Vec<Cid>) {
    // serde_ipld_dagcbor bounds nesting depth while decoding, so this recursion is bounded too.
    match ipld {
        Ipld::Link(cid) => out.push(*cid),
        Ipld::List(items) => items.iter().for_each(|i| collect(i, out)),
        Ipld::Map(map) => map.values().for_each(|v| collect(v, out)),
        _ => {}
    }
}

/// Why a walk over a DAG stopped.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A block is missing or corrupt.
    #[error(transparent)]
    Store(#[from] super::StoreError),
    /// A block's links cannot be read.
    #[error(transparent)]
    Links(#[from] LinksError),
}

/// Visits every block reachable from `roots` once, depth-first, parents before children
/// (the order `ipfs dag export` writes). Stops at the first missing or corrupt block.
pub fn walk<S, F>(store: &S, roots: &[Cid], mut visit: F) -> Result<(), WalkError>
where
    S: super::Blockstore,
    F: FnMut(&Block) -> Result<(), WalkError>,
{
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<Cid> = roots.iter().rev().copied().collect();
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let block = store.get(&cid)?;
        visit(&block)?;
        stack.extend(links(&block)?.into_iter().rev());
    }
    Ok(())
}
