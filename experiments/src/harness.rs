//! Running what the experiments measure: a federation (`fl_sim`) or a
//! centralized baseline, with this process's CPU time and peak memory around it, and the
//! CSV files the figures come from.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use datasets::cifar10::Cifar10;
use datasets::pipeline::{Pipeline, PipelineConfig};
use fl_core::model::{
    Architecture, Backend, Classifier, DpSgdConfig, LrSchedule, TrainConfig, Trainer,
};
use fl_core::privacy::plan::DpSgdTarget;
use fl_core::records::DpLevel;
use fl_sim::{Plan, Progress, Report, RoundRow};

/// Test images per evaluation batch.
const EVAL_BATCH: usize = 256;

/// A federation run and what it cost this process.
#[derive(Debug, Clone)]
pub struct FedRun {
    /// Its rows and summary.
    pub report: Report,
    /// Bytes of one model file.
    pub model_bytes: u64,
    /// Bytes of one update file.
    pub update_bytes: u64,
    /// CPU seconds this process used (user + system).
    pub cpu_seconds: f64,
    /// Nodes that were stopped on purpose.
    pub failed: usize,
    /// Nodes whose run ended with an error of their own (their training diverged, say).
    pub errored: usize,
    /// Seconds of local training each round took, summed over the nodes that announced.
    pub train_seconds: std::collections::BTreeMap<u32, f64>,
    /// Under capacity load: the local steps a node took in a round, where not the task's.
    pub local_steps: std::collections::BTreeMap<(u32, usize), u32>,
}

impl FedRun {
    /// What a round needs each node to send at least: the model down and its update up.
    pub fn minimum_bytes_per_node_round(&self) -> f64 {
        (self.model_bytes + self.update_bytes) as f64
    }

    /// The last round's test accuracy.
    pub fn final_accuracy(&self) -> Option<f64> {
        self.report.rounds.last().and_then(|r| r.accuracy)
    }

    /// Test accuracy (%) by round, as a plot's series named `label`.
    pub fn accuracy_series(&self, label: String) -> fl_plot::Series {
        fl_plot::Series {
            label,
            points: self
                .report
                .rounds
                .iter()
                .filter_map(|r| r.accuracy.map(|a| (f64::from(r.round), 100.0 * a)))
                .collect(),
        }
    }

    /// Seconds from the start to the first round whose accuracy reached `target`.
    pub fn time_to(&self, target: f64) -> Option<f64> {
        self.report
            .rounds
            .iter()
            .find(|r| r.accuracy.is_some_and(|a| a >= target))
            .map(|r| r.elapsed)
    }

    /// Mean round time over the rounds after the first (which also fetches the shards).
    pub fn round_seconds(&self) -> f64 {
        let rows: Vec<&RoundRow> = self.report.rounds.iter().skip(1).collect();
        let rows = if rows.is_empty() {
            self.report.rounds.iter().collect()
        } else {
            rows
        };
        rows.iter().map(|r| r.seconds).sum::<f64>() / rows.len().max(1) as f64
    }

    /// Mean seconds of local training a round (summed over its announcers), over the rounds
    /// after the first, as [`FedRun::round_seconds`] counts them.
    pub fn train_seconds_per_round(&self) -> f64 {
        let rounds: Vec<f64> = self.train_seconds.range(2..).map(|(_, s)| *s).collect();
        rounds.iter().sum::<f64>() / rounds.len().max(1) as f64
    }

    /// Bitswap bytes sent per node per round, all rounds.
    pub fn bytes_per_node_round(&self, nodes: usize) -> f64 {
        let sent: u64 = self.report.bytes_sent.iter().sum();
        sent as f64 / (nodes.max(1) as f64 * self.report.rounds.len().max(1) as f64)
    }

    /// Bitswap bytes sent per node per round after the first round (no shard downloads).
    pub fn steady_bytes_per_node_round(&self, nodes: usize) -> f64 {
        let rows: Vec<&RoundRow> = self.report.rounds.iter().skip(1).collect();
        if rows.is_empty() {
            return self.bytes_per_node_round(nodes);
        }
        rows.iter().map(|r| r.bytes_sent as f64).sum::<f64>()
            / (nodes.max(1) as f64 * rows.len() as f64)
    }
}

/// Runs `plan` on `data` in a fresh scratch directory, printing one line per round.
pub fn federate(label: &str, plan: &Plan, data: &Cifar10) -> anyhow::Result<FedRun> {
    let scratch =
        fl_sim::scratch_dir(plan, data, "fl-experiment-").context("making a scratch directory")?;
    reset_peak_memory();
    let cpu = cpu_seconds();
    let (mut model_bytes, mut update_bytes) = (0, 0);
    let (mut failed, mut errored) = (0, 0);
    let mut train_seconds = std::collections::BTreeMap::new();
    let mut local_steps = std::collections::BTreeMap::new();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime
        .block_on(fl_sim::run(plan, data, scratch.path(), |p| match p {
            Progress::Started {
                model_bytes: m,
                update_bytes: u,
                ..
            } => (model_bytes, update_bytes) = (*m, *u),
            Progress::Round(r) => eprintln!(
                "  {label}: round {} accuracy {} in {:.1} s",
                r.round,
                r.accuracy
                    .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
                r.seconds
            ),
            Progress::Failed { .. } => failed += 1,
            Progress::Errored { node, reason } => {
                errored += 1;
                eprintln!("  {label}: node {node}: {reason}");
            }
            Progress::Node {
                node,
                event:
                    fl_node::round::Event::Announced {
                        round,
                        train_seconds: t,
                        steps,
                        ..
                    },
                ..
            } => {
                *train_seconds.entry(*round).or_insert(0.0) += t;
                if let Some(steps) = steps {
                    local_steps.insert((*round, *node), *steps);
                }
            }
            Progress::Node { .. } => {}
        }))
        .with_context(|| format!("{label}: simulating"))?;
    drop(runtime);
    Ok(FedRun {
        report,
        model_bytes,
        update_bytes,
        cpu_seconds: cpu_seconds() - cpu,
        failed,
        errored,
        train_seconds,
        local_steps,
    })
}

/// One epoch of a centralized run.
#[derive(Debug, Clone)]
pub struct Epoch {
    /// 1-based.
    pub epoch: usize,
    /// Seconds since the start.
    pub elapsed: f64,
    /// Test accuracy after it.
    pub accuracy: f64,
    /// Test loss.
    pub loss: f64,
}

/// Trains the reference CNN on the whole training set, as `fl baseline` does, with the local
/// settings of `plan` over `epochs` epochs (its per-round schedule spread over the epochs);
/// evaluates after every epoch. With a sample-level privacy target in `plan`, trains with
/// DP-SGD (Poisson batches of the plan's batch size on average, no augmentation) at the
/// smallest noise that reaches the target after the last epoch.
pub fn centralize(plan: &Plan, data: &Cifar10, epochs: usize) -> anyhow::Result<Central> {
    let arch = Architecture::FedAvgCnn;
    let device = plan.backend.device();
    let global = arch.init(plan.seed)?;
    let t = &plan.train;
    let steps = data.train.len().div_ceil((t.batch_size as usize).max(1));
    let private = match plan.privacy {
        Some(p) if p.level == DpLevel::Sample => Some(
            DpSgdTarget {
                epsilon: p.epsilon,
                delta: p.delta,
                clip_norm: p.clip_norm,
            }
            .plan(
                data.train.len() as u64,
                u64::from(t.batch_size),
                (steps * epochs) as u64,
            )?,
        ),
        _ => None,
    };
    let config = TrainConfig {
        epochs,
        batch_size: t.batch_size as usize,
        learning_rate: t.learning_rate,
        momentum: t.momentum,
        weight_decay: t.weight_decay,
        schedule: if t.schedule.is_constant() {
            LrSchedule::Constant
        } else {
            LrSchedule::Cosine { min_lr: 0.0 }
        },
        seed: plan.seed,
        dp_sgd: private.map(|p| DpSgdConfig {
            clip_norm: p.target.clip_norm,
            noise_multiplier: p.noise_multiplier,
            steps_per_epoch: None,
        }),
        ..TrainConfig::default()
    };
    let mut pipeline = PipelineConfig::training(config.batch_size, plan.seed);
    pipeline.normalization = arch.normalization();
    pipeline.augment &= private.is_none();
    pipeline.shuffle &= private.is_none();
    let train = Pipeline::new(data.train.clone(), pipeline);
    let all_images = match private {
        Some(_) => train.collect_epoch(0),
        None => Vec::new(),
    };
    let test = test_batches(data, arch);
    let mut trainer = Trainer::new(arch, &global, &config, steps, &device)?;
    let started = Instant::now();
    let mut out = Central {
        epochs: Vec::with_capacity(epochs),
        noise_multiplier: private.map(|p| p.noise_multiplier),
        epsilon: private.map(|p| p.epsilon),
        images_per_sec: 0.0,
        initial: global,
    };
    let (mut images, mut seconds) = (0usize, 0.0);
    for epoch in 0..epochs {
        let metrics = match private {
            Some(_) => trainer.private_epoch(&all_images, None, |_| {})?,
            None => trainer.epoch(train.epoch(epoch as u64), |_| {})?,
        };
        images += metrics.samples;
        seconds += metrics.seconds;
        let model = trainer.model()?;
        let eval = Classifier::new(arch, &model, &device)?.evaluate(&test, EVAL_BATCH)?;
        out.epochs.push(Epoch {
            epoch: epoch + 1,
            elapsed: started.elapsed().as_secs_f64(),
            accuracy: eval.accuracy,
            loss: eval.loss,
        });
        eprintln!(
            "  centralized: epoch {} accuracy {:.2}%",
            epoch + 1,
            100.0 * eval.accuracy
        );
    }
    out.images_per_sec = images as f64 / seconds.max(f64::MIN_POSITIVE);
    Ok(out)
}

/// A centralized run.
#[derive(Debug, Clone)]
pub struct Central {
    /// Test figures after each epoch.
    pub epochs: Vec<Epoch>,
    /// DP-SGD's noise multiplier, when private.
    pub noise_multiplier: Option<f64>,
    /// Epsilon after the last epoch, when private.
    pub epsilon: Option<f64>,
    /// Training images per second over all epochs (evaluation left out).
    pub images_per_sec: f64,
    /// The initial model.
    pub initial: fl_core::tensors::Bundle,
}

impl Central {
    /// The last epoch's test accuracy.
    pub fn final_accuracy(&self) -> Option<f64> {
        self.epochs.last().map(|e| e.accuracy)
    }
}

/// The test set as evaluation batches.
pub fn test_batches(data: &Cifar10, arch: Architecture) -> Vec<fl_core::model::Batch> {
    let mut config = PipelineConfig::evaluation(EVAL_BATCH);
    config.normalization = arch.normalization();
    Pipeline::new(data.test.clone(), config).collect_epoch(0)
}

/// The CPU backend the experiments train on unless told otherwise.
pub fn backend() -> Backend {
    Backend::default()
}

/// CPU seconds (user + system) this process has used; 0 where /proc is missing.
pub fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (USER_HZ, 100 on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Starts this process's peak-memory figure afresh (Linux: `clear_refs` 5).
pub fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A CSV file being written: a header, then rows.
pub struct Csv {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl Csv {
    /// Creates `dir/name` with `header`.
    pub fn create(dir: &Path, name: &str, header: &[&str]) -> anyhow::Result<Self> {
        let path = dir.join(name);
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut csv = Self {
            path,
            out: std::io::BufWriter::new(file),
        };
        csv.row(header.iter().map(|h| h.to_string()))?;
        Ok(csv)
    }

    /// Writes one row (fields must not hold commas), on disk at once: an experiment stopped
    /// midway keeps the runs it finished.
    pub fn row(&mut self, fields: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
        let line: Vec<String> = fields.into_iter().collect();
        writeln!(self.out, "{}", line.join(","))
            .and_then(|()| self.out.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Flushes it; returns its path.
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        self.out
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(self.path)
    }
}

/// An optional number as a CSV field (empty when absent).
pub fn field(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.6}"))
}

/// A fraction as a percentage for the report.
pub fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// The difference of two accuracies in signed points ("+0.32 points"); one that rounds to
/// zero reads "+0.00", never "-0.00".
pub fn points(a: f64, b: f64) -> String {
    let d = 100.0 * (a - b);
    let d = if d.abs() < 0.005 { 0.0 } else { d };
    format!("{d:+.2} points")
}

/// What a Python anchor trains from to compare with a run of `plan` on `data`: the run's
/// initial model and its split (each node's or client's image indices), written into a
/// scratch directory that lives as long as the first value.
pub struct AnchorInputs {
    /// The scratch directory.
    _dir: tempfile::TempDir,
    /// The initial model (safetensors).
    pub init: PathBuf,
    /// The split (`Partition::index_lists_json`).
    pub split: PathBuf,
}

impl AnchorInputs {
    /// Writes `plan`'s initial model and split of `data`'s training images.
    pub fn write(plan: &Plan, data: &Cifar10) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("making a scratch directory")?;
        let init = dir.path().join("init.safetensors");
        let initial = Architecture::FedAvgCnn.init(plan.seed)?;
        std::fs::write(&init, initial.to_safetensors()?)
            .context("writing the initial model for an anchor")?;
        let split = dir.path().join("split.json");
        let json = plan.split(data.train.labels())?.index_lists_json(
            &plan.scheme,
            plan.seed,
            data.train.len(),
        );
        std::fs::write(&split, json).context("writing the split for an anchor")?;
        Ok(Self {
            _dir: dir,
            init,
            split,
        })
    }
}

/// A Python anchor the experiments run beside the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// PyTorch (and Opacus): `experiments/pytorch/`, in `$FL_TORCH_PYTHON`.
    Torch,
    /// Flower's simulation engine with PyTorch: `experiments/flower/`, in
    /// `$FL_FLOWER_PYTHON`.
    Flower,
}

impl Anchor {
    /// Its scripts' directory under `experiments/`, the variable naming its Python, and what
    /// that Python needs.
    fn setup(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Anchor::Torch => (
                "pytorch",
                "FL_TORCH_PYTHON",
                "torch, and opacus for dp_sgd.py",
            ),
            Anchor::Flower => ("flower", "FL_FLOWER_PYTHON", "flwr[simulation] and torch"),
        }
    }
}

/// Runs the anchor's script `experiments/{anchor}/{script}` with `positional` arguments
/// (each named as `shown` says in errors), then `flags` (`--name value`), in its Python
/// (`$FL_TORCH_PYTHON` or `$FL_FLOWER_PYTHON`, else `python3`), and returns the JSON lines it
/// printed. Errors end up in the report, so they name the script by its path in the repo and
/// each positional argument by its `shown` name, never a path of this machine.
pub fn run_anchor(
    anchor: Anchor,
    script: &str,
    positional: &[(&std::ffi::OsStr, &str)],
    flags: &[(&str, String)],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let (dir, variable, needs) = anchor.setup();
    let python_shown = format!("${variable}");
    let (python, python_shown) = match std::env::var(variable) {
        Ok(python) => (python, python_shown.as_str()),
        Err(_) => ("python3".into(), "python3"),
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(script);
    let shown = format!("experiments/{dir}/{script}");
    let out = std::process::Command::new(&python)
        .arg(&path)
        .args(positional.iter().map(|(arg, _)| arg))
        .args(
            flags
                .iter()
                .flat_map(|(flag, value)| [*flag, value.as_str()]),
        )
        .output()
        .with_context(|| {
            format!("running {python_shown} {shown} (set {variable} to a Python with {needs})")
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let mut last = err.trim().lines().last().unwrap_or("").to_string();
        // Longest first, so that a path inside another is replaced as part of the longer.
        let mut named: Vec<(String, &str)> = positional
            .iter()
            .map(|(arg, name)| (arg.to_string_lossy().into_owned(), *name))
            .filter(|(arg, _)| !arg.is_empty())
            .collect();
        named.sort_by_key(|(arg, _)| std::cmp::Reverse(arg.len()));
        for (arg, name) in named {
            last = last.replace(&arg, name);
        }
        anyhow::bail!("{python_shown} {shown} failed ({}): {last}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
