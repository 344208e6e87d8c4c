//! Differential privacy for updates: the Rényi-DP accountant that turns noise, sampling
//! rate and rounds into the (epsilon, delta) every round manifest carries, and (feature
//! `dp`) clipping and Gaussian noise applied at the node before an update leaves it.
//!
//! | module | what |
//! | --- | --- |
//! | [`accountant`] | Rényi-DP accountant for the subsampled Gaussian |
//! | [`plan`] | DP-SGD settings from a target epsilon, with one refusal per bad setting |
//! | `clip` | L2 clipping of an update to norm `C`, norm in `f64` (feature `dp`) |
//! | `sampling` | Poisson sampling of DP-SGD batches from secure randomness (feature `dp`) |
//! | `noise` | `NoiseConfig` and Gaussian noise `z·C` per coordinate, or `z·C/√n` per node under secure aggregation, from opendp's secure randomness (feature `dp`) |

pub mod accountant;
#[cfg(feature = "dp")]
pub mod clip;
#[cfg(feature = "dp")]
pub mod noise;
pub mod plan;
#[cfg(feature = "dp")]
pub mod sampling;

#[cfg(feature = "dp")]
pub use noise::{
    DrawnNoise, GaussianNoise, NoiseConfig, NoiseError, Privatized, privatize, privatize_flat,
};
