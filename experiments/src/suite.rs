//! The eight experiments of the evaluation. Each writes its CSV and PNG files into the
//! results directory and returns its part of the report.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use datasets::cifar10::Cifar10;
use fl_core::content::Repo;
use fl_core::model::{Architecture, Batch, Classifier};
use fl_core::tensors::{Bundle, Encoding};
use fl_node::net::{Node, NodeConfig, keys};
use fl_node::round::checking;
use fl_plot::{Series, bar_chart, line_chart};
use fl_sim::{Checkers, Failure, Plan, Victim};
use rand::{Rng, SeedableRng};

use crate::harness::{Csv, FedRun, centralize, federate, field, pct};
use crate::privacy::PrivacyPoint;

/// Nodes that recompute every manifest in the scalability runs (the rest check claims).
const SCALING_CHECKERS: usize = 2;

/// Federations by node count.
type Runs<'a> = &'a [(usize, FedRun)];

/// Recomputations a round, on average, in the communication experiment's sampled-checking
/// runs (each node recomputes each manifest with this over the node count).
const SAMPLED_CHECK_RATE: f64 = 0.4;

/// Local SGD steps a round in the short-round federation: the main job's.
const LOCAL_STEPS: u32 = 5;

/// How big the runs are.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// The quick suite (minutes) rather than the full one.
    pub quick: bool,
    /// Nodes in the fixed-size experiments.
    pub nodes: usize,
    /// Rounds of each federation.
    pub rounds: u32,
    /// Node counts of the scalability experiment.
    pub node_counts: &'static [usize],
    /// Accuracy the scalability experiment times.
    pub target: f64,
}

impl Scale {
    /// The quick suite: small federations on the first images.
    pub const QUICK: Scale = Scale {
        quick: true,
        nodes: 4,
        rounds: 3,
        node_counts: &[2, 4, 8, 16],
        target: 0.20,
    };
    /// The full suite.
    pub const FULL: Scale = Scale {
        quick: false,
        nodes: 8,
        rounds: 10,
        node_counts: &[2, 4, 8, 16, 32, 64],
        target: 0.40,
    };
}

/// What every experiment works with.
pub struct Ctx {
    /// The data (already cut down for the quick suite).
    pub data: Cifar10,
    /// Where it was read from (for the Python anchors, which read it themselves).
    pub data_dir: PathBuf,
    /// How big.
    pub scale: Scale,
    /// Where files go.
    pub out: PathBuf,
    /// The privacy experiment's points.
    pub privacy_points: Vec<PrivacyPoint>,
    /// The seed of every run's initial model and data order (and of the Opacus runs).
    pub seed: u64,
    /// The privacy experiment keeps the points of `out/privacy.csv` that it does not redo.
    pub merge_privacy: bool,
    /// The scalability runs, shared with the communication and resource experiments.
    scaling: OnceCell<Vec<(usize, FedRun)>>,
}

/// One experiment's part of the report.
pub struct Section {
    /// Its heading.
    pub title: String,
    /// Markdown.
    pub body: String,
    /// Files it wrote.
    pub files: Vec<PathBuf>,
    /// Seconds it took.
    pub seconds: f64,
}

/// The experiments, by name, in report order.
pub const EXPERIMENTS: [(&str, &str); 14] = [
    (
        "federated-vs-centralized",
        "accuracy against wall time and rounds, both setups",
    ),
    (
        "scalability",
        "round time, bytes per node and time to a target accuracy against nodes",
    ),
    (
        "communication",
        "bytes per node per round against the minimum",
    ),
    (
        "fault-tolerance",
        "0..50% of nodes failing, and the aggregator failing mid-round",
    ),
    (
        "privacy",
        "DP-SGD at epsilon 1, 3, 8 (quick: 1, 8) and without DP: centralized, federated, Opacus",
    ),
    (
        "non-iid",
        "Dirichlet alpha 0.1, 0.5, 100 with FedAvg and FedProx, and PyTorch's FedAvg on the same shards",
    ),
    (
        "inference-latency",
        "a local model against fetching it by CID first",
    ),
    ("resources", "CPU and memory per node"),
    (
        "robustness",
        "0 to a third of members poisoning, or lying about samples or authorship, under FedAvg, median, trimmed mean and Krum",
    ),
    (
        "populations",
        "100 clients, 10 sampled a round, Dirichlet alpha 0.1, 0.5, 1: FedAvg and FedProx beside Flower on the same clients",
    ),
    (
        "population-scale",
        "ten million registered clients against one hundred, ten a round: round time and memory",
    ),
    (
        "population-privacy",
        "client-level DP (DP-FedAvg) on 1,000 clients, 100 a round, at epsilon 8, beside no DP",
    ),
    (
        "heterogeneous",
        "8 nodes, 4 at half speed: equal local steps against steps in proportion to capacity (FedNova)",
    ),
    (
        "secure-aggregation",
        "plain FedAvg against secure aggregation (SecAgg) at 8 and 16 nodes: round time, bytes, accuracy",
    ),
];

impl Ctx {
    /// A context for `scale` on `data`, writing into `out`.
    pub fn new(data: Cifar10, data_dir: PathBuf, scale: Scale, out: PathBuf) -> Self {
        Self {
            data,
            data_dir,
            scale,
            out,
            privacy_points: PrivacyPoint::DEFAULT.to_vec(),
            seed: 0,
            merge_privacy: false,
            scaling: OnceCell::new(),
        }
    }

    /// Runs the experiment called `name`.
    pub fn run(&self, name: &str) -> anyhow::Result<Section> {
        let started = Instant::now();
        eprintln!("{name}:");
        let (title, body, files) = match name {
            "federated-vs-centralized" => self.federated_vs_centralized()?,
            "scalability" => self.scalability()?,
            "communication" => self.communication()?,
            "fault-tolerance" => self.fault_tolerance()?,
            "privacy" => self.privacy()?,
            "non-iid" => self.non_iid()?,
            "inference-latency" => self.inference_latency()?,
            "resources" => self.resources()?,
            "robustness" => self.robustness()?,
            "populations" => self.populations()?,
            "population-scale" => self.population_scale()?,
            "population-privacy" => self.population_privacy()?,
            "heterogeneous" => self.heterogeneous()?,
            "secure-aggregation" => self.secure_aggregation()?,
            other => anyhow::bail!("unknown experiment {other:?}"),
        };
        Ok(Section {
            title,
            body,
            files,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The plan every experiment starts from: `nodes` nodes, the suite's rounds.
    pub(crate) fn plan(&self, nodes: usize) -> Plan {
        let mut plan = Plan::new(nodes, self.scale.rounds);
        plan.seed = self.seed;
        plan.checkers = Checkers::First(nodes.min(4));
        // Rounds take a minute or so here (up to about 200 s under attack at full scale): a
        // run that adopts nothing for this long is ended and its row says so.
        plan.stall_after = Some(Duration::from_secs(if self.scale.quick {
            300
        } else {
            900
        }));
        plan
    }

    /// How long a round waits for a missing node before it closes with the updates it has.
    pub(crate) fn deadline(&self) -> Duration {
        Duration::from_secs(if self.scale.quick { 25 } else { 120 })
    }

    /// A plan whose rounds go on without lost nodes: at least half the nodes, closing at
    /// the deadline, the next aggregator 10 s after the one before.
    pub(crate) fn tolerant_plan(&self, nodes: usize) -> Plan {
        let mut plan = self.plan(nodes);
        plan.min_participants = (nodes / 2).max(1) as u32;
        plan.deadline = self.deadline();
        plan.grace = Duration::from_secs(10);
        plan
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    fn federated_vs_centralized(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let samples = self.data.train.len();
        let epochs = self.scale.rounds;
        // Classic FedAvg (a round is one local epoch) and the main job's short rounds, both
        // making the same passes over the data as centralized training.
        let by_epoch = self.plan(self.scale.nodes);
        // As the main job runs them: scored once per pass over the data, each manifest
        // recomputed by one node on average.
        let mut by_steps = self
            .plan(self.scale.nodes)
            .in_steps(LOCAL_STEPS, epochs, samples)
            .scored_each_epoch(samples);
        by_steps.checkers = Checkers::Rate(1.0);
        let setups = [
            (
                format!("federated, {} rounds of 1 epoch", by_epoch.rounds),
                &by_epoch,
            ),
            (
                format!(
                    "federated, {} rounds of {LOCAL_STEPS} steps",
                    by_steps.rounds
                ),
                &by_steps,
            ),
        ];
        let mut feds = Vec::new();
        for (label, plan) in &setups {
            feds.push((label.clone(), *plan, federate(label, plan, &self.data)?));
        }
        let central = centralize(&by_epoch, &self.data, epochs as usize)?.epochs;
        let mut csv = Csv::create(
            &self.out,
            "federated_vs_centralized.csv",
            &["setup", "step", "epochs", "seconds", "accuracy", "loss"],
        )?;
        for (label, plan, fed) in &feds {
            for r in &fed.report.rounds {
                csv.row([
                    label.clone(),
                    r.round.to_string(),
                    format!("{:.4}", plan.epochs_after(r.round, samples)),
                    format!("{:.3}", r.elapsed),
                    field(r.accuracy),
                    field(r.loss),
                ])?;
            }
        }
        for e in &central {
            csv.row([
                "centralized".into(),
                e.epoch.to_string(),
                e.epoch.to_string(),
                format!("{:.3}", e.elapsed),
                field(Some(e.accuracy)),
                field(Some(e.loss)),
            ])?;
        }
        let csv = csv.finish()?;
        let series = |x: &dyn Fn(&Plan, &fl_sim::RoundRow) -> f64,
                      central_x: &dyn Fn(&crate::harness::Epoch) -> f64| {
            let mut lines: Vec<Series> = feds
                .iter()
                .map(|(label, plan, fed)| Series {
                    label: label.clone(),
                    points: fed
                        .report
                        .rounds
                        .iter()
                        .filter_map(|r| r.accuracy.map(|a| (x(plan, r), 100.0 * a)))
                        .collect(),
                })
                .collect();
            lines.push(Series {
                label: format!("centralized, {epochs} epochs"),
                points: central
                    .iter()
                    .map(|e| (central_x(e), 100.0 * e.accuracy))
                    .collect(),
            });
            lines
        };
        let by_time = self.path("federated_vs_centralized_time.png");
        line_chart(
            &series(&|_, r| r.elapsed, &|e| e.elapsed),
            "Test accuracy against wall time",
            ("seconds", "test accuracy (%)"),
            &by_time,
        )?;
        let by_epochs = self.path("federated_vs_centralized_epochs.png");
        line_chart(
            &series(&|plan, r| plan.epochs_after(r.round, samples), &|e| {
                e.epoch as f64
            }),
            "Test accuracy against passes over the data",
            ("epochs", "test accuracy (%)"),
            &by_epochs,
        )?;
        let central_final = central.last().map(|e| e.accuracy);
        let t = &by_epoch.train;
        let mut table = String::from(
            "| setup | final test accuracy | against centralized | wall time |\n| --- | --- | --- | --- |\n",
        );
        for (label, _, fed) in &feds {
            let gap = fed
                .final_accuracy()
                .zip(central_final)
                .map_or("-".into(), |(f, c)| format!("{:+.2} pp", 100.0 * (f - c)));
            table.push_str(&format!(
                "| {label} | {} | {gap} | {:.0} s |\n",
                pct(fed.final_accuracy()),
                fed.report.rounds.last().map_or(0.0, |r| r.elapsed),
            ));
        }
        table.push_str(&format!(
            "| centralized, {epochs} epochs | {} | | {:.0} s |\n",
            pct(central_final),
            central.last().map_or(0.0, |e| e.elapsed),
        ));
        let body = format!(
            "{nodes} nodes (IID) against centralized training, each making {epochs} passes over the same {samples} training \
             images: classic FedAvg with one local epoch a round, and the main job's rounds of {LOCAL_STEPS} local steps with \
             each node's momentum carried over (`--steps {LOCAL_STEPS}`), scored once per pass and each manifest recomputed \
             by one node a round on average, as the main job runs them (`--evaluate-every`, `--check-rate 1`). Batch {b}, \
             lr {lr} ({sched} over the run), momentum {m}, weight decay {wd} in all three.\n\n{table}\n\
             One-epoch rounds average models that have drifted apart for a whole epoch; short rounds keep them together \
             (docs/decisions.md, \"Rounds of local steps\").\n",
            nodes = self.scale.nodes,
            b = t.batch_size,
            lr = t.learning_rate,
            sched = t.schedule,
            m = t.momentum,
            wd = t.weight_decay,
        );
        Ok((
            "Federated against centralized".into(),
            body,
            vec![csv, by_time, by_epochs],
        ))
    }

    /// A scalability run's federation: few checkers, so that bytes grow with the nodes
    /// rather than with their square.
    fn scaling_plan(&self, nodes: usize, update_encoding: Encoding) -> Plan {
        let mut plan = self.plan(nodes);
        plan.checkers = Checkers::First(nodes.min(SCALING_CHECKERS));
        plan.update_encoding = update_encoding;
        plan
    }

    /// One federation per node count (shared with communication and resources).
    fn scaling(&self) -> anyhow::Result<&Vec<(usize, FedRun)>> {
        if let Some(runs) = self.scaling.get() {
            return Ok(runs);
        }
        let mut runs = Vec::new();
        for &n in self.scale.node_counts {
            if n * 10 > self.data.train.len() {
                eprintln!("  skipping {n} nodes: too few images");
                continue;
            }
            let plan = self.scaling_plan(n, Encoding::F32);
            runs.push((n, federate(&format!("{n} nodes"), &plan, &self.data)?));
        }
        Ok(self.scaling.get_or_init(|| runs))
    }

    fn scalability(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let runs = self.scaling()?;
        let target = self.scale.target;
        let mut csv = Csv::create(
            &self.out,
            "scalability.csv",
            &[
                "nodes",
                "round_seconds",
                "bytes_per_node_round",
                "seconds_to_target",
                "target",
                "final_accuracy",
                "total_seconds",
            ],
        )?;
        let mut table = String::from(
            "| nodes | mean round time | MB sent per node per round | time to target | final accuracy |\n| --- | --- | --- | --- | --- |\n",
        );
        for (n, run) in runs {
            let to_target = run.time_to(target);
            csv.row([
                n.to_string(),
                format!("{:.3}", run.round_seconds()),
                format!("{:.0}", run.bytes_per_node_round(*n)),
                field(to_target),
                format!("{target}"),
                field(run.final_accuracy()),
                format!("{:.3}", run.report.seconds),
            ])?;
            table.push_str(&format!(
                "| {n} | {:.1} s | {:.1} | {} | {} |\n",
                run.round_seconds(),
                run.bytes_per_node_round(*n) / 1e6,
                to_target.map_or("not reached".into(), |s| format!("{s:.0} s")),
                pct(run.final_accuracy()),
            ));
        }
        let csv = csv.finish()?;
        let xs = |f: &dyn Fn(usize, &FedRun) -> Option<f64>| -> Vec<(f64, f64)> {
            runs.iter()
                .filter_map(|(n, r)| f(*n, r).map(|y| (*n as f64, y)))
                .collect()
        };
        let time = self.path("scalability_round_time.png");
        line_chart(
            &[Series {
                label: "mean round time".into(),
                points: xs(&|_, r| Some(r.round_seconds())),
            }],
            "Round time against nodes (all nodes on this machine)",
            ("nodes", "seconds per round"),
            &time,
        )?;
        let to_target = self.path("scalability_time_to_target.png");
        line_chart(
            &[Series {
                label: format!("time to {:.0}% test accuracy", 100.0 * target),
                points: xs(&|_, r| r.time_to(target)),
            }],
            "Time to the target accuracy against nodes",
            ("nodes", "seconds"),
            &to_target,
        )?;
        let body = format!(
            "The same {} training images split IID over more and more nodes, {} rounds each, every node a real peer in one process \
             on this machine (so the nodes share its cores: round time measures the protocol's cost as nodes are added, not a speed-up). \
             Target accuracy {:.0}%.\n\n{table}",
            self.data.train.len(),
            self.scale.rounds,
            100.0 * target
        );
        Ok(("Scalability".into(), body, vec![csv, time, to_target]))
    }

    fn communication(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let float32 = self.scaling()?;
        // The same federations with int8 updates, up to 16 nodes (beyond, the float32
        // runs alone show the trend).
        let mut int8 = Vec::new();
        for &(n, _) in float32.iter().filter(|(n, _)| *n <= 16) {
            let plan = self.scaling_plan(n, Encoding::Int8);
            int8.push((n, federate(&format!("{n} nodes, int8"), &plan, &self.data)?));
        }
        // Every node recomputing each manifest with probability rate / N, at 8 and 16 nodes.
        let mut sampled = Vec::new();
        for &(n, _) in float32.iter().filter(|(n, _)| [8, 16].contains(n)) {
            let mut plan = self.scaling_plan(n, Encoding::F32);
            plan.checkers = Checkers::Rate(SAMPLED_CHECK_RATE);
            sampled.push((
                n,
                federate(&format!("{n} nodes, sampled checking"), &plan, &self.data)?,
            ));
        }
        let full = Checkers::First(SCALING_CHECKERS);
        let rate = Checkers::Rate(SAMPLED_CHECK_RATE);
        let runs: Vec<(Encoding, Checkers, Runs)> = vec![
            (Encoding::F32, full, float32),
            (Encoding::Int8, full, &int8),
            (Encoding::F32, rate, &sampled),
        ];
        let mut csv = Csv::create(
            &self.out,
            "communication.csv",
            &[
                "nodes",
                "encoding",
                "checking",
                "detection",
                "bytes_per_node_round",
                "steady_bytes_per_node_round",
                "minimum_bytes_per_node_round",
                "update_bytes",
                "final_accuracy",
            ],
        )?;
        let mut table = String::from(
            "| nodes | updates | recomputed by | a wrong manifest refuted | MB per node per round (all rounds) | after round 1 | minimum (model down + update up) | ratio after round 1 | final accuracy |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for (encoding, checking, runs) in &runs {
            for (n, run) in runs.iter() {
                let minimum = run.minimum_bytes_per_node_round();
                let steady = run.steady_bytes_per_node_round(*n);
                let accuracy = run.final_accuracy();
                let detection = detection(checking, *n);
                let checking = checking_label(checking);
                csv.row([
                    n.to_string(),
                    encoding.to_string(),
                    checking.clone(),
                    format!("{detection:.4}"),
                    format!("{:.0}", run.bytes_per_node_round(*n)),
                    format!("{steady:.0}"),
                    format!("{minimum:.0}"),
                    run.update_bytes.to_string(),
                    accuracy.map_or(String::new(), |a| format!("{a:.4}")),
                ])?;
                table.push_str(&format!(
                    "| {n} | {encoding} | {checking} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {} |\n",
                    pct(Some(detection)),
                    run.bytes_per_node_round(*n) / 1e6,
                    steady / 1e6,
                    minimum / 1e6,
                    steady / minimum,
                    accuracy.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
                ));
            }
        }
        let csv = csv.finish()?;
        let png = self.path("communication.png");
        let mut series = Vec::new();
        for (encoding, checking, runs) in &runs {
            let line = |label: String, f: &dyn Fn(usize, &FedRun) -> f64| Series {
                label,
                points: runs
                    .iter()
                    .map(|(n, r)| (*n as f64, f(*n, r) / 1e6))
                    .collect(),
            };
            series.push(line(
                format!(
                    "{encoding} updates, {}: measured after round 1",
                    checking_label(checking)
                ),
                &|n, r| r.steady_bytes_per_node_round(n),
            ));
            if *checking == full {
                series.push(line(
                    format!("{encoding} updates: minimum (model down + update up)"),
                    &|_, r| r.minimum_bytes_per_node_round(),
                ));
            }
        }
        line_chart(
            &series,
            "Bytes each node sends per round (Bitswap block payloads)",
            ("nodes", "MB per node per round"),
            &png,
        )?;
        let model_mb = float32
            .first()
            .map_or(0.0, |(_, r)| r.model_bytes as f64 / 1e6);
        let update_mb = int8
            .first()
            .map_or(0.0, |(_, r)| r.update_bytes as f64 / 1e6);
        let body = format!(
            "Bitswap bytes sent per node per round in the scalability runs (float32 updates) and in the same federations with \
             int8 updates (`--update-encoding int8`: one float32 scale per tensor), against the minimum a round needs (each node \
             downloads the model and uploads its update once). A model file is {model_mb:.2} MB; an int8 update {update_mb:.2} MB. \
             The rest is the checking: in the first runs {SCALING_CHECKERS} nodes (checkers) fetch every update to recompute \
             each manifest, so int8 shrinks most of the traffic, not only the minimum. In the sampled runs every node recomputes \
             each manifest with probability {SAMPLED_CHECK_RATE} / N, drawn on its own (`--check-rate {SAMPLED_CHECK_RATE}`), \
             and a wrong manifest is refuted by at least one of the N - 1 honest nodes with the probability in the table \
             (1 - (1 - {SAMPLED_CHECK_RATE}/N)^(N-1); with fixed checkers, when one of them is honest). Round 1 also fetches the \
             data shards. Gossip (announcements and manifests, a few hundred bytes each) is not counted.\n\n{table}"
        );
        Ok(("Communication overhead".into(), body, vec![csv, png]))
    }

    fn fault_tolerance(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let nodes = if self.scale.quick { 10 } else { 20 };
        let deadline = self.deadline();
        let mut scenarios: Vec<(String, Vec<Failure>)> = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for fraction in [0.0, 0.1, 0.3, 0.5] {
            let k = (fraction * nodes as f64).round() as usize;
            // Node 0 holds the shards until every node has fetched its own: it stays.
            let mut victims: Vec<usize> = (1..nodes).collect();
            // A seeded shuffle: the same nodes fail at the same moments every run.
            for i in (1..victims.len()).rev() {
                victims.swap(i, rng.random_range(0..=i));
            }
            let failures = victims[..k]
                .iter()
                .map(|&node| Failure {
                    victim: Victim::Node(node),
                    round: rng.random_range(1..=self.scale.rounds),
                    after: Duration::from_secs_f64(rng.random_range(0.0..10.0)),
                })
                .collect();
            scenarios.push((format!("{:.0}% of nodes fail", 100.0 * fraction), failures));
        }
        scenarios.push((
            "aggregator of round 2 fails".into(),
            vec![Failure {
                victim: Victim::Aggregator,
                round: 2.min(self.scale.rounds),
                after: Duration::ZERO,
            }],
        ));
        let mut csv = Csv::create(
            &self.out,
            "fault_tolerance.csv",
            &[
                "scenario",
                "round",
                "participants",
                "aggregator_rank",
                "seconds",
                "accuracy",
                "failure",
            ],
        )?;
        let mut table = String::from(
            "| scenario | nodes stopped | rounds completed | final accuracy | total time |\n| --- | --- | --- | --- | --- |\n",
        );
        let mut series = Vec::new();
        let mut times = Vec::new();
        for (label, failures) in scenarios {
            let mut plan = self.tolerant_plan(nodes);
            plan.failures = failures;
            let run = match federate(&label, &plan, &self.data) {
                Ok(run) => run,
                Err(e) => {
                    let why = failure(&e);
                    csv.row([
                        label.clone(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        why.clone(),
                    ])?;
                    table.push_str(&format!("| {label} | - | - | failed: {why} | - |\n"));
                    continue;
                }
            };
            for r in &run.report.rounds {
                csv.row([
                    label.clone(),
                    r.round.to_string(),
                    r.participants.to_string(),
                    r.rank.to_string(),
                    format!("{:.3}", r.seconds),
                    field(r.accuracy),
                    String::new(),
                ])?;
            }
            table.push_str(&format!(
                "| {label} | {} | {} of {} | {} | {:.0} s |\n",
                run.failed,
                run.report.rounds.len(),
                plan.rounds,
                pct(run.final_accuracy()),
                run.report.seconds
            ));
            series.push(run.accuracy_series(label.clone()));
            times.push((label, run.report.seconds));
        }
        let csv = csv.finish()?;
        let acc = self.path("fault_tolerance_accuracy.png");
        line_chart(
            &series,
            &format!("Test accuracy by round, {nodes} nodes, nodes failing"),
            ("round", "test accuracy (%)"),
            &acc,
        )?;
        let time = self.path("fault_tolerance_time.png");
        bar_chart(
            &times
                .iter()
                .map(|(l, s)| {
                    (
                        l.replace(" of nodes fail", "")
                            .replace("aggregator of round 2 fails", "aggregator"),
                        *s,
                    )
                })
                .collect::<Vec<_>>(),
            "Wall time of the whole run by scenario",
            "seconds",
            &time,
        )?;
        let body = format!(
            "{nodes} nodes, {} rounds, minimum {} participants, round deadline {} s and grace 10 s. Failing nodes stop for good \
             (their swarm closes) in a random round, 0-10 s into it; the nodes and moments are drawn from a fixed seed. A round \
             stops waiting for a lost node once it has gone quiet (no record re-published for a liveness window, {} s here) and \
             closes with the updates it has; a lost aggregator is replaced by the next in rank once it has gone quiet, or at \
             deadline + grace at the latest.\n\n{table}",
            self.scale.rounds,
            nodes / 2,
            deadline.as_secs(),
            fl_node::round::republish::liveness(nodes - 1).as_secs()
        );
        Ok(("Fault tolerance".into(), body, vec![csv, acc, time]))
    }

    fn inference_latency(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let trials = if self.scale.quick { 10 } else { 30 };
        let arch = Architecture::FedAvgCnn;
        let device = crate::harness::backend().device();
        let scratch = tempfile::Builder::new().prefix("fl-latency-").tempdir()?;
        let provider_repo = Repo::open(scratch.path().join("provider"))?;
        let model = arch.init(1)?;
        let cid = model.store(&provider_repo)?;
        provider_repo.pin(&cid, fl_core::content::pins::PinMode::Recursive)?;
        let image = self.data.test.subset(&[0]);
        let batch = Batch::from_cifar_records(&image.to_binary(), &arch.normalization())?;
        let classify = |repo: &Repo| -> anyhow::Result<usize> {
            let bundle = Bundle::load(repo, &cid)?;
            let scores = Classifier::new(arch, &bundle, &device)?.probabilities(&batch)?;
            Ok(scores.predicted().first().copied().unwrap_or(0))
        };
        let mut local = Vec::new();
        for _ in 0..trials {
            let t = Instant::now();
            classify(&provider_repo)?;
            local.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let runtime = tokio::runtime::Runtime::new()?;
        let remote = runtime.block_on(async {
            let loopback = || NodeConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid address")],
                mdns: false,
                ..NodeConfig::default()
            };
            let key = keys::load_or_create(provider_repo.root())?;
            let provider = Node::start(
                key,
                std::sync::Arc::new(provider_repo.blocks().clone()),
                loopback(),
            )
            .await?;
            let addr = provider
                .listen_addrs()
                .await?
                .into_iter()
                .next()
                .context("the provider listens nowhere")?;
            let mut times = Vec::new();
            for i in 0..trials {
                let dir = scratch.path().join(format!("asker-{i}"));
                let repo = Repo::open(&dir)?;
                let key = keys::load_or_create(&dir)?;
                let asker =
                    Node::start(key, std::sync::Arc::new(repo.blocks().clone()), loopback())
                        .await?;
                let peer = asker.dial(addr.clone()).await?;
                let t = Instant::now();
                fl_node::net::fetch(&asker, cid, vec![peer], false, Duration::from_secs(10))
                    .await?;
                classify(&repo)?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(times)
        })?;
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut csv = Csv::create(
            &self.out,
            "inference_latency.csv",
            &["setup", "trial", "ms"],
        )?;
        for (setup, times) in [("local", &local), ("fetch by CID, then local", &remote)] {
            for (i, ms) in times.iter().enumerate() {
                csv.row([setup.into(), i.to_string(), format!("{ms:.3}")])?;
            }
        }
        let csv = csv.finish()?;
        let png = self.path("inference_latency.png");
        let (l, r) = (median(&local), median(&remote));
        bar_chart(
            &[
                ("model in the local repo".into(), l),
                ("model fetched by CID from a peer first".into(), r),
            ],
            "Latency of classifying one image (median)",
            "milliseconds",
            &png,
        )?;
        let body = format!(
            "Classifying one test image with the reference CNN ({} trials each, CPU): loading the model from the local repo \
             and running it, against fetching the model's {:.1} MB by CID from a peer on loopback (a fresh node and repo each \
             trial, already connected) and then the same.\n\n| setup | median latency |\n| --- | --- |\n\
             | local model | {l:.1} ms |\n| fetched by CID first | {r:.1} ms |\n",
            trials,
            model.to_safetensors()?.len() as f64 / 1e6
        );
        Ok(("Inference latency".into(), body, vec![csv, png]))
    }

    fn resources(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let runs = self.scaling()?;
        let mut csv = Csv::create(
            &self.out,
            "resources.csv",
            &[
                "nodes",
                "peak_memory_bytes",
                "peak_memory_per_node_bytes",
                "cpu_seconds",
                "cpu_seconds_per_node_round",
                "gpu",
            ],
        )?;
        let mut table = String::from(
            "| nodes | peak memory (process) | per node | CPU seconds per node per round |\n| --- | --- | --- | --- |\n",
        );
        for (n, run) in runs {
            let per_node = run.report.peak_memory as f64 / *n as f64;
            let cpu = run.cpu_seconds / (*n as f64 * run.report.rounds.len().max(1) as f64);
            csv.row([
                n.to_string(),
                run.report.peak_memory.to_string(),
                format!("{per_node:.0}"),
                format!("{:.3}", run.cpu_seconds),
                format!("{cpu:.3}"),
                "none".into(),
            ])?;
            table.push_str(&format!(
                "| {n} | {:.0} MiB | {:.0} MiB | {cpu:.1} |\n",
                run.report.peak_memory as f64 / 1048576.0,
                per_node / 1048576.0
            ));
        }
        let csv = csv.finish()?;
        let series = |label: &str, f: &dyn Fn(usize, &FedRun) -> f64| {
            vec![Series {
                label: label.into(),
                points: runs.iter().map(|(n, r)| (*n as f64, f(*n, r))).collect(),
            }]
        };
        let memory = self.path("resources_memory.png");
        line_chart(
            &series("peak memory per node", &|n, r| {
                r.report.peak_memory as f64 / 1048576.0 / n as f64
            }),
            "Peak memory per node (all nodes in one process)",
            ("nodes", "MiB"),
            &memory,
        )?;
        let cpu = self.path("resources_cpu.png");
        line_chart(
            &series("CPU seconds per node per round", &|n, r| {
                r.cpu_seconds / (n as f64 * r.report.rounds.len().max(1) as f64)
            }),
            "CPU time per node and round (all nodes in one process)",
            ("nodes", "CPU seconds"),
            &cpu,
        )?;
        let body = format!(
            "From the scalability runs: the process's peak resident memory (reset before each run) and CPU time, divided by \
             the nodes it ran. No GPU on this machine.\n\n{table}"
        );
        Ok(("Resource use".into(), body, vec![csv, memory, cpu]))
    }
}

/// Why a federation failed, in one line fit for a CSV field and a table cell.
pub(crate) fn failure(e: &anyhow::Error) -> String {
    let root = e.chain().last().map_or(String::new(), |c| c.to_string());
    eprintln!("  failed: {e:#}");
    root.replace([',', '|', '\n'], ";")
}

/// Relative path of `file` from `dir`, for links in the report.
/// The chance that a wrong manifest of an N-node communication run is refuted: sampled at
/// rate R, by at least one of the N - 1 honest nodes; with fixed checkers, 1 (two of them, so
/// one is honest whoever signed it).
fn detection(checkers: &Checkers, nodes: usize) -> f64 {
    match *checkers {
        Checkers::First(_) => 1.0,
        Checkers::Rate(rate) => {
            let p = checking::probability_for_rate(rate, nodes);
            checking::detection(vec![p; nodes.saturating_sub(1)])
        }
    }
}

/// How a communication run's manifests were checked, for its table and chart.
fn checking_label(checkers: &Checkers) -> String {
    match checkers {
        Checkers::First(k) => format!("{k} checkers"),
        Checkers::Rate(rate) => format!("sampled, {rate} a round"),
    }
}

pub fn relative(file: &Path, dir: &Path) -> String {
    file.strip_prefix(dir).unwrap_or(file).display().to_string()
}
