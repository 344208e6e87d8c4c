//! Coordinate-wise median (Yin et al., 2018): each coordinate of the aggregate is the
//! median of that coordinate over the updates. Tolerates fewer than half bad updates.

use fl_core::tensors::Bundle;

use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::math;
use crate::state::ServerState;
use crate::strategy::{Strategy, ordered};

/// Coordinate-wise median of the updates (unweighted: a sample count is a claim, not a
/// fact), the mean of the two middle values for an even count. Stateless.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Median;

impl Median {
    /// The name recorded in the manifest.
    pub const NAME: &'static str = "median";
}

impl Strategy for Median {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn aggregate(
        &self,
        global: &Bundle,
        contributions: &[Contribution],
        _state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError> {
        let ordered = ordered(global, contributions)?;
        let deltas: Vec<&Bundle> = ordered.iter().map(|c| &*c.delta).collect();
        let median = math::coordinatewise(global, &deltas, math::median);
        let model = math::apply_delta(global, &median).map_err(AggregateError::Assemble)?;
        Ok((model, ServerState::empty()))
    }
}
