//! The aggregator's settings (the `[aggregator]` table of `fl.toml`) and their validation.

use serde::{Deserialize, Serialize};

use crate::strategy::Strategy;

use crate::rule::Rule;

/// A setting out of range: names the field, the value and what it must be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("aggregator setting {field} = {value}: {reason}")]
pub struct ConfigError {
    /// The field, as written in the config (`rule.beta1`, `max_update_norm`).
    pub field: String,
    /// The value refused.
    pub value: String,
    /// What the value must be.
    pub reason: String,
}

impl ConfigError {
    /// A refusal of `field = value` for `reason`.
    pub fn new(field: &str, value: impl ToString, reason: &str) -> Self {
        Self {
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Refuses `field = value` unless it is finite and strictly positive.
pub(crate) fn positive(field: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::new(field, value, "must be finite and > 0"))
    }
}

/// Refuses `field = value` unless `0 <= value < 1`.
pub(crate) fn unit_interval(field: &str, value: f64) -> Result<(), ConfigError> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(field, value, "must be in [0, 1)"))
    }
}

/// How a round is aggregated and which updates count.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorConfig {
    /// The rule and its parameters by name, e.g. `"fedavg"`, `"trimmed-mean:0.1"`,
    /// `"fedadam:server_lr=0.01"` (see [`Rule`]). Default `"fedavg"`.
    pub rule: Rule,
    /// Updates whose L2 norm exceeds this are rejected before they count. Default: no
    /// bound. With DP noise of multiplier z on clip C over d parameters, honest updates
    /// have norm about `C * sqrt(1 + z^2 d)`: set the bound above that.
    pub max_update_norm: Option<f64>,
    /// Divide the weighted sum of the updates by this, not by their total weight:
    /// DP-FedAvg's fixed denominator (McMahan et al. 2018, the expected weight of a round's
    /// sample), so that one client more or less moves the result by its clipped update over
    /// this, whoever else was sampled. Mean rules only. Default: the total weight. Left out
    /// of the record when unset, so configurations written before it keep their CIDs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_total: Option<u64>,
}

impl AggregatorConfig {
    /// A configuration with `rule` and no norm bound.
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            max_update_norm: None,
            fixed_total: None,
        }
    }

    /// Sets the fixed denominator of a mean rule.
    pub fn with_fixed_total(mut self, total: u64) -> Self {
        self.fixed_total = Some(total);
        self
    }

    /// Sets the norm bound of validation.
    pub fn with_max_update_norm(mut self, bound: f64) -> Self {
        self.max_update_norm = Some(bound);
        self
    }

    /// Refuses out-of-range settings, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.rule.validate()?;
        if let Some(bound) = self.max_update_norm {
            positive("max_update_norm", bound)?;
        }
        if let Some(total) = self.fixed_total {
            if total == 0 {
                return Err(ConfigError::new("fixed_total", total, "must be at least 1"));
            }
            if self.rule.as_mean_rule().is_none() {
                return Err(ConfigError::new(
                    "fixed_total",
                    total,
                    "needs a rule built on a weighted mean (fedavg, fedavgm, fedadam, fedyogi, norm-bound)",
                ));
            }
        }
        Ok(())
    }
}
