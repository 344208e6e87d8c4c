//! FedAvg (McMahan et al., 2017): the sample-weighted mean of the updates, added to the model.

use fl_core::tensors::Bundle;

use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::math;
use crate::state::ServerState;
use crate::strategy::{MeanRule, Strategy, aggregate_mean};

/// FedAvg: `x + Σ n_i Δ_i / Σ n_i`, summed in `f64` in sender order. Stateless.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FedAvg;

impl FedAvg {
    /// The name recorded in the manifest.
    pub const NAME: &'static str = "fedavg";
}

impl MeanRule for FedAvg {
    fn adds_mean(&self) -> bool {
        true
    }

    fn step(
        &self,
        global: &Bundle,
        mean: &[f64],
        _state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError> {
        let model = math::apply_delta(global, mean).map_err(AggregateError::Assemble)?;
        Ok((model, ServerState::empty()))
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn aggregate(
        &self,
        global: &Bundle,
        contributions: &[Contribution],
        state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError> {
        aggregate_mean(self, global, contributions, state)
    }

    fn as_mean_rule(&self) -> Option<&dyn MeanRule> {
        Some(self)
    }
}
