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
    /// Why, as a stable code.
    pub reason: RejectReason,
}

/// Why a round left an announced update out, as a stable code. A manifest holds the code and
/// never an error message, so rewording a message cannot change a manifest's bytes; the
/// detail goes to the logs of whoever aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A second update from the same author this round.
    DuplicateSender,
    /// Computed against another model than the round's.
    WrongBase,
    /// Claims no training samples.
    ZeroSamples,
    /// Its tensors do not have the model's names and shapes.
    Layout,
    /// It holds a NaN or an infinity.
    NonFinite,
    /// Its L2 norm exceeds the task's bound.
    NormTooLarge,
    /// Its file is not a tensor bundle.
    Unreadable,
    /// Its file is larger than the model's values as float32 plus room for a header: not an
    /// update of this model, and not read past that size.
    TooLarge,
    /// Its author did not serve it in time.
    Unavailable,
    /// Under secure aggregation: its masked update is not in the sum (masked against other
    /// members than the round's, not its author's, or not of the model's size and ring).
    Unmasked,
    /// A reason this version has no code for: the free text of a manifest made before reasons
    /// were codes, or a code of a newer version. Kept as written, so the record still loads
    /// and its signature verifies, but such a manifest cannot be recomputed here.
    Unknown(String),
}

impl RejectReason {
    /// Every reason this version has a code for.
    pub const KNOWN: [RejectReason; 10] = [
        RejectReason::DuplicateSender,
        RejectReason::WrongBase,
        RejectReason::ZeroSamples,
        RejectReason::Layout,
        RejectReason::NonFinite,
        RejectReason::NormTooLarge,
        RejectReason::Unreadable,
        RejectReason::TooLarge,
        RejectReason::Unavailable,
        RejectReason::Unmasked,
    ];

    /// Its code in manifests (`"non-finite"`), or the text of an unknown reason.
    pub fn code(&self) -> &str {
        match self {
            RejectReason::DuplicateSender => "duplicate-sender",
            RejectReason::WrongBase => "wrong-base",
            RejectReason::ZeroSamples => "zero-samples",
            RejectReason::Layout => "layout",
            RejectReason::NonFinite => "non-finite",
            RejectReason::NormTooLarge => "norm-too-large",
            RejectReason::Unreadable => "unreadable",
            RejectReason::TooLarge => "too-large",
            RejectReason::Unavailable => "unavailable",
            RejectReason::Unmasked => "unmasked",
            RejectReason::Unknown(text) => text,
        }
    }

    /// The reason a manifest's code names; [`RejectReason::Unknown`] for any other text.
    pub fn from_code(code: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|r| r.code() == code)
            .unwrap_or_else(|| RejectReason::Unknown(code.to_string()))
    }

    /// What it means, for people reading a manifest.
    pub fn meaning(&self) -> &'static str {
        match self {
            RejectReason::DuplicateSender => "a second update from the same author",
            RejectReason::WrongBase => "computed against another model than the round's",
            RejectReason::ZeroSamples => "claims no training samples",
            RejectReason::Layout => "its tensors do not have the model's names and shapes",
            RejectReason::NonFinite => "holds a NaN or an infinity",
            RejectReason::NormTooLarge => "its L2 norm exceeds the task's bound",
            RejectReason::Unreadable => "its file is not a tensor bundle",
            RejectReason::TooLarge => "its file is larger than any update of the model",
            RejectReason::Unavailable => "its author did not serve it in time",
            RejectReason::Unmasked => "its masked update is not one the secure sum can take",
            RejectReason::Unknown(_) => "a reason this version does not know",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for RejectReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for RejectReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Ok(Self::from_code(&code))
    }
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
    /// Under secure aggregation: the [`SecureRecord`](super::SecureRecord) file, which
    /// with the contributions' masked updates gives the round's sum (records without it:
    /// the updates are public files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<Cid>,
}

impl Manifest {
    /// The announcements whose updates it calls unavailable: left out without being read, so
    /// a check does not fetch them either.
    pub fn unavailable(&self) -> std::collections::HashSet<Cid> {
        self.rejected
            .iter()
            .filter(|r| r.reason == RejectReason::Unavailable)
            .map(|r| r.announcement)
            .collect()
    }
}

impl Record for Manifest {
    const DOMAIN: &'static str = "fl/manifest/1:";
}

impl Manifest {
    /// A manifest of `round` that counts no update and keeps the model it starts from (no
    /// round closes on one: it is what a flooding attacker or a test signs).
    pub fn counting_nothing(
        task: Cid,
        round: u32,
        prev: Option<Cid>,
        model: Cid,
        rule: impl Into<String>,
        rank: u32,
    ) -> Self {
        Manifest {
            task,
            round,
            prev,
            base_model: model,
            model,
            rule: rule.into(),
            server_state: None,
            contributions: Vec::new(),
            rejected: Vec::new(),
            epsilon: None,
            delta: None,
            metrics: None,
            rank,
            secure: None,
        }
    }

    /// The record that ranks this round's aggregators: the previous manifest, or the task.
    pub fn rank_anchor(&self) -> Cid {
        self.prev.unwrap_or(self.task)
    }

    /// Credits of this round per peer.
    pub fn credits(&self) -> impl Iterator<Item = (PeerId, u64)> + '_ {
        self.contributions.iter().map(|c| (c.peer, c.credits))
    }
}
