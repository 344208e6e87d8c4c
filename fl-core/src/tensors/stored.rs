//! Bundles in a repo: a model or update is stored as one UnixFS file (its safetensors bytes),
//! pinned, and named by that file's CID, so `ipfs cat CID > model.safetensors` gives a file
//! PyTorch loads.

use std::io::Write;

use cid::Cid;

use super::{Bundle, Encoding, TensorError};
use crate::content::pins::PinMode;
use crate::content::unixfs::ImportOptions;
use crate::content::{Repo, RepoError};

/// Largest bundle file read back (4 GiB): a DAG claiming more is refused before it fills memory.
pub const MAX_BUNDLE_BYTES: u64 = 4 << 30;
/// Room for a bundle file's header (tensor names, shapes, offsets, metadata) beside its
/// values, in [`Bundle::file_limit`]: the reference CNN's header takes under 1 KiB.
pub const HEADER_ROOM: u64 = 1 << 20;

/// Why a bundle could not be stored or read back.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    /// The repo failed (missing or corrupt block, disk error).
    #[error("model file {cid}")]
    Repo {
        /// The file asked for, when known.
        cid: String,
        /// What failed.
        #[source]
        source: RepoError,
    },
    /// The file is larger than the limit it was read with ([`MAX_BUNDLE_BYTES`] at most).
    #[error("model file {cid} is larger than {limit} bytes")]
    TooLarge {
        /// The file.
        cid: Cid,
        /// The limit.
        limit: u64,
    },
    /// The file is not a valid bundle.
    #[error("model file {cid} is not a valid safetensors bundle")]
    Format {
        /// The file.
        cid: Cid,
        /// What is wrong.
        #[source]
        source: TensorError,
    },
    /// The bundle could not be serialised.
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl Bundle {
    /// Stores the bundle in `repo` as a pinned UnixFS file and returns its CID (CIDv1, raw
    /// leaves, as `ipfs add --cid-version 1`).
    pub fn store(&self, repo: &Repo) -> Result<Cid, StoredError> {
        self.store_encoded(repo, Encoding::F32)
    }

    /// Stores the bundle as [`Bundle::store`] does, its values written as `encoding` says.
    pub fn store_encoded(&self, repo: &Repo, encoding: Encoding) -> Result<Cid, StoredError> {
        let bytes = self.encode(encoding)?;
        let fail = |source| StoredError::Repo {
            cid: "(new)".into(),
            source,
        };
        let added = repo
            .add(&bytes[..], &ImportOptions::default())
            .map_err(fail)?;
        repo.pin(&added.root, PinMode::Recursive).map_err(fail)?;
        Ok(added.root)
    }

    /// Reads the bundle stored as `cid` in `repo`, every block verified.
    pub fn load(repo: &Repo, cid: &Cid) -> Result<Bundle, StoredError> {
        Self::load_at_most(repo, cid, MAX_BUNDLE_BYTES)
    }

    /// Reads the bundle stored as `cid` as [`Bundle::load`] does, refusing a file of more
    /// than `limit` bytes as soon as its output passes that size: a DAG that links a few
    /// blocks many times expands to any size, and a peer's update is not trusted to be
    /// what it says.
    pub fn load_at_most(repo: &Repo, cid: &Cid, limit: u64) -> Result<Bundle, StoredError> {
        let bytes = read_at_most(repo, cid, limit.min(MAX_BUNDLE_BYTES))?;
        Bundle::from_safetensors(&bytes).map_err(|source| StoredError::Format { cid: *cid, source })
    }

    /// The largest file a bundle with this one's tensors may take: their values as float32
    /// plus [`HEADER_ROOM`]. An update or model for this layout that is larger is not one.
    pub fn file_limit(&self) -> u64 {
        let values: u64 = self.iter().map(|(_, t)| t.data.len() as u64).sum();
        values.saturating_mul(4).saturating_add(HEADER_ROOM)
    }
}

/// A byte buffer that refuses to grow past `limit`.
/// Reads the file `cid` names from `repo`, every block verified, refusing a file of more
/// than `limit` bytes as soon as its output passes that size (a DAG that links a few blocks
/// many times expands to any size).
pub fn read_at_most(repo: &Repo, cid: &Cid, limit: u64) -> Result<Vec<u8>, StoredError> {
    let mut out = Limited {
        bytes: Vec::new(),
        limit,
        exceeded: false,
    };
    if let Err(source) = repo.cat(cid, &mut out) {
        if out.exceeded {
            return Err(StoredError::TooLarge { cid: *cid, limit });
        }
        return Err(StoredError::Repo {
            cid: cid.to_string(),
            source,
        });
    }
    Ok(out.bytes)
}

struct Limited {
    bytes: Vec<u8>,
    limit: u64,
    exceeded: bool,
}

impl Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() as u64 + buf.len() as u64 > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("file exceeds the size limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_comes_back_from_its_cid_and_survives_gc() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).unwrap();
        let mut bundle = Bundle::new();
        bundle.insert("w", vec![2, 3], vec![1.5; 6]).unwrap();
        bundle.set_metadata("architecture", "test");
        let cid = bundle.store(&repo).unwrap();
        repo.gc().unwrap();
        assert_eq!(Bundle::load(&repo, &cid).unwrap(), bundle);
    }

    #[test]
    fn a_file_that_is_not_a_bundle_is_refused_with_its_cid() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).unwrap();
        let added = repo
            .add(&b"not safetensors"[..], &ImportOptions::default())
            .unwrap();
        let err = Bundle::load(&repo, &added.root).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "model file {} is not a valid safetensors bundle",
                added.root
            )
        );
    }

    #[test]
    fn a_dag_that_expands_past_the_limit_is_refused_before_it_fills_memory() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).unwrap();
        // Three blocks that name 256 GB: 256 KiB linked 1,000 times, that node 1,000 times.
        let root = crate::content::unixfs::bomb(repo.blocks(), 256 << 10, 1000, 2).unwrap();
        let mut model = Bundle::new();
        model.insert("w", vec![1000], vec![0.0; 1000]).unwrap();
        let limit = model.file_limit();
        assert_eq!(limit, 4000 + HEADER_ROOM);
        match Bundle::load_at_most(&repo, &root, limit) {
            Err(StoredError::TooLarge { cid, limit: l }) => assert_eq!((cid, l), (root, limit)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // A bundle within the limit still loads.
        let cid = model.store(&repo).unwrap();
        assert_eq!(Bundle::load_at_most(&repo, &cid, limit).unwrap(), model);
    }
}
