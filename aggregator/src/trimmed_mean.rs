//! Coordinate-wise trimmed mean (Yin et al., 2018): for each coordinate, drop the
//! `floor(beta * n)` smallest and largest values and average the rest, after far updates
//! are screened out ([`screen`](crate::screen)).

use fl_core::tensors::Bundle;

use crate::config::ConfigError;
use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::math;
use crate::screen::{self, DEFAULT_SCREEN};
use crate::state::ServerState;
use crate::strategy::{Strategy, ordered};

/// Coordinate-wise beta-trimmed mean (unweighted). Tolerates up to `floor(beta * n)` bad
/// updates. Stateless.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrimmedMean {
    /// Fraction trimmed from each end, in `[0, 0.5)`.
    pub beta: f64,
    /// Updates farther from the coordinate-wise median than this times the median distance
    /// are left out first (`beta` then trims what is left); 0 turns the screen off.
    pub screen: f64,
}

impl TrimmedMean {
    /// The name recorded in the manifest.
    pub const NAME: &'static str = "trimmed-mean";

    /// A trimmed mean of `beta` with the default screen.
    pub fn new(beta: f64) -> Self {
        Self {
            beta,
            screen: DEFAULT_SCREEN,
        }
    }

    /// Refuses a beta outside `[0, 0.5)` and a screening factor below 1 (other than 0).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..0.5).contains(&self.beta) {
            return Err(ConfigError::new(
                "rule.beta",
                self.beta,
                "must be in [0, 0.5)",
            ));
        }
        screen::validate("rule.screen", self.screen)
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
        let deltas = screen::screen(global, &deltas, self.screen);
        let trim = self.trimmed(deltas.len());
        let mean = math::coordinatewise(global, &deltas, |v| math::trimmed_mean(v, trim));
        let model = math::apply_delta(global, &mean).map_err(AggregateError::Assemble)?;
        Ok((model, ServerState::empty()))
    }
}
