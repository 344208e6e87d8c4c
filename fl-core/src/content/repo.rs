//! A node's store on disk: verified blocks, pins, garbage collection, and the file and
//! CAR operations of the `fl ipfs` and `fl car` commands.
//!
//! ```text
//! REPO/
//!   blocks/     Kubo-style flatfs: blocks/<shard>/<BASE32 MULTIHASH>.data
//!   pins.redb   pins (and the repo's lock: one process at a time)
//!   tmp/        staging for CAR imports and downloads, emptied on success and failure
//! ```

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cid::Cid;

use super::car::{self, CarError, CarReader};
use super::links::{WalkError, walk};
use super::pins::{PinError, PinMode, PinSet};
use super::unixfs::{self, Added, ExportError, ImportError, ImportOptions};
use super::{Blockstore, FsBlockstore, StoreError};

/// Why a repo operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The blockstore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pin database failed.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// Importing a file failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Reading a file back failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Reading or writing a CAR failed.
    #[error(transparent)]
    Car(#[from] CarError),
    /// Walking a DAG failed.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// A file or directory could not be used.
    #[error("{what} {}", .path.display())]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The CID is not pinned.
    #[error("{cid} is not pinned")]
    NotPinned {
        /// The CID asked for.
        cid: Cid,
    },
}

/// What garbage collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blocks removed.
    pub removed: u64,
    /// Blocks kept because a pin reaches them.
    pub kept: u64,
}

/// What a CAR import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CarImported {
    /// The archive's roots.
    pub roots: Vec<Cid>,
    /// Blocks read (and verified).
    pub blocks: u64,
    /// Roots pinned because their DAG is complete in the store.
    pub pinned: Vec<Cid>,
    /// Roots left unpinned because a block under them is missing, with the first missing one.
    pub incomplete: Vec<(Cid, Cid)>,
}

/// A node's store on disk.
#[derive(Debug)]
pub struct Repo {
    root: PathBuf,
    blocks: FsBlockstore,
    pins: PinSet,
}

impl Repo {
    /// Opens (creating if needed) the repo at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RepoError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| RepoError::Io {
            what: "creating repo",
            path: root.clone(),
            source,
        })?;
        let pins = PinSet::open(&root.join("pins.redb"))?;
        let blocks = FsBlockstore::open(root.join("blocks"))?;
        let tmp = root.join("tmp");
        // Leftovers of an interrupted import are unverified scratch: drop them.
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|source| RepoError::Io {
            what: "creating",
            path: tmp,
            source,
        })?;
        Ok(Self { root, blocks, pins })
    }

    /// Stops flushing each block to the disk before it counts: for scratch repos that a
    /// run makes and removes (`fl simulate`'s nodes), where a lost write can only follow a
    /// crash of the whole machine, which ends the run anyway. A flush per block was 4-8% of
    /// the main job's round time (docs/decisions.md, "No flush per block in a simulation's
    /// repos").
    pub fn without_sync(mut self) -> Self {
        self.blocks = self.blocks.with_sync(false);
        self
    }

    /// The repo's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The verified blockstore.
    pub fn blocks(&self) -> &FsBlockstore {
        &self.blocks
    }

    /// The pins.
    pub fn pins(&self) -> &PinSet {
        &self.pins
    }

    /// Adds a file as UnixFS and pins it recursively.
    pub fn add(&self, reader: impl Read, options: &ImportOptions) -> Result<Added, RepoError> {
        let added = unixfs::import(reader, options, |b| self.blocks.put(b))?;
        self.pins.add(&added.root, PinMode::Recursive)?;
        Ok(added)
    }

    /// Writes the file `cid` names to `out`, verifying every block first.
    pub fn cat(&self, cid: &Cid, out: &mut impl Write) -> Result<u64, RepoError> {
        Ok(unixfs::export(&self.blocks, cid, out)?)
    }

    /// Writes the file `cid` names to `path`, whole or not at all: it goes to a
    /// temporary file beside `path` that is renamed over it only once complete.
    pub fn get_to_file(&self, cid: &Cid, path: &Path) -> Result<u64, RepoError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| RepoError::Io { what, path, source }
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".fl-get-")
            .tempfile_in(dir)
            .map_err(io("creating a temporary file in", dir))?;
        let mut out = std::io::BufWriter::new(tmp.as_file_mut());
        let size = self.cat(cid, &mut out)?;
        out.flush().map_err(io("writing", path))?;
        drop(out);
        tmp.as_file().sync_all().map_err(io("syncing", path))?;
        tmp.persist(path).map_err(|e| RepoError::Io {
            what: "renaming the download to",
            path: path.to_owned(),
            source: e.error,
        })?;
        Ok(size)
    }

    /// Pins `cid`; a recursive pin first checks that the whole DAG is here.
    pub fn pin(&self, cid: &Cid, mode: PinMode) -> Result<(), RepoError> {
        match mode {
            PinMode::Recursive => walk(&self.blocks, &[*cid], |_| Ok(()))?,
            PinMode::Direct => {
                self.blocks.get(cid)?;
            }
        }
        self.pins.add(cid, mode)?;
        Ok(())
    }

    /// Removes the pin on `cid`.
    pub fn unpin(&self, cid: &Cid) -> Result<(), RepoError> {
        if self.pins.remove(cid)? {
            Ok(())
        } else {
            Err(RepoError::NotPinned { cid: *cid })
        }
    }

    /// Removes every block that no pin reaches. Blocks under a recursive pin that are
    /// missing or corrupt are skipped while marking, so collection still completes.
    pub fn gc(&self) -> Result<GcStats, RepoError> {
        let mut live = HashSet::new();
        for (cid, mode) in self.pins.list()? {
            live.insert(*cid.hash());
            if mode == PinMode::Direct {
                continue;
            }
            let mut stack = vec![cid];
            let mut seen = HashSet::new();
            while let Some(cid) = stack.pop() {
                if !seen.insert(cid) {
                    continue;
                }
                live.insert(*cid.hash());
                let Ok(block) = self.blocks.get(&cid) else {
                    tracing::warn!(%cid, "pinned block missing or corrupt; cannot follow its links");
                    continue;
                };
                match super::links::links(&block) {
                    Ok(links) => stack.extend(links),
                    Err(e) => {
                        tracing::warn!(%cid, error = %e, "cannot read links of a pinned block")
                    }
                }
            }
        }
        let mut stats = GcStats::default();
        for hash in self.blocks.hashes()? {
            if live.contains(&hash) {
                stats.kept += 1;
            } else {
                self.blocks.delete(&hash)?;
                stats.removed += 1;
            }
        }
        Ok(stats)
    }

    /// Writes the DAGs under `roots` as a CAR v1.
    pub fn export_car(&self, roots: &[Cid], out: impl Write) -> Result<car::Exported, RepoError> {
        Ok(car::export(&self.blocks, roots, out)?)
    }

    /// Imports a CAR v1: every block is verified into a staging area first, and only a
    /// complete, valid archive is moved into the store, so a truncated or corrupt file
    /// leaves the store as it was. Roots whose DAG is then complete are pinned, as
    /// `ipfs dag import` does.
    pub fn import_car(&self, reader: impl Read) -> Result<CarImported, RepoError> {
        let tmp = self.root.join("tmp");
        let staging_dir = tempfile::Builder::new()
            .prefix("car-import-")
            .tempdir_in(&tmp)
            .map_err(|source| RepoError::Io {
                what: "creating a staging directory in",
                path: tmp.clone(),
                source,
            })?;
        let staging = FsBlockstore::open(staging_dir.path())?.with_sync(self.blocks.syncs());
        let mut car = CarReader::new(reader)?;
        let mut imported = CarImported {
            roots: car.header().roots.clone(),
            ..CarImported::default()
        };
        while let Some(block) = car.next_block()? {
            staging.put(block)?;
            imported.blocks += 1;
        }
        self.blocks.absorb(&staging)?;
        for root in &imported.roots {
            let mut missing = None;
            let result = walk(&self.blocks, &[*root], |_| Ok(()));
            if let Err(WalkError::Store(StoreError::NotFound { cid })) = &result {
                missing = Some(*cid);
            } else {
                result?;
            }
            match missing {
                None => {
                    self.pins.add(root, PinMode::Recursive)?;
                    imported.pinned.push(*root);
                }
                Some(cid) => imported.incomplete.push((*root, cid)),
            }
        }
        Ok(imported)
    }
}
