//! Multi-Krum (Blanchard et al., 2017; El Mhamdi et al., 2018): score each update by the
//! sum of squared distances to its `n - f - 2` nearest neighbours, keep the `m` updates with
//! the lowest scores and average them.

use fl_core::tensors::Bundle;
use rayon::prelude::*;

use crate::accumulate::{divide, weighted_sum};
use crate::config::ConfigError;
use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::math;
use crate::state::ServerState;
use crate::strategy::{Strategy, ordered};

/// Multi-Krum tolerating `f` bad updates out of `n > 2f + 2`, keeping `m` (default `n - f`;
/// `m = 1` is the original Krum). The kept updates are averaged unweighted. Stateless.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Krum {
    /// Bad updates tolerated.
    pub f: usize,
    /// Updates kept and averaged; `None` keeps `n - f`.
    pub m: Option<usize>,
}

impl Krum {
    /// The name recorded in the manifest.
    pub const NAME: &'static str = "krum";

    /// Refuses `m = 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.m {
            Some(0) => Err(ConfigError::new("rule.m", 0, "must be at least 1")),
            _ => Ok(()),
        }
    }

    /// The updates Multi-Krum keeps, in aggregation (sender) order.
    pub fn select<'c>(
        &self,
        global: &Bundle,
        contributions: &'c [Contribution],
    ) -> Result<Vec<&'c Contribution>, AggregateError> {
        self.validate()?;
        let ordered = ordered(global, contributions)?;
        let n = ordered.len();
        // `f` comes from a task record: no value of it may overflow (it is refused instead).
        let needed = self.f.saturating_mul(2).saturating_add(3);
        if n < needed {
            return Err(AggregateError::TooFewForKrum {
                f: self.f,
                n,
                needed,
            });
        }
        let max = n - self.f;
        let m = self.m.unwrap_or(max);
        if m > max {
            return Err(AggregateError::KrumSelection {
                f: self.f,
                m,
                n,
                max,
            });
        }
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .collect();
        // Each distance is one sequential sum: its bits do not depend on the thread count.
        let found: Vec<f64> = pairs
            .par_iter()
            .map(|&(i, j)| {
                let d = math::bundle_squared_distance(&ordered[i].delta, &ordered[j].delta);
                // A NaN update is as far from everything as can be.
                if d.is_nan() { f64::INFINITY } else { d }
            })
            .collect();
        let mut dist = vec![vec![0f64; n]; n];
        for (&(i, j), &d) in pairs.iter().zip(&found) {
            dist[i][j] = d;
            dist[j][i] = d;
        }
        let neighbours = n - self.f - 2;
        let scores: Vec<f64> = (0..n)
            .map(|i| {
                let mut others: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| dist[i][j]).collect();
                others.sort_unstable_by(f64::total_cmp);
                others[..neighbours].iter().sum()
            })
            .collect();
        let mut rank: Vec<usize> = (0..n).collect();
        rank.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        let mut kept: Vec<usize> = rank[..m].to_vec();
        kept.sort_unstable();
        Ok(kept.into_iter().map(|i| ordered[i]).collect())
    }
}

impl Strategy for Krum {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn aggregate(
        &self,
        global: &Bundle,
        contributions: &[Contribution],
        _state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError> {
        let kept = self.select(global, contributions)?;
        let inputs: Vec<(f64, &Bundle)> = kept.iter().map(|c| (1.0, &*c.delta)).collect();
        let mut mean = weighted_sum(global, &inputs);
        divide(&mut mean, inputs.len() as f64);
        let model = math::apply_delta(global, &mean).map_err(AggregateError::Assemble)?;
        Ok((model, ServerState::empty()))
    }
}
