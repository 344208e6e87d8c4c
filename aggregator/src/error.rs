//! Why a round could not be aggregated (as opposed to why one update was rejected, which is
//! a [`crate::Rejection`] and never stops the round).

use cid::Cid;
use fl_core::tensors::TensorError;

use crate::config::ConfigError;
use crate::contribution::NodeId;

/// A failure that stops an aggregation: bad configuration, bad server state, too few updates,
/// or a caller that broke the contract (unvalidated or unordered input).
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// Nothing valid was left to aggregate.
    #[error("no valid contributions to aggregate")]
    NoContributions,
    /// A contribution does not have the model's tensor names and shapes.
    #[error("update {update} from {sender}: {problem}")]
    Layout {
        /// Its sender.
        sender: NodeId,
        /// Its CID.
        update: Cid,
        /// Which tensor differs, and how.
        problem: TensorError,
    },
    /// Two contributions from one sender reached a rule (validation removes these).
    #[error("two updates from {sender} ({first} and {second}): one update per sender per round")]
    DuplicateSender {
        /// The sender.
        sender: NodeId,
        /// The update kept first.
        first: Cid,
        /// The other update.
        second: Cid,
    },
    /// A contribution was offered out of the aggregation order.
    #[error(
        "update {update} from {sender} offered after one from {previous}: offer updates sorted by sender, then update CID"
    )]
    OutOfOrder {
        /// Its sender.
        sender: NodeId,
        /// Its CID.
        update: Cid,
        /// The sender of the update offered before it.
        previous: NodeId,
    },
    /// Multi-Krum needs more updates than it got.
    #[error("krum with f = {f} needs at least {needed} updates (n > 2f + 2), got {n}")]
    TooFewForKrum {
        /// Byzantine updates tolerated.
        f: usize,
        /// Updates given.
        n: usize,
        /// Updates needed.
        needed: usize,
    },
    /// Multi-Krum was asked to keep more updates than it may.
    #[error("krum with f = {f} keeps at most n - f = {max} of {n} updates, m = {m} asked")]
    KrumSelection {
        /// Byzantine updates tolerated.
        f: usize,
        /// Updates to keep.
        m: usize,
        /// Updates given.
        n: usize,
        /// Most that may be kept.
        max: usize,
    },
    /// The server state belongs to another rule.
    #[error("server state is for {found}, the rule is {expected}")]
    StateRule {
        /// The rule aggregating.
        expected: &'static str,
        /// The rule named in the state.
        found: String,
    },
    /// The server state does not fit the model.
    #[error("server state for {rule}: {problem}")]
    StateLayout {
        /// The rule aggregating.
        rule: &'static str,
        /// Which tensor differs, and how.
        problem: TensorError,
    },
    /// A contribution claims zero samples, so it has no weight (validation removes these).
    #[error("update {update} from {sender} claims 0 samples")]
    ZeroSamples {
        /// Its sender.
        sender: NodeId,
        /// Its CID.
        update: Cid,
    },
    /// The new model or state could not be assembled.
    #[error("assembling the result: {0}")]
    Assemble(TensorError),
    /// The sample counts add up past `u64::MAX`.
    #[error("the updates' sample counts add up past {}", u64::MAX)]
    SamplesOverflow,
    /// The rule's parameters are out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
}
