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

/// The blocks of the DAGs under `roots` that `store` holds, missing ones (and what lies
/// below them) skipped: what dropping a DAG may remove. Raw blocks are named by their
/// parents and never read, so a file's leaves cost nothing to list.
pub fn held<S: super::Blockstore>(
    store: &S,
    roots: &[Cid],
) -> Result<std::collections::HashSet<Cid>, WalkError> {
    let mut out = std::collections::HashSet::new();
    let mut stack: Vec<Cid> = roots.to_vec();
    while let Some(cid) = stack.pop() {
        if out.contains(&cid) {
            continue;
        }
        if cid.codec() == RAW {
            if store.has(&cid)? {
                out.insert(cid);
            }
            continue;
        }
        let block = match store.get(&cid) {
            Ok(block) => block,
            Err(super::StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        out.insert(cid);
        stack.extend(links(&block)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::unixfs::{self, ImportOptions};
    use crate::content::{Blockstore, MemBlockstore};

    #[test]
    fn held_lists_a_files_blocks_without_reading_its_leaves_and_skips_missing_ones() {
        let store = MemBlockstore::default();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let added = unixfs::import(&data[..], &ImportOptions::default(), |b| store.put(b)).unwrap();
        let mut all = std::collections::HashSet::new();
        walk(&store, &[added.root], |b| {
            all.insert(*b.cid());
            Ok(())
        })
        .unwrap();
        assert!(all.len() > 2, "a file of several chunks");
        assert_eq!(held(&store, &[added.root]).unwrap(), all);

        // A leaf gone: the rest is still listed.
        let leaf = *all.iter().find(|c| c.codec() == RAW).unwrap();
        store.delete(leaf.hash()).unwrap();
        let mut rest = all.clone();
        rest.remove(&leaf);
        assert_eq!(held(&store, &[added.root]).unwrap(), rest);

        // The root gone: nothing is reachable from here, and that is no error.
        store.delete(added.root.hash()).unwrap();
        assert!(held(&store, &[added.root]).unwrap().is_empty());
    }
}
