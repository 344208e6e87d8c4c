//! Checks on each update before it counts: one update per sender, the right base model,
//! samples > 0, the model's tensor names and shapes, finite values, an L2 norm within the
//! bound. A failing update becomes a [`Rejection`] (returned and logged); it never stops the
//! round, and the result from the valid updates is the same with or without it.
//!
//! Checks run in that order, cheapest first; the first failure is the reason given. Among
//! several updates from one sender, only the first in aggregation order (sender, then
//! update CID) is considered, whatever its fate; the others are duplicates. That keeps the
//! outcome independent of arrival order.

use std::collections::BTreeMap;

use cid::Cid;
use fl_core::records::RejectReason;
use fl_core::tensors::{Bundle, TensorError};

use crate::contribution::{Contribution, NodeId, sort_contributions};
use crate::math;

/// Why an update was not counted.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The sender already has an update in this round.
    #[error(
        "update {update} from {sender}: a second update from this sender (the first is {kept})"
    )]
    DuplicateSender {
        /// Its sender.
        sender: NodeId,
        /// Its CID.
        update: Cid,
        /// The sender's update that is considered.
        kept: Cid,
    },
    /// It was computed against another model.
    #[error(
        "update {update} from {sender}: computed against model {actual}, the round's model is {expected}"
    )]
    WrongBase {
        /// Its sender.
        sender: NodeId,
        /// Its CID.
        update: Cid,
        /// The round's model.
        expected: Cid,
        /// The model the update names.
        actual: Cid,
    },
    /// It claims no training samples, so it has no weight.
    #[error("update {update} from {sender}: claims 0 samples")]
    ZeroSamples {
        /// Its sender.
        sender: NodeId,
        /// Its CID.
        update: Cid,
    },
    /// Its tensors do not have the model's names and shapes.
    #[error("update {update} from {sender}: {problem}")]
    Layout {
        /// Its sender.
        sender: NodeId,
        /// Its CID.
        update: Cid,
        /// Which tensor differs, and how.
        problem: TensorError,
    },
    /// It holds a NaN or an infinity.
    #[error("update {update} from {sender}: tensor {tensor} holds {value} at index {index}")]
    NonFinite {
        /// Its sender.
        sender: NodeId,
        /// Its CID.
        update: Cid,
        /// The first tensor with a non-finite value.
        tensor: String,
        /// The value's index within the tensor (row-major).
        index: usize,
        /// The value.
        value: f32,
    },
    /// Its L2 norm exceeds the bound.
    #[error("update {update} from {sender}: L2 norm {norm} exceeds the bound {bound}")]
    NormTooLarge {
        /// Its sender.
        sender: NodeId,
        /// Its CID.
        update: Cid,
        /// Its norm.
        norm: f64,
        /// The bound.
        bound: f64,
    },
}

impl Rejection {
    /// The update's sender.
    pub fn sender(&self) -> &NodeId {
        match self {
            Rejection::DuplicateSender { sender, .. }
            | Rejection::WrongBase { sender, .. }
            | Rejection::ZeroSamples { sender, .. }
            | Rejection::Layout { sender, .. }
            | Rejection::NonFinite { sender, .. }
            | Rejection::NormTooLarge { sender, .. } => sender,
        }
    }

    /// The update's CID.
    pub fn update(&self) -> &Cid {
        match self {
            Rejection::DuplicateSender { update, .. }
            | Rejection::WrongBase { update, .. }
            | Rejection::ZeroSamples { update, .. }
            | Rejection::Layout { update, .. }
            | Rejection::NonFinite { update, .. }
            | Rejection::NormTooLarge { update, .. } => update,
        }
    }

    /// The reason's stable code, as manifests record it.
    pub fn reason(&self) -> RejectReason {
        match self {
            Rejection::DuplicateSender { .. } => RejectReason::DuplicateSender,
            Rejection::WrongBase { .. } => RejectReason::WrongBase,
            Rejection::ZeroSamples { .. } => RejectReason::ZeroSamples,
            Rejection::Layout { .. } => RejectReason::Layout,
            Rejection::NonFinite { .. } => RejectReason::NonFinite,
            Rejection::NormTooLarge { .. } => RejectReason::NormTooLarge,
        }
    }
}

/// Checks a round's updates one at a time against the round's model; remembers senders.
#[derive(Debug)]
pub struct Validator<'g> {
    global: &'g Bundle,
    model: Cid,
    max_norm: Option<f64>,
    seen: BTreeMap<NodeId, Cid>,
}

impl<'g> Validator<'g> {
    /// A validator for updates to `global`, whose CID is `model`; `max_norm` bounds each
    /// update's L2 norm (`None`: no bound).
    pub fn new(global: &'g Bundle, model: Cid, max_norm: Option<f64>) -> Self {
        Self {
            global,
            model,
            max_norm,
            seen: BTreeMap::new(),
        }
    }

    /// Checks one update; on success, returns its L2 norm. Either way its sender has now
    /// had its one update this round. A rejection is logged (`tracing`, warn).
    pub fn check(&mut self, c: &Contribution) -> Result<f64, Rejection> {
        let verdict = self.verdict(c);
        if let Err(r) = &verdict {
            tracing::warn!(
                sender = %r.sender(),
                update = %r.update(),
                model = %self.model,
                reason = r.reason().code(),
                "update rejected: {r}"
            );
        }
        verdict
    }

    fn verdict(&mut self, c: &Contribution) -> Result<f64, Rejection> {
        let (sender, update) = (c.sender.clone(), c.cid);
        if let Some(kept) = self.seen.get(&c.sender) {
            return Err(Rejection::DuplicateSender {
                sender,
                update,
                kept: *kept,
            });
        }
        self.seen.insert(c.sender.clone(), c.cid);
        if c.base != self.model {
            return Err(Rejection::WrongBase {
                sender,
                update,
                expected: self.model,
                actual: c.base,
            });
        }
        if c.samples == 0 {
            return Err(Rejection::ZeroSamples { sender, update });
        }
        if let Err(problem) = self.global.check_layout(&c.delta) {
            return Err(Rejection::Layout {
                sender,
                update,
                problem,
            });
        }
        // One pass for both: a sum of squares of finite f32 values cannot overflow f64,
        // so the norm is finite exactly when every value is.
        let norm = math::norm(&c.delta);
        if !norm.is_finite() {
            let (tensor, index, value) = math::first_non_finite(&c.delta)
                .map(|(t, i, v)| (t.to_string(), i, v))
                .unwrap_or_default();
            return Err(Rejection::NonFinite {
                sender,
                update,
                tensor,
                index,
                value,
            });
        }
        if let Some(bound) = self.max_norm
            && norm > bound
        {
            return Err(Rejection::NormTooLarge {
                sender,
                update,
                norm,
                bound,
            });
        }
        Ok(norm)
    }
}

/// A round's updates after validation.
#[derive(Debug, Default)]
pub struct Screened {
    /// The updates that count, in aggregation order.
    pub accepted: Vec<Contribution>,
    /// The others, with their reasons, in aggregation order.
    pub rejected: Vec<Rejection>,
}

/// Validates a round's updates in aggregation order (see [`Validator::check`]).
pub fn screen(
    global: &Bundle,
    model: Cid,
    max_norm: Option<f64>,
    mut contributions: Vec<Contribution>,
) -> Screened {
    sort_contributions(&mut contributions);
    let mut validator = Validator::new(global, model, max_norm);
    let mut out = Screened::default();
    for c in contributions {
        match validator.check(&c) {
            Ok(_) => out.accepted.push(c),
            Err(r) => out.rejected.push(r),
        }
    }
    out
}
