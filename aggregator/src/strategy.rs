//! The [`Strategy`] trait every rule implements, and the shared path of the rules built on a
//! weighted mean ([`MeanRule`]).

use fl_core::tensors::Bundle;
use rayon::prelude::*;

use crate::accumulate::{clip_scale, divide, weight, weighted_mean_applied, weighted_sum};
use crate::contribution::Contribution;
use crate::error::AggregateError;
use crate::math;
use crate::state::ServerState;

/// One aggregation rule. Pure: the same inputs give the same bytes, in any order and on any
/// number of threads.
pub trait Strategy {
    /// The name recorded in the manifest ("fedavg", "trimmed-mean").
    fn name(&self) -> &'static str;

    /// The new global model from `global` and the round's contributions (already validated;
    /// see [`crate::validate`]). Server state (momentum, Adam moments) goes in and comes out,
    /// so any round can be recomputed.
    fn aggregate(
        &self,
        global: &Bundle,
        contributions: &[Contribution],
        state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError>;

    /// The rule as a weighted mean plus a server step, if it is one: such rules take
    /// updates one at a time ([`crate::Aggregation`]); the others need every update at once.
    fn as_mean_rule(&self) -> Option<&dyn MeanRule> {
        None
    }
}

/// A rule that is a sample-weighted mean of the updates (each optionally clipped first),
/// followed by a server step: FedAvg, FedAvgM, FedAdam, FedYogi, norm bounding.
pub trait MeanRule: Sync {
    /// The L2 bound each update is clipped to before it is added, if the rule clips.
    fn clip(&self) -> Option<f64> {
        None
    }

    /// Whether the step is just `x + mean`, with no state (FedAvg, norm bounding): lets the
    /// all-in-memory path fuse the step into the sum. Same bytes either way.
    fn adds_mean(&self) -> bool {
        false
    }

    /// The new model and state from the weighted mean of the (clipped) updates, flat in
    /// `global`'s tensor order.
    fn step(
        &self,
        global: &Bundle,
        mean: &[f64],
        state: ServerState,
    ) -> Result<(Bundle, ServerState), AggregateError>;
}

/// The contributions in aggregation order, each checked against `global`'s layout, with no
/// sender twice and at least one of them.
pub(crate) fn ordered<'c>(
    global: &Bundle,
    contributions: &'c [Contribution],
) -> Result<Vec<&'c Contribution>, AggregateError> {
    let mut out: Vec<&Contribution> = contributions.iter().collect();
    out.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    if out.is_empty() {
        return Err(AggregateError::NoContributions);
    }
    for pair in out.windows(2) {
        if let [a, b] = pair
            && a.sender == b.sender
        {
            return Err(AggregateError::DuplicateSender {
                sender: a.sender.clone(),
                first: a.cid,
                second: b.cid,
            });
        }
    }
    for c in &out {
        global
            .check_layout(&c.delta)
            .map_err(|problem| AggregateError::Layout {
                sender: c.sender.clone(),
                update: c.cid,
                problem,
            })?;
    }
    Ok(out)
}

/// [`Strategy::aggregate`] for a [`MeanRule`], all updates in memory: sorted by sender,
/// clipped if the rule clips, summed tile by tile, then the rule's step.
pub(crate) fn aggregate_mean(
    rule: &dyn MeanRule,
    global: &Bundle,
    contributions: &[Contribution],
    state: ServerState,
) -> Result<(Bundle, ServerState), AggregateError> {
    let ordered = ordered(global, contributions)?;
    let mut total: u64 = 0;
    for c in &ordered {
        if c.samples == 0 {
            return Err(AggregateError::ZeroSamples {
                sender: c.sender.clone(),
                update: c.cid,
            });
        }
        total = total
            .checked_add(c.samples)
            .ok_or(AggregateError::SamplesOverflow)?;
    }
    let scales: Vec<f64> = match rule.clip() {
        Some(bound) => ordered
            .par_iter()
            .map(|c| clip_scale(bound, math::norm(&c.delta)))
            .collect(),
        None => vec![1.0; ordered.len()],
    };
    let inputs: Vec<(f64, &Bundle)> = ordered
        .iter()
        .zip(&scales)
        .map(|(c, &s)| (weight(c.samples, s), &*c.delta))
        .collect();
    if rule.adds_mean() {
        let model = weighted_mean_applied(global, &inputs, total as f64)
            .map_err(AggregateError::Assemble)?;
        return Ok((model, ServerState::empty()));
    }
    let mut mean = weighted_sum(global, &inputs);
    divide(&mut mean, total as f64);
    rule.step(global, &mean, state)
}
