//! The official CIFAR-10 archive: downloaded from its canonical address, resumable
//! (HTTP range requests on a `.part` file), checked against its published MD5 (the only
//! checksum its authors publish), and unpacked into the data directory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use crate::cifar10::{BINARY_DIR, TEST_FILE, TRAIN_FILES, hex};

/// Where an archive comes from and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its canonical address.
    pub url: String,
    /// Its published MD5 (hex).
    pub md5: String,
    /// File name to save it as.
    pub file_name: String,
}

impl Source {
    /// The official binary version, from the CIFAR page of the University of Toronto.
    pub fn cifar10_binary() -> Self {
        Self {
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz".into(),
            md5: "c32a1d4ab5d03f1284b67883e8d87530".into(),
            file_name: "cifar-10-binary.tar.gz".into(),
        }
    }
}

/// Why the archive could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The address cannot be reached (offline, DNS, refused).
    #[error(
        "cannot reach {url} ({reason}); download it on a connected machine, unpack it, and point --data DIR or FL_DATA at the directory holding {}",
        TRAIN_FILES[0]
    )]
    Unreachable {
        /// The address.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The address.
        url: String,
        /// The status.
        status: u16,
    },
    /// The download does not match the published checksum; it was deleted.
    #[error("{} has MD5 {actual}, the published one is {expected}; the file was deleted, run the command again", .path.display())]
    Checksum {
        /// The archive.
        path: PathBuf,
        /// The published MD5.
        expected: String,
        /// The downloaded file's MD5.
        actual: String,
    },
    /// The archive does not hold the expected files.
    #[error("{} is not the CIFAR-10 binary archive: {reason}", .path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file system failed.
    #[error("{what} {}", .path.display())]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// How far a download has got, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes on disk so far.
    pub done: u64,
    /// Total size, when the server says.
    pub total: Option<u64>,
}

/// Downloads (or resumes) `source` into `dir`, checks it, unpacks it, and returns the
/// directory holding the batch files. An archive already complete is not downloaded again.
pub fn fetch(
    source: &Source,
    dir: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<PathBuf, DownloadError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| DownloadError::Io { what, path, source }
    };
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let unpacked = dir.join(BINARY_DIR);
    if TRAIN_FILES
        .iter()
        .chain([&TEST_FILE])
        .all(|f| unpacked.join(f).exists())
    {
        return Ok(unpacked);
    }
    let archive = dir.join(&source.file_name);
    if !archive.exists() {
        let part = dir.join(format!("{}.part", source.file_name));
        download(source, &part, &mut progress)?;
        fs::rename(&part, &archive).map_err(io("renaming to", &archive))?;
    }
    let actual = md5_file(&archive)?;
    if actual != source.md5 {
        let _ = fs::remove_file(&archive);
        return Err(DownloadError::Checksum {
            path: archive,
            expected: source.md5.clone(),
            actual,
        });
    }
    unpack(&archive, dir)?;
    Ok(unpacked)
}

fn download(
    source: &Source,
    part: &Path,
    progress: &mut impl FnMut(Progress),
) -> Result<(), DownloadError> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut request = agent.get(&source.url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let mut response = request.call().map_err(|e| DownloadError::Unreachable {
        url: source.url.clone(),
        reason: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let resumed = match status {
        206 => true,
        200 => false,
        416 => return Ok(()), // the part file is already whole
        _ => {
            return Err(DownloadError::Status {
                url: source.url.clone(),
                status,
            });
        }
    };
    let length: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let start = if resumed { have } else { 0 };
    let total = length.map(|l| l + start);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(|source| DownloadError::Io {
            what: "opening",
            path: part.to_owned(),
            source,
        })?;
    let mut reader = response.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = start;
    progress(Progress { done, total });
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| DownloadError::Unreachable {
                url: source.url.clone(),
                reason: format!(
                    "connection lost after {done} bytes ({e}); run the command again to resume"
                ),
            })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(|source| DownloadError::Io {
                what: "writing",
                path: part.to_owned(),
                source,
            })?;
        done += n as u64;
        progress(Progress { done, total });
    }
    file.sync_all().map_err(|source| DownloadError::Io {
        what: "syncing",
        path: part.to_owned(),
        source,
    })
}

fn md5_file(path: &Path) -> Result<String, DownloadError> {
    let mut file = File::open(path).map_err(|source| DownloadError::Io {
        what: "opening",
        path: path.to_owned(),
        source,
    })?;
    let mut hasher = Md5::new();
    std::io::copy(&mut file, &mut hasher).map_err(|source| DownloadError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })?;
    Ok(hex(&hasher.finalize()))
}

/// Unpacks into a temporary directory beside the target, then renames it into place, so
/// a half-unpacked archive is never mistaken for data.
fn unpack(archive: &Path, dir: &Path) -> Result<(), DownloadError> {
    let bad = |reason: String| DownloadError::Archive {
        path: archive.to_owned(),
        reason,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(dir)
        .map_err(|source| DownloadError::Io {
            what: "creating a temporary directory in",
            path: dir.to_owned(),
            source,
        })?;
    let file = File::open(archive).map_err(|source| DownloadError::Io {
        what: "opening",
        path: archive.to_owned(),
        source,
    })?;
    // tar's unpack refuses entries that would escape the target directory.
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(tmp.path())
        .map_err(|e| bad(e.to_string()))?;
    let inner = tmp.path().join(BINARY_DIR);
    for f in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        if !inner.join(f).exists() {
            return Err(bad(format!("{BINARY_DIR}/{f} is missing")));
        }
    }
    let target = dir.join(BINARY_DIR);
    let _ = fs::remove_dir_all(&target);
    fs::rename(&inner, &target).map_err(|source| DownloadError::Io {
        what: "moving the unpacked files to",
        path: target,
        source,
    })
}
