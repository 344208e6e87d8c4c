//! Coordinate-wise median (Yin et al., 2018): each coordinate of the aggregate is the
//! median of that coordinate over the updates, after far updates are screened out
//! ([`screen`](crate::screen)). Tolerates fewer than half bad updates.

use fl_core::tensors::Bundle;

use crate::config::ConfigError;
use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::math;
use crate::screen::{self, DEFAULT_SCREEN};
use crate::state::ServerState;
use crate::strategy::{Strategy, ordered};

/// Coordinate-wise median of the updates (unweighted: a sample count is a claim, not a
/// fact), the mean of the two middle values for an even count. Stateless.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Median {
    /// Updates farther from the coordinate-wise median than this times the median distance
    /// are left out first; 0 turns the screen off (the plain rule).
    pub screen: f64,
}

impl Default for Median {
    fn default() -> Self {
        Self {
            screen: DEFAULT_SCREEN,
        }
    }
}

impl Median {
    /// The name recorded in the manifest.
    pub const NAME: &'static str = "median";

    /// Refuses a screening factor below 1 (other than 0).
    pub fn validate(&self) -> Result<(), ConfigError> {
        screen::validate("rule.screen", self.screen)
    }
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
        self.validate()?;
        let ordered = ordered(global, contributions)?;
        let deltas: Vec<&Bundle> = ordered.iter().map(|c| &*c.delta).collect();
        let (kept, centre) = screen::screen_with_centre(global, &deltas, self.screen);
        // Nothing left out: the screen's centre is the median of the same updates, in the
        // same order, computed the same way.
        let median = match centre {
            Some(centre) if kept.len() == deltas.len() => centre,
            _ => math::coordinatewise(global, &kept, math::median),
        };
        let model = math::apply_delta(global, &median).map_err(AggregateError::Assemble)?;
        Ok((model, ServerState::empty()))
    }
}
