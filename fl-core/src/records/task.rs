//! The task record (genesis): everything a node needs to join a training run and everything
//! a verifier needs to recompute it. Its CID names the task; gossip topics hang off it.

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::population::{Population, PopulationError, Sampling};
use super::secure::SecureAggregation;
use crate::content::dagcbor::{self, DagCborError};
use crate::content::{Block, Cid};
use crate::privacy::accountant::{self, AccountantError};
use crate::tensors::Encoding;

/// Smallest noise multiplier a task may name (the noise sampler's own floor, 2⁻⁴⁰).
pub const MIN_NOISE_MULTIPLIER: f64 = 1.0 / (1u64 << 40) as f64;

/// Version tag written in every task record.
pub const TASK_FORMAT: &str = "fl-task/1";

/// Where the nodes' training data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSource {
    /// Shards published under a dataset manifest (`fl data publish`): node i trains on shard i.
    Shards {
        /// The dataset manifest's CID.
        manifest: Cid,
    },
    /// Each node brings its own data; there is no shared test set.
    OwnData,
}

/// Local training settings every node uses. A setting this node does not know is refused,
/// not ignored: every node must train as the task says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Local epochs per round.
    pub epochs: u32,
    /// Batch size.
    pub batch_size: u32,
    /// Learning rate.
    pub learning_rate: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// FedProx proximal term (0 for FedAvg).
    pub proximal_mu: f64,
    /// How the learning rate falls from round to round (records without it: constant).
    #[serde(default, skip_serializing_if = "RoundSchedule::is_constant")]
    pub schedule: RoundSchedule,
    /// Local SGD steps per round in place of whole epochs: each node goes on where its last
    /// round stopped, with the next batches of its shuffled data and with its momentum
    /// (records without it: `epochs` epochs, momentum from zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// How the local steps are shared out (records without it: every node takes `steps`).
    #[serde(default, skip_serializing_if = "Load::is_equal")]
    pub load: Load,
}

/// How much local work each node takes in a round of local steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// Every node takes the task's `steps`: a round waits for the slowest node.
    #[default]
    Equal,
    /// Each node takes steps in proportion to its measured throughput against the median
    /// advertised in the last round (a quarter of `steps` to [`Load::MAX_FACTOR`] times
    /// it), stops early once half the members have announced, and
    /// scales its update by `steps` over the steps it took (FedNova's normalisation with the
    /// task's `steps` as the effective count), so its weight stays that of `steps`.
    Capacity,
}

impl Load {
    /// The most local steps a node takes under capacity load, as a multiple of `steps`.
    pub const MAX_FACTOR: u32 = 4;

    /// Whether every node takes the same steps.
    pub fn is_equal(&self) -> bool {
        *self == Load::Equal
    }

    /// The fewest local steps a node takes under capacity load in a task of `steps`: a
    /// quarter of them, one at least.
    pub fn least_steps(steps: u32) -> u32 {
        (steps / Self::MAX_FACTOR).max(1)
    }

    /// The local steps a node takes in a task of `steps` steps a round, its own throughput
    /// being `own` and the throughputs advertised in the round before (its own among them)
    /// `advertised`, in images per second: between a quarter of `steps` and
    /// [`Load::MAX_FACTOR`] times it, so no update is scaled by more than that. Values that
    /// are not finite and positive are ignored; without a throughput of its own or any to
    /// compare with, `steps`. Measured against the median, so a member that lies about its
    /// throughput moves every other member's share by one rank at most.
    pub fn local_steps(self, steps: u32, own: Option<f64>, advertised: &[f64]) -> u32 {
        let usable = |c: &f64| c.is_finite() && *c > 0.0;
        let (Load::Capacity, Some(own)) = (self, own.filter(usable)) else {
            return steps;
        };
        let mut seen: Vec<f64> = advertised.iter().copied().filter(usable).collect();
        if seen.is_empty() {
            return steps;
        }
        seen.sort_by(f64::total_cmp);
        let mid = seen.len() / 2;
        let median = match seen.len() % 2 {
            1 => seen[mid],
            _ => (seen[mid - 1] + seen[mid]) / 2.0,
        };
        let steps = steps.max(1);
        let least = Self::least_steps(steps);
        let most = steps.saturating_mul(Self::MAX_FACTOR);
        let share = (f64::from(steps) * own / median).round();
        // In range before the cast: `as` saturates, and NaN cannot occur (both positive).
        share.clamp(f64::from(least), f64::from(most)) as u32
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Load::Equal => "equal",
            Load::Capacity => "capacity",
        })
    }
}

/// A load written on a command line that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad load {text:?}: expected equal or capacity")]
pub struct BadLoad {
    /// The text given.
    pub text: String,
}

impl std::str::FromStr for Load {
    type Err = BadLoad;

    fn from_str(s: &str) -> Result<Self, BadLoad> {
        match s {
            "equal" => Ok(Load::Equal),
            "capacity" => Ok(Load::Capacity),
            _ => Err(BadLoad { text: s.into() }),
        }
    }
}

/// How the local learning rate changes from round to round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoundSchedule {
    /// The task's rate in every round.
    #[default]
    Constant,
    /// Cosine annealing over the rounds, the federated form of a centralized run's cosine
    /// schedule: round r of R trains at rate x (1 + cos(pi (r - 1/2) / R)) / 2.
    Cosine,
}

impl RoundSchedule {
    /// Whether the rate stays the same.
    pub fn is_constant(&self) -> bool {
        *self == RoundSchedule::Constant
    }

    /// The local learning rate of round `round` (1-based) of `rounds`.
    pub fn rate(&self, base: f64, round: u32, rounds: u32) -> f64 {
        match self {
            RoundSchedule::Constant => base,
            RoundSchedule::Cosine => {
                let t = (f64::from(round) - 0.5) / f64::from(rounds.max(1));
                base * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos()) / 2.0
            }
        }
    }
}

impl std::fmt::Display for RoundSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoundSchedule::Constant => "constant",
            RoundSchedule::Cosine => "cosine",
        })
    }
}

/// A round schedule written on a command line that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad round schedule {text:?}: expected constant or cosine")]
pub struct BadRoundSchedule {
    /// The text given.
    pub text: String,
}

impl std::str::FromStr for RoundSchedule {
    type Err = BadRoundSchedule;

    fn from_str(s: &str) -> Result<Self, BadRoundSchedule> {
        match s {
            "constant" => Ok(RoundSchedule::Constant),
            "cosine" => Ok(RoundSchedule::Cosine),
            _ => Err(BadRoundSchedule { text: s.into() }),
        }
    }
}

/// What a task's differential privacy protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DpLevel {
    /// A node's whole update (DP-FedAvg): clipped to `clip_norm` and noised once per round at
    /// the node. Needs many clients per round to learn. Records without a level mean this.
    #[default]
    Client,
    /// Each training example (DP-SGD): every local step clips each example's gradient and
    /// noises their sum; each node states its own epsilon.
    Sample,
}

impl DpLevel {
    /// Its name in records and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DpLevel::Client => "client",
            DpLevel::Sample => "sample",
        }
    }
}

impl std::fmt::Display for DpLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which datasets count as neighbours in the (epsilon, delta) a task states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Neighbours {
    /// One unit (a client, or an example) added or removed: sensitivity `C`. Records without
    /// the field mean this.
    #[default]
    AddRemove,
    /// One unit's data replaced by any other: the clipped contribution can move by `2C`, so
    /// epsilon is accounted at half the noise multiplier. Client level only (the
    /// Poisson-subsampled accountant of DP-SGD is for add/remove).
    ReplaceOne,
}

impl Neighbours {
    /// Its name in records and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Neighbours::AddRemove => "add-remove",
            Neighbours::ReplaceOne => "replace-one",
        }
    }
}

impl std::fmt::Display for Neighbours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Differential privacy: at the client level each update is clipped to `clip_norm` and
/// noised with N(0, (noise_multiplier * clip_norm)^2) per coordinate; at the sample level each
/// node runs DP-SGD with that clip norm and noise multiplier on every local step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpParams {
    /// L2 bound of an update (client level) or of one example's gradient (sample level).
    pub clip_norm: f64,
    /// Noise standard deviation over the bound.
    pub noise_multiplier: f64,
    /// The delta epsilon is reported at.
    pub delta: f64,
    /// What is protected (records without it: the client level). Tasks made by this version
    /// always name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<DpLevel>,
    /// The neighbouring relation epsilon is for (records without it: add-remove). Tasks made
    /// by this version always name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbours: Option<Neighbours>,
    /// Sample level: the epsilon each node may spend; a node whose next round would take it
    /// past stops contributing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_budget: Option<f64>,
}

impl DpParams {
    /// What is protected.
    pub fn level(&self) -> DpLevel {
        self.level.unwrap_or_default()
    }

    /// The neighbouring relation epsilon is for.
    pub fn neighbours(&self) -> Neighbours {
        self.neighbours.unwrap_or_default()
    }

    /// Client level: epsilon after `round` rounds in which each client takes part with
    /// probability `q` (1 without a population: every node's update is noised every round;
    /// a population's Poisson sampling rate otherwise), over dp-accounting's orders.
    pub fn client_epsilon(&self, round: u32, q: f64) -> Result<f64, AccountantError> {
        let z = match self.neighbours() {
            Neighbours::AddRemove => self.noise_multiplier,
            // Sensitivity 2C: the same mechanism at half the noise multiplier.
            Neighbours::ReplaceOne => self.noise_multiplier / 2.0,
        };
        accountant::epsilon_for(q, z, u64::from(round), self.delta)
    }

    /// Sample level: the epsilon of a node with `samples` examples once it has trained in
    /// rounds 1 to `round` with `train`'s settings (DP-SGD's sampling rate and steps, over
    /// the orders Opacus and dp-accounting share). A node that skipped rounds spent less.
    pub fn sample_epsilon(
        &self,
        train: &TrainParams,
        samples: u64,
        round: u32,
    ) -> Result<f64, AccountantError> {
        let batch = u64::from(train.batch_size);
        let q = accountant::dp_sgd_sampling_rate(samples, batch);
        let per_round = match train.steps {
            Some(steps) => u64::from(steps),
            None => u64::from(train.epochs).saturating_mul(samples.div_ceil(batch.max(1)).max(1)),
        };
        accountant::dp_sgd_epsilon(
            q,
            self.noise_multiplier,
            per_round.saturating_mul(u64::from(round)),
            self.delta,
        )
    }
}

/// A training task. A field this node does not know (a newer version's setting) is refused
/// at decoding, so that no node runs a task other than the one its CID names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// [`TASK_FORMAT`].
    pub format: String,
    /// A name for people.
    pub name: String,
    /// The model's architecture by name (`fedavg-cnn`).
    pub architecture: String,
    /// The initial model file.
    pub initial_model: Cid,
    /// The training data.
    pub data: DataSource,
    /// Local training.
    pub train: TrainParams,
    /// Rounds to run.
    pub rounds: u32,
    /// Fewest updates a round may close with.
    pub min_participants: u32,
    /// Milliseconds after a round opens when it closes with whatever arrived.
    pub round_deadline_ms: u64,
    /// Milliseconds each next-ranked aggregator waits for the one before it.
    pub grace_ms: u64,
    /// DP settings, if any.
    pub dp: Option<DpParams>,
    /// The aggregation rule (`fedavg`, `median`, ...: the aggregator's names).
    pub rule: String,
    /// Who may join: `None` for anyone, else these peers.
    #[serde(with = "super::peers_bytes")]
    pub members: Option<Vec<PeerId>>,
    /// Training FLOPs per sample of the architecture, for credits.
    pub flops_per_sample: u64,
    /// Seed for data order and noise streams.
    pub seed: u64,
    /// How nodes write their updates (records without it: float32).
    #[serde(default, skip_serializing_if = "Encoding::is_f32")]
    pub update_encoding: Encoding,
    /// The most examples one update may claim, for tasks whose members bring their own data
    /// (it bounds each member's FedAvg weight and credits; a sharded task's bound is its
    /// largest shard). Records without it: no bound beyond the protocol's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples: Option<u64>,
    /// Clients apart from the peers, a sample of them training each round (records without
    /// it: each member is one client that trains every round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub population: Option<Population>,
    /// The round's aggregator scores the new model on the test set every this many rounds
    /// and after the last (records without it: every round). Scoring shares the machine
    /// with the next round's training, so short rounds score less often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate_every: Option<u32>,
    /// Secure aggregation: members publish masked updates and a round reveals only their
    /// sum (records without it: updates are public files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<SecureAggregation>,
}

/// Whether round `round` of `rounds` is scored when scoring every `every` rounds (and after
/// the last; `None`: every round).
pub fn scored_round(every: Option<u32>, rounds: u32, round: u32) -> bool {
    match every {
        None | Some(0 | 1) => true,
        Some(every) => round == rounds || round.is_multiple_of(every),
    }
}

/// What is wrong with a task.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A setting is out of range.
    #[error("task: {field} = {value}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// Its population of clients cannot be run.
    #[error("task: population: {0}")]
    Population(#[from] PopulationError),
    /// Its secure aggregation cannot keep its guarantees.
    #[error("task: secure aggregation: {0}")]
    Secure(#[from] crate::secagg::SecAggError),
    /// The record could not be encoded or decoded.
    #[error(transparent)]
    DagCbor(#[from] DagCborError),
}

pub(super) fn invalid(
    field: &'static str,
    value: impl ToString,
    reason: &'static str,
) -> TaskError {
    TaskError::Invalid {
        field,
        value: value.to_string(),
        reason,
    }
}

impl Task {
    /// Checks every setting; a task that passes can be run.
    pub fn validate(&self) -> Result<(), TaskError> {
        if self.format != TASK_FORMAT {
            return Err(invalid("format", &self.format, "unknown task format"));
        }
        if self.max_samples == Some(0) {
            return Err(invalid("max_samples", 0, "must be at least 1"));
        }
        if self.evaluate_every == Some(0) {
            return Err(invalid("evaluate_every", 0, "must be at least 1"));
        }
        let t = &self.train;
        if t.epochs == 0 {
            return Err(invalid("epochs", t.epochs, "must be at least 1"));
        }
        if let Some(steps) = t.steps {
            if !(1..=1_000_000).contains(&steps) {
                return Err(invalid("steps", steps, "must be in [1, 1,000,000]"));
            }
            if t.epochs != 1 {
                return Err(invalid("epochs", t.epochs, "must be 1 when steps is set"));
            }
        }
        if t.load == Load::Capacity {
            if t.steps.is_none() {
                return Err(invalid(
                    "load",
                    t.load,
                    "shares out local steps: the task needs steps",
                ));
            }
            if self
                .dp
                .as_ref()
                .is_some_and(|dp| dp.level() == DpLevel::Sample)
            {
                return Err(invalid(
                    "load",
                    t.load,
                    "sample-level DP accounts every node at the task's steps a round",
                ));
            }
        }
        if t.batch_size == 0 {
            return Err(invalid("batch_size", t.batch_size, "must be at least 1"));
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return Err(invalid("learning_rate", t.learning_rate, "must be > 0"));
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(invalid("momentum", t.momentum, "must be in [0, 1)"));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(invalid("weight_decay", t.weight_decay, "must be >= 0"));
        }
        if !(t.proximal_mu.is_finite() && t.proximal_mu >= 0.0) {
            return Err(invalid("proximal_mu", t.proximal_mu, "must be >= 0"));
        }
        if self.rounds == 0 {
            return Err(invalid("rounds", self.rounds, "must be at least 1"));
        }
        if self.min_participants == 0 {
            return Err(invalid("min_participants", 0, "must be at least 1"));
        }
        if let Some(members) = &self.members
            && (members.len() as u64) < u64::from(self.min_participants)
        {
            return Err(invalid(
                "min_participants",
                self.min_participants,
                "is more than the task's members",
            ));
        }
        // A week at most: deadlines are added to clocks, which must not overflow.
        const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
        if self.round_deadline_ms == 0 || self.round_deadline_ms > WEEK_MS {
            return Err(invalid(
                "round_deadline_ms",
                self.round_deadline_ms,
                "must be in (0, a week]",
            ));
        }
        if self.grace_ms > WEEK_MS {
            return Err(invalid("grace_ms", self.grace_ms, "must be at most a week"));
        }
        if self.rounds > 1_000_000 {
            return Err(invalid("rounds", self.rounds, "must be at most 1,000,000"));
        }
        if let Some(population) = &self.population {
            self.validate_population(population)?;
        }
        if let Some(secure) = &self.secure {
            self.validate_secure(secure)?;
        }
        if let Some(dp) = &self.dp {
            if !(dp.clip_norm.is_finite() && dp.clip_norm > 0.0) {
                return Err(invalid("dp.clip_norm", dp.clip_norm, "must be > 0"));
            }
            // Zero noise is no privacy: its epsilon is infinite and no manifest could state it.
            if !(dp.noise_multiplier.is_finite() && dp.noise_multiplier >= MIN_NOISE_MULTIPLIER) {
                return Err(invalid(
                    "dp.noise_multiplier",
                    dp.noise_multiplier,
                    "must be a finite number > 0 (zero noise gives no privacy)",
                ));
            }
            if !(dp.delta > 0.0 && dp.delta < 1.0) {
                return Err(invalid("dp.delta", dp.delta, "must be in (0, 1)"));
            }
            if dp.level() == DpLevel::Sample && dp.neighbours() == Neighbours::ReplaceOne {
                return Err(invalid(
                    "dp.neighbours",
                    dp.neighbours(),
                    "sample-level DP is accounted for add-remove neighbours (Poisson sampling)",
                ));
            }
            if let Some(budget) = dp.epsilon_budget
                && !(budget.is_finite() && budget > 0.0)
            {
                return Err(invalid(
                    "dp.epsilon_budget",
                    budget,
                    "must be a finite number > 0",
                ));
            }
            let epsilon = match dp.level() {
                DpLevel::Client => dp.client_epsilon(self.rounds, self.client_rate()),
                DpLevel::Sample => dp.sample_epsilon(t, u64::from(t.batch_size), self.rounds),
            };
            if !epsilon.is_ok_and(f64::is_finite) {
                return Err(invalid(
                    "dp",
                    format!(
                        "noise multiplier {} over {} rounds",
                        dp.noise_multiplier, self.rounds
                    ),
                    "gives an infinite epsilon",
                ));
            }
        }
        Ok(())
    }

    /// A population needs what deals its clients out: members to host them, a published
    /// dataset to partition, and rounds that start each sampled client afresh.
    fn validate_population(&self, population: &Population) -> Result<(), TaskError> {
        population.validate()?;
        let Some(members) = self.members.as_ref().filter(|m| !m.is_empty()) else {
            return Err(invalid(
                "population",
                population.clients,
                "clients are hosted by the task's members: name them (--members)",
            ));
        };
        let hosts = (members.len() as u64).min(u64::from(population.per_round));
        if u64::from(self.min_participants) > hosts {
            return Err(invalid(
                "min_participants",
                self.min_participants,
                "is more than the members that can host a round's sampled clients",
            ));
        }
        if self.data == DataSource::OwnData {
            return Err(invalid(
                "population",
                population.clients,
                "clients are dealt the images of a published dataset: the task needs one",
            ));
        }
        if self.train.steps.is_some() {
            return Err(invalid(
                "steps",
                self.train.steps.unwrap_or(0),
                "a sampled client trains whole epochs from the round's model: local steps carry a node's state from round to round",
            ));
        }
        if let Some(dp) = &self.dp {
            if dp.level() == DpLevel::Sample {
                return Err(invalid(
                    "dp.level",
                    dp.level(),
                    "sample-level DP is not built for populations: use client-level DP (DP-FedAvg over the sampled clients)",
                ));
            }
            if population.sampling != Sampling::Poisson {
                return Err(invalid(
                    "population.sampling",
                    "fixed",
                    "client-level DP over a population samples each client on its own (poisson), as its accountant assumes",
                ));
            }
            if dp.neighbours() != Neighbours::AddRemove {
                return Err(invalid(
                    "dp.neighbours",
                    dp.neighbours(),
                    "client-level DP over a population is accounted for add-remove neighbours (Poisson sampling)",
                ));
            }
        }
        Ok(())
    }

    /// The chance a client takes part in a round, for the client-level accountant: a
    /// population's Poisson rate `per_round / clients`, else 1 (every member every round).
    pub fn client_rate(&self) -> f64 {
        match &self.population {
            Some(p) if p.sampling == Sampling::Poisson => p.rate(),
            _ => 1.0,
        }
    }

    /// Whether `peer` may take part.
    pub fn admits(&self, peer: &PeerId) -> bool {
        self.members.as_ref().is_none_or(|m| m.contains(peer))
    }

    /// The record as a block (its CID names the task).
    pub fn to_block(&self) -> Result<Block, TaskError> {
        Ok(dagcbor::encode(self)?)
    }

    /// Decodes and validates a task from its block.
    pub fn from_block(block: &Block) -> Result<Task, TaskError> {
        let task: Task = dagcbor::decode(block)?;
        task.validate()?;
        Ok(task)
    }

    /// The gossip topic of update announcements for the task `cid`.
    pub fn updates_topic(cid: &Cid) -> String {
        format!("fl/{cid}/updates")
    }

    /// The gossip topic of manifests and chain heads for the task `cid`.
    pub fn manifests_topic(cid: &Cid) -> String {
        format!("fl/{cid}/manifests")
    }

    /// The gossip topic of the steps of secure rounds (keys, shares, survivor lists and
    /// answers) for the task `cid`.
    pub fn secure_topic(cid: &Cid) -> String {
        format!("fl/{cid}/secure")
    }

    /// The gossip topic of the aggregators' evaluations for the task `cid`.
    pub fn evaluations_topic(cid: &Cid) -> String {
        format!("fl/{cid}/evaluations")
    }

    /// Whether the aggregator of `round` scores its model on the test set.
    pub fn scores(&self, round: u32) -> bool {
        scored_round(self.evaluate_every, self.rounds, round)
    }

    /// Credits of one contribution: samples x epochs x training FLOPs per sample.
    pub fn credits(&self, samples: u64) -> u64 {
        samples
            .saturating_mul(u64::from(self.train.epochs))
            .saturating_mul(self.flops_per_sample)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::records) fn task(schedule: RoundSchedule) -> Task {
        let cid: Cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            .parse()
            .expect("a CID");
        Task {
            format: TASK_FORMAT.into(),
            name: "t".into(),
            architecture: "fedavg-cnn".into(),
            initial_model: cid,
            data: DataSource::OwnData,
            train: TrainParams {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.1,
                momentum: 0.9,
                weight_decay: 0.0,
                proximal_mu: 0.0,
                schedule,
                steps: None,
                load: Load::Equal,
            },
            rounds: 4,
            min_participants: 1,
            round_deadline_ms: 1000,
            grace_ms: 1000,
            dp: None,
            rule: "fedavg".into(),
            members: None,
            flops_per_sample: 1,
            seed: 0,
            update_encoding: Encoding::F32,
            max_samples: None,
            evaluate_every: None,
            secure: None,
            population: None,
        }
    }

    #[test]
    fn cosine_rounds_fall_from_near_the_base_rate_towards_zero() {
        let rates: Vec<f64> = (1..=4)
            .map(|r| RoundSchedule::Cosine.rate(0.1, r, 4))
            .collect();
        let expected = [0.0962, 0.0691, 0.0309, 0.0038];
        for (got, want) in rates.iter().zip(expected) {
            assert!((got - want).abs() < 1e-4, "{rates:?}");
        }
        assert_eq!(RoundSchedule::Constant.rate(0.1, 3, 4), 0.1);
        assert_eq!("cosine".parse::<RoundSchedule>(), Ok(RoundSchedule::Cosine));
        assert!("linear".parse::<RoundSchedule>().is_err());
    }

    #[test]
    fn a_constant_schedule_is_left_out_of_the_record_and_read_back_as_constant() {
        let constant = task(RoundSchedule::Constant).to_block().expect("encodes");
        let cosine = task(RoundSchedule::Cosine).to_block().expect("encodes");
        let has = |b: &Block, word: &[u8]| b.data().windows(word.len()).any(|w| w == word);
        assert!(
            !has(&constant, b"schedule"),
            "records made before the field keep their CID"
        );
        assert!(has(&cosine, b"schedule"));
        assert_eq!(
            Task::from_block(&constant).expect("decodes").train.schedule,
            RoundSchedule::Constant
        );
        assert_eq!(
            Task::from_block(&cosine).expect("decodes").train.schedule,
            RoundSchedule::Cosine
        );
    }

    #[test]
    fn float32_updates_are_left_out_of_the_record_and_int8_is_kept() {
        let plain = task(RoundSchedule::Constant);
        let int8 = Task {
            update_encoding: Encoding::Int8,
            max_samples: None,
            evaluate_every: None,
            ..plain.clone()
        };
        let has = |t: &Task, word: &[u8]| {
            let block = t.to_block().expect("encodes");
            block.data().windows(word.len()).any(|w| w == word)
        };
        assert!(
            !has(&plain, b"update_encoding"),
            "older records keep their CID"
        );
        assert!(has(&int8, b"int8"));
        let back = Task::from_block(&int8.to_block().expect("encodes")).expect("decodes");
        assert_eq!(back, int8);
    }

    #[test]
    fn a_setting_this_node_does_not_know_is_refused_not_ignored() {
        use ipld_core::ipld::Ipld;
        let block = task(RoundSchedule::Constant).to_block().expect("encodes");
        assert!(Task::from_block(&block).is_ok());
        for (within, field) in [(Some("train"), "warmup_rounds"), (None, "sampling")] {
            let mut record: Ipld = dagcbor::decode(&block).expect("decodes as IPLD");
            let Ipld::Map(fields) = &mut record else {
                panic!("a task is a map")
            };
            let map = match within {
                Some(key) => match fields.get_mut(key) {
                    Some(Ipld::Map(inner)) => inner,
                    other => panic!("{key} is {other:?}"),
                },
                None => fields,
            };
            map.insert(field.into(), Ipld::Integer(5));
            let newer = dagcbor::encode(&record).expect("encodes");
            let err = Task::from_block(&newer)
                .expect_err("an unknown setting")
                .to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn capacity_load_shares_steps_by_throughput_against_the_median() {
        let four_fast_four_slow = [2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0];
        let load = Load::Capacity;
        // Median 1.5: fast nodes take 4/3 of the steps, slow ones 2/3, so both finish
        // together, at 2/3 of the time equal load's slow nodes take.
        assert_eq!(load.local_steps(30, Some(2.0), &four_fast_four_slow), 40);
        assert_eq!(load.local_steps(30, Some(1.0), &four_fast_four_slow), 20);
        // One member lying that it is a million times faster moves the median by one rank.
        let mut lied = four_fast_four_slow;
        lied[7] = 1e6;
        assert_eq!(load.local_steps(30, Some(1.0), &lied), 15);
        assert_eq!(load.local_steps(30, Some(2.0), &lied), 30);
        // Bounded: a quarter of the steps at least, MAX_FACTOR times them at most.
        assert_eq!(load.local_steps(30, Some(1e-9), &four_fast_four_slow), 7);
        assert_eq!(load.local_steps(2, Some(1e-9), &four_fast_four_slow), 1);
        assert_eq!(load.local_steps(30, Some(1e9), &four_fast_four_slow), 120);
        // Nothing usable to go by: the task's steps.
        for (own, seen) in [
            (None, &four_fast_four_slow[..]),
            (Some(f64::NAN), &four_fast_four_slow[..]),
            (Some(2.0), &[][..]),
            (Some(2.0), &[f64::NAN, -1.0, 0.0, f64::INFINITY][..]),
        ] {
            assert_eq!(load.local_steps(30, own, seen), 30, "{own:?} {seen:?}");
        }
        assert_eq!(
            Load::Equal.local_steps(30, Some(2.0), &four_fast_four_slow),
            30
        );
    }

    #[test]
    fn capacity_load_is_left_out_when_equal_and_needs_steps_without_sample_dp() {
        let equal = task(RoundSchedule::Constant);
        let block = equal.to_block().expect("encodes");
        assert!(!block.data().windows(4).any(|w| w == b"load"));
        let mut shared = equal.clone();
        shared.train.steps = Some(5);
        shared.train.load = Load::Capacity;
        let back = Task::from_block(&shared.to_block().expect("encodes")).expect("decodes");
        assert_eq!(back.train.load, Load::Capacity);
        let mut no_steps = shared.clone();
        no_steps.train.steps = None;
        match no_steps.validate() {
            Err(TaskError::Invalid { field, .. }) => assert_eq!(field, "load"),
            other => panic!("capacity load without steps: {other:?}"),
        }
        assert_eq!("capacity".parse::<Load>(), Ok(Load::Capacity));
        assert!("fast".parse::<Load>().is_err());
    }

    #[test]
    fn local_steps_are_kept_only_when_set_and_need_one_epoch() {
        let epochs = task(RoundSchedule::Constant);
        let block = epochs.to_block().expect("encodes");
        assert!(!block.data().windows(5).any(|w| w == b"steps"));
        let mut steps = epochs.clone();
        steps.train.steps = Some(4);
        let back = Task::from_block(&steps.to_block().expect("encodes")).expect("decodes");
        assert_eq!(back.train.steps, Some(4));
        for (epochs, count, field) in [(1, 0, "steps"), (2, 4, "epochs")] {
            let mut bad = steps.clone();
            bad.train.epochs = epochs;
            bad.train.steps = Some(count);
            match bad.validate() {
                Err(TaskError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{epochs} epochs, {count} steps: {other:?}"),
            }
        }
    }

    #[test]
    fn client_level_dp_over_a_population_is_poisson_sampled_add_remove_and_amplified() {
        use crate::records::{Population, Sampling};
        let mut t = task(RoundSchedule::Constant);
        t.data = DataSource::Shards {
            manifest: t.initial_model,
        };
        t.members = Some(vec![PeerId::random(), PeerId::random()]);
        t.population = Some(Population {
            clients: 1000,
            per_round: 100,
            partition: "iid".into(),
            sampling: Sampling::Fixed,
        });
        t.validate().unwrap();
        assert_eq!(t.client_rate(), 1.0, "without DP nothing is accounted");
        t.dp = Some(dp(Some(DpLevel::Client), Some(Neighbours::AddRemove), 1.0));
        let field = |t: &Task| match t.validate() {
            Err(TaskError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(&t), "population.sampling");
        if let Some(p) = t.population.as_mut() {
            p.sampling = Sampling::Poisson;
        }
        t.validate().unwrap();
        // Each client takes part with probability 100 / 1,000: epsilon amplified by it.
        assert_eq!(t.client_rate(), 0.1);
        let dp = t.dp.clone().unwrap();
        let amplified = dp.client_epsilon(4, t.client_rate()).unwrap();
        assert_eq!(
            amplified,
            accountant::epsilon_for(0.1, 1.0, 4, 1e-5).unwrap()
        );
        assert!(amplified < dp.client_epsilon(4, 1.0).unwrap() / 3.0);
        t.dp = Some(dp_params_of(DpLevel::Client, Neighbours::ReplaceOne));
        assert_eq!(field(&t), "dp.neighbours");
        t.dp = Some(dp_params_of(DpLevel::Sample, Neighbours::AddRemove));
        assert_eq!(field(&t), "dp.level");
    }

    fn dp_params_of(level: DpLevel, neighbours: Neighbours) -> DpParams {
        dp(Some(level), Some(neighbours), 1.0)
    }

    fn dp(level: Option<DpLevel>, neighbours: Option<Neighbours>, z: f64) -> DpParams {
        DpParams {
            clip_norm: 1.0,
            noise_multiplier: z,
            delta: 1e-5,
            level,
            neighbours,
            epsilon_budget: None,
        }
    }

    #[test]
    fn replace_one_is_accounted_at_sensitivity_two_c_and_old_records_mean_add_remove() {
        // Replacing one client's data moves its clipped update by up to 2C: the Gaussian
        // mechanism at noise z·C with sensitivity 2C is the one at z/2 with sensitivity C.
        let add_remove = dp(None, None, 4.0);
        let replace_one = dp(Some(DpLevel::Client), Some(Neighbours::ReplaceOne), 4.0);
        for round in [1, 10, 100] {
            let a = add_remove.client_epsilon(round, 1.0).unwrap();
            let r = replace_one.client_epsilon(round, 1.0).unwrap();
            let half = accountant::epsilon_for(1.0, 2.0, u64::from(round), 1e-5).unwrap();
            assert_eq!(r, half, "round {round}");
            assert!(r > a, "round {round}: {r} against {a}");
        }
        // A record without the fields is the client level, add-remove, as before they existed.
        assert_eq!(add_remove.level(), DpLevel::Client);
        assert_eq!(add_remove.neighbours(), Neighbours::AddRemove);
        let old = accountant::epsilon_for(1.0, 4.0, 10, 1e-5).unwrap();
        assert_eq!(add_remove.client_epsilon(10, 1.0).unwrap(), old);
    }

    #[test]
    fn dp_settings_without_privacy_or_with_a_relation_the_level_cannot_account_are_refused() {
        let mut t = task(RoundSchedule::Constant);
        for (dp, field) in [
            (dp(None, None, 0.0), "dp.noise_multiplier"),
            (dp(None, None, f64::NAN), "dp.noise_multiplier"),
            (
                dp(Some(DpLevel::Sample), Some(Neighbours::ReplaceOne), 1.0),
                "dp.neighbours",
            ),
            (
                DpParams {
                    epsilon_budget: Some(0.0),
                    ..dp(Some(DpLevel::Sample), None, 1.0)
                },
                "dp.epsilon_budget",
            ),
        ] {
            t.dp = Some(dp);
            let err = t.validate().unwrap_err().to_string();
            assert!(err.starts_with(&format!("task: {field} = ")), "{err}");
        }
        t.dp = Some(dp(Some(DpLevel::Sample), Some(Neighbours::AddRemove), 1.0));
        t.validate().unwrap();
        // The optional fields are left out when absent: older records keep their bytes.
        t.dp = Some(dp(None, None, 1.0));
        let bytes = t.to_block().unwrap();
        let text = format!("{:?}", bytes.data());
        assert!(
            !String::from_utf8_lossy(bytes.data()).contains("level"),
            "{text}"
        );
    }

    #[test]
    fn scoring_every_n_rounds_scores_those_and_the_last_and_is_left_out_when_unset() {
        let mut t = task(RoundSchedule::Cosine);
        t.rounds = 94;
        let unset = t.to_block().unwrap();
        assert!(!String::from_utf8_lossy(unset.data()).contains("evaluate_every"));
        assert!((1..=94).all(|r| t.scores(r)));
        t.evaluate_every = Some(9);
        let scored: Vec<u32> = (1..=94).filter(|r| t.scores(*r)).collect();
        assert_eq!(scored, [9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 94]);
        assert_ne!(t.to_block().unwrap().cid(), unset.cid());
        t.validate().unwrap();
        t.evaluate_every = Some(0);
        assert_eq!(
            t.validate().unwrap_err().to_string(),
            "task: evaluate_every = 0: must be at least 1"
        );
    }
}
