//! Blocks on disk in a Kubo-style flat directory (`flatfs`, `next-to-last/2` sharding):
//! one file per block named by the base32 of its multihash, written by atomic rename.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use cid::Cid;
use data_encoding::BASE32_NOPAD;
use multihash::Multihash;

use super::{Block, Blockstore, StoreError, verified};

/// The sharding function, recorded as Kubo's flatfs records it.
const SHARDING: &str = "/repo/flatfs/shard/v1/next-to-last/2\n";
/// Extension of block files, as in Kubo.
const EXTENSION: &str = "data";

/// A [`Blockstore`] in a directory.
#[derive(Debug, Clone)]
pub struct FsBlockstore {
    root: PathBuf,
    sync: bool,
}

impl FsBlockstore {
    /// Opens (creating if needed) the block directory at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| StoreError::Io {
            what: "creating block directory",
            path: root.clone(),
            source,
        })?;
        let sharding = root.join("SHARDING");
        if !sharding.exists() {
            fs::write(&sharding, SHARDING).map_err(|source| StoreError::Io {
                what: "writing",
                path: sharding,
                source,
            })?;
        }
        Ok(Self { root, sync: true })
    }

    /// Whether each write is flushed to the disk before it counts (default: yes). Turn
    /// off only for scratch stores whose loss does not matter.
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// Whether each write is flushed to the disk before it counts.
    pub fn syncs(&self) -> bool {
        self.sync
    }

    /// The directory holding the blocks.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a block with this multihash lives in.
    pub fn path_of(&self, hash: &Multihash<64>) -> PathBuf {
        let key = BASE32_NOPAD.encode(&hash.to_bytes());
        let shard = &key[key.len() - 3..key.len() - 1];
        self.root.join(shard).join(format!("{key}.{EXTENSION}"))
    }

    /// Moves every block of `other` into this store (both on one file system), leaving
    /// `other` empty: how a verified staging area is committed.
    pub fn absorb(&self, other: &FsBlockstore) -> Result<usize, StoreError> {
        let mut moved = 0;
        for hash in other.hashes()? {
            let from = other.path_of(&hash);
            let to = self.path_of(&hash);
            if to.exists() {
                continue;
            }
            let dir = to.parent().unwrap_or(&self.root);
            fs::create_dir_all(dir).map_err(|source| io("creating", dir, source))?;
            fs::rename(&from, &to).map_err(|source| io("moving block into", &to, source))?;
            moved += 1;
        }
        if self.sync {
            sync_dir(&self.root)?;
        }
        Ok(moved)
    }
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io("syncing directory", dir, source))
}

impl Blockstore for FsBlockstore {
    fn get(&self, cid: &Cid) -> Result<Block, StoreError> {
        let path = self.path_of(cid.hash());
        match fs::read(&path) {
            Ok(data) => verified(cid, data),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound { cid: *cid }),
            Err(source) => Err(io("reading block file", &path, source)),
        }
    }

    fn put(&self, block: Block) -> Result<(), StoreError> {
        let path = self.path_of(block.cid().hash());
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|source| io("creating", dir, source))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".put-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|source| io("creating a temporary file in", dir, source))?;
        tmp.write_all(block.data())
            .map_err(|source| io("writing", tmp.path(), source))?;
        if self.sync {
            tmp.as_file()
                .sync_all()
                .map_err(|source| io("syncing", &path, source))?;
        }
        tmp.persist(&path)
            .map_err(|e| io("renaming a temporary file to", &path, e.error))?;
        if self.sync {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.path_of(cid.hash()).exists())
    }

    fn delete(&self, hash: &Multihash<64>) -> Result<(), StoreError> {
        let path = self.path_of(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io("removing", &path, source)),
        }
    }

    fn hashes(&self) -> Result<Vec<Multihash<64>>, StoreError> {
        let mut out = Vec::new();
        let shards =
            fs::read_dir(&self.root).map_err(|source| io("listing", &self.root, source))?;
        for shard in shards {
            let shard = shard.map_err(|source| io("listing", &self.root, source))?;
            if !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = shard.path();
            for entry in fs::read_dir(&dir).map_err(|source| io("listing", &dir, source))? {
                let entry = entry.map_err(|source| io("listing", &dir, source))?;
                let name = entry.file_name();
                let Some(key) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(&format!(".{EXTENSION}")))
                else {
                    continue; // temporary files and strangers are not blocks
                };
                let Ok(bytes) = BASE32_NOPAD.decode(key.as_bytes()) else {
                    continue;
                };
                if let Ok(hash) = Multihash::from_bytes(&bytes) {
                    out.push(hash);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::RAW;

    #[test]
    fn block_paths_follow_kubo_flatfs() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlockstore::open(dir.path()).unwrap();
        // "hello world\n" as a raw block; Kubo stores it as CIQKKSBKHCPLGYQDNI...
        let block = Block::hashed(RAW, &b"hello world\n"[..]);
        let path = store.path_of(block.cid().hash());
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with("CIQ") && name.ends_with(".data"), "{name}");
        let shard = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(shard, &name[name.len() - 8..name.len() - 6]);
    }

    #[test]
    fn corrupt_file_on_disk_is_an_error_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlockstore::open(dir.path()).unwrap();
        let block = Block::hashed(RAW, vec![7u8; 1000]);
        let cid = *block.cid();
        store.put(block).unwrap();
        let path = store.path_of(cid.hash());
        let mut bytes = fs::read(&path).unwrap();
        bytes[500] ^= 1;
        fs::write(&path, bytes).unwrap();
        let err = store.get(&cid).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        assert!(err.to_string().contains(&cid.to_string()));
    }

    #[test]
    fn put_get_delete_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlockstore::open(dir.path()).unwrap();
        let block = Block::hashed(RAW, &b"abc"[..]);
        let cid = *block.cid();
        store.put(block.clone()).unwrap();
        store.put(block.clone()).unwrap();
        assert_eq!(store.get(&cid).unwrap(), block);
        assert_eq!(store.hashes().unwrap(), vec![*cid.hash()]);
        store.delete(cid.hash()).unwrap();
        assert!(matches!(store.get(&cid), Err(StoreError::NotFound { .. })));
    }
}
