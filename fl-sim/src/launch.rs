//! Starting a simulation: the task and its data published by node 0, every node's key,
//! repo and swarm, and each node's participant running in its own task.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cid::Cid;
use datasets::cifar10::Cifar10;
use datasets::partition::Partition;
use datasets::shard;
use fl_core::content::pins::PinMode;
use fl_core::content::{Blockstore, Repo};
use fl_core::model::Architecture;
use fl_core::records::task::TASK_FORMAT;
use fl_core::records::{DataSource, DpLevel, DpParams, Keypair, Neighbours, Task};
use fl_core::tensors::Encoding;
use fl_node::net::address_limits::{self, MAX_INBOUND_PER_ADDRESS, NEW_INBOUND_PER_SECOND};
use fl_node::net::node::MAX_CONNECTIONS_PER_PEER;
use fl_node::net::{Node, NodeConfig, keys};
use fl_node::round::attack::{Attack, SLOW_SERVE_BYTES_PER_SECOND};
use fl_node::round::{Event, Limits, Participant, ParticipantConfig, RoundError, RoundStore};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use crate::{Plan, Progress, SimulationError, Victim};

/// Seconds each peer gets to send a block before the next is asked.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The published task, and where each node keeps its repo.
pub(crate) struct Setup {
    /// The task record.
    pub task: Cid,
    /// What the simulation announces first.
    pub started: Progress,
    dataset: Cid,
    initial_model: Cid,
    nodes: Vec<(PathBuf, Keypair)>,
}

/// One node of the simulation before it joins.
pub(crate) struct Member {
    pub index: usize,
    pub node: Node,
    repo: Arc<Repo>,
    key: Keypair,
    rounds: RoundStore,
}

/// The participants as they run: how each ended (`None`: stopped), their events, and the
/// channel that stops one by index.
pub(crate) struct Running {
    pub nodes: tokio::task::JoinSet<(usize, Option<Result<Cid, RoundError>>)>,
    pub events: mpsc::UnboundedReceiver<(usize, Event)>,
    pub stop: broadcast::Sender<usize>,
}

/// Makes every node's directory and key under `root`, and publishes the dataset's shards,
/// the initial model and the task from node 0's repo.
pub(crate) fn publish(plan: &Plan, data: &Cifar10, root: &Path) -> Result<Setup, SimulationError> {
    let arch = Architecture::FedAvgCnn;
    let dirs: Vec<PathBuf> = (0..plan.nodes)
        .map(|i| root.join(format!("node-{i:03}")))
        .collect();
    let keys = dirs
        .iter()
        .map(|d| {
            std::fs::create_dir_all(d).map_err(|source| SimulationError::Dir {
                path: d.clone(),
                source,
            })?;
            Ok(keys::load_or_create(d)?)
        })
        .collect::<Result<Vec<_>, SimulationError>>()?;
    let seed_repo = Repo::open(&dirs[0])?.without_sync();
    let labels = data.train.labels();
    let split = match &plan.population {
        // One pool, in order, that every node deals the clients from (and can deal them).
        Some(_) => {
            plan.clients(labels)?;
            Partition {
                clients: vec![(0..labels.len()).collect()],
            }
        }
        None => plan.split(labels)?,
    };
    let smallest_shard = split.clients.iter().map(Vec::len).min().unwrap_or(0) as u64;
    let noise_multiplier = plan.noise_multiplier(smallest_shard)?;
    let dataset = shard::publish(
        &seed_repo,
        data,
        &split,
        &plan.scheme.to_string(),
        plan.seed,
    )?;
    let initial = arch.init(plan.seed)?;
    let model_bytes = initial.encode(Encoding::F32)?.len() as u64;
    let update_bytes = initial.encode(plan.update_encoding)?.len() as u64;
    let initial_model = initial.store(&seed_repo)?;
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
        // In full, as `fl task create` records it.
        rule: plan
            .rule
            .parse::<aggregator::Rule>()
            .map(|r| format!("{r:#}"))
            .unwrap_or_else(|_| plan.rule.clone()),
        members: Some(keys.iter().map(|k| k.public().to_peer_id()).collect()),
        flops_per_sample: arch.training_flops_per_sample(),
        seed: plan.seed,
        update_encoding: plan.update_encoding,
        max_samples: None,
        evaluate_every: plan.evaluate_every,
        secure: plan.secure,
        population: plan.task_population(),
    };
    task.validate()?;
    let block = task.to_block()?;
    let task_cid = *block.cid();
    seed_repo
        .blocks()
        .put(block)
        .map_err(fl_core::content::RepoError::from)?;
    seed_repo.pin(&task_cid, PinMode::Recursive)?;
    seed_repo.pin(&initial_model, PinMode::Recursive)?;
    Ok(Setup {
        task: task_cid,
        started: Progress::Started {
            task: task_cid.to_string(),
            dataset: dataset.to_string(),
            nodes: plan.nodes,
            rounds: plan.rounds,
            model_bytes,
            update_bytes,
            noise_multiplier,
        },
        dataset,
        initial_model,
        nodes: dirs.into_iter().zip(keys).collect(),
    })
}

/// Starts every node's swarm on loopback: node 0 first, providing what it published, the
/// others bootstrapping from it; a `slow-serve` attacker's Bitswap serves at a trickle.
pub(crate) async fn start_nodes(
    plan: &Plan,
    setup: &Setup,
) -> Result<Vec<Member>, SimulationError> {
    let mut started = Vec::with_capacity(setup.nodes.len());
    let mut bootstrap: Vec<Multiaddr> = Vec::new();
    for (index, (dir, key)) in setup.nodes.iter().enumerate() {
        // The run's repos are its scratch (docs/decisions.md, "No flush per block in a
        // simulation's repos").
        let repo = Arc::new(Repo::open(dir)?.without_sync());
        let rounds = RoundStore::open(dir)?;
        // Every node is on this host: its address may hold every node's connections.
        let per_host = (setup.nodes.len() as u32).saturating_mul(MAX_CONNECTIONS_PER_PEER);
        let mut config = NodeConfig {
            listen: vec![loopback()],
            bootstrap: bootstrap.clone(),
            mdns: false,
            address_limits: address_limits::Config {
                max_per_address: per_host.max(MAX_INBOUND_PER_ADDRESS),
                new_per_second: f64::from(per_host).max(NEW_INBOUND_PER_SECOND),
            },
            ..NodeConfig::default()
        };
        if plan.attack_of(index) == Some(Attack::SlowServe) {
            config.bitswap.max_served_per_second = SLOW_SERVE_BYTES_PER_SECOND;
        }
        let node = Node::start(key.clone(), Arc::new(repo.blocks().clone()), config).await?;
        if index == 0 {
            for cid in [setup.task, setup.dataset, setup.initial_model] {
                node.provide(cid).await?;
            }
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
            key: key.clone(),
            rounds,
        });
    }
    Ok(started)
}

/// Runs each member's participant on `task` in a task of its own, until it ends or is
/// stopped through [`Running::stop`].
pub(crate) fn spawn(plan: &Plan, task: Cid, members: Vec<Member>) -> Running {
    let limits = Limits::shared(plan.trainings_at_once, plan.checkers.computations());
    let (tx, events) = mpsc::unbounded_channel::<(usize, Event)>();
    let (stop, _) = broadcast::channel::<usize>(plan.nodes.max(1));
    // Rounds whose aggregator stops as it starts aggregating.
    let stop_aggregator: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(
        plan.failures
            .iter()
            .filter(|f| f.victim == Victim::Aggregator && f.after.is_zero())
            .map(|f| f.round)
            .collect(),
    ));
    let mut nodes = tokio::task::JoinSet::new();
    for m in members {
        let stop_aggregator = stop_aggregator.clone();
        let config = ParticipantConfig {
            task,
            shard: Some(m.index),
            own_data: None,
            backend: plan.backend,
            block_timeout: BLOCK_TIMEOUT,
            linger: plan.linger,
            keep_rounds: plan.keep_rounds,
            checking: plan.checkers.of(m.index, plan.nodes),
            limits: limits.clone(),
            attack: plan.attack_of(m.index),
            pace: plan.pace_of(m.index),
        };
        let index = m.index;
        let tx = tx.clone();
        let stopped = stopped(stop.subscribe(), index);
        let stopper = stop.clone();
        let participant = Participant::new(m.node, m.repo, m.key, m.rounds, config);
        nodes.spawn(async move {
            let emit = move |e: &Event| {
                // The first aggregator of a round whose aggregator fails is stopped from
                // here, before its next await: it cannot publish. (The next in rank is not.)
                if let Event::Aggregating { round, .. } = e {
                    let mut rounds = stop_aggregator.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(i) = rounds.iter().position(|r| r == round) {
                        rounds.swap_remove(i);
                        let _ = stopper.send(index);
                    }
                }
                let _ = tx.send((index, e.clone()));
            };
            let outcome = tokio::select! {
                r = participant.run(emit).instrument(tracing::info_span!("node", n = index)) => Some(r),
                () = stopped => None,
            };
            (index, outcome)
        });
    }
    Running {
        nodes,
        events,
        stop,
    }
}

/// Resolves once node `index` is told to stop (never, once no one can tell it).
async fn stopped(mut stop: broadcast::Receiver<usize>, index: usize) {
    loop {
        match stop.recv().await {
            Ok(n) if n == index => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// A loopback TCP address on a port the system picks.
fn loopback() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0))
}
