//! Who sent what: node ids and the contributions a round aggregates.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use cid::Cid;
use fl_core::tensors::Bundle;
use serde::{Deserialize, Serialize};

/// A node's identity as text (a libp2p peer id in base58 once fl-core has one).
///
/// Ordered bytewise: that order is the fixed order in which updates are summed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// A node id from its text form.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// One node's update for a round, with what its announcement says about it.
#[derive(Debug, Clone)]
pub struct Contribution {
    /// Who sent it.
    pub sender: NodeId,
    /// The CID of the update file.
    pub cid: Cid,
    /// The CID of the model the update was computed against.
    pub base: Cid,
    /// Training samples behind the update: its weight in FedAvg.
    pub samples: u64,
    /// The update itself, local minus global, tensor by tensor (shared: cheap to clone).
    pub delta: Arc<Bundle>,
}

impl Contribution {
    /// A contribution from its parts.
    pub fn new(
        sender: impl Into<NodeId>,
        cid: Cid,
        base: Cid,
        samples: u64,
        delta: impl Into<Arc<Bundle>>,
    ) -> Self {
        Self {
            sender: sender.into(),
            cid,
            base,
            samples,
            delta: delta.into(),
        }
    }

    /// The key that fixes the aggregation order: sender, then update CID.
    pub fn order_key(&self) -> (&NodeId, &Cid) {
        (&self.sender, &self.cid)
    }
}

/// Sorts contributions into the aggregation order (sender, then update CID).
pub fn sort_contributions(contributions: &mut [Contribution]) {
    contributions.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
}
