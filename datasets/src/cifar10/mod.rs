//! CIFAR-10 images and labels, and readers for the official formats.
//!
//! Images are kept as the official bytes: per image 1,024 R, 1,024 G and 1,024 B values
//! (32x32, row-major), so a shard written back out is a valid `data_batch` file.

mod binary;
mod python;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use binary::parse_binary;
pub use python::parse_python;

/// Bytes of one image (3 x 32 x 32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes of one record of the binary format: the label, then the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Number of classes.
pub const NUM_CLASSES: usize = 10;
/// The class names, in label order (as in `batches.meta.txt`).
pub const CLASSES: [&str; NUM_CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// The training batches of the binary format, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch of the binary format.
pub const TEST_FILE: &str = "test_batch.bin";
/// Sub-directory the official binary archive unpacks to.
pub const BINARY_DIR: &str = "cifar-10-batches-bin";
/// Sub-directory the official python archive unpacks to.
pub const PYTHON_DIR: &str = "cifar-10-batches-py";

/// Why CIFAR-10 data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The data directory does not exist.
    #[error("data directory {} does not exist; run `fl data fetch cifar10 --dir DIR` or point --data / FL_DATA at a copy", .path.display())]
    MissingDir {
        /// The directory.
        path: PathBuf,
    },
    /// The directory holds neither format.
    #[error("{} holds no CIFAR-10 batches (expected {} or the python batches)", .path.display(), TRAIN_FILES[0])]
    NoBatches {
        /// The directory.
        path: PathBuf,
    },
    /// A batch file is missing.
    #[error("CIFAR-10 file {} is missing", .path.display())]
    MissingFile {
        /// The file.
        path: PathBuf,
    },
    /// A binary file ends in the middle of a record.
    #[error("{} is truncated: the record at byte {offset} has {have} of {RECORD_BYTES} bytes", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the incomplete record starts.
        offset: u64,
        /// Bytes present.
        have: usize,
    },
    /// A record's label is not a class.
    #[error("{}: label {label} at byte {offset} is not a class (0-9)", .path.display())]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// The label found.
        label: u64,
    },
    /// A python batch is not what the official pickles hold.
    #[error("{}: not a CIFAR-10 python batch: {reason}", .path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file does not match its entry in SHA256SUMS.
    #[error("{} does not match its SHA256SUMS entry: expected {expected}, got {actual}", .path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The listed digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The file system failed.
    #[error("reading {}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A set of labelled images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Images {
    labels: Vec<u8>,
    pixels: Vec<u8>,
}

impl Images {
    /// Images from labels and their pixels (`labels.len() * IMAGE_BYTES` bytes, labels < 10).
    pub fn new(labels: Vec<u8>, pixels: Vec<u8>) -> Option<Self> {
        (pixels.len() == labels.len() * IMAGE_BYTES
            && labels.iter().all(|&l| (l as usize) < NUM_CLASSES))
        .then_some(Self { labels, pixels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All labels, in order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// All pixels, image after image.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Image `i`'s 3,072 bytes (R plane, G plane, B plane).
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// Images per class.
    pub fn label_counts(&self) -> [u64; NUM_CLASSES] {
        let mut counts = [0u64; NUM_CLASSES];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Images {
        let mut out = Images {
            labels: Vec::with_capacity(indices.len()),
            pixels: Vec::with_capacity(indices.len() * IMAGE_BYTES),
        };
        for &i in indices {
            out.labels.push(self.labels[i]);
            out.pixels.extend_from_slice(self.image(i));
        }
        out
    }

    /// Appends `other`'s images.
    pub fn extend(&mut self, other: Images) {
        self.labels.extend(other.labels);
        self.pixels.extend(other.pixels);
    }

    /// The images as a file in the official binary format.
    pub fn to_binary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * RECORD_BYTES);
        for i in 0..self.len() {
            out.push(self.labels[i]);
            out.extend_from_slice(self.image(i));
        }
        out
    }
}

/// The training and test sets, with the SHA-256 of every source file read.
#[derive(Debug, Clone)]
pub struct Cifar10 {
    /// The training images, batches 1 to 5 in order.
    pub train: Images,
    /// The test images.
    pub test: Images,
    /// Source file name to its SHA-256 (hex), the provenance a dataset manifest records.
    pub checksums: Vec<(String, String)>,
}

/// Loads CIFAR-10 from `dir` (or its `cifar-10-batches-bin` / `cifar-10-batches-py`
/// sub-directory), in whichever official format is there. Files listed in a
/// `SHA256SUMS` beside them are checked.
pub fn load(dir: &Path) -> Result<Cifar10, ReadError> {
    if !dir.is_dir() {
        return Err(ReadError::MissingDir {
            path: dir.to_owned(),
        });
    }
    for candidate in [dir.to_owned(), dir.join(BINARY_DIR)] {
        if candidate.join(TRAIN_FILES[0]).exists() {
            return load_with(&candidate, &TRAIN_FILES, TEST_FILE, parse_binary);
        }
    }
    for candidate in [dir.to_owned(), dir.join(PYTHON_DIR)] {
        if candidate.join("data_batch_1").exists() {
            let train = [
                "data_batch_1",
                "data_batch_2",
                "data_batch_3",
                "data_batch_4",
                "data_batch_5",
            ];
            return load_with(&candidate, &train, "test_batch", parse_python);
        }
    }
    Err(ReadError::NoBatches {
        path: dir.to_owned(),
    })
}

fn load_with(
    dir: &Path,
    train_files: &[&str],
    test_file: &str,
    parse: fn(&Path, &[u8]) -> Result<Images, ReadError>,
) -> Result<Cifar10, ReadError> {
    let sums = read_sha256sums(dir)?;
    let mut checksums = Vec::new();
    let mut read = |name: &str| -> Result<Images, ReadError> {
        let path = dir.join(name);
        let bytes = read_file(&path)?;
        let digest = hex(&Sha256::digest(&bytes));
        if let Some((_, expected)) = sums.iter().find(|(n, _)| n == name)
            && *expected != digest
        {
            return Err(ReadError::Checksum {
                path,
                expected: expected.clone(),
                actual: digest,
            });
        }
        checksums.push((name.to_owned(), digest));
        parse(&path, &bytes)
    };
    let mut train = Images::default();
    for name in train_files {
        train.extend(read(name)?);
    }
    let test = read(test_file)?;
    Ok(Cifar10 {
        train,
        test,
        checksums,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, ReadError> {
    let mut file = fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ReadError::MissingFile {
            path: path.to_owned(),
        },
        _ => ReadError::Io {
            path: path.to_owned(),
            source,
        },
    })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes)
}

/// `SHA256SUMS` entries (`<hex>  <name>`), if the file exists.
fn read_sha256sums(dir: &Path) -> Result<Vec<(String, String)>, ReadError> {
    let path = dir.join("SHA256SUMS");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReadError::Io { path, source }),
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let (digest, name) = l.split_once(char::is_whitespace)?;
            Some((
                name.trim().trim_start_matches('*').to_owned(),
                digest.to_lowercase(),
            ))
        })
        .collect())
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
