//! A round's aggregation from start to end: each update validated as it comes, the valid
//! ones aggregated, the rejected ones reported.
//!
//! Rules built on a weighted mean (FedAvg, FedAvgM, FedAdam, FedYogi, norm bounding) fold
//! each update into an `f64` accumulator as it is offered, so only one update need be in
//! memory at a time; the robust rules keep the valid updates until [`Aggregation::finish`].

use cid::Cid;
use fl_core::tensors::Bundle;

use crate::accumulate::{WeightedMean, clip_scale};
use crate::config::AggregatorConfig;
use crate::contribution::{Contribution, NodeId, sort_contributions};
use crate::error::AggregateError;
use crate::rule::Rule;
use crate::state::ServerState;
use crate::strategy::Strategy;
use crate::validate::{Rejection, Validator};

/// An update that counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// Its sender.
    pub sender: NodeId,
    /// Its CID.
    pub update: Cid,
    /// Its samples.
    pub samples: u64,
    /// Its L2 norm.
    pub norm: f64,
}

/// What a round's aggregation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The new global model (the old one's metadata, new values).
    pub model: Bundle,
    /// The server state after the round (empty for stateless rules).
    pub state: ServerState,
    /// The updates that counted, in aggregation order.
    pub accepted: Vec<Accepted>,
    /// The updates that did not, with their reasons, in the order offered.
    pub rejected: Vec<Rejection>,
}

/// What became of one offered update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It counts.
    Accepted,
    /// It was rejected; the reason is in [`Aggregation::rejected`].
    Rejected,
}

/// Where valid updates go.
#[derive(Debug)]
enum Sink<'g> {
    /// Folded into a running weighted mean, then dropped.
    Stream(WeightedMean<'g>),
    /// Kept for a rule that needs them all.
    Collect(Vec<Contribution>),
}

/// One round's aggregation, fed one update at a time in aggregation order (sender, then
/// update CID: the order fixes the result's bytes).
#[derive(Debug)]
pub struct Aggregation<'g> {
    rule: Rule,
    global: &'g Bundle,
    validator: Validator<'g>,
    sink: Sink<'g>,
    last: Option<(NodeId, Cid)>,
    accepted: Vec<Accepted>,
    rejected: Vec<Rejection>,
    /// A mean rule's fixed denominator ([`AggregatorConfig::fixed_total`]).
    fixed_total: Option<u64>,
}

impl<'g> Aggregation<'g> {
    /// Starts aggregating updates to `global`, whose CID is `model`.
    pub fn new(
        config: &AggregatorConfig,
        global: &'g Bundle,
        model: Cid,
    ) -> Result<Self, AggregateError> {
        config.validate()?;
        let sink = match config.rule.as_mean_rule() {
            Some(_) => Sink::Stream(WeightedMean::new(global)),
            None => Sink::Collect(Vec::new()),
        };
        Ok(Self {
            rule: config.rule,
            global,
            validator: Validator::new(global, model, config.max_update_norm),
            sink,
            last: None,
            accepted: Vec::new(),
            rejected: Vec::new(),
            fixed_total: config.fixed_total,
        })
    }

    /// Validates one update and, if it passes, counts it. A bad update is a
    /// [`Verdict::Rejected`], not an error; the error is for updates offered out of order.
    pub fn offer(&mut self, c: Contribution) -> Result<Verdict, AggregateError> {
        if let Some((sender, cid)) = &self.last
            && c.order_key() < (sender, cid)
        {
            return Err(AggregateError::OutOfOrder {
                sender: c.sender,
                update: c.cid,
                previous: sender.clone(),
            });
        }
        self.last = Some((c.sender.clone(), c.cid));
        let norm = match self.validator.check(&c) {
            Ok(norm) => norm,
            Err(r) => {
                self.rejected.push(r);
                return Ok(Verdict::Rejected);
            }
        };
        self.accepted.push(Accepted {
            sender: c.sender.clone(),
            update: c.cid,
            samples: c.samples,
            norm,
        });
        match &mut self.sink {
            Sink::Stream(acc) => {
                let clip = self.rule.as_mean_rule().and_then(|r| r.clip());
                let scale = clip.map_or(1.0, |bound| clip_scale(bound, norm));
                acc.add(&c.sender, &c.cid, c.samples, scale, &c.delta)?;
            }
            Sink::Collect(kept) => kept.push(c),
        }
        Ok(Verdict::Accepted)
    }

    /// The updates rejected so far.
    pub fn rejected(&self) -> &[Rejection] {
        &self.rejected
    }

    /// The updates accepted so far.
    pub fn accepted(&self) -> &[Accepted] {
        &self.accepted
    }

    /// Aggregates the accepted updates with the previous round's server `state`.
    pub fn finish(self, state: ServerState) -> Result<Outcome, AggregateError> {
        let (model, state) = match self.sink {
            Sink::Stream(acc) => {
                let mean = acc.finish_over(self.fixed_total)?;
                match self.rule.as_mean_rule() {
                    Some(rule) => rule.step(self.global, &mean, state)?,
                    None => return Err(AggregateError::NoContributions),
                }
            }
            Sink::Collect(kept) => self.rule.aggregate(self.global, &kept, state)?,
        };
        tracing::info!(
            rule = %self.rule,
            accepted = self.accepted.len(),
            rejected = self.rejected.len(),
            "round aggregated"
        );
        Ok(Outcome {
            model,
            state,
            accepted: self.accepted,
            rejected: self.rejected,
        })
    }
}

/// Validates and aggregates a round's updates, given in any order: the result's bytes
/// depend only on the set of updates, never on their order or the thread count.
pub fn aggregate_round(
    config: &AggregatorConfig,
    global: &Bundle,
    model: Cid,
    mut contributions: Vec<Contribution>,
    state: ServerState,
) -> Result<Outcome, AggregateError> {
    sort_contributions(&mut contributions);
    let mut round = Aggregation::new(config, global, model)?;
    for c in contributions {
        round.offer(c)?;
    }
    round.finish(state)
}
