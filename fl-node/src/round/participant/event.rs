//! The progress events a participant reports, one JSON line each.

use serde::Serialize;

/// What happened, for progress output (one JSON line each).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The node joined the task.
    Joined {
        /// This node.
        peer: String,
        /// The task.
        task: String,
        /// The task's rounds.
        rounds: u32,
        /// The first round this node will work on.
        from_round: u32,
    },
    /// Local training finished and the update was announced.
    Announced {
        /// The round.
        round: u32,
        /// The update file.
        update: String,
        /// Training samples.
        samples: u64,
        /// Seconds of local training.
        train_seconds: f64,
        /// Sample-level DP: the epsilon this node's data has spent, this round included.
        #[serde(skip_serializing_if = "Option::is_none")]
        epsilon: Option<f64>,
        /// In a task with a population: the sampled clients this node trained, in turn.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        clients: Vec<u64>,
        /// Under capacity load: the local steps this node took, when not the task's.
        #[serde(skip_serializing_if = "Option::is_none")]
        steps: Option<u32>,
    },
    /// In a task with a population: none of the clients this node hosts was sampled for
    /// the round, so it trains nothing and follows the round's manifest.
    NotSampled {
        /// The round.
        round: u32,
        /// Clients the round sampled.
        sampled: usize,
    },
    /// The update this node announced for the round before (before a restart, or before
    /// it went back to a better manifest of the round before) was announced again: still
    /// one update a round.
    AnnouncedAgain {
        /// The round.
        round: u32,
        /// The update file.
        update: String,
    },
    /// This node is aggregating the round.
    Aggregating {
        /// The round.
        round: u32,
        /// Its rank.
        rank: u32,
        /// Updates it aggregates.
        updates: usize,
    },
    /// A manifest did not hold up and was ignored.
    Refuted {
        /// The round.
        round: u32,
        /// The manifest.
        manifest: String,
        /// Why.
        reason: String,
    },
    /// A manifest leaves out an update this node had in time (fair inclusion): not adopted,
    /// and its aggregator passed over for the round; the fork choice prefers a manifest that
    /// counts more.
    Contested {
        /// The round.
        round: u32,
        /// The manifest.
        manifest: String,
        /// Who signed it.
        aggregator: String,
        /// An announcement it leaves out.
        left_out: String,
    },
    /// A better-ranked manifest for a round already adopted was checked and is followed now.
    Switched {
        /// The round.
        round: u32,
        /// The manifest now followed.
        manifest: String,
        /// Its aggregator's rank.
        rank: u32,
        /// Updates that counted.
        participants: usize,
    },
    /// A manifest was checked before its adoption: its claims, and, if this node drew it (or
    /// recomputes every manifest), a recomputation from its updates.
    Checked {
        /// The round.
        round: u32,
        /// The manifest.
        manifest: String,
        /// Whether it was recomputed.
        recomputed: bool,
        /// Whether it held up.
        valid: bool,
        /// Seconds the check took (fetching the updates included).
        seconds: f64,
    },
    /// The round's manifest was checked and adopted.
    Adopted {
        /// The round.
        round: u32,
        /// The manifest.
        manifest: String,
        /// The new model.
        model: String,
        /// Who aggregated.
        aggregator: String,
        /// Its rank.
        rank: u32,
        /// Updates that counted.
        participants: usize,
        /// Test accuracy of the new model, if the task has a test set.
        accuracy: Option<f64>,
        /// Test loss.
        loss: Option<f64>,
        /// Privacy spent so far.
        epsilon: Option<f64>,
        /// Seconds from the round's start here to taking its manifest: the next round
        /// trains from then on, while the manifest is recomputed.
        seconds: f64,
        /// Seconds of this node's local training in the round (0 when it did not train).
        train_seconds: f64,
    },
    /// The aggregator's evaluation of an adopted round's model arrived (it comes after the
    /// manifest, so the next round does not wait for the test pass).
    Evaluated {
        /// The round.
        round: u32,
        /// Its manifest.
        manifest: String,
        /// Test accuracy of its model.
        accuracy: f64,
        /// Test loss.
        loss: f64,
    },
    /// The task is over.
    Done {
        /// The final model.
        model: String,
        /// Rounds run.
        rounds: u32,
    },
}
