//! Hyper-parameters of local training: a serde struct for `fl.toml`, and learning-rate
//! schedules.

use serde::{Deserialize, Serialize};

use super::train::TrainError;

/// How the learning rate changes over one local training run.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// The base rate times `gamma` after every `every_epochs` epochs.
    Step {
        /// Epochs between two decays.
        every_epochs: usize,
        /// Factor applied at each decay, in (0, 1].
        gamma: f64,
    },
    /// Cosine annealing from the base rate to `min_lr` over all local steps.
    Cosine {
        /// The rate the last step approaches.
        min_lr: f64,
    },
}

impl LrSchedule {
    /// The rate of step `step` (0-based, counted over all epochs) of `total_steps`, in `epoch`.
    pub fn rate(&self, base: f64, epoch: usize, step: usize, total_steps: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step {
                every_epochs,
                gamma,
            } => {
                let decays = epoch / every_epochs.max(1);
                base * gamma.powi(i32::try_from(decays).unwrap_or(i32::MAX))
            }
            LrSchedule::Cosine { min_lr } => {
                let t = step as f64 / total_steps.max(1) as f64;
                min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

/// A schedule written on a command line that is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "bad learning-rate schedule {text:?}: expected constant, cosine[:MIN_LR] or step:EVERY_EPOCHS:GAMMA"
)]
pub struct BadSchedule {
    /// The text given.
    pub text: String,
}

impl std::str::FromStr for LrSchedule {
    type Err = BadSchedule;

    /// `constant`, `cosine`, `cosine:MIN_LR` or `step:EVERY_EPOCHS:GAMMA`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadSchedule {
            text: s.to_string(),
        };
        let mut parts = s.split(':');
        let schedule = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("constant"), None, None, None) => LrSchedule::Constant,
            (Some("cosine"), None, None, None) => LrSchedule::Cosine { min_lr: 0.0 },
            (Some("cosine"), Some(min), None, None) => LrSchedule::Cosine {
                min_lr: min.parse().map_err(|_| bad())?,
            },
            (Some("step"), Some(every), Some(gamma), None) => LrSchedule::Step {
                every_epochs: every.parse().map_err(|_| bad())?,
                gamma: gamma.parse().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        Ok(schedule)
    }
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LrSchedule::Constant => f.write_str("constant"),
            LrSchedule::Cosine { min_lr } => write!(f, "cosine:{min_lr}"),
            LrSchedule::Step {
                every_epochs,
                gamma,
            } => write!(f, "step:{every_epochs}:{gamma}"),
        }
    }
}

/// DP-SGD's settings (see [`dp_sgd`](super::dp_sgd)): each step Poisson-samples its batch
/// with rate `1 / ⌈n / batch_size⌉`, clips every example's gradient and adds noise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSgdConfig {
    /// L2 bound `C` of each example's gradient over all parameters.
    pub clip_norm: f64,
    /// `z`: the noise's standard deviation over `C`; 0 clips without noise (no privacy).
    pub noise_multiplier: f64,
    /// Steps in one epoch; default `⌈n / batch_size⌉`, one expected pass over the data (a
    /// node that trains a few steps a round sets it). The sampling rate stays
    /// `1 / ⌈n / batch_size⌉` either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_epoch: Option<usize>,
}

/// Hyper-parameters of one local training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the local data. Default 1.
    pub epochs: usize,
    /// Images per SGD step; the last step of an epoch takes what is left. Default 64.
    pub batch_size: usize,
    /// Learning rate of the first step. Default 0.01.
    pub learning_rate: f64,
    /// How the learning rate changes over the run. Default constant.
    pub schedule: LrSchedule,
    /// SGD momentum, PyTorch semantics (no dampening); 0 turns it off. Default 0.9.
    pub momentum: f64,
    /// L2 weight decay added to the gradient, as PyTorch's SGD does. Default 0.
    pub weight_decay: f64,
    /// FedProx's `mu`: adds `mu/2 ||w - w_global||^2` to the objective; 0 is FedAvg. Default 0.
    pub proximal_mu: f64,
    /// Seed of the per-epoch shuffles. Default 0.
    pub seed: u64,
    /// DP-SGD in place of plain SGD, with `batch_size` as the expected batch. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp_sgd: Option<DpSgdConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            batch_size: 64,
            learning_rate: 0.01,
            schedule: LrSchedule::Constant,
            momentum: 0.9,
            weight_decay: 0.0,
            proximal_mu: 0.0,
            seed: 0,
            dp_sgd: None,
        }
    }
}

impl TrainConfig {
    /// Refuses settings that cannot train, naming the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let refuse =
            |field: &'static str, reason: &'static str| Err(TrainError::Config { field, reason });
        let finite_non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if self.epochs == 0 {
            return refuse("epochs", "must be at least 1");
        }
        if self.batch_size == 0 {
            return refuse("batch_size", "must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return refuse("learning_rate", "must be finite and positive");
        }
        if !(finite_non_negative(self.momentum) && self.momentum < 1.0) {
            return refuse("momentum", "must be in [0, 1)");
        }
        if !finite_non_negative(self.weight_decay) {
            return refuse("weight_decay", "must be finite and non-negative");
        }
        if !finite_non_negative(self.proximal_mu) {
            return refuse("proximal_mu", "must be finite and non-negative");
        }
        if let Some(dp) = &self.dp_sgd {
            if !(dp.clip_norm.is_finite() && dp.clip_norm > 0.0) {
                return refuse("dp_sgd.clip_norm", "must be finite and positive");
            }
            if !finite_non_negative(dp.noise_multiplier) {
                return refuse("dp_sgd.noise_multiplier", "must be finite and non-negative");
            }
            if dp.steps_per_epoch == Some(0) {
                return refuse("dp_sgd.steps_per_epoch", "must be at least 1");
            }
        }
        match self.schedule {
            LrSchedule::Constant => {}
            LrSchedule::Step {
                every_epochs,
                gamma,
            } => {
                if every_epochs == 0 {
                    return refuse("schedule.every_epochs", "must be at least 1");
                }
                if !(gamma > 0.0 && gamma <= 1.0) {
                    return refuse("schedule.gamma", "must be in (0, 1]");
                }
            }
            LrSchedule::Cosine { min_lr } => {
                if !(finite_non_negative(min_lr) && min_lr <= self.learning_rate) {
                    return refuse("schedule.min_lr", "must be in [0, learning_rate]");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_their_formulas() {
        assert_eq!(LrSchedule::Constant.rate(0.1, 3, 30, 40), 0.1);
        let step = LrSchedule::Step {
            every_epochs: 2,
            gamma: 0.5,
        };
        assert_eq!(step.rate(0.1, 1, 0, 0), 0.1);
        assert_eq!(step.rate(0.1, 2, 0, 0), 0.05);
        assert_eq!(step.rate(0.1, 5, 0, 0), 0.025);
        let cosine = LrSchedule::Cosine { min_lr: 0.0 };
        assert_eq!(cosine.rate(0.1, 0, 0, 10), 0.1);
        assert!((cosine.rate(0.1, 0, 5, 10) - 0.05).abs() < 1e-12);
    }

    #[test]
    fn schedules_parse_from_and_print_to_the_command_line_form() {
        for text in ["constant", "cosine:0.001", "step:2:0.5"] {
            assert_eq!(text.parse::<LrSchedule>().unwrap().to_string(), text);
        }
        assert_eq!(
            "cosine".parse::<LrSchedule>().unwrap(),
            LrSchedule::Cosine { min_lr: 0.0 }
        );
        for bad in ["", "linear", "step:2", "step:x:0.5", "cosine:1:2"] {
            assert!(bad.parse::<LrSchedule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = TrainConfig {
            momentum: 1.0,
            ..TrainConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "training setting momentum must be in [0, 1)"
        );
        let bad = TrainConfig {
            schedule: LrSchedule::Cosine { min_lr: 1.0 },
            ..TrainConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("schedule.min_lr")
        );
        assert!(TrainConfig::default().validate().is_ok());
    }

    #[test]
    fn config_reads_from_toml_like_serde_with_defaults() {
        let json =
            r#"{"epochs": 2, "schedule": {"kind": "step", "every_epochs": 1, "gamma": 0.9}}"#;
        let c: TrainConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.epochs, 2);
        assert_eq!(c.batch_size, 64);
        assert_eq!(
            c.schedule,
            LrSchedule::Step {
                every_epochs: 1,
                gamma: 0.9
            }
        );
        assert!(serde_json::from_str::<TrainConfig>(r#"{"epoch": 2}"#).is_err());
    }
}
