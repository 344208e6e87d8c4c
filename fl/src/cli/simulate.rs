//! `fl simulate`: a federation of N real nodes on this machine, with a live table of its
//! rounds.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use datasets::cifar10;
use datasets::download::{self, Source};
use datasets::partition::Scheme;
use fl_core::records::RoundSchedule;
use fl_node::round::Event;
use fl_node::round::attack::Attack;
use fl_sim::{Checkers, Failure, Plan, PrivacyTarget, Progress, Report, RoundRow, Slow, Victim};

/// `fl simulate`.
#[derive(Debug, Args)]
pub(super) struct Simulate {
    /// Nodes, each with its own key, repo and swarm on loopback, training on its own shard.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// How the training set is split across the nodes (or, with --clients, the clients):
    /// iid, dirichlet:ALPHA, shards:K, quantity:ALPHA, draw:N (each draws N images of its
    /// own, overlapping: populations larger than the data).
    #[arg(long, default_value = "iid")]
    partition: Scheme,
    #[command(flatten)]
    population: super::PopulationArgs,
    #[command(flatten)]
    secure: super::SecureArgs,
    #[command(flatten)]
    dp: super::DpTarget,
    /// What DP protects: `client` (DP-FedAvg: each node's update clipped and noised once a
    /// round) or `sample` (DP-SGD on every node: each example's gradient clipped, noise at
    /// every step; epsilon is each node's).
    #[arg(long = "dp", value_name = "LEVEL", default_value = "client", value_parser = super::dp_level_arg, requires = "dp_epsilon")]
    dp_level: fl_core::records::DpLevel,
    /// The aggregation rule: fedavg, fedavgm[:momentum=M], fedadam, fedyogi,
    /// median[:screen=K], trimmed-mean:F[:screen=K], krum:F, norm-bound:N (the screen leaves
    /// out updates farther than K, default 2, times the median distance from the
    /// coordinate-wise median; 0 turns it off).
    #[arg(long, default_value = "fedavg")]
    aggregation: String,
    /// CIFAR-10 (the binary version's directory); default: fetched into the user's data
    /// directory.
    #[arg(long, env = "FL_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Use only the first N training images (quick runs); default: all.
    #[arg(long, value_name = "N")]
    images: Option<usize>,
    #[command(flatten)]
    training: super::LocalTraining,
    /// How the local learning rate falls over the rounds: cosine or constant.
    #[arg(long, default_value = "cosine")]
    schedule: RoundSchedule,
    /// Fewest updates a round closes with; default: every node (with --clients, 1: a round
    /// waits for the hosts of its sample).
    #[arg(long)]
    min_participants: Option<u32>,
    /// Seconds after a round opens when it closes with what has arrived.
    #[arg(long, default_value_t = 1800.0)]
    deadline: f64,
    /// Seconds each next-ranked aggregator waits for the one before it.
    #[arg(long, default_value_t = 60.0)]
    grace: f64,
    /// End the run when no honest node has adopted a round for this many seconds; default:
    /// wait for ever.
    #[arg(long)]
    stall_after: Option<f64>,
    /// Nodes that recompute every manifest from its updates (the others check its claims);
    /// default: all nodes up to 8.
    #[arg(long, conflicts_with = "check_rate")]
    checkers: Option<usize>,
    /// Instead of --checkers: every node recomputes each manifest with probability
    /// RATE / --nodes, drawn on its own (as `fl node run --check-probability`), so RATE
    /// nodes recompute a round on average and none is known ahead.
    #[arg(long, value_name = "RATE")]
    check_rate: Option<f64>,
    /// Score the test set every N rounds and after the last (default: every round): scoring
    /// shares the machine with the next round's training.
    #[arg(long, value_name = "N")]
    evaluate_every: Option<u32>,
    /// Trainings at once across the nodes, each on its share of the cores (one: every core
    /// for it); default: the machine's cores (with --step-ms, every node: each acts as a
    /// machine of its own).
    #[arg(long)]
    trainings: Option<usize>,
    /// Each local step takes at least MS milliseconds on every node (a node sleeps out the
    /// rest): nodes sharing this machine's cores act as machines of their own at that speed,
    /// if the cores keep up (8 nodes on 2 cores: about 4x a step's time alone).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    step_ms: Option<u64>,
    /// The last N nodes take FACTOR times --step-ms for each step (default 2: half speed).
    #[arg(long, value_name = "N[:FACTOR]", value_parser = slow_arg, requires = "step_ms")]
    slow: Option<Slow>,
    /// Node NODE stops for good in round ROUND, SECONDS into it (repeatable), e.g. 3@2+10;
    /// `aggregator@2` stops whichever node aggregates round 2 as it starts.
    #[arg(long = "fail", value_name = "NODE@ROUND[+SECONDS]", value_parser = failure_arg)]
    failures: Vec<Failure>,
    /// Node NODE departs from the protocol (repeatable), to measure what the honest nodes
    /// withstand: inflate-samples[:FACTOR], scale:FACTOR, sign-flip, copy-update or censor,
    /// e.g. 3:scale:-10.
    #[arg(long = "attack", value_name = "NODE:KIND", value_parser = attack_arg)]
    attacks: Vec<(usize, Attack)>,
    /// Seed of the initial model, the partition, data order and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep every node's repo under DIR, with every round's models and updates for `fl
    /// verify` (default: a scratch directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Each node keeps the models and updates of only its last N rounds (and the model the
    /// oldest started from), dropping older ones as rounds are adopted. Default: 4, or all
    /// with --keep.
    #[arg(long, value_name = "N")]
    keep_rounds: Option<std::num::NonZeroU32>,
    /// JSON lines on stdout: every node's events, a row per round, then the summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: super::model::DeviceArgs,
}

/// Parses `NODE@ROUND[+SECONDS]`, where NODE is a number or `aggregator`.
fn failure_arg(text: &str) -> Result<Failure, String> {
    let usage = || {
        format!("{text:?}: expected NODE@ROUND or NODE@ROUND+SECONDS, e.g. 3@2+10 or aggregator@2")
    };
    let (node, rest) = text.split_once('@').ok_or_else(usage)?;
    let (round, after) = rest.split_once('+').unwrap_or((rest, "0"));
    let after: f64 = after.parse().map_err(|_| usage())?;
    if !(after.is_finite() && after >= 0.0) {
        return Err(usage());
    }
    Ok(Failure {
        victim: match node {
            "aggregator" => Victim::Aggregator,
            n => Victim::Node(n.parse().map_err(|_| usage())?),
        },
        round: round.parse().map_err(|_| usage())?,
        after: Duration::from_secs_f64(after),
    })
}

/// Parses `N[:FACTOR]`.
fn slow_arg(text: &str) -> Result<Slow, String> {
    let usage = || format!("{text:?}: expected N or N:FACTOR, e.g. 4 or 4:2");
    let (nodes, factor) = text.split_once(':').unwrap_or((text, "2"));
    Ok(Slow {
        nodes: nodes.parse().map_err(|_| usage())?,
        factor: factor.parse().map_err(|_| usage())?,
    })
}

/// Parses `NODE:KIND`.
fn attack_arg(text: &str) -> Result<(usize, Attack), String> {
    let (node, kind) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected NODE:KIND, e.g. 3:sign-flip"))?;
    let node = node
        .parse()
        .map_err(|_| format!("{text:?}: {node:?} is not a node number"))?;
    Ok((node, kind.parse().map_err(|e| format!("{e}"))?))
}

impl Simulate {
    fn plan(&self) -> anyhow::Result<Plan> {
        let seconds = |name: &str, s: f64| -> anyhow::Result<Duration> {
            if !(s.is_finite() && s > 0.0) {
                bail!("--{name} must be a positive number of seconds, got {s}");
            }
            Ok(Duration::from_secs_f64(s))
        };
        let defaults = Plan::new(self.nodes, self.rounds);
        let population = self.population.population(self.partition.to_string())?;
        let min_participants = match &population {
            Some(_) => 1,
            None => defaults.min_participants,
        };
        Ok(Plan {
            scheme: self.partition,
            population,
            train: self.training.params(self.schedule),
            rule: self.aggregation.clone(),
            update_encoding: self.training.update_encoding,
            privacy: self.dp.dp_epsilon.map(|epsilon| PrivacyTarget {
                level: self.dp_level,
                epsilon,
                delta: self.dp.dp_delta,
                clip_norm: self.dp.dp_clip,
            }),
            min_participants: self.min_participants.unwrap_or(min_participants),
            deadline: seconds("deadline", self.deadline)?,
            grace: seconds("grace", self.grace)?,
            backend: self.device.backend()?,
            checkers: match (self.check_rate, self.checkers) {
                (Some(rate), _) => Checkers::Rate(rate),
                (None, Some(k)) => Checkers::First(k),
                (None, None) => defaults.checkers,
            },
            trainings_at_once: match (self.trainings, self.step_ms) {
                (Some(n), _) => n,
                (None, Some(_)) => self.nodes,
                (None, None) => defaults.trainings_at_once,
            },
            pace: self.step_ms.map(Duration::from_millis),
            slow: self.slow,
            seed: self.seed,
            failures: self.failures.clone(),
            attacks: self.attacks.clone(),
            stall_after: self
                .stall_after
                .map(|s| seconds("stall-after", s))
                .transpose()?,
            evaluate_every: self.evaluate_every,
            secure: self.secure.settings(self.nodes),
            keep_rounds: match (self.keep_rounds, &self.keep) {
                (Some(n), _) => Some(n),
                (None, Some(_)) => None,
                (None, None) => defaults.keep_rounds,
            },
            ..defaults
        })
    }

    /// The CIFAR-10 directory: given, or fetched (once) into the user's data directory.
    fn data_dir(&self, quiet: bool) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data {
            return Ok(dir.clone());
        }
        let dir = dirs::data_dir()
            .context("no user data directory on this system; pass --data DIR or set FL_DATA")?
            .join("fl/datasets");
        if !quiet {
            eprintln!(
                "no --data or FL_DATA given: fetching CIFAR-10 into {}",
                dir.display()
            );
        }
        Ok(download::fetch(&Source::cifar10_binary(), &dir, |_| {})?)
    }
}

pub(super) fn run(args: Simulate, quiet: bool) -> anyhow::Result<()> {
    let plan = args.plan()?;
    // Settings that cannot work are refused before any data is read or fetched.
    plan.check(usize::MAX)?;
    let data_dir = args.data_dir(quiet || args.json)?;
    let mut data = cifar10::load(&data_dir).with_context(|| {
        format!(
            "reading CIFAR-10 from {} (`fl data fetch cifar10` downloads it; --data DIR or FL_DATA point at a copy)",
            data_dir.display()
        )
    })?;
    super::first_images(&mut data, args.images)?;
    let scratch;
    let root = match &args.keep {
        Some(dir) => dir.clone(),
        None => {
            scratch = fl_sim::scratch_dir(&plan, &data, "fl-simulate-")
                .context("making a scratch directory")?;
            scratch.path().to_owned()
        }
    };
    let mut view = View::new(&plan, quiet, args.json);
    let report = super::node::runtime()?
        .block_on(fl_sim::run(&plan, &data, &root, |p| view.show(p)))
        .context("simulating the federation")?;
    view.finish(&report, &plan, args.keep.as_ref())?;
    if report.finished == 0 {
        bail!("no node finished the task");
    }
    Ok(())
}

/// What the terminal shows: a progress bar for the open round and the table of the closed
/// ones (or JSON lines, or nothing).
struct View {
    mode: Mode,
    nodes: usize,
    bar: Option<indicatif::ProgressBar>,
    /// The round in progress and how many nodes announced in it.
    round: u32,
    announced: usize,
    /// With a population: the clients sampled a round, and those trained so far in the
    /// round in progress.
    per_round: Option<u32>,
    clients: Vec<u64>,
    /// What a round needs each node to send at least: the model down and an update up.
    minimum_bytes: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Table,
    Json,
    Quiet,
}

impl View {
    fn new(plan: &Plan, quiet: bool, json: bool) -> Self {
        let mode = match (json, quiet) {
            (true, _) => Mode::Json,
            (false, true) => Mode::Quiet,
            (false, false) => Mode::Table,
        };
        Self {
            mode,
            nodes: plan.nodes,
            bar: None,
            round: 1,
            announced: 0,
            per_round: plan.population.as_ref().map(|p| p.per_round),
            clients: Vec::new(),
            minimum_bytes: 0,
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            // A hidden bar (output not a terminal) drops what it is asked to print.
            Some(bar) if !bar.is_hidden() => bar.println(text),
            _ => println!("{text}"),
        }
    }

    fn show(&mut self, p: &Progress) {
        if self.mode == Mode::Json {
            if let Ok(line) = serde_json::to_string(p) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            return;
        }
        if self.mode == Mode::Quiet {
            return;
        }
        match p {
            Progress::Started {
                task,
                dataset,
                nodes,
                rounds,
                model_bytes,
                update_bytes,
                noise_multiplier,
            } => {
                self.minimum_bytes = model_bytes + update_bytes;
                println!("task {task}: {nodes} nodes, {rounds} rounds, dataset {dataset}");
                if let Some(per_round) = self.per_round {
                    // With client-level DP each client is sampled on its own (Poisson).
                    let how = match noise_multiplier {
                        Some(_) => "on average",
                        None => "exactly",
                    };
                    println!(
                        "a population of clients hosted by the nodes, {per_round} sampled a round ({how})"
                    );
                }
                if let Some(z) = noise_multiplier {
                    println!("differential privacy: noise multiplier {z:.3}");
                }
                println!(
                    "{:>5} {:>12} {:>10} {:>9} {:>8} {:>8} {:>10} {:>8}",
                    "round",
                    "participants",
                    "aggregator",
                    "accuracy",
                    "loss",
                    "epsilon",
                    "MB sent",
                    "seconds"
                );
                let bar = indicatif::ProgressBar::new(*nodes as u64);
                // With a population, the bar counts the nodes that announced (hosts of
                // sampled clients) out of all.
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "round {prefix:>3} {wide_bar} {pos}/{len} trained {elapsed_precise} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_prefix("1");
                bar.enable_steady_tick(Duration::from_millis(500));
                self.bar = Some(bar);
            }
            Progress::Node { event, .. } => match event {
                Event::Announced { round, clients, .. } if *round >= self.round => {
                    if *round > self.round {
                        self.round = *round;
                        self.announced = 0;
                        self.clients.clear();
                    }
                    self.announced += 1;
                    self.clients.extend(clients);
                    if let Some(bar) = &self.bar {
                        bar.set_prefix(self.round.to_string());
                        bar.set_position(self.announced.min(self.nodes) as u64);
                        bar.set_message(self.clients_trained());
                    }
                }
                Event::Aggregating { round, updates, .. } if *round == self.round => {
                    if let Some(bar) = &self.bar {
                        bar.set_message(format!("aggregating {updates} updates"));
                    }
                }
                _ => {}
            },
            Progress::Failed { node, round } => {
                self.line(&format!("node {node} stopped in round {round}"))
            }
            Progress::Errored { node, reason } => {
                self.line(&format!("node {node} gave up: {reason}"))
            }
            Progress::Round(row) => {
                self.line(&row_text(row));
                if row.round >= self.round {
                    self.round = row.round + 1;
                    self.announced = 0;
                    self.clients.clear();
                    if let Some(bar) = &self.bar {
                        bar.set_prefix(self.round.to_string());
                        bar.set_position(0);
                        bar.set_message("");
                    }
                }
            }
        }
    }

    /// With a population, the round's sampled clients trained so far (`clients 4, 17 of 10
    /// sampled`); nothing without one.
    fn clients_trained(&self) -> String {
        let Some(per_round) = self.per_round else {
            return String::new();
        };
        let mut sorted = self.clients.clone();
        sorted.sort_unstable();
        let shown: Vec<String> = sorted.iter().take(12).map(u64::to_string).collect();
        let more = if sorted.len() > shown.len() {
            ", ..."
        } else {
            ""
        };
        format!(
            "clients {}{more} ({} of {per_round} sampled)",
            shown.join(", "),
            sorted.len()
        )
    }

    fn finish(
        &mut self,
        report: &Report,
        plan: &Plan,
        kept: Option<&PathBuf>,
    ) -> anyhow::Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let mut out = std::io::stdout().lock();
        match self.mode {
            Mode::Json => {
                let mut summary = serde_json::to_value(report)?;
                summary["type"] = "summary".into();
                writeln!(out, "{summary}")?;
            }
            Mode::Quiet => writeln!(out, "{}", report.model)?,
            Mode::Table => {
                let last = report.rounds.last();
                let sent: u64 = report.bytes_sent.iter().sum();
                let per_node_round = sent as f64 / (plan.nodes as f64 * f64::from(plan.rounds));
                let minimum = self.minimum_bytes;
                writeln!(
                    out,
                    "final model {} ({} of {} nodes agree; {} finished)",
                    report.model, report.agreeing, plan.nodes, report.finished
                )?;
                if let Some(acc) = last.and_then(|r| r.accuracy) {
                    writeln!(out, "final test accuracy {:.2}%", 100.0 * acc)?;
                }
                writeln!(
                    out,
                    "{:.1} s in all; {:.1} MB sent per node per round (model down + update up: {:.1} MB); peak memory {:.0} MiB ({:.0} MiB per node)",
                    report.seconds,
                    per_node_round / 1e6,
                    minimum as f64 / 1e6,
                    report.peak_memory as f64 / 1048576.0,
                    report.peak_memory as f64 / 1048576.0 / plan.nodes as f64
                )?;
                if let Some(dir) = kept {
                    writeln!(out, "node repos kept in {}", dir.display())?;
                }
            }
        }
        Ok(())
    }
}

/// One row of the table.
fn row_text(r: &RoundRow) -> String {
    let pct = |v: Option<f64>| v.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
    let num = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.4}"));
    let eps = r.epsilon.map_or("-".into(), |e| format!("{e:.2}"));
    let agg = r.aggregator.map_or("?".into(), |n| format!("node {n}"));
    format!(
        "{:>5} {:>12} {:>10} {:>9} {:>8} {:>8} {:>10.1} {:>8.1}",
        r.round,
        r.participants,
        agg,
        pct(r.accuracy),
        num(r.loss),
        eps,
        r.bytes_sent as f64 / 1e6,
        r.seconds
    )
}
