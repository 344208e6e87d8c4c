//! A round's manifest: what the aggregator combined, how, and what came out, signed by the
//! aggregator and hash-linked to the previous manifest, so anyone can walk the chain and
//! recompute every round.

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::signed::Record;
use crate::content::Cid;

/// One update that counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// Its author.
    #[serde(with = "super::peer_bytes")]
    pub peer: PeerId,
    /// The signed announcement (a block).
    pub announcement: Cid,
    /// The update file.
    pub update: Cid,
    /// Samples behind it.
    pub samples: u64,
    /// Its weight in the aggregate (samples over all samples for FedAvg).
    pub weight: f64,
    /// Credits earned: samples x epochs x training FLOPs per sample.
    pub credits: u64,
    /// Sample-level DP: the epsilon its author's data has spent through this round (records
    /// without it: no sample-level DP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
}

/// An update that was announced in time but did not count, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// Its author.
    #[serde(with = "super::peer_bytes")]
    pub peer: PeerId,
    /// The signed announcement (a block).
    pub announcement: Cid,
    /// The update file.
    pub update: Cid,
    /// Why (the aggregator's reason).
    pub reason: String,
}

/// Test-set figures of the new model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Fraction of test images classified right.
    pub test_accuracy: f64,
    /// Mean cross-entropy on the test set.
    pub test_loss: f64,
}

/// The record of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The task.
    pub task: Cid,
    /// The round (1-based).
    pub round: u32,
    /// The previous round's manifest (`None` for round 1).
    pub prev: Option<Cid>,
    /// The model the round started from.
    pub base_model: Cid,
    /// The model the round produced.
    pub model: Cid,
    /// The rule, by its name.
    pub rule: String,
    /// Server state after the round, for rules that carry one (FedAdam, ...).
    pub server_state: Option<Cid>,
    /// The updates that counted, in aggregation order.
    pub contributions: Vec<Contribution>,
    /// The updates that did not.
    pub rejected: Vec<Rejected>,
    /// Privacy spent so far (epsilon at `delta`), when the task uses DP: at the sample level
    /// the largest of the contributions' own.
    pub epsilon: Option<f64>,
    /// The delta of `epsilon`.
    pub delta: Option<f64>,
    /// Test figures of the model, when the aggregator had them before signing (ours publish
    /// them after, as an [`Evaluation`](super::Evaluation), so the next round need not wait).
    pub metrics: Option<Metrics>,
    /// The aggregator's rank for this round (0 unless it took over).
    pub rank: u32,
}

impl Record for Manifest {
    const DOMAIN: &'static str = "fl/manifest/1:";
}

impl Manifest {
    /// The record that ranks this round's aggregators: the previous manifest, or the task.
    pub fn rank_anchor(&self) -> Cid {
        self.prev.unwrap_or(self.task)
    }

    /// Credits of this round per peer.
    pub fn credits(&self) -> impl Iterator<Item = (PeerId, u64)> + '_ {
        self.contributions.iter().map(|c| (c.peer, c.credits))
    }
}
