//! Norm bounding (Sun et al., 2019, "Can you really backdoor federated learning?"): each
//! update is scaled down to an L2 norm of at most `bound`, then FedAvg.

use fl_core::tensors::Bundle;

use crate::config::{ConfigError, positive};
use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::math;
use crate::state::ServerState;
use crate::strategy::{MeanRule, Strategy, aggregate_mean};

/// FedAvg over the updates clipped to L2 norm `bound`: `Δ_i * min(1, bound / ||Δ_i||)`.
/// Stateless.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormBound {
    /// The L2 norm each update is clipped to (same unit as the update's values).
    pub bound: f64,
}

impl NormBound {
    /// The name recorded in the manifest.
    pub const NAME: &'static str = "norm-bound";

    /// Refuses a bound that is not finite and positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("rule.bound", self.bound)
    }
}

impl MeanRule for NormBound {
    fn adds_mean(&self) -> bool {
        true
    }

    fn clip(&self) -> Option<f64> {
        Some(self.bound)
    }

    fn step(
        &self,
        global: &Bundle,
        mean: &[f64],
        _state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError> {
        self.validate()?;
        let model = math::apply_delta(global, mean).map_err(AggregateError::Assemble)?;
        Ok((model, ServerState::empty()))
    }
}

impl Strategy for NormBound {
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
