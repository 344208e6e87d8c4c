//! DP-SGD settings from what a user asks for: a target (epsilon, delta), a clip norm, the
//! examples a node trains on, its expected batch and the steps it will take. Every command
//! that starts DP-SGD (`fl baseline`, `fl simulate`, `fl task create`) resolves its settings
//! here, so each refusal reads the same everywhere.

use super::accountant::{self, AccountantError};

/// The largest noise multiplier a plan accepts. Beyond it the noise on each coordinate of an
/// averaged gradient, `z·C / B`, dwarfs the clipped signal at the batch sizes this project
/// trains with (hundreds); the DP-SGD studies that train well with `z > 10` use batches of
/// many thousands (De et al. 2022). A target that needs more is refused, naming what it needs.
pub const MAX_NOISE_MULTIPLIER: f64 = 10.0;

/// What a DP-SGD run is asked to guarantee.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgdTarget {
    /// Epsilon to reach after every step, at `delta`.
    pub epsilon: f64,
    /// Delta; must be below 1/n.
    pub delta: f64,
    /// Per-example L2 clip norm `C`.
    pub clip_norm: f64,
}

/// A resolved DP-SGD plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgdPlan {
    /// The target it meets.
    pub target: DpSgdTarget,
    /// Poisson sampling rate `q = 1 / ⌈n / batch⌉`.
    pub sampling_rate: f64,
    /// Steps in all.
    pub steps: u64,
    /// The smallest noise multiplier that meets the target.
    pub noise_multiplier: f64,
    /// Epsilon after all the steps at that noise (at most the target).
    pub epsilon: f64,
}

/// Why DP-SGD settings are refused; each names the setting and what it must be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// Epsilon is not a positive finite number.
    #[error("DP epsilon must be a finite number > 0, got {0}")]
    Epsilon(f64),
    /// Delta is not in (0, 1/n).
    #[error(
        "DP delta must be in (0, 1/n) for n = {examples} training examples (below {:e}), got {delta}: a delta of 1/n allows one example to be published whole",
        1.0 / *examples as f64
    )]
    Delta {
        /// The delta given.
        delta: f64,
        /// The examples it protects.
        examples: u64,
    },
    /// The clip norm is not a positive finite number.
    #[error("DP clip norm must be a finite number > 0, got {0}")]
    Clip(f64),
    /// A noise multiplier of 0 (or not a positive finite number) with DP asked for.
    #[error("DP noise multiplier must be a finite number > 0 (0 gives no privacy), got {0}")]
    Noise(f64),
    /// There is nothing to train.
    #[error("DP-SGD needs at least one example, one step and a batch of at least 1")]
    Empty,
    /// The target needs more noise than training can bear.
    #[error(
        "epsilon {epsilon} over {steps} steps at sampling rate {sampling_rate:.4} needs noise multiplier {needed:.2}, more than {MAX_NOISE_MULTIPLIER} (beyond it the noise drowns the clipped gradients): allow a larger epsilon, fewer steps or a larger batch"
    )]
    TooSmall {
        /// The target.
        epsilon: f64,
        /// Steps planned.
        steps: u64,
        /// The sampling rate.
        sampling_rate: f64,
        /// The noise multiplier it would need.
        needed: f64,
    },
    /// No noise at all reaches the target (RDP orders up to 63 bound epsilon from below).
    #[error("epsilon {epsilon} cannot be reached over {steps} steps whatever the noise: {source}")]
    Unreachable {
        /// The target.
        epsilon: f64,
        /// Steps planned.
        steps: u64,
        /// The accountant's answer.
        #[source]
        source: AccountantError,
    },
}

impl DpSgdTarget {
    /// Checks the target for `examples` training examples (delta below 1/n).
    pub fn check(&self, examples: u64) -> Result<(), PlanError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(PlanError::Epsilon(self.epsilon));
        }
        if examples == 0 {
            return Err(PlanError::Empty);
        }
        if !(self.delta > 0.0 && self.delta < 1.0 / examples as f64) {
            return Err(PlanError::Delta {
                delta: self.delta,
                examples,
            });
        }
        check_clip(self.clip_norm)
    }

    /// The plan for `examples` examples, expected batch `batch`, `steps` steps in all.
    pub fn plan(&self, examples: u64, batch: u64, steps: u64) -> Result<DpSgdPlan, PlanError> {
        self.check(examples)?;
        if batch == 0 || steps == 0 {
            return Err(PlanError::Empty);
        }
        let q = accountant::dp_sgd_sampling_rate(examples, batch);
        let unreachable = |source| PlanError::Unreachable {
            epsilon: self.epsilon,
            steps,
            source,
        };
        let z = accountant::dp_sgd_noise_for_epsilon(q, steps, self.delta, self.epsilon)
            .map_err(unreachable)?;
        if z > MAX_NOISE_MULTIPLIER {
            return Err(PlanError::TooSmall {
                epsilon: self.epsilon,
                steps,
                sampling_rate: q,
                needed: z,
            });
        }
        let epsilon = accountant::dp_sgd_epsilon(q, z, steps, self.delta).map_err(unreachable)?;
        Ok(DpSgdPlan {
            target: *self,
            sampling_rate: q,
            steps,
            noise_multiplier: z,
            epsilon,
        })
    }
}

/// Refuses a clip norm that is not a positive finite number.
pub fn check_clip(clip_norm: f64) -> Result<(), PlanError> {
    if clip_norm.is_finite() && clip_norm > 0.0 {
        Ok(())
    } else {
        Err(PlanError::Clip(clip_norm))
    }
}

/// Refuses a noise multiplier that is not a positive finite number.
pub fn check_noise(noise_multiplier: f64) -> Result<(), PlanError> {
    if noise_multiplier.is_finite() && noise_multiplier > 0.0 {
        Ok(())
    } else {
        Err(PlanError::Noise(noise_multiplier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(epsilon: f64) -> DpSgdTarget {
        DpSgdTarget {
            epsilon,
            delta: 1e-5,
            clip_norm: 1.0,
        }
    }

    #[test]
    fn a_plan_meets_its_target_with_the_least_noise() {
        // 12,000 examples at batch 256 for 15 epochs: 47 steps an epoch.
        let plan = target(8.0).plan(12_000, 256, 15 * 47).unwrap();
        assert!((plan.sampling_rate - 1.0 / 47.0).abs() < 1e-15);
        assert!(
            plan.epsilon <= 8.0 && plan.epsilon > 7.9,
            "{}",
            plan.epsilon
        );
        let less = accountant::dp_sgd_epsilon(
            plan.sampling_rate,
            plan.noise_multiplier * 0.99,
            plan.steps,
            1e-5,
        )
        .unwrap();
        assert!(less > 8.0);
    }

    #[test]
    fn each_bad_setting_gets_its_own_message() {
        let m = |e: PlanError| e.to_string();
        assert!(m(target(0.0).plan(100, 10, 10).unwrap_err()).contains("epsilon must be"));
        assert!(m(target(f64::NAN).plan(100, 10, 10).unwrap_err()).contains("epsilon must be"));
        let delta = DpSgdTarget {
            delta: 0.01,
            ..target(8.0)
        };
        let text = m(delta.plan(100, 10, 10).unwrap_err());
        assert!(
            text.contains("delta must be in (0, 1/n) for n = 100"),
            "{text}"
        );
        let clip = DpSgdTarget {
            clip_norm: 0.0,
            ..target(8.0)
        };
        assert!(m(clip.plan(12_000, 256, 10).unwrap_err()).contains("clip norm must be"));
        assert!(m(check_noise(0.0).unwrap_err()).contains("0 gives no privacy"));
        assert_eq!(target(8.0).plan(0, 256, 10).unwrap_err(), PlanError::Empty);
    }

    #[test]
    fn a_target_too_small_names_the_noise_it_would_need() {
        let err = target(0.3).plan(12_000, 256, 100 * 47).unwrap_err();
        match &err {
            PlanError::TooSmall { needed, .. } => assert!(*needed > MAX_NOISE_MULTIPLIER),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("needs noise multiplier"), "{err}");
    }
}
