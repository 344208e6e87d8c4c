//! What a simulation reports: progress events as they happen, folded into one row per
//! round, and the report at the end.

use std::collections::{BTreeMap, HashMap};

use fl_core::records::task::scored_round;
use fl_node::round::Event;
use libp2p::PeerId;
use serde::Serialize;

use crate::Plan;

/// Progress, in order (as JSON, `type` says which).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Progress {
    /// The task is out and the nodes are starting.
    Started {
        /// The task record.
        task: String,
        /// The dataset manifest.
        dataset: String,
        /// Nodes.
        nodes: usize,
        /// Rounds.
        rounds: u32,
        /// Bytes of one model file.
        model_bytes: u64,
        /// Bytes of one update file, its metadata aside (as large as a model in float32,
        /// about a quarter in int8).
        update_bytes: u64,
        /// The noise multiplier the privacy target needs, if any.
        noise_multiplier: Option<f64>,
    },
    /// Something happened at one node.
    Node {
        /// The node's index.
        node: usize,
        /// Seconds since the run started (for timelines).
        at: f64,
        /// What.
        #[serde(flatten)]
        event: Event,
    },
    /// A node stopped (fault injection).
    Failed {
        /// The node.
        node: usize,
        /// The round it stopped in.
        round: u32,
    },
    /// A node ended with an error (the others go on).
    Errored {
        /// The node.
        node: usize,
        /// Why.
        reason: String,
    },
    /// A round is over: its figures.
    Round(RoundRow),
}

/// One round's figures, as the table shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoundRow {
    /// The round.
    pub round: u32,
    /// Updates that counted.
    pub participants: usize,
    /// The node that aggregated it.
    pub aggregator: Option<usize>,
    /// Its rank in the round's ranking.
    pub rank: u32,
    /// Test accuracy of the round's model.
    pub accuracy: Option<f64>,
    /// Test loss.
    pub loss: Option<f64>,
    /// Privacy spent so far.
    pub epsilon: Option<f64>,
    /// Bitswap bytes all nodes sent since the round before was first adopted.
    pub bytes_sent: u64,
    /// Seconds from the round before's first adoption (the start, for round 1) to this
    /// round's.
    pub seconds: f64,
    /// Seconds since the simulation's nodes started.
    pub elapsed: f64,
    /// The round's manifest.
    pub manifest: String,
    /// The round's model.
    pub model: String,
}

/// How the simulation ended.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The task.
    pub task: String,
    /// The final model most nodes ended with.
    pub model: String,
    /// Nodes that ended with it.
    pub agreeing: usize,
    /// Nodes that finished (not failed, no error).
    pub finished: usize,
    /// Every round's figures.
    pub rounds: Vec<RoundRow>,
    /// Bitswap bytes each node sent, by node.
    pub bytes_sent: Vec<u64>,
    /// Bitswap bytes each node received, by node.
    pub bytes_received: Vec<u64>,
    /// Seconds from the nodes' start to the end.
    pub seconds: f64,
    /// Peak resident memory of this process, bytes (Linux; 0 elsewhere).
    pub peak_memory: u64,
}

/// The rounds as the nodes report them, folded into one row each.
pub(crate) struct Book {
    rounds: u32,
    /// The task's scoring interval ([`fl_core::records::task::scored_round`]).
    evaluate_every: Option<u32>,
    by_peer: HashMap<PeerId, usize>,
    /// Rounds adopted by some node, waiting for their evaluation.
    open: BTreeMap<u32, RoundRow>,
    /// When the last row's round was first adopted, and the bytes sent by then.
    last: (f64, u64),
    pub(crate) rows: Vec<RoundRow>,
    /// The first round without a row.
    next: u32,
}

impl Book {
    pub(crate) fn new(plan: &Plan, by_peer: HashMap<PeerId, usize>) -> Self {
        Self {
            rounds: plan.rounds,
            evaluate_every: plan.evaluate_every,
            by_peer,
            open: BTreeMap::new(),
            last: (0.0, 0),
            rows: Vec::new(),
            next: 1,
        }
    }

    /// The round the federation is in: the one after the last adopted.
    pub(crate) fn open_round(&self) -> u32 {
        let adopted = self.open.keys().next_back().copied();
        adopted
            .map_or(self.next, |r| r + 1)
            .max(self.next)
            .min(self.rounds)
    }

    /// Takes in one node's event, `elapsed` seconds in with `sent` bytes sent by all
    /// nodes; returns the rows it completes.
    pub(crate) fn note(&mut self, event: &Event, elapsed: f64, sent: u64) -> Vec<RoundRow> {
        match event {
            Event::Adopted {
                round,
                manifest,
                model,
                aggregator,
                rank,
                participants,
                epsilon,
                ..
            } if *round >= self.next => {
                let row = self.open.entry(*round).or_insert_with(|| RoundRow {
                    round: *round,
                    participants: *participants,
                    aggregator: None,
                    rank: *rank,
                    accuracy: None,
                    loss: None,
                    epsilon: *epsilon,
                    bytes_sent: sent,
                    seconds: 0.0,
                    elapsed,
                    manifest: manifest.clone(),
                    model: model.clone(),
                });
                // The row follows the fork choice as far as events show it: more updates
                // counted, then (in place of the signer's place in the order) the lower rank.
                let better = (*participants, std::cmp::Reverse(*rank))
                    > (row.participants, std::cmp::Reverse(row.rank));
                if row.manifest != *manifest && better {
                    row.manifest = manifest.clone();
                    row.model = model.clone();
                    row.rank = *rank;
                    row.participants = *participants;
                    row.epsilon = *epsilon;
                    row.accuracy = None;
                    row.loss = None;
                }
                if row.manifest == *manifest {
                    row.aggregator = aggregator
                        .parse::<PeerId>()
                        .ok()
                        .and_then(|p| self.by_peer.get(&p).copied());
                }
                self.ready(false)
            }
            Event::Evaluated {
                round,
                manifest,
                accuracy,
                loss,
            } => {
                if let Some(row) = self.open.get_mut(round)
                    && row.manifest == *manifest
                {
                    row.accuracy = Some(*accuracy);
                    row.loss = Some(*loss);
                }
                self.ready(false)
            }
            _ => Vec::new(),
        }
    }

    /// Rows whose round has its evaluation (or is not scored), or whose round after next is adopted (the
    /// evaluation follows the manifest by seconds; one that has not come by then is not
    /// coming), or every row (`all`).
    pub(crate) fn ready(&mut self, all: bool) -> Vec<RoundRow> {
        let mut done = Vec::new();
        while let Some((&round, row)) = self.open.first_key_value() {
            let later = self.open.keys().any(|r| *r > round + 1);
            let unscored = !scored_round(self.evaluate_every, self.rounds, round);
            if !(all || row.accuracy.is_some() || later || unscored) {
                break;
            }
            let Some(mut row) = self.open.remove(&round) else {
                break;
            };
            let (since, bytes_then) = self.last;
            self.last = (row.elapsed, row.bytes_sent);
            row.seconds = row.elapsed - since;
            row.bytes_sent = row.bytes_sent.saturating_sub(bytes_then);
            self.next = round + 1;
            self.rows.push(row.clone());
            done.push(row);
        }
        done
    }
}

/// Peak resident memory of this process (VmHWM), bytes; 0 where unknown.
pub fn peak_memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
