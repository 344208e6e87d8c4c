//! Shards as CIDs: each node's shard is a file in the official binary format, stored as
//! UnixFS; a DAG-CBOR dataset manifest lists the shards (CID, size, label counts), the
//! scheme and seed, and the source files' checksums. A node given only the manifest CID
//! fetches its shard and can train on it.

use std::collections::BTreeMap;

use cid::Cid;
use fl_core::content::dagcbor::{self, DagCborError};
use fl_core::content::pins::PinMode;
use fl_core::content::unixfs::{self, ImportOptions};
use fl_core::content::{Blockstore, Repo, RepoError, StoreError};
use serde::{Deserialize, Serialize};

use crate::cifar10::{CLASSES, Cifar10, Images, NUM_CLASSES, ReadError, parse_binary};
use crate::partition::Partition;

/// Version of the manifest's layout.
pub const MANIFEST_VERSION: u32 = 1;
/// The shard file format the manifest promises.
pub const SHARD_FORMAT: &str = "cifar10-binary";

/// One stored file of images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The UnixFS file.
    pub cid: Cid,
    /// Images in it.
    pub samples: u64,
    /// Images per class, in label order.
    pub label_counts: Vec<u64>,
}

/// The dataset manifest (DAG-CBOR): what a task points nodes at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetManifest {
    /// Layout version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// "cifar10".
    pub dataset: String,
    /// How shard files are encoded ([`SHARD_FORMAT`]).
    pub format: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The partition scheme ("dirichlet:0.5").
    pub scheme: String,
    /// The partition seed.
    pub seed: u64,
    /// Source file name to SHA-256 (hex) of the data the shards were cut from.
    pub source: BTreeMap<String, String>,
    /// Node i's shard.
    pub shards: Vec<ShardEntry>,
    /// The test set, for evaluation.
    pub test: ShardEntry,
}

/// Why publishing or fetching a dataset failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The store failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A block is missing or corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest cannot be encoded or decoded.
    #[error(transparent)]
    Manifest(#[from] DagCborError),
    /// A shard file is not what the manifest says.
    #[error("shard {cid} does not match the manifest: {reason}")]
    Mismatch {
        /// The shard.
        cid: Cid,
        /// What differs.
        reason: String,
    },
    /// The node index is out of range.
    #[error("the dataset has {shards} shards; node {node} has none")]
    NoShard {
        /// The index asked for.
        node: usize,
        /// Shards in the manifest.
        shards: usize,
    },
    /// A shard file does not parse.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The manifest is not a CIFAR-10 manifest this version reads.
    #[error("manifest {cid} is not a CIFAR-10 dataset manifest: {reason}")]
    NotAManifest {
        /// The manifest.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
}

/// Stores every node's shard and the test set in `repo`, then the manifest, and pins the
/// manifest (which keeps its shards). Nothing is pinned until everything is stored, so a
/// failure leaves only unpinned blocks that `gc` removes.
pub fn publish(
    repo: &Repo,
    data: &Cifar10,
    split: &Partition,
    scheme: &str,
    seed: u64,
) -> Result<Cid, ShardError> {
    let store = |images: &Images| -> Result<ShardEntry, ShardError> {
        let bytes = images.to_binary();
        let added = unixfs::import(&bytes[..], &ImportOptions::default(), |b| {
            repo.blocks().put(b)
        })
        .map_err(RepoError::from)?;
        Ok(ShardEntry {
            cid: added.root,
            samples: images.len() as u64,
            label_counts: images.label_counts().to_vec(),
        })
    };
    let shards = split
        .clients
        .iter()
        .map(|idx| store(&data.train.subset(idx)))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = DatasetManifest {
        version: MANIFEST_VERSION,
        dataset: "cifar10".into(),
        format: SHARD_FORMAT.into(),
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        scheme: scheme.into(),
        seed,
        source: data.checksums.iter().cloned().collect(),
        shards,
        test: store(&data.test)?,
    };
    let block = dagcbor::encode(&manifest)?;
    let cid = *block.cid();
    repo.blocks().put(block)?;
    repo.pin(&cid, PinMode::Recursive)?;
    Ok(cid)
}

/// Reads and checks a dataset manifest.
pub fn manifest<S: Blockstore>(store: &S, cid: &Cid) -> Result<DatasetManifest, ShardError> {
    let block = store.get(cid)?;
    let m: DatasetManifest = dagcbor::decode(&block)?;
    let bad = |reason: String| ShardError::NotAManifest { cid: *cid, reason };
    if m.version != MANIFEST_VERSION {
        return Err(bad(format!(
            "version {} (this build reads {MANIFEST_VERSION})",
            m.version
        )));
    }
    if m.format != SHARD_FORMAT {
        return Err(bad(format!("shard format {:?}", m.format)));
    }
    if m.classes.len() != NUM_CLASSES {
        return Err(bad(format!("{} classes", m.classes.len())));
    }
    Ok(m)
}

/// Fetches node `node`'s shard through the content layer and checks it against the
/// manifest (sample and label counts).
pub fn fetch_shard<S: Blockstore>(
    store: &S,
    manifest: &DatasetManifest,
    node: usize,
) -> Result<Images, ShardError> {
    let entry = manifest.shards.get(node).ok_or(ShardError::NoShard {
        node,
        shards: manifest.shards.len(),
    })?;
    fetch_entry(store, entry)
}

/// Fetches every shard, in order, as one training set: the pool a population's clients are
/// dealt from.
pub fn fetch_pool<S: Blockstore>(
    store: &S,
    manifest: &DatasetManifest,
) -> Result<Images, ShardError> {
    let mut pool = Images::default();
    for entry in &manifest.shards {
        pool.extend(fetch_entry(store, entry)?);
    }
    Ok(pool)
}

/// Fetches the test set named by the manifest.
pub fn fetch_test<S: Blockstore>(
    store: &S,
    manifest: &DatasetManifest,
) -> Result<Images, ShardError> {
    fetch_entry(store, &manifest.test)
}

fn fetch_entry<S: Blockstore>(store: &S, entry: &ShardEntry) -> Result<Images, ShardError> {
    let mut bytes = Vec::new();
    unixfs::export(store, &entry.cid, &mut bytes).map_err(RepoError::from)?;
    let images = parse_binary(std::path::Path::new(&entry.cid.to_string()), &bytes)?;
    let mismatch = |reason: String| ShardError::Mismatch {
        cid: entry.cid,
        reason,
    };
    if images.len() as u64 != entry.samples {
        return Err(mismatch(format!(
            "{} images, the manifest says {}",
            images.len(),
            entry.samples
        )));
    }
    if images.label_counts()[..] != entry.label_counts[..] {
        return Err(mismatch("label counts differ".into()));
    }
    Ok(images)
}
