//! A whole federation on one machine: N real nodes (each with its own key, repo, round
//! database and libp2p swarm on loopback) in this process, following one task on CIFAR-10
//! shards round by round, exactly as `fl node run --task` processes would. `fl simulate`
//! and the experiments run it; progress comes out as events, a row per round.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cid::Cid;
use datasets::cifar10::Cifar10;
use datasets::partition::{Scheme, partition};
use datasets::shard;
use fl_core::content::pins::PinMode;
use fl_core::content::{Blockstore, Repo};
use fl_core::model::{Architecture, Backend};
use fl_core::privacy::plan::DpSgdTarget;
use fl_core::records::task::TASK_FORMAT;
use fl_core::records::{
    DataSource, DpLevel, DpParams, Neighbours, RoundSchedule, Task, TrainParams,
};
use fl_core::tensors::Encoding;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tracing::Instrument;

use crate::net::{Bitswap, Node, NodeConfig, keys};
use crate::round::{Event, Limits, Participant, ParticipantConfig, RoundStore};

/// Fewest training images a node may hold.
const MIN_SHARD: usize = 10;
/// Seconds each peer gets to send a block before the next is asked.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes (each trains on one shard).
    pub nodes: usize,
    /// Rounds.
    pub rounds: u32,
    /// How the training set is split across nodes.
    pub scheme: Scheme,
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
    /// Nodes that recompute every manifest from its updates; the others check its claims
    /// only (all nodes are run by this process, so a few checkers vouch for everyone).
    pub checkers: usize,
    /// Trainings at once across all nodes (the machine's cores are shared).
    pub trainings_at_once: usize,
    /// Seed of the initial model, the partition, data order and noise.
    pub seed: u64,
    /// Most time to keep serving after the last round, for nodes still catching up.
    pub linger: Duration,
    /// Nodes that stop for good at some moment (fault injection).
    pub failures: Vec<Failure>,
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

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    /// The plan cannot work (names the setting).
    #[error("{0}")]
    Plan(String),
    /// The data could not be split.
    #[error("splitting the data: {0}")]
    Partition(#[from] datasets::partition::PartitionError),
    /// The shards could not be published.
    #[error("publishing the shards: {0}")]
    Shards(#[from] datasets::shard::ShardError),
    /// A repo failed.
    #[error(transparent)]
    Repo(#[from] fl_core::content::RepoError),
    /// A node's key could not be made.
    #[error(transparent)]
    Key(#[from] crate::net::keys::KeyError),
    /// A node could not start.
    #[error(transparent)]
    Node(#[from] crate::net::NodeError),
    /// The round database could not be opened.
    #[error(transparent)]
    Rounds(#[from] crate::round::RoundStoreError),
    /// The task record or the initial model could not be made.
    #[error("making the task: {0}")]
    Task(String),
    /// No node finished the task.
    #[error("no node finished the task; the first error: {0}")]
    NoneFinished(String),
}

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

impl Plan {
    /// A plan with the defaults of `fl simulate` for `nodes` nodes and `rounds` rounds.
    pub fn new(nodes: usize, rounds: u32) -> Self {
        Self {
            nodes,
            rounds,
            scheme: Scheme::Iid,
            train: TrainParams {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.05,
                momentum: 0.9,
                weight_decay: 5e-4,
                proximal_mu: 0.0,
                schedule: RoundSchedule::Cosine,
                steps: None,
            },
            rule: "fedavg".into(),
            update_encoding: Encoding::F32,
            privacy: None,
            min_participants: nodes.try_into().unwrap_or(u32::MAX),
            deadline: Duration::from_secs(1800),
            grace: Duration::from_secs(60),
            backend: Backend::default(),
            checkers: nodes.min(8),
            trainings_at_once: std::thread::available_parallelism().map_or(2, |n| n.get()),
            seed: 0,
            linger: Duration::from_secs(120),
            failures: Vec::new(),
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
        if self.nodes.saturating_mul(MIN_SHARD) > samples {
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
        if self.checkers == 0 || self.checkers > self.nodes {
            return bad(format!(
                "--checkers {} must be between 1 and --nodes ({})",
                self.checkers, self.nodes
            ));
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
                1.0,
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

/// One node of the simulation before it joins.
struct Member {
    index: usize,
    node: Node,
    repo: Arc<Repo>,
    key: fl_core::records::Keypair,
    rounds: RoundStore,
}

/// Runs `plan` on `data` with every node's repo under `root` (made if missing); returns when
/// every node has finished, failed or given up.
pub async fn run(
    plan: &Plan,
    data: &Cifar10,
    root: &Path,
    mut emit: impl FnMut(&Progress),
) -> Result<Report, SimulationError> {
    plan.check(data.train.len())?;
    let arch = Architecture::FedAvgCnn;
    std::fs::create_dir_all(root)
        .map_err(|e| SimulationError::Plan(format!("cannot make {}: {e}", root.display())))?;

    // Node 0 holds the dataset, the initial model and the task; everyone else fetches them.
    let dirs: Vec<PathBuf> = (0..plan.nodes)
        .map(|i| root.join(format!("node-{i:03}")))
        .collect();
    let keys = dirs
        .iter()
        .map(|d| {
            std::fs::create_dir_all(d)
                .map_err(|e| SimulationError::Plan(format!("cannot make {}: {e}", d.display())))?;
            Ok(keys::load_or_create(d)?)
        })
        .collect::<Result<Vec<_>, SimulationError>>()?;
    let members: Vec<fl_core::records::PeerId> =
        keys.iter().map(|k| k.public().to_peer_id()).collect();
    let seed_repo = Repo::open(&dirs[0])?;
    let split = partition(
        data.train.labels(),
        plan.nodes,
        &plan.scheme,
        plan.seed,
        MIN_SHARD,
    )?;
    let smallest_shard = split.clients.iter().map(Vec::len).min().unwrap_or(0) as u64;
    let noise_multiplier = plan.noise_multiplier(smallest_shard)?;
    let dataset = shard::publish(
        &seed_repo,
        data,
        &split,
        &plan.scheme.to_string(),
        plan.seed,
    )?;
    let initial = arch
        .init(plan.seed)
        .map_err(|e| SimulationError::Task(e.to_string()))?;
    let file_bytes = |encoding| -> Result<u64, SimulationError> {
        Ok(initial
            .encode(encoding)
            .map_err(|e| SimulationError::Task(e.to_string()))?
            .len() as u64)
    };
    let model_bytes = file_bytes(Encoding::F32)?;
    let update_bytes = file_bytes(plan.update_encoding)?;
    let initial_model = initial
        .store(&seed_repo)
        .map_err(|e| SimulationError::Task(e.to_string()))?;
    let task = Task {
        format: TASK_FORMAT.to_string(),
        name: format!("simulation of {} nodes", plan.nodes),
        architecture: arch.name().to_string(),
        initial_model,
        data: DataSource::Shards { manifest: dataset },
        train: plan.train.clone(),
        rounds: plan.rounds,
        min_participants: plan.min_participants,
        round_deadline_ms: plan.deadline.as_millis().try_into().unwrap_or(u64::MAX),
        grace_ms: plan.grace.as_millis().try_into().unwrap_or(u64::MAX),
        dp: match (plan.privacy, noise_multiplier) {
            (Some(p), Some(z)) => Some(DpParams {
                clip_norm: p.clip_norm,
                noise_multiplier: z,
                delta: p.delta,
                level: Some(p.level),
                neighbours: Some(Neighbours::AddRemove),
                epsilon_budget: (p.level == DpLevel::Sample).then_some(p.epsilon),
            }),
            _ => None,
        },
        rule: plan.rule.clone(),
        members: Some(members),
        flops_per_sample: arch.training_flops_per_sample(),
        seed: plan.seed,
        update_encoding: plan.update_encoding,
    };
    task.validate()
        .map_err(|e| SimulationError::Task(e.to_string()))?;
    let block = task
        .to_block()
        .map_err(|e| SimulationError::Task(e.to_string()))?;
    let task_cid = *block.cid();
    seed_repo
        .blocks()
        .put(block)
        .map_err(fl_core::content::RepoError::from)?;
    seed_repo.pin(&task_cid, PinMode::Recursive)?;
    seed_repo.pin(&initial_model, PinMode::Recursive)?;
    drop(seed_repo);
    emit(&Progress::Started {
        task: task_cid.to_string(),
        dataset: dataset.to_string(),
        nodes: plan.nodes,
        rounds: plan.rounds,
        model_bytes,
        update_bytes,
        noise_multiplier,
    });

    // The swarms: node 0 first, the others bootstrap from it.
    let mut started = Vec::with_capacity(plan.nodes);
    let mut bootstrap: Vec<Multiaddr> = Vec::new();
    for (index, (dir, key)) in dirs.iter().zip(keys).enumerate() {
        let repo = Arc::new(Repo::open(dir)?);
        let rounds = RoundStore::open(dir)?;
        let config = NodeConfig {
            listen: vec![loopback()],
            bootstrap: bootstrap.clone(),
            mdns: false,
            ..NodeConfig::default()
        };
        let node = Node::start(key.clone(), Arc::new(repo.blocks().clone()), config).await?;
        if index == 0 {
            node.provide(task_cid).await?;
            node.provide(dataset).await?;
            node.provide(initial_model).await?;
            bootstrap = node
                .listen_addrs()
                .await?
                .into_iter()
                .take(1)
                .map(|a| a.with(Protocol::P2p(node.peer_id())))
                .collect();
        }
        started.push(Member {
            index,
            node,
            repo,
            key,
            rounds,
        });
    }
    let by_peer: HashMap<PeerId, usize> = started
        .iter()
        .map(|m| (m.node.peer_id(), m.index))
        .collect();
    // Counters only: a node whose participant stops closes its swarm.
    let counters: Vec<Bitswap> = started.iter().map(|m| m.node.bitswap().clone()).collect();
    let sent = || counters.iter().map(|b| b.stats().bytes_sent).sum::<u64>();

    let limits = Limits::shared(plan.trainings_at_once, plan.checkers.min(2));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Event)>();
    let (stop_tx, _) = tokio::sync::broadcast::channel::<usize>(plan.nodes.max(1));
    let stop_aggregator: Arc<std::sync::Mutex<Vec<u32>>> = Arc::new(std::sync::Mutex::new(
        plan.failures
            .iter()
            .filter(|f| f.victim == Victim::Aggregator && f.after.is_zero())
            .map(|f| f.round)
            .collect(),
    ));
    let mut running = tokio::task::JoinSet::new();
    for m in started {
        let stop_aggregator = stop_aggregator.clone();
        let config = ParticipantConfig {
            task: task_cid,
            shard: Some(m.index),
            own_data: None,
            backend: plan.backend,
            block_timeout: BLOCK_TIMEOUT,
            linger: plan.linger,
            recompute: m.index < plan.checkers,
            limits: limits.clone(),
        };
        let index = m.index;
        let tx = tx.clone();
        let mut stop = stop_tx.subscribe();
        let stopper = stop_tx.clone();
        let participant = Participant::new(m.node, m.repo, m.key, m.rounds, config);
        running.spawn(async move {
            let emit = move |e: &Event| {
                // The first aggregator of a round whose aggregator fails is stopped from
                // here, before its next await: it cannot publish. (The next in rank is not.)
                if let Event::Aggregating { round, .. } = e {
                    let mut rounds = stop_aggregator
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(i) = rounds.iter().position(|r| r == round) {
                        rounds.swap_remove(i);
                        let _ = stopper.send(index);
                    }
                }
                let _ = tx.send((index, e.clone()));
            };
            let stopped = async move {
                loop {
                    match stop.recv().await {
                        Ok(n) if n == index => return,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            let outcome = tokio::select! {
                r = participant.run(emit).instrument(tracing::info_span!("node", n = index)) => Some(r),
                () = stopped => None,
            };
            (index, outcome)
        });
    }
    drop(tx);

    let clock = Instant::now();
    let mut book = Book::new(plan, by_peer);
    // Each failure, and when its clock started (the round opening, or its aggregator starting).
    let mut pending_failures: Vec<(Failure, Option<(usize, Instant)>)> =
        plan.failures.iter().map(|f| (*f, None)).collect();
    let mut outcomes: BTreeMap<usize, Result<Cid, String>> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            Some((node, event)) = rx.recv() => {
                on_event(node, &event, &mut book, &mut pending_failures, &stop_tx, &mut emit, clock, sent());
            }
            joined = running.join_next() => match joined {
                Some(Ok((node, Some(Ok(model))))) => { outcomes.insert(node, Ok(model)); }
                Some(Ok((node, Some(Err(e))))) => {
                    let reason = e.to_string();
                    emit(&Progress::Errored { node, reason: reason.clone() });
                    outcomes.insert(node, Err(reason));
                }
                Some(Ok((node, None))) => { outcomes.insert(node, Err("stopped".into())); }
                Some(Err(e)) => tracing::error!("a node's task ended abnormally: {e}"),
                None => break,
            },
            _ = tick.tick() => {
                let open = book.open_round();
                for (f, started) in &mut pending_failures {
                    if let Victim::Node(n) = f.victim && f.round <= open && started.is_none() {
                        *started = Some((n, Instant::now()));
                    }
                }
                for node in due(&mut pending_failures, open) {
                    let _ = stop_tx.send(node);
                    emit(&Progress::Failed { node, round: open });
                }
            }
        }
    }
    // Events sent just before the last node ended.
    while let Ok((node, event)) = rx.try_recv() {
        on_event(
            node,
            &event,
            &mut book,
            &mut pending_failures,
            &stop_tx,
            &mut emit,
            clock,
            sent(),
        );
    }
    for row in book.ready(true) {
        emit(&Progress::Round(row));
    }
    let mut votes: BTreeMap<Cid, usize> = BTreeMap::new();
    for model in outcomes.values().flatten() {
        *votes.entry(*model).or_default() += 1;
    }
    let Some((model, agreeing)) = votes.into_iter().max_by_key(|(_, n)| *n) else {
        let first = outcomes
            .values()
            .find_map(|o| o.as_ref().err().cloned())
            .unwrap_or_else(|| "no node ran".into());
        return Err(SimulationError::NoneFinished(first));
    };
    let stats: Vec<_> = counters.iter().map(|b| b.stats()).collect();
    Ok(Report {
        task: task_cid.to_string(),
        model: model.to_string(),
        agreeing,
        finished: outcomes.values().filter(|o| o.is_ok()).count(),
        rounds: book.rows,
        bytes_sent: stats.iter().map(|s| s.bytes_sent).collect(),
        bytes_received: stats.iter().map(|s| s.bytes_received).collect(),
        seconds: clock.elapsed().as_secs_f64(),
        peak_memory: peak_memory(),
    })
}

/// Passes on one node's event, starts the clock of an aggregator failure (stopping a node
/// whose failure is then due), and emits the rows the event completes.
#[allow(clippy::too_many_arguments)]
fn on_event(
    node: usize,
    event: &Event,
    book: &mut Book,
    pending: &mut Vec<(Failure, Option<(usize, Instant)>)>,
    stop: &tokio::sync::broadcast::Sender<usize>,
    emit: &mut impl FnMut(&Progress),
    clock: Instant,
    sent: u64,
) {
    emit(&Progress::Node {
        node,
        event: event.clone(),
    });
    if let Event::Aggregating { round, .. } = event {
        for (f, started) in pending.iter_mut() {
            if f.victim == Victim::Aggregator && f.round == *round && started.is_none() {
                *started = Some((node, Instant::now()));
            }
        }
        for node in due(pending, book.open_round()) {
            let _ = stop.send(node);
            emit(&Progress::Failed {
                node,
                round: *round,
            });
        }
    }
    for row in book.note(event, clock.elapsed().as_secs_f64(), sent) {
        emit(&Progress::Round(row));
    }
}

/// The nodes whose failure is due in round `open` (their clock ran out, or their round is
/// past), taken out of `pending`.
fn due(pending: &mut Vec<(Failure, Option<(usize, Instant)>)>, open: u32) -> Vec<usize> {
    let mut nodes = Vec::new();
    pending.retain(|(f, started)| match started {
        Some((node, at)) if f.round < open || at.elapsed() >= f.after => {
            nodes.push(*node);
            false
        }
        _ => true,
    });
    nodes
}

/// A loopback TCP address on a port the system picks.
fn loopback() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0))
}

/// The rounds as the nodes report them, folded into one row each.
struct Book {
    rounds: u32,
    by_peer: HashMap<PeerId, usize>,
    /// Rounds adopted by some node, waiting for their evaluation.
    open: BTreeMap<u32, RoundRow>,
    /// When the last row's round was first adopted, and the bytes sent by then.
    last: (f64, u64),
    rows: Vec<RoundRow>,
    /// The first round without a row.
    next: u32,
}

impl Book {
    fn new(plan: &Plan, by_peer: HashMap<PeerId, usize>) -> Self {
        Self {
            rounds: plan.rounds,
            by_peer,
            open: BTreeMap::new(),
            last: (0.0, 0),
            rows: Vec::new(),
            next: 1,
        }
    }

    /// The round the federation is in: the one after the last adopted.
    fn open_round(&self) -> u32 {
        let adopted = self.open.keys().next_back().copied();
        adopted
            .map_or(self.next, |r| r + 1)
            .max(self.next)
            .min(self.rounds)
    }

    /// Takes in one node's event, `elapsed` seconds in with `sent` bytes sent by all
    /// nodes; returns the rows it completes.
    fn note(&mut self, event: &Event, elapsed: f64, sent: u64) -> Vec<RoundRow> {
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
                // The lowest rank wins the fork choice: the row follows it.
                if row.manifest != *manifest && *rank < row.rank {
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

    /// Rows whose round has its evaluation, or whose round after next is adopted (the
    /// evaluation follows the manifest by seconds; one that has not come by then is not
    /// coming), or every row (`all`).
    fn ready(&mut self, all: bool) -> Vec<RoundRow> {
        let mut done = Vec::new();
        while let Some((&round, row)) = self.open.first_key_value() {
            let later = self.open.keys().any(|r| *r > round + 1);
            if !(all || row.accuracy.is_some() || later) {
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
