//! The shared vocabulary of the federation.
//!
//! Everything a round produces (models, updates, data shards, round records) is named by
//! its CID and must be readable by any IPFS node, so this crate starts with the content
//! layer, byte-for-byte compatible with Kubo and Helia:
//!
//! | module | what |
//! | --- | --- |
//! | [`content::block`] | a block whose bytes were checked against its CID |
//! | [`content::blockstore`] | verified block storage: [`content::FsBlockstore`] (Kubo-style flat directory) and [`content::MemBlockstore`] |
//! | [`content::unixfs`] | UnixFS v1 files: balanced importer and verifying exporter |
//! | [`content::dagcbor`] | DAG-CBOR records with CID links |
//! | [`content::car`] | CAR v1 import and export, as `ipfs dag import/export` |
//! | [`content::pins`] | pins that protect DAGs from garbage collection |
//! | [`content::repo`] | a node's store on disk: blocks, pins, garbage collection |
//! | [`errors`] | an error and its causes on one line |
//! | [`privacy`] | the Rényi-DP accountant; clipping and noise (feature `dp`) |
//! | [`tensors`] | models and updates as named float32 tensors in safetensors files (updates optionally int8) |
//! | [`records`] | the task, signed update announcements and round manifests; aggregator ranking |
//! | [`secagg`] | secure aggregation: masked updates whose round reveals only their sum, verifiably |
//! | `model` | reference models, local training, evaluation and inference (feature `train`) |
//!
//! Tensors, models, privacy and round records follow in later modules; this crate knows
//! nothing of networking or async runtimes.
//!
//! ```
//! use fl_core::content::{unixfs, MemBlockstore, Blockstore};
//!
//! let store = MemBlockstore::default();
//! let added = unixfs::import(&b"hello world\n"[..], &unixfs::ImportOptions::default(), |b| store.put(b))?;
//! assert_eq!(added.root.to_string(), "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4");
//! let mut out = Vec::new();
//! unixfs::export(&store, &added.root, &mut out)?;
//! assert_eq!(out, b"hello world\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod content;
pub mod errors;
#[cfg(feature = "train")]
pub mod model;
pub mod privacy;
pub mod records;
pub mod secagg;
pub mod tensors;
