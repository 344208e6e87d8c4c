//! CIFAR-10 for federated experiments: readers for the official binary and python
//! formats, the download, partitions across nodes as the FL literature makes them, and
//! shards stored as CIDs under a DAG-CBOR dataset manifest.
//!
//! | module | what |
//! | --- | --- |
//! | [`cifar10`] | images and labels; readers for both official formats |
//! | [`download`] | the official archive, resumable, checked against its published MD5 |
//! | [`partition`] | IID, Dirichlet label skew, pathological shards, quantity skew |
//! | [`population`] | a population's clients as index lists into the pool, from the scheme and seed |
//! | `pipeline` | shuffled, augmented, normalised batches on worker threads (feature `train`) |
//! | [`shard`] | shards as UnixFS files and the dataset manifest |
//! | [`synthetic`] | CIFAR-shaped random images, for smoke tests only |
//!
//! ```
//! use datasets::partition::{partition, Scheme};
//! let labels: Vec<u8> = (0..1000).map(|i| (i % 10) as u8).collect();
//! let split = partition(&labels, 4, &"dirichlet:0.5".parse::<Scheme>()?, 7, 10)?;
//! assert_eq!(split.clients.iter().map(Vec::len).sum::<usize>(), 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cifar10;
pub mod download;
pub mod partition;
#[cfg(feature = "train")]
pub mod pipeline;
pub mod population;
pub mod shard;
pub mod synthetic;
