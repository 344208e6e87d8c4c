//! Update validation and aggregation rules, deterministic so that anyone can recompute a
//! published model byte for byte.
//!
//! The aggregator of a round takes the current global model, the round's updates (local
//! minus global, as tensor bundles) and the server state of the round before, checks each
//! update, and combines the valid ones into the next model and server state. Updates are
//! read as plain `f32` slices and summed in `f64` in a fixed order (sorted by sender), so
//! the output's bytes, and therefore the model's CID, depend neither on the order in which
//! updates arrived nor on the number of threads. No burn, no networking, no async.
//!
//! | module | what |
//! | --- | --- |
//! | [`contribution`] | [`NodeId`] and [`Contribution`]: who sent which update, for which model, from how many samples |
//! | [`validate`] | checks before an update counts; [`Rejection`] says why one did not |
//! | [`strategy`] | the [`Strategy`] trait; [`MeanRule`] for rules built on a weighted mean |
//! | [`rule`] | [`Rule`]: every rule by name (`"fedavg"`, `"trimmed-mean:0.1"`, `"krum:3"`), `FromStr` + `Display` |
//! | [`config`] | [`AggregatorConfig`] (the `[aggregator]` table of `fl.toml`) and its `validate()` |
//! | [`round`] | [`Aggregation`]: a round, one update at a time; [`aggregate_round`] for a batch |
//! | [`fedavg`] | FedAvg, the sample-weighted mean |
//! | [`fedopt`] | server optimizers on the mean (Reddi et al., 2021): FedAvgM, FedAdam, FedYogi |
//! | [`median`], [`trimmed_mean`], [`krum`], [`norm_bound`] | robust rules |
//! | [`screen`] | far updates left out before a coordinate-wise rule |
//! | [`state`] | [`ServerState`]: momentum and moments, in and out as a tensor bundle |
//! | [`accumulate`] | [`WeightedMean`]: the streaming `f64` accumulator |
//! | [`math`] | norms, distances, order statistics in fixed orders |
//!
//! No cargo features. Parallelism (rayon) only splits independent coordinates.
//!
//! ```
//! use aggregator::{AggregatorConfig, Contribution, Rule, ServerState, aggregate_round};
//! use fl_core::content::Block;
//! use fl_core::tensors::Bundle;
//!
//! let mut global = Bundle::new();
//! global.insert("fc.weight", vec![2], vec![1.0, 1.0])?;
//! let model = *Block::hashed(0x55, global.to_safetensors()?).cid();
//!
//! let update = |values: Vec<f32>, n: u8| -> Result<Contribution, Box<dyn std::error::Error>> {
//!     let mut delta = Bundle::new();
//!     delta.insert("fc.weight", vec![2], values)?;
//!     let cid = *Block::hashed(0x55, vec![n]).cid();
//!     Ok(Contribution::new(format!("node-{n}"), cid, model, u64::from(n), delta))
//! };
//! let updates = vec![
//!     update(vec![0.5, -1.0], 1)?,       // 1 sample
//!     update(vec![2.0, 1.0], 3)?,        // 3 samples
//!     update(vec![f32::NAN, 0.0], 2)?,   // rejected: not finite
//! ];
//! let config = AggregatorConfig::new("fedavg".parse::<Rule>()?);
//! let out = aggregate_round(&config, &global, model, updates, ServerState::empty())?;
//! // 1 + (1 * 0.5 + 3 * 2.0) / 4 and 1 + (1 * -1.0 + 3 * 1.0) / 4
//! assert_eq!(out.model.get("fc.weight").map(|t| t.data.clone()), Some(vec![2.625, 1.5]));
//! assert_eq!(out.rejected.len(), 1);
//! assert_eq!(out.rejected[0].reason().code(), "non-finite");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod accumulate;
pub mod config;
pub mod contribution;
pub mod error;
pub mod fedavg;
pub mod fedopt;
pub mod krum;
pub mod math;
pub mod median;
pub mod norm_bound;
pub mod round;
pub mod rule;
pub mod screen;
pub mod state;
pub mod strategy;
pub mod trimmed_mean;
pub mod validate;

pub use accumulate::WeightedMean;
pub use config::{AggregatorConfig, ConfigError};
pub use contribution::{Contribution, NodeId};
pub use error::AggregateError;
pub use fedavg::FedAvg;
pub use fedopt::{FedAdam, FedAvgM, FedYogi};
pub use krum::Krum;
pub use median::Median;
pub use norm_bound::NormBound;
pub use round::{Accepted, Aggregation, Outcome, Verdict, aggregate_round};
pub use rule::{Rule, RuleError};
pub use state::ServerState;
pub use strategy::{MeanRule, Strategy};
pub use trimmed_mean::TrimmedMean;
pub use validate::{Rejection, Validator};
