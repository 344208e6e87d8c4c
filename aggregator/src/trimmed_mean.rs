//! Coordinate-wise trimmed mean (Yin et al., 2018): for each coordinate, drop the
//! `floor(beta * n)` smallest and largest values and average the rest.

use fl_core::tensors::Bundle;

use crate::config::ConfigError;
use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::math;
use crate::state::ServerState;
use crate::strategy::{Strategy, ordered};

/// Coordinate-wise beta-trimmed mean (unweighted). Tolerates up to `floor(beta * n)` bad
/// updates. Stateless.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrimmedMean {
    /// Fraction trimmed from each end, in `[0, 0.5)`.
    pub beta: f64,
}

impl TrimmedMean {
    /// The name recorded in the manifest.
    pub const NAME: &'static str = "trimmed-mean";

    /// Refuses a beta outside `[0, 0.5)`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if (0.0..0.5).contains(&self.beta) {
            Ok(())
        } else {
            Err(ConfigError::new(
                "rule.beta",
                self.beta,
                "must be in [0, 0.5)",
            ))
        }
    }

    /// Values trimmed from each end of each coordinate for `n` updates.
    pub fn trimmed(&self, n: usize) -> usize {
        // beta < 0.5, so 2 * trim < n: something is always left.
        (self.beta * n as f64).floor() as usize
    }
}

impl Strategy for TrimmedMean {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn aggregate(
        &self,
        global: &Bundle,
        contributions: &[Contribution],
        _state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError> {
        self.validate()?;
        let ordered = ordered(global, contributions)?;
        let deltas: Vec<&Bundle> = ordered.iter().map(|c| &*c.delta).collect();
        let trim = self.trimmed(deltas.len());
        let mean = math::coordinatewise(global, &deltas, |v| math::trimmed_mean(v, trim));
        let model = math::apply_delta(global, &mean).map_err(AggregateError::Assemble)?;
        Ok((model, ServerState::empty()))
    }
}
