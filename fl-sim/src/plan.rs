//! What a simulation runs: the federation's size, its task's settings and the failures to
//! inject, checked before anything starts.

use std::num::NonZeroU32;
use std::time::Duration;

use datasets::partition::{Partition, Scheme, partition};
use datasets::population::Clients;
use fl_core::model::Backend;
use fl_core::privacy::plan::DpSgdTarget;
use fl_core::records::{DpLevel, Population, RoundSchedule, Sampling, TrainParams};
use fl_core::tensors::Encoding;

use fl_node::round::attack::Attack;
use fl_node::round::{Checking, checking};

use crate::SimulationError;

/// Rounds whose models and updates a node of a run keeps by default: a round's manifest is
/// checked while the next one trains, and its model scored soon after, so four is ample.
pub const KEEP_ROUNDS: u32 = 4;

/// Fewest training images a node may hold.
pub(crate) const MIN_SHARD: usize = 10;

/// Which nodes of a simulation recompute manifests from their updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Checkers {
    /// The first K nodes recompute every manifest; the others check claims only (all nodes
    /// are run by this process, so a few checkers vouch for everyone).
    First(usize),
    /// Every node recomputes each manifest with probability RATE / nodes, drawn on its own
    /// (`fl node run --check-probability`): RATE recomputations a round on average.
    Rate(f64),
}

impl Checkers {
    /// How node `index` of `nodes` checks.
    pub fn of(&self, index: usize, nodes: usize) -> Checking {
        match *self {
            Checkers::First(k) if index < k => Checking::Every,
            Checkers::First(_) => Checking::Claims,
            Checkers::Rate(rate) => Checking::sampled(checking::probability_for_rate(rate, nodes))
                .unwrap_or(Checking::Every),
        }
    }

    /// Recomputations that may run at once in the process (each holds a round's updates).
    pub fn computations(&self) -> usize {
        match *self {
            Checkers::First(k) => k.min(2),
            Checkers::Rate(_) => 2,
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes (each trains on one shard, or hosts a share of the population's clients).
    pub nodes: usize,
    /// Rounds.
    pub rounds: u32,
    /// How the training set is split across nodes (or the population's clients).
    pub scheme: Scheme,
    /// Clients apart from the nodes, `per_round` of them sampled each round, dealt the
    /// training set by `scheme` (the population's `partition` is set from it); `None`: each
    /// node is one client that trains every round.
    pub population: Option<Population>,
    /// Local training.
    pub train: TrainParams,
    /// The aggregation rule (`fedavg`, `fedavgm:momentum=0.9`, `median`, ...).
    pub rule: String,
    /// How nodes write their updates (float32, or int8 with a scale per tensor).
    pub update_encoding: Encoding,
    /// Differential privacy, by the epsilon to spend over all rounds.
    pub privacy: Option<PrivacyTarget>,
    /// Fewest updates a round may close with.
    pub min_participants: u32,
    /// How long after a round opens it closes with what has arrived.
    pub deadline: Duration,
    /// How long each next-ranked aggregator waits for the one before it.
    pub grace: Duration,
    /// Where nodes train.
    pub backend: Backend,
    /// Which nodes recompute manifests from their updates; the others check their claims
    /// only.
    pub checkers: Checkers,
    /// Trainings at once across all nodes, each on its share of the machine's cores.
    pub trainings_at_once: usize,
    /// Seed of the initial model, the partition, data order and noise.
    pub seed: u64,
    /// Most time to keep serving after the last round, for nodes still catching up.
    pub linger: Duration,
    /// Rounds whose models and updates each node keeps (`None`: all, for `fl verify` of any
    /// round in repos kept after the run); a run's scratch repos need only the last few.
    pub keep_rounds: Option<NonZeroU32>,
    /// Nodes that stop for good at some moment (fault injection).
    pub failures: Vec<Failure>,
    /// Nodes that depart from the protocol (attack injection), by index.
    pub attacks: Vec<(usize, Attack)>,
    /// Most time the run waits for an honest node to adopt a round before it is ended as
    /// stalled (a harness running many federations must not hang on one); `None`: no limit.
    pub stall_after: Option<Duration>,
    /// The test set is scored every this many rounds and after the last (`None`: every
    /// round): the task's `evaluate_every`.
    pub evaluate_every: Option<u32>,
    /// Secure aggregation (`None`: updates are public files).
    pub secure: Option<fl_core::records::SecureAggregation>,
    /// The least time a local step takes on each node (`None`: as fast as the shared cores
    /// run it): each node then acts as a machine of its own with that speed.
    pub pace: Option<Duration>,
    /// Nodes that run slower than the pace (heterogeneous labs).
    pub slow: Option<Slow>,
}

/// The last `nodes` nodes of a paced plan take `factor` times the pace for each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slow {
    /// How many nodes (the highest indices).
    pub nodes: usize,
    /// How many times slower (2: half speed).
    pub factor: f64,
}

/// A node that stops (its swarm closes, as if the process were killed) at a moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failure {
    /// Which node.
    pub victim: Victim,
    /// The round during which it stops.
    pub round: u32,
    /// When in that round: this many seconds after it opens (for the aggregator: after it
    /// starts aggregating).
    pub after: Duration,
}

/// The node a [`Failure`] stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Victim {
    /// This node.
    Node(usize),
    /// Whichever node aggregates the round.
    Aggregator,
}

/// DP-FedAvg settings given by the privacy to spend rather than the noise to add.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyTarget {
    /// What is protected: each node's update (DP-FedAvg) or each example (DP-SGD).
    pub level: DpLevel,
    /// Epsilon over all rounds (sample level: each node's, at most).
    pub epsilon: f64,
    /// The delta it holds at.
    pub delta: f64,
    /// L2 norm each update (client level) or each example's gradient (sample level) is
    /// clipped to.
    pub clip_norm: f64,
}

impl Plan {
    /// A plan with the defaults of `fl simulate` for `nodes` nodes and `rounds` rounds.
    pub fn new(nodes: usize, rounds: u32) -> Self {
        Self {
            nodes,
            rounds,
            scheme: Scheme::Iid,
            population: None,
            train: TrainParams {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.05,
                momentum: 0.9,
                weight_decay: 5e-4,
                proximal_mu: 0.0,
                schedule: RoundSchedule::Cosine,
                steps: None,
                load: fl_core::records::Load::Equal,
            },
            rule: "fedavg".into(),
            update_encoding: Encoding::F32,
            privacy: None,
            min_participants: nodes.try_into().unwrap_or(u32::MAX),
            deadline: Duration::from_secs(1800),
            grace: Duration::from_secs(60),
            backend: Backend::default(),
            checkers: Checkers::First(nodes.min(8)),
            trainings_at_once: std::thread::available_parallelism().map_or(2, |n| n.get()),
            seed: 0,
            linger: Duration::from_secs(120),
            keep_rounds: NonZeroU32::new(KEEP_ROUNDS),
            failures: Vec::new(),
            attacks: Vec::new(),
            stall_after: None,
            evaluate_every: None,
            secure: None,
            pace: None,
            slow: None,
        }
    }

    /// The plan with rounds of `steps` local steps in place of whole epochs, as many rounds
    /// as make `epochs` passes over a node's share of `samples` images split IID.
    pub fn in_steps(mut self, steps: u32, epochs: u32, samples: usize) -> Self {
        let per_epoch = self.batches_per_epoch(samples);
        let rounds = (u64::from(epochs) * per_epoch).div_ceil(u64::from(steps.max(1)));
        self.rounds = u32::try_from(rounds).unwrap_or(u32::MAX).max(1);
        self.train.steps = Some(steps);
        self
    }

    /// Scores the test set once per pass over each node's share of `samples` images (and
    /// after the last round), as centralized training scores once an epoch: rounds of a
    /// few steps scoring every round spend on scoring what they could train.
    pub fn scored_each_epoch(mut self, samples: usize) -> Self {
        if let Some(steps) = self.train.steps {
            let per_epoch = self.batches_per_epoch(samples) as f64 / f64::from(steps.max(1));
            self.evaluate_every = Some((per_epoch.round() as u32).max(1));
        }
        self
    }

    /// Passes each node has made over its share of `samples` images (split IID) after
    /// `round` rounds: what puts federated curves on the same axis as centralized ones.
    pub fn epochs_after(&self, round: u32, samples: usize) -> f64 {
        match self.train.steps {
            Some(steps) => {
                f64::from(round) * f64::from(steps) / self.batches_per_epoch(samples).max(1) as f64
            }
            None => f64::from(round) * f64::from(self.train.epochs),
        }
    }

    /// Which training images (by index into `labels`) each node trains on: the split a run of
    /// this plan publishes, for anchors in other frameworks to train on the same shards.
    /// With a population, each client's ([`Plan::clients`]; `draw:N` deals nothing).
    pub fn split(&self, labels: &[u8]) -> Result<Partition, SimulationError> {
        if self.population.is_some() {
            let clients = self.clients(labels)?;
            return clients.split().cloned().ok_or_else(|| {
                SimulationError::Plan(format!(
                    "--partition {}: each client draws its images on its own; there are no index lists to export",
                    self.scheme
                ))
            });
        }
        Ok(partition(
            labels,
            self.nodes,
            &self.scheme,
            self.seed,
            MIN_SHARD,
        )?)
    }

    /// The population's clients over a training set whose labels are `labels`, as every
    /// node of a run of this plan deals them.
    pub fn clients(&self, labels: &[u8]) -> Result<Clients, SimulationError> {
        let Some(p) = &self.population else {
            return Err(SimulationError::Plan(
                "the plan has no population (--clients)".into(),
            ));
        };
        Clients::new(labels, p.clients, &self.scheme, self.seed).map_err(|e| {
            SimulationError::Plan(format!(
                "--clients {} --partition {}: {e}",
                p.clients, self.scheme
            ))
        })
    }

    /// The population as the task records it: its partition is the plan's scheme; with
    /// client-level DP its clients are Poisson-sampled, as the accountant assumes.
    pub fn task_population(&self) -> Option<Population> {
        let sampling = match self.privacy {
            Some(_) => Sampling::Poisson,
            None => Sampling::Fixed,
        };
        self.population.as_ref().map(|p| Population {
            partition: self.scheme.to_string(),
            sampling,
            ..p.clone()
        })
    }

    /// The chance a client takes part in a round, for the client-level accountant (1
    /// without a population).
    fn client_rate(&self) -> f64 {
        self.task_population()
            .filter(|p| p.sampling == Sampling::Poisson)
            .map_or(1.0, |p| p.rate())
    }

    /// Local batches in one pass over a node's share of `samples` images split IID.
    fn batches_per_epoch(&self, samples: usize) -> u64 {
        let share = samples.div_ceil(self.nodes.max(1)) as u64;
        share.div_ceil(u64::from(self.train.batch_size.max(1)))
    }

    /// Refuses a plan that cannot work on `samples` training images, naming the setting.
    pub fn check(&self, samples: usize) -> Result<(), SimulationError> {
        let bad = |m: String| Err(SimulationError::Plan(m));
        if self.nodes == 0 {
            return bad("--nodes must be at least 1".into());
        }
        if self.rounds == 0 {
            return bad("--rounds must be at least 1".into());
        }
        if let Some(p) = &self.population {
            p.validate().map_err(|e| {
                SimulationError::Plan(format!(
                    "--clients {} --per-round {}: {e}",
                    p.clients, p.per_round
                ))
            })?;
            if self.privacy.is_some_and(|p| p.level == DpLevel::Sample) {
                return bad(
                    "--dp sample with --clients: sample-level DP is not built for populations; use --dp client (DP-FedAvg over the sampled clients)"
                        .into(),
                );
            }
            if self.train.steps.is_some() {
                return bad("--steps with --clients: a sampled client trains whole epochs from the round's model".into());
            }
        } else if self.nodes.saturating_mul(MIN_SHARD) > samples {
            return bad(format!(
                "--nodes {}: the data has {samples} training images, too few for {} nodes of at least {MIN_SHARD} each",
                self.nodes, self.nodes
            ));
        }
        if self.min_participants == 0 || self.min_participants as usize > self.nodes {
            return bad(format!(
                "--min-participants {} must be between 1 and --nodes ({})",
                self.min_participants, self.nodes
            ));
        }
        match self.checkers {
            Checkers::First(k) if k == 0 || k > self.nodes => {
                return bad(format!(
                    "--checkers {k} must be between 1 and --nodes ({})",
                    self.nodes
                ));
            }
            Checkers::Rate(r) if !(r > 0.0 && r <= self.nodes as f64) => {
                return bad(format!(
                    "--check-rate {r} must be in (0, --nodes ({})]",
                    self.nodes
                ));
            }
            _ => {}
        }
        if self.evaluate_every == Some(0) {
            return bad("--evaluate-every must be at least 1".into());
        }
        if self
            .pace
            .is_some_and(|p| p.is_zero() || p > Duration::from_secs(3600))
        {
            return bad("--step-ms must be in [1, 3,600,000]".into());
        }
        if let Some(slow) = self.slow {
            if self.pace.is_none() {
                return bad(
                    "--slow needs --step-ms: the speed the slow nodes are slower than".into(),
                );
            }
            if slow.nodes == 0 || slow.nodes > self.nodes {
                return bad(format!(
                    "--slow {}: must be between 1 and --nodes ({})",
                    slow.nodes, self.nodes
                ));
            }
            if !(slow.factor.is_finite() && (1.0..=100.0).contains(&slow.factor)) {
                return bad(format!(
                    "--slow ...:{}: the factor must be in [1, 100]",
                    slow.factor
                ));
            }
        }
        if self.train.load == fl_core::records::Load::Capacity && self.train.steps.is_none() {
            return bad("--load capacity needs --steps: it shares out local steps".into());
        }
        if let Some(p) = &self.privacy {
            if !(p.epsilon.is_finite() && p.epsilon > 0.0) {
                return bad(format!(
                    "--dp-epsilon must be a number > 0, got {}",
                    p.epsilon
                ));
            }
            if !(p.delta > 0.0 && p.delta < 1.0) {
                return bad(format!("--dp-delta must be in (0, 1), got {}", p.delta));
            }
            if !(p.clip_norm.is_finite() && p.clip_norm > 0.0) {
                return bad(format!(
                    "--dp-clip must be a number > 0, got {}",
                    p.clip_norm
                ));
            }
        }
        for f in &self.failures {
            let node = match f.victim {
                Victim::Node(n) => n,
                Victim::Aggregator => 0,
            };
            if node >= self.nodes || f.round == 0 || f.round > self.rounds {
                return bad(format!(
                    "failure of node {node} in round {}: there are nodes 0..{} and rounds 1..={}",
                    f.round, self.nodes, self.rounds
                ));
            }
        }
        if let Some((node, _)) = self.attacks.iter().find(|(n, _)| *n >= self.nodes) {
            return bad(format!(
                "--attack {node}: there are nodes 0..{}",
                self.nodes
            ));
        }
        let victims: std::collections::BTreeSet<String> = self
            .failures
            .iter()
            .enumerate()
            .map(|(i, f)| match f.victim {
                Victim::Node(n) => format!("node {n}"),
                Victim::Aggregator => format!("aggregator {i}"),
            })
            .collect();
        if self.nodes.saturating_sub(victims.len()) < self.min_participants as usize {
            return bad(format!(
                "--fail stops {} of {} nodes, leaving fewer than --min-participants {}: the rounds after would never close",
                victims.len(),
                self.nodes,
                self.min_participants
            ));
        }
        let _: aggregator::Rule = self
            .rule
            .parse()
            .map_err(|e| SimulationError::Plan(format!("--aggregation {}: {e}", self.rule)))?;
        Ok(())
    }

    /// The least time a local step takes on node `index` (the slow nodes' pace included).
    pub fn pace_of(&self, index: usize) -> Option<Duration> {
        let pace = self.pace?;
        match self.slow {
            Some(slow) if index >= self.nodes.saturating_sub(slow.nodes) => {
                Some(pace.mul_f64(slow.factor))
            }
            _ => Some(pace),
        }
    }

    /// The attack node `index` makes, if any (its last `--attack`).
    pub fn attack_of(&self, index: usize) -> Option<Attack> {
        self.attacks
            .iter()
            .rev()
            .find(|(n, _)| *n == index)
            .map(|(_, a)| *a)
    }

    /// The noise multiplier that spends the privacy target over the task's rounds, for shards
    /// of which the smallest holds `smallest_shard` images (the sample level accounts each
    /// node's own examples, so the smallest shard spends fastest).
    pub fn noise_multiplier(&self, smallest_shard: u64) -> Result<Option<f64>, SimulationError> {
        let Some(p) = self.privacy else {
            return Ok(None);
        };
        let refused = |e: &dyn std::fmt::Display| {
            SimulationError::Plan(format!("--dp-epsilon {}: {e}", p.epsilon))
        };
        match p.level {
            DpLevel::Client => fl_core::privacy::accountant::noise_for_epsilon(
                self.client_rate(),
                u64::from(self.rounds),
                p.delta,
                p.epsilon,
            )
            .map(Some)
            .map_err(|e| refused(&e)),
            DpLevel::Sample => {
                let batch = u64::from(self.train.batch_size);
                let per_round = match self.train.steps {
                    Some(steps) => u64::from(steps),
                    None => u64::from(self.train.epochs) * smallest_shard.div_ceil(batch.max(1)),
                };
                let target = DpSgdTarget {
                    epsilon: p.epsilon,
                    delta: p.delta,
                    clip_norm: p.clip_norm,
                };
                target
                    .plan(smallest_shard, batch, per_round * u64::from(self.rounds))
                    .map(|plan| Some(plan.noise_multiplier))
                    .map_err(|e| refused(&e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Plan;

    #[test]
    fn rounds_of_steps_add_up_to_the_epochs_asked_for() {
        // 1,500 images a node: 47 batches of 32 an epoch, 470 in 10 epochs.
        let plan = Plan::new(8, 1).in_steps(5, 10, 12_000);
        assert_eq!((plan.rounds, plan.train.steps), (94, Some(5)));
        // 250 images a node: 8 batches an epoch, 24 in 3 epochs, the last round short of 7.
        assert_eq!(Plan::new(4, 1).in_steps(7, 3, 1000).rounds, 4);
        // The epochs a round has reached, on the axis of centralized training.
        assert!((plan.epochs_after(47, 12_000) - 5.0).abs() < 1e-12);
        assert!((plan.epochs_after(94, 12_000) - 10.0).abs() < 1e-12);
        assert!((Plan::new(8, 10).epochs_after(3, 12_000) - 3.0).abs() < 1e-12);
    }
}
