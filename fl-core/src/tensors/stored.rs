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
    /// The file is larger than [`MAX_BUNDLE_BYTES`].
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
        let mut out = Limited {
            bytes: Vec::new(),
            limit: MAX_BUNDLE_BYTES,
            exceeded: false,
        };
        if let Err(source) = repo.cat(cid, &mut out) {
            if out.exceeded {
                return Err(StoredError::TooLarge {
                    cid: *cid,
                    limit: MAX_BUNDLE_BYTES,
                });
            }
            return Err(StoredError::Repo {
                cid: cid.to_string(),
                source,
            });
        }
        Bundle::from_safetensors(&out.bytes)
            .map_err(|source| StoredError::Format { cid: *cid, source })
    }
}

/// A byte buffer that refuses to grow past `limit`.
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
}
