//! Server optimizers applied to the averaged update (Reddi et al., 2021, "Adaptive
//! Federated Optimization", Algorithms 1 and 2): FedAvgM, FedAdam, FedYogi.
//!
//! The averaged update `Δ` (FedAvg's weighted mean of the updates) is the pseudo-gradient's
//! negative, so every step *adds*. Moments are kept in `f64` during a step and stored as
//! `f32` in the [`ServerState`]; the model step uses the stored (rounded) moments, so what
//! is published is exactly what was used. As in the paper, there is no Adam bias
//! correction (Flower's `FedAdam` adds one), `m` starts at 0 and `v` at `tau²`.

use fl_core::tensors::{Bundle, TensorError};
use rayon::prelude::*;

use crate::config::{ConfigError, positive, unit_interval};
use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::math::{self, PAR_CHUNK};
use crate::state::ServerState;
use crate::strategy::{MeanRule, Strategy, aggregate_mean};

/// FedAvg with server momentum: `m ← β m + Δ`, `x ← x + η m`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedAvgM {
    /// Server learning rate η. Default 1.0.
    pub server_lr: f64,
    /// Server momentum β, in `[0, 1)`. Default 0.9 (Hsu et al., 2019).
    pub momentum: f64,
}

impl Default for FedAvgM {
    fn default() -> Self {
        Self {
            server_lr: 1.0,
            momentum: 0.9,
        }
    }
}

impl FedAvgM {
    /// The name recorded in the manifest.
    pub const NAME: &'static str = "fedavgm";

    /// Refuses out-of-range parameters, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("rule.server_lr", self.server_lr)?;
        unit_interval("rule.momentum", self.momentum)
    }
}

/// FedAdam: `m ← β1 m + (1-β1) Δ`, `v ← β2 v + (1-β2) Δ²`, `x ← x + η m / (√v + τ)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedAdam {
    /// Server learning rate η. Default 0.01.
    pub server_lr: f64,
    /// First-moment decay β1, in `[0, 1)`. Default 0.9.
    pub beta1: f64,
    /// Second-moment decay β2, in `[0, 1)`. Default 0.99.
    pub beta2: f64,
    /// Adaptivity τ (> 0): larger is less adaptive. Default 0.001.
    pub tau: f64,
}

/// FedYogi: as FedAdam but `v ← v - (1-β2) Δ² sign(v - Δ²)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedYogi {
    /// Server learning rate η. Default 0.01.
    pub server_lr: f64,
    /// First-moment decay β1, in `[0, 1)`. Default 0.9.
    pub beta1: f64,
    /// Second-moment decay β2, in `[0, 1)`. Default 0.99.
    pub beta2: f64,
    /// Adaptivity τ (> 0): larger is less adaptive. Default 0.001.
    pub tau: f64,
}

macro_rules! adaptive_rule {
    ($ty:ident, $name:literal, $yogi:literal) => {
        impl Default for $ty {
            fn default() -> Self {
                Self {
                    server_lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.99,
                    tau: 0.001,
                }
            }
        }

        impl $ty {
            /// The name recorded in the manifest.
            pub const NAME: &'static str = $name;

            /// Refuses out-of-range parameters, naming the field.
            pub fn validate(&self) -> Result<(), ConfigError> {
                positive("rule.server_lr", self.server_lr)?;
                unit_interval("rule.beta1", self.beta1)?;
                unit_interval("rule.beta2", self.beta2)?;
                positive("rule.tau", self.tau)
            }
        }

        impl MeanRule for $ty {
            fn step(
                &self,
                global: &Bundle,
                mean: &[f64],
                state: ServerState,
            ) -> Result<(Bundle, ServerState), AggregateError> {
                self.validate()?;
                adaptive_step(
                    Self::NAME,
                    Adaptive {
                        server_lr: self.server_lr,
                        beta1: self.beta1,
                        beta2: self.beta2,
                        tau: self.tau,
                        yogi: $yogi,
                    },
                    global,
                    mean,
                    &state,
                )
            }
        }

        impl Strategy for $ty {
            fn name(&self) -> &'static str {
                Self::NAME
            }

            fn aggregate(
                &self,
                global: &Bundle,
                contributions: &[Contribution],
                state: ServerState,
            ) -> Result<(Bundle, ServerState), AggregateError> {
                self.validate()?;
                aggregate_mean(self, global, contributions, state)
            }

            fn as_mean_rule(&self) -> Option<&dyn MeanRule> {
                Some(self)
            }
        }
    };
}

adaptive_rule!(FedAdam, "fedadam", false);
adaptive_rule!(FedYogi, "fedyogi", true);

impl MeanRule for FedAvgM {
    fn step(
        &self,
        global: &Bundle,
        mean: &[f64],
        state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError> {
        self.validate()?;
        check_len(global, mean)?;
        let prev = state
            .slots(Self::NAME, global, &["momentum"])?
            .and_then(|mut slots| slots.pop());
        let n = mean.len();
        let mut m = vec![0f32; n];
        let mut step = vec![0f64; n];
        m.par_chunks_mut(PAR_CHUNK)
            .zip(step.par_chunks_mut(PAR_CHUNK))
            .enumerate()
            .for_each(|(ci, (m, step))| {
                let start = ci * PAR_CHUNK;
                for (k, (m, step)) in m.iter_mut().zip(step).enumerate() {
                    let i = start + k;
                    let prev = prev.as_ref().map_or(0.0, |p| f64::from(p[i]));
                    *m = (self.momentum * prev + mean[i]) as f32;
                    *step = self.server_lr * f64::from(*m);
                }
            });
        let model = math::apply_delta(global, &step).map_err(AggregateError::Assemble)?;
        let state = ServerState::from_slots(Self::NAME, global, &[("momentum", &m)])?;
        Ok((model, state))
    }
}

impl Strategy for FedAvgM {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn aggregate(
        &self,
        global: &Bundle,
        contributions: &[Contribution],
        state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError> {
        self.validate()?;
        aggregate_mean(self, global, contributions, state)
    }

    fn as_mean_rule(&self) -> Option<&dyn MeanRule> {
        Some(self)
    }
}

/// FedAdam's and FedYogi's parameters, in one place for their shared step.
#[derive(Clone, Copy)]
struct Adaptive {
    server_lr: f64,
    beta1: f64,
    beta2: f64,
    tau: f64,
    yogi: bool,
}

/// `sign(x)` with `sign(0) = 0`, as Yogi needs (`f64::signum(0.0)` is 1).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Refuses a mean whose length is not the model's.
fn check_len(global: &Bundle, mean: &[f64]) -> Result<(), AggregateError> {
    if mean.len() == global.num_values() {
        Ok(())
    } else {
        Err(AggregateError::Assemble(TensorError::FlatLength {
            expected: global.num_values(),
            actual: mean.len(),
        }))
    }
}

/// One FedAdam or FedYogi step.
fn adaptive_step(
    name: &'static str,
    p: Adaptive,
    global: &Bundle,
    mean: &[f64],
    state: &ServerState,
) -> Result<(Bundle, ServerState), AggregateError> {
    check_len(global, mean)?;
    let prev = state.slots(name, global, &["m", "v"])?;
    let n = mean.len();
    let mut m = vec![0f32; n];
    let mut v = vec![0f32; n];
    let mut step = vec![0f64; n];
    let tau2 = p.tau * p.tau;
    m.par_chunks_mut(PAR_CHUNK)
        .zip(v.par_chunks_mut(PAR_CHUNK))
        .zip(step.par_chunks_mut(PAR_CHUNK))
        .enumerate()
        .for_each(|(ci, ((m, v), step))| {
            let start = ci * PAR_CHUNK;
            for (k, ((m, v), step)) in m.iter_mut().zip(v).zip(step).enumerate() {
                let i = start + k;
                let d = mean[i];
                let (mp, vp) = match &prev {
                    Some(s) => (f64::from(s[0][i]), f64::from(s[1][i])),
                    None => (0.0, tau2),
                };
                let d2 = d * d;
                *m = (p.beta1 * mp + (1.0 - p.beta1) * d) as f32;
                *v = if p.yogi {
                    vp - (1.0 - p.beta2) * d2 * sign(vp - d2)
                } else {
                    p.beta2 * vp + (1.0 - p.beta2) * d2
                } as f32;
                *step = p.server_lr * f64::from(*m) / (f64::from(*v).sqrt() + p.tau);
            }
        });
    let model = math::apply_delta(global, &step).map_err(AggregateError::Assemble)?;
    let state = ServerState::from_slots(name, global, &[("m", &m), ("v", &v)])?;
    Ok((model, state))
}
