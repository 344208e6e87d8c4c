//! `fl task create` (the genesis record), `fl verify` (recompute a round from its inputs) and
//! `fl status` (a task's chain, aggregator ranking and credits).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fl_core::content::pins::PinMode;
use fl_core::content::{Blockstore, Cid, Repo};
use fl_core::model::Architecture;
use fl_core::privacy::{accountant, plan};
use fl_core::records::{
    ClientId, DataSource, DpLevel, DpParams, Evaluation, Manifest, Neighbours, PeerId, Signed,
    Task, ranking,
};
use fl_core::tensors::Bundle;
use fl_node::round::{Inputs, RoundError, RoundStore, RoundStoreError, verify};

use super::node::{NetArgs, runtime, start};
use super::{RepoPath, cid_arg};

#[derive(Debug, Subcommand)]
pub(super) enum TaskCmd {
    /// Writes a task record (the genesis of a training run), pins it and prints its CID.
    Create(Create),
}

/// `fl task create`.
#[derive(Debug, Args)]
pub(super) struct Create {
    /// A name for people.
    #[arg(long, default_value = "cifar10")]
    name: String,
    /// The model's architecture.
    #[arg(long, default_value = "fedavg-cnn")]
    arch: String,
    /// The initial model (a stored model file); default: a fresh one drawn from --init-seed.
    #[arg(long, value_name = "CID", value_parser = cid_arg)]
    init: Option<Cid>,
    /// Seed of the fresh initial model.
    #[arg(long, default_value_t = 0)]
    init_seed: u64,
    /// The dataset manifest (`fl data publish`): node i trains on shard i.
    #[arg(long, value_name = "CID", value_parser = cid_arg, conflicts_with = "own_data")]
    data: Option<Cid>,
    /// Each node brings its own data (`fl node run --data DIR`); no shared test set.
    #[arg(long)]
    own_data: bool,
    /// Rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    #[command(flatten)]
    training: super::LocalTraining,
    /// How the learning rate falls over the rounds: constant or cosine.
    #[arg(long, default_value = "constant")]
    schedule: fl_core::records::RoundSchedule,
    /// Fewest updates a round may close with.
    #[arg(long, default_value_t = 1)]
    min_participants: u32,
    /// Seconds after a round opens when it closes with what has arrived.
    #[arg(long, default_value_t = 600.0)]
    deadline: f64,
    /// Seconds each next-ranked aggregator waits for the one before it.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// The aggregation rule (`fedavg`, `median`, `trimmed-mean:0.1`, `fedadam`, ...).
    #[arg(long, default_value = "fedavg")]
    rule: String,
    /// The round's aggregator scores the test set every N rounds and after the last
    /// (default: every round).
    #[arg(long, value_name = "N")]
    evaluate_every: Option<u32>,
    /// Only these peers may take part (repeatable); default: anyone.
    #[arg(long = "member", value_name = "PEER_ID")]
    members: Vec<PeerId>,
    /// DP: what is protected: `client` (DP-FedAvg, each node's update clipped and noised
    /// once a round) or `sample` (DP-SGD on every node, each example's gradient clipped and
    /// noise at every step). DP is on when --dp-clip, --dp-noise or --dp-epsilon is given.
    #[arg(long = "dp", value_name = "LEVEL", default_value = "client", value_parser = super::dp_level_arg)]
    dp_level: DpLevel,
    /// DP: the L2 norm each update (client) or each example's gradient (sample) is clipped
    /// to; default 1.0.
    #[arg(long, allow_negative_numbers = true)]
    dp_clip: Option<f64>,
    /// DP: noise multiplier z (std dev z x clip); omit it and give --dp-epsilon to derive it.
    #[arg(long, allow_negative_numbers = true)]
    dp_noise: Option<f64>,
    /// DP: the epsilon to spend over all rounds. At the sample level it is each node's
    /// budget: a node stops contributing before a round that would take it past.
    #[arg(long, allow_negative_numbers = true)]
    dp_epsilon: Option<f64>,
    /// DP: the neighbouring relation epsilon is for: add-remove, or replace-one (client
    /// level; accounted at sensitivity 2 x clip).
    #[arg(long, default_value = "add-remove", value_parser = neighbours_arg)]
    dp_neighbours: Neighbours,
    /// DP: the delta epsilon is reported at.
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    dp_delta: f64,
    /// Seed for data order and noise streams (and the dealing of a population's clients).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    population: super::PopulationArgs,
    #[command(flatten)]
    secure: super::SecureArgs,
    /// How the dataset's images, all its shards in order, are dealt to the clients (with
    /// --clients): iid, dirichlet:ALPHA, shards:K, quantity:ALPHA, draw:N.
    #[arg(long, default_value = "iid", requires = "clients")]
    partition: datasets::partition::Scheme,
}

/// `fl verify MANIFEST_CID`.
#[derive(Debug, Args)]
pub(super) struct Verify {
    /// The manifest to check.
    #[arg(value_parser = cid_arg)]
    manifest: Cid,
    /// Fetch missing blocks from this peer (repeatable); without peers, the repo must hold them.
    #[arg(long, value_name = "MULTIADDR")]
    peer: Vec<libp2p::Multiaddr>,
    #[command(flatten)]
    net: NetArgs,
}

/// `fl status --task CID`.
#[derive(Debug, Args)]
pub(super) struct Status {
    /// The task.
    #[arg(long, value_parser = cid_arg)]
    task: Cid,
    /// As JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(cmd: TaskCmd, repo: &RepoPath) -> anyhow::Result<()> {
    match cmd {
        TaskCmd::Create(c) => create(c, &repo.open()?),
    }
}

fn create(c: Create, repo: &Repo) -> anyhow::Result<()> {
    let arch: Architecture = c.arch.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    // Recorded in full (every parameter, defaults too): a later change of a default must not
    // change what the task's manifests are recomputed with.
    let rule: aggregator::Rule = c
        .rule
        .parse()
        .with_context(|| format!("--rule {}", c.rule))?;
    let (data, smallest_shard) = match (c.data, c.own_data) {
        (Some(manifest), _) => {
            let m = datasets::shard::manifest(repo.blocks(), &manifest).with_context(|| {
                format!(
                    "--data {manifest}: not a dataset manifest in this repo (run `fl data publish`)"
                )
            })?;
            let smallest = m.shards.iter().map(|s| s.samples).min();
            (DataSource::Shards { manifest }, smallest)
        }
        (None, true) => (DataSource::OwnData, None),
        (None, false) => bail!("give --data MANIFEST_CID (from `fl data publish`) or --own-data"),
    };
    let train = c.training.params(c.schedule);
    let mut population = c.population.population(c.partition.to_string())?;
    let dp_asked = c.dp_clip.is_some() || c.dp_noise.is_some() || c.dp_epsilon.is_some();
    if let Some(p) = population.as_mut().filter(|_| dp_asked) {
        // DP-FedAvg's accountant assumes each client is sampled on its own.
        p.sampling = fl_core::records::Sampling::Poisson;
    }
    let q = population
        .as_ref()
        .filter(|_| dp_asked)
        .map_or(1.0, |p| p.rate());
    let dp = dp_params(&c, &train, smallest_shard, q)?;
    if let (Some(p), DataSource::Shards { manifest }) = (&population, &data) {
        // Refused here, not when nodes join: the pool must give every client its images.
        let m = datasets::shard::manifest(repo.blocks(), manifest)?;
        let pool = datasets::shard::fetch_pool(repo.blocks(), &m)
            .with_context(|| format!("--data {manifest}: reading its shards"))?;
        datasets::population::Clients::new(pool.labels(), p.clients, &c.partition, c.seed)
            .with_context(|| format!("--clients {} --partition {}", p.clients, c.partition))?;
    }
    let initial_model = match c.init {
        Some(cid) => {
            let model = Bundle::load(repo, &cid).with_context(|| format!("--init {cid}"))?;
            arch.check(&model)
                .with_context(|| format!("--init {cid}"))?;
            cid
        }
        None => arch.init(c.init_seed)?.store(repo)?,
    };
    let seconds = |name: &str, s: f64| -> anyhow::Result<u64> {
        if !(s.is_finite() && s > 0.0) {
            bail!("--{name} must be a positive number of seconds, got {s}");
        }
        Ok((s * 1000.0).round() as u64)
    };
    let task = Task {
        format: fl_core::records::task::TASK_FORMAT.to_string(),
        name: c.name,
        architecture: arch.name().to_string(),
        initial_model,
        data,
        train,
        rounds: c.rounds,
        min_participants: c.min_participants,
        round_deadline_ms: seconds("deadline", c.deadline)?,
        grace_ms: seconds("grace", c.grace)?,
        dp,
        rule: format!("{rule:#}"),
        members: (!c.members.is_empty()).then_some(c.members.clone()),
        flops_per_sample: arch.training_flops_per_sample(),
        seed: c.seed,
        update_encoding: c.training.update_encoding,
        max_samples: None,
        evaluate_every: c.evaluate_every,
        secure: c.secure.settings(c.members.len()),
        population,
    };
    task.validate()?;
    let block = task.to_block()?;
    let cid = *block.cid();
    repo.blocks().put(block)?;
    repo.pin(&cid, PinMode::Recursive)?;
    println!("{cid}");
    Ok(())
}

/// Parses a neighbouring relation: `add-remove` or `replace-one`.
fn neighbours_arg(text: &str) -> Result<Neighbours, String> {
    match text {
        "add-remove" => Ok(Neighbours::AddRemove),
        "replace-one" => Ok(Neighbours::ReplaceOne),
        other => Err(format!(
            "unknown neighbouring relation {other:?}: `add-remove` or `replace-one`"
        )),
    }
}

/// The task's DP section from the `--dp*` flags, deriving the noise from --dp-epsilon where
/// it is not given; `smallest_shard` is the fewest examples a node trains on, when known,
/// and `q` the chance a client takes part in a round (1 without a population).
fn dp_params(
    c: &Create,
    train: &fl_core::records::TrainParams,
    smallest_shard: Option<u64>,
    q: f64,
) -> anyhow::Result<Option<DpParams>> {
    if c.dp_clip.is_none() && c.dp_noise.is_none() && c.dp_epsilon.is_none() {
        return Ok(None);
    }
    let clip_norm = c.dp_clip.unwrap_or(1.0);
    plan::check_clip(clip_norm).context("--dp-clip")?;
    if let Some(z) = c.dp_noise {
        plan::check_noise(z).context("--dp-noise")?;
    }
    if let Some(e) = c.dp_epsilon
        && !(e.is_finite() && e > 0.0)
    {
        return Err(plan::PlanError::Epsilon(e)).context("--dp-epsilon");
    }
    let noise_multiplier = match (c.dp_level, c.dp_noise, c.dp_epsilon) {
        (_, Some(z), _) => z,
        (DpLevel::Client, None, Some(epsilon)) => {
            let z = accountant::noise_for_epsilon(q, u64::from(c.rounds), c.dp_delta, epsilon)
                .context("--dp-epsilon")?;
            match c.dp_neighbours {
                Neighbours::AddRemove => z,
                // Sensitivity 2C: twice the noise for the same epsilon.
                Neighbours::ReplaceOne => 2.0 * z,
            }
        }
        (DpLevel::Sample, None, Some(epsilon)) => {
            let Some(n) = smallest_shard else {
                bail!(
                    "--dp-epsilon at the sample level with --own-data: the task cannot know how many examples each node has; give --dp-noise"
                );
            };
            let batch = u64::from(train.batch_size);
            let per_round = match train.steps {
                Some(steps) => u64::from(steps),
                None => u64::from(train.epochs) * n.div_ceil(batch.max(1)),
            };
            let target = plan::DpSgdTarget {
                epsilon,
                delta: c.dp_delta,
                clip_norm,
            };
            target
                .plan(n, batch, per_round * u64::from(c.rounds))
                .context("--dp-epsilon")?
                .noise_multiplier
        }
        (_, None, None) => bail!("give --dp-noise or --dp-epsilon with --dp-clip"),
    };
    if c.dp_level == DpLevel::Sample
        && let Some(n) = smallest_shard
        && !(c.dp_delta > 0.0 && c.dp_delta < 1.0 / n as f64)
    {
        return Err(plan::PlanError::Delta {
            delta: c.dp_delta,
            examples: n,
        })
        .context("--dp-delta");
    }
    Ok(Some(DpParams {
        clip_norm,
        noise_multiplier,
        delta: c.dp_delta,
        level: Some(c.dp_level),
        neighbours: Some(c.dp_neighbours),
        epsilon_budget: match c.dp_level {
            DpLevel::Sample => c.dp_epsilon,
            DpLevel::Client => None,
        },
    }))
}

pub(super) fn verify(v: Verify, repo: &RepoPath) -> anyhow::Result<()> {
    let repo = Arc::new(repo.open()?);
    runtime()?.block_on(async {
        let online = !v.peer.is_empty() || !v.net.bootstrap.is_empty();
        let inputs = if online {
            let node = start(&repo, v.net.config(&["/ip4/0.0.0.0/tcp/0"])?).await?;
            for addr in &v.peer {
                node.dial(addr.clone()).await?;
            }
            Inputs::networked(repo.clone(), node, Duration::from_secs(10))
        } else {
            Inputs::local(repo.clone())
        };
        let verified = match verify::manifest(&inputs, v.manifest).await {
            Ok(verified) => verified,
            Err(e @ RoundError::Missing { .. }) if !online => {
                return Err(anyhow::Error::new(e))
                    .context("pass --peer MULTIADDR to fetch what this repo lacks")
                    .with_context(|| format!("manifest {}", v.manifest));
            }
            Err(e) => return Err(e).with_context(|| format!("manifest {}", v.manifest)),
        };
        let (manifest, m) = (&verified.manifest, &verified.manifest.body);
        println!(
            "manifest {} (task {}, round {}): valid. Model {} recomputed from {} updates ({} rejected); signed by {} at rank {}; every announcement's signature checks.",
            v.manifest,
            m.task,
            m.round,
            m.model,
            m.contributions.len(),
            m.rejected.len(),
            manifest.signer,
            m.rank
        );
        if let Some((sample, counted)) = &verified.clients {
            let list = |c: &mut dyn Iterator<Item = ClientId>| {
                c.map(|c| c.0.to_string()).collect::<Vec<_>>().join(", ")
            };
            let clients = verified.terms.task.population.as_ref().map_or(0, |p| p.clients);
            println!(
                "  sampled (recomputed from the task and the round): {} of {clients} clients: {}",
                sample.len(),
                list(&mut sample.iter())
            );
            println!(
                "  counted: {} clients, each sampled and named by its host: {}",
                counted.len(),
                list(&mut counted.iter().copied())
            );
        }
        for r in &m.rejected {
            println!(
                "  rejected: update {} by {}: {} ({})",
                r.update,
                r.peer,
                r.reason,
                r.reason.meaning()
            );
        }
        Ok(())
    })
}

pub(super) fn status(s: Status, repo: &RepoPath) -> anyhow::Result<()> {
    let path = repo.path()?;
    let repo = repo.open()?;
    let rounds = match RoundStore::open(&path) {
        Ok(r) => r,
        Err(RoundStoreError::Locked(_)) => {
            bail!(
                "a node is running on this repo; run `fl status` on another repo or after it stops"
            )
        }
        Err(e) => return Err(e.into()),
    };
    let task_block = repo
        .blocks()
        .get(&s.task)
        .with_context(|| format!("task {} is not in this repo", s.task))?;
    let task = Task::from_block(&task_block)?;
    let (head_round, head) = rounds.head(&s.task)?;
    let mut chain = Vec::new();
    let mut at = head;
    while let Some(cid) = at {
        let bytes = repo.blocks().get(&cid)?.data().to_vec();
        let m = Signed::<Manifest>::from_bytes(&cid, &bytes)?;
        at = m.body.prev;
        chain.push((cid, m));
    }
    chain.reverse();
    // Test figures: in the manifest, or in its aggregator's evaluation (published after it).
    let mut metrics = Vec::new();
    for (cid, m) in &chain {
        let evaluated = match rounds.evaluated(&s.task, m.body.round)? {
            Some(e) => {
                let bytes = repo.blocks().get(&e)?.data().to_vec();
                let e = Signed::<Evaluation>::from_bytes(&e, &bytes)?;
                (e.body.manifest == *cid && e.signer == m.signer).then_some(e.body.metrics)
            }
            None => None,
        };
        metrics.push(m.body.metrics.clone().or(evaluated));
    }
    let mut credits: BTreeMap<PeerId, u128> = BTreeMap::new();
    for (_, m) in &chain {
        for (peer, c) in m.body.credits() {
            *credits.entry(peer).or_default() += u128::from(c);
        }
    }
    let total: u128 = credits.values().sum();
    // Sample-level DP: each node's epsilon, the latest (largest) its contributions state.
    let mut spent: BTreeMap<PeerId, f64> = BTreeMap::new();
    for (_, m) in &chain {
        for c in &m.body.contributions {
            if let Some(e) = c.epsilon {
                let at = spent.entry(c.peer).or_insert(e);
                *at = at.max(e);
            }
        }
    }
    let privacy = task.dp.as_ref().map(|dp| {
        serde_json::json!({
            "level": dp.level().name(),
            "neighbours": dp.neighbours().name(),
            "delta": dp.delta,
            "noise_multiplier": dp.noise_multiplier,
            "clip_norm": dp.clip_norm,
            "epsilon_budget": dp.epsilon_budget,
            "epsilon": chain.last().and_then(|(_, m)| m.body.epsilon),
            "nodes": spent.iter().map(|(p, e)| serde_json::json!({
                "peer": p.to_string(),
                "epsilon": e,
            })).collect::<Vec<_>>(),
        })
    });
    let next_ranking: Vec<PeerId> = match chain.last() {
        Some((cid, m)) if head_round < task.rounds => ranking(
            cid,
            head_round + 1,
            m.body.contributions.iter().map(|c| c.peer),
        ),
        _ => Vec::new(),
    };
    if s.json {
        let value = serde_json::json!({
            "task": s.task.to_string(),
            "name": task.name,
            "rounds": task.rounds,
            "round": head_round,
            "model": chain.last().map(|(_, m)| m.body.model.to_string()),
            "chain": chain.iter().zip(&metrics).map(|((cid, m), metrics)| serde_json::json!({
                "round": m.body.round,
                "manifest": cid.to_string(),
                "model": m.body.model.to_string(),
                "aggregator": m.signer.to_string(),
                "rank": m.body.rank,
                "participants": m.body.contributions.len(),
                "accuracy": metrics.as_ref().map(|x| x.test_accuracy),
                "loss": metrics.as_ref().map(|x| x.test_loss),
                "epsilon": m.body.epsilon,
            })).collect::<Vec<_>>(),
            "next_aggregators": next_ranking.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "credits": credits.iter().map(|(p, c)| serde_json::json!({
                "peer": p.to_string(),
                "credits": c.to_string(),
                "share": if total == 0 { 0.0 } else { *c as f64 / total as f64 },
            })).collect::<Vec<_>>(),
            "privacy": privacy,
        });
        println!("{value}");
        return Ok(());
    }
    println!(
        "task {} ({}): round {head_round} of {}",
        s.task, task.name, task.rounds
    );
    println!(
        "{:>5}  {:<54} {:>5} {:>12} {:>9}  aggregator",
        "round", "manifest", "rank", "participants", "accuracy"
    );
    for ((cid, m), metrics) in chain.iter().zip(&metrics) {
        let acc = metrics.as_ref().map_or("-".to_string(), |x| {
            format!("{:.2}%", 100.0 * x.test_accuracy)
        });
        println!(
            "{:>5}  {:<54} {:>5} {:>12} {:>9}  {}",
            m.body.round,
            cid.to_string(),
            m.body.rank,
            m.body.contributions.len(),
            acc,
            m.signer
        );
    }
    if !next_ranking.is_empty() {
        println!("next round's aggregators, in rank order (if the same peers take part):");
        for (rank, peer) in next_ranking.iter().enumerate() {
            println!("  {rank}: {peer}");
        }
    }
    if let Some(dp) = &task.dp {
        let budget = dp
            .epsilon_budget
            .map_or(String::new(), |b| format!(", budget {b} per node"));
        println!(
            "privacy: {} level, {} neighbours, delta {:e}, noise multiplier {:.4}, clip {}{budget}",
            dp.level(),
            dp.neighbours(),
            dp.delta,
            dp.noise_multiplier,
            dp.clip_norm
        );
        match chain.last().and_then(|(_, m)| m.body.epsilon) {
            Some(e) if spent.is_empty() => println!("  epsilon so far: {e:.4}"),
            _ => {}
        }
        for (peer, e) in &spent {
            println!("  {peer}  epsilon {e:.4}");
        }
    }
    println!("credits (samples x epochs x training FLOPs per sample):");
    for (peer, c) in &credits {
        let share = if total == 0 {
            0.0
        } else {
            *c as f64 / total as f64
        };
        println!("  {peer}  {c:>22}  {:>6.2}%", 100.0 * share);
    }
    Ok(())
}
