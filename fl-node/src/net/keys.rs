//! The node's identity: an ed25519 key kept in its repo, so its peer id survives restarts.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// File of the node's key inside the repo (libp2p's protobuf encoding, mode 0600).
pub const KEY_FILE: &str = "keys/node.key";

/// Why the node's key could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("node key {}", .path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not a libp2p key.
    #[error("node key {} is not a valid libp2p key", .path.display())]
    Decode {
        /// The key file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: libp2p::identity::DecodingError,
    },
}

/// The key in `repo_root`, created on first use.
pub fn load_or_create(repo_root: &Path) -> Result<Keypair, KeyError> {
    let path = repo_root.join(KEY_FILE);
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|source| KeyError::Decode {
            path: path.clone(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| io(std::io::Error::other(e)))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            // Written under a temporary name and renamed: a crash leaves no half key.
            let tmp = path.with_extension("tmp");
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            // The rename itself is durable only once the directory is: without this, a
            // power loss could drop it and the next start would make a new peer id.
            #[cfg(unix)]
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_survives_a_restart_and_a_corrupt_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
        std::fs::write(dir.path().join(KEY_FILE), b"garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("is not a valid libp2p key"),
            "{err}"
        );
    }
}
