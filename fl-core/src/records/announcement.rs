//! A node's announcement of its update for a round: small enough to gossip whole, signed, and
//! stored as a block so a manifest can link to it.

use serde::{Deserialize, Serialize};

use super::population::ClientId;
use super::signed::Record;
use crate::content::Cid;

/// "I trained on `samples` examples for `epochs` epochs from `base` and my update is `update`."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// The task.
    pub task: Cid,
    /// The round (1-based).
    pub round: u32,
    /// The model the update was computed from.
    pub base: Cid,
    /// The update file (safetensors, local minus global, clipped and noised when the task
    /// asks for DP).
    pub update: Cid,
    /// Training samples behind it (its weight in FedAvg).
    pub samples: u64,
    /// Local epochs.
    pub epochs: u32,
    /// Sample-level DP: the epsilon this node's data has spent, this round included, at the
    /// task's delta (records without it: no sample-level DP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// In a task with a population: the sampled clients this node hosts whose updates it
    /// averaged (by their samples) into `update`, in increasing order; `samples` is the sum
    /// of theirs, so the round stays FedAvg over clients (records without it: no population).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientId>,
    /// Under capacity load: the local steps taken, when not the task's (the update is
    /// scaled to the task's steps, and `samples` counts those). Records without it: the
    /// task's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Under capacity load: the images a second this node trained at this round, for the
    /// next round's shares. Only ever compared against the median of everyone's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
}

impl Record for Announcement {
    const DOMAIN: &'static str = "fl/announcement/1:";
}
