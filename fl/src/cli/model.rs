//! `fl baseline`, `fl eval`, `fl infer`: centralized training of a model on the whole
//! training set (what a federation is compared with), and evaluation and inference of any
//! model stored by CID.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use datasets::cifar10::{self, CLASSES};
use datasets::pipeline::{Pipeline, PipelineConfig};
use fl_core::content::{Cid, Repo};
use fl_core::model::batch::CIFAR_RECORD_LEN;
use fl_core::model::{
    Architecture, Backend, Batch, Classifier, DpSgdConfig, Evaluation, LrSchedule, TrainConfig,
    Trainer,
};
use fl_core::privacy::accountant::dp_sgd_epsilon;
use fl_core::privacy::plan::DpSgdTarget;
use fl_core::tensors::Bundle;
use serde_json::json;

use super::{RepoPath, cid_arg};

/// Images per forward pass when evaluating.
const EVAL_BATCH: usize = 256;

/// Where to train or evaluate.
#[derive(Debug, Args)]
pub(super) struct DeviceArgs {
    /// The GPU, through burn's wgpu backend (Vulkan); same as `--backend wgpu`.
    #[arg(long, conflicts_with = "backend")]
    gpu: bool,
    /// Backend: flex (CPU, default), ndarray (CPU, in builds with the `ndarray` feature), wgpu (GPU, in builds with the `gpu` feature).
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
}

impl DeviceArgs {
    pub(super) fn backend(&self) -> anyhow::Result<Backend> {
        let name = match (&self.backend, self.gpu) {
            (Some(name), _) => name.as_str(),
            (None, true) => "wgpu",
            (None, false) => return Ok(Backend::default()),
        };
        name.parse::<Backend>().map_err(|e| {
            let hint = if name == "wgpu" {
                "; build `fl` with the GPU backend: cargo build --release -p fl --features gpu"
            } else {
                ""
            };
            anyhow::anyhow!("{e}{hint}")
        })
    }
}

/// `fl baseline`: centralized training on the whole training set.
#[derive(Debug, Args)]
pub(super) struct Baseline {
    /// The CIFAR-10 directory (binary or python format).
    #[arg(long, env = "FL_DATA", value_name = "DIR")]
    data: PathBuf,
    /// Architecture.
    #[arg(long, default_value = "fedavg-cnn")]
    model: Architecture,
    /// Start from this stored model instead of a seeded initialisation.
    #[arg(long, value_name = "CID", value_parser = cid_arg)]
    init: Option<Cid>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Use only the first N training images, as `fl simulate --images` does; default: all.
    #[arg(long, value_name = "N")]
    images: Option<usize>,
    /// Images per SGD step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Learning-rate schedule over all epochs: constant, cosine[:MIN_LR], step:EVERY_EPOCHS:GAMMA.
    #[arg(long, default_value = "constant")]
    schedule: LrSchedule,
    /// SGD momentum (PyTorch semantics).
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Seed of the initial model, the shuffles and the augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No random crop and flip.
    #[arg(long)]
    no_augment: bool,
    /// Keep the training set's order every epoch (for exact comparisons).
    #[arg(long)]
    no_shuffle: bool,
    /// DP-SGD with `--dp-epsilon`: each step a Poisson-sampled batch of --batch images on
    /// average, every example's gradient clipped, Gaussian noise added; images as they are,
    /// no augmentation.
    #[command(flatten)]
    dp: super::DpTarget,
    /// Write the JSON lines here instead of standard output.
    #[arg(long, value_name = "FILE")]
    jsonl: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `fl eval`: loss and accuracy of a stored model on the test set.
#[derive(Debug, Args)]
pub(super) struct Eval {
    /// The model file's CID.
    #[arg(value_parser = cid_arg)]
    model: Cid,
    /// The CIFAR-10 directory (binary or python format).
    #[arg(long, env = "FL_DATA", value_name = "DIR")]
    data: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `fl infer`: the most likely classes of images.
#[derive(Debug, Args)]
pub(super) struct Infer {
    /// The model file's CID.
    #[arg(value_parser = cid_arg)]
    model: Cid,
    /// Images (PNG or JPEG), 32x32 RGB unless --resize.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Scale images of other sizes (centre square, then 32x32) instead of refusing them.
    #[arg(long)]
    resize: bool,
    /// Classes to show per image.
    #[arg(long, default_value_t = 3)]
    top: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub(super) fn baseline(cmd: Baseline, repo: &RepoPath) -> anyhow::Result<()> {
    let started = Instant::now();
    let backend = cmd.device.backend()?;
    let device = backend.device();
    let arch = cmd.model;
    let mut data = cifar10::load(&cmd.data)?;
    if data.train.is_empty() {
        bail!("{} holds no training images", cmd.data.display());
    }
    super::first_images(&mut data, cmd.images)?;
    let repo = repo.open()?;
    let global = match &cmd.init {
        Some(cid) => load_model(&repo, cid)?.1,
        None => arch.init(cmd.seed)?,
    };
    let init_arch = Architecture::of(&global)?;
    if init_arch != arch {
        bail!("the initial model is a {init_arch}, not a {arch}");
    }
    let init_cid = global.store(&repo)?;
    let (train_len, test_len) = (data.train.len(), data.test.len());
    let steps_per_epoch = train_len.div_ceil(cmd.batch.max(1));
    let private = match cmd.dp.dp_epsilon {
        Some(epsilon) => {
            let target = DpSgdTarget {
                epsilon,
                delta: cmd.dp.dp_delta,
                clip_norm: cmd.dp.dp_clip,
            };
            let steps = (steps_per_epoch * cmd.epochs) as u64;
            Some(
                target
                    .plan(train_len as u64, cmd.batch as u64, steps)
                    .context("--dp-epsilon")?,
            )
        }
        None => None,
    };
    let config = TrainConfig {
        epochs: cmd.epochs,
        batch_size: cmd.batch,
        learning_rate: cmd.lr,
        schedule: cmd.schedule,
        momentum: cmd.momentum,
        weight_decay: cmd.weight_decay,
        proximal_mu: 0.0,
        seed: cmd.seed,
        dp_sgd: private.map(|plan| DpSgdConfig {
            clip_norm: plan.target.clip_norm,
            noise_multiplier: plan.noise_multiplier,
            steps_per_epoch: None,
        }),
    };
    let mut pipeline_config = PipelineConfig::training(cmd.batch, cmd.seed);
    // DP-SGD samples its own batches from the images as they are.
    pipeline_config.augment = !cmd.no_augment && private.is_none();
    pipeline_config.shuffle = !cmd.no_shuffle && private.is_none();
    pipeline_config.normalization = arch.normalization();
    let pipeline = Pipeline::new(data.train, pipeline_config);
    let all_images = match private {
        Some(_) => pipeline.collect_epoch(0),
        None => Vec::new(),
    };
    let test = test_batches(data.test, arch);
    let mut trainer = Trainer::new(arch, &global, &config, steps_per_epoch, &device)?;

    let mut out = JsonLines::open(cmd.jsonl.as_deref())?;
    out.line(&json!({
        "event": "start",
        "architecture": arch.name(),
        "backend": backend.name(),
        "train_images": train_len,
        "test_images": test_len,
        "epochs": cmd.epochs,
        "batch": cmd.batch,
        "lr": cmd.lr,
        "schedule": cmd.schedule.to_string(),
        "momentum": cmd.momentum,
        "weight_decay": cmd.weight_decay,
        "augment": !cmd.no_augment && private.is_none(),
        "seed": cmd.seed,
        "init": init_cid.to_string(),
        "dp": private.map(|p| json!({
            "level": "sample",
            "epsilon": p.target.epsilon,
            "delta": p.target.delta,
            "clip_norm": p.target.clip_norm,
            "noise_multiplier": p.noise_multiplier,
            "sampling_rate": p.sampling_rate,
            "steps": p.steps,
        })),
    }))?;
    if let Some(p) = &private {
        eprintln!(
            "DP-SGD: epsilon {} at delta {:e} over {} steps: sampling rate {:.5}, clip {}, noise multiplier {:.4}",
            p.target.epsilon,
            p.target.delta,
            p.steps,
            p.sampling_rate,
            p.target.clip_norm,
            p.noise_multiplier
        );
    }
    eprintln!(
        "training {arch} on {train_len} images ({test_len} test) with {backend}, {} epochs of batch {}; initial model {init_cid}",
        cmd.epochs, cmd.batch
    );

    let bar = indicatif::ProgressBar::new((steps_per_epoch * cmd.epochs) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "epoch {msg} {wide_bar} {pos}/{len} steps, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut last_good = (global, None::<Evaluation>);
    for epoch in 0..cmd.epochs {
        bar.set_message(format!("{}/{}", epoch + 1, cmd.epochs));
        let metrics = match private {
            Some(_) => trainer.private_epoch(&all_images, None, |_| bar.inc(1)),
            None => trainer.epoch(pipeline.epoch(epoch as u64), |_| bar.inc(1)),
        };
        let epsilon = private
            .map(|p| {
                let steps = ((epoch + 1) * steps_per_epoch) as u64;
                dp_sgd_epsilon(p.sampling_rate, p.noise_multiplier, steps, p.target.delta)
            })
            .transpose()?;
        let metrics = match metrics.and_then(|m| Ok((m, trainer.model()?))) {
            Ok(done) => done,
            Err(e) => {
                bar.abandon();
                let cid = last_good.0.store(&repo)?;
                return Err(anyhow::Error::new(e).context(format!(
                    "epoch {}: training stopped; the last good model (after {epoch} epochs) is {cid}",
                    epoch + 1
                )));
            }
        };
        let (metrics, model) = metrics;
        let eval = Classifier::new(arch, &model, &device)?.evaluate(&test, EVAL_BATCH)?;
        bar.suspend(|| {
            eprintln!(
                "epoch {:>3}: loss {:.4}, train accuracy {:.2}%, test accuracy {:.2}%, {:.0} images/s{}",
                epoch + 1,
                metrics.loss,
                100.0 * metrics.accuracy,
                100.0 * eval.accuracy,
                metrics.images_per_sec,
                epsilon.map_or(String::new(), |e| format!(", epsilon {e:.3}"))
            )
        });
        out.line(&json!({
            "event": "epoch",
            "epoch": epoch + 1,
            "loss": metrics.loss,
            "accuracy": metrics.accuracy,
            "images_per_sec": metrics.images_per_sec,
            "seconds": metrics.seconds,
            "learning_rate": metrics.learning_rate,
            "test_loss": eval.loss,
            "test_accuracy": eval.accuracy,
            "epsilon": epsilon,
        }))?;
        last_good = (model, Some(eval));
    }
    bar.finish_and_clear();
    let (model, eval) = last_good;
    let eval = match eval {
        Some(eval) => eval,
        None => Classifier::new(arch, &model, &device)?.evaluate(&test, EVAL_BATCH)?,
    };
    let cid = model.store(&repo)?;
    out.line(&json!({
        "event": "done",
        "test_accuracy": eval.accuracy,
        "test_loss": eval.loss,
        "per_class_accuracy": per_class(&eval),
        "model": cid.to_string(),
        "init": init_cid.to_string(),
        "seconds": started.elapsed().as_secs_f64(),
        "epsilon": private.map(|p| p.epsilon),
    }))?;
    eprintln!(
        "test accuracy {:.2}% (loss {:.4}) after {} epochs; model {cid}",
        100.0 * eval.accuracy,
        eval.loss,
        cmd.epochs
    );
    Ok(())
}

pub(super) fn eval(cmd: Eval, repo: &RepoPath) -> anyhow::Result<()> {
    let repo = repo.open()?;
    let (arch, model) = load_model(&repo, &cmd.model)?;
    let data = cifar10::load(&cmd.data)?;
    let test = test_batches(data.test, arch);
    let device = cmd.device.backend()?.device();
    let eval = Classifier::new(arch, &model, &device)?.evaluate(&test, EVAL_BATCH)?;
    if cmd.json {
        let value = json!({
            "model": cmd.model.to_string(),
            "architecture": arch.name(),
            "images": eval.samples,
            "loss": eval.loss,
            "accuracy": eval.accuracy,
            "per_class_accuracy": per_class(&eval),
        });
        println!("{value}");
        return Ok(());
    }
    println!("model     {} ({arch})", cmd.model);
    println!("images    {}", eval.samples);
    println!("loss      {:.4}", eval.loss);
    println!("accuracy  {:.2}%", 100.0 * eval.accuracy);
    println!();
    println!("{:<12} {:>8} {:>8}", "class", "images", "accuracy");
    for (c, count) in eval.per_class.iter().enumerate() {
        let accuracy = count
            .accuracy()
            .map_or_else(|| "-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        println!("{:<12} {:>8} {accuracy:>8}", class_name(c), count.total);
    }
    Ok(())
}

pub(super) fn infer(cmd: Infer, repo: &RepoPath) -> anyhow::Result<()> {
    let repo = repo.open()?;
    let (arch, model) = load_model(&repo, &cmd.model)?;
    let mut records = Vec::with_capacity(cmd.images.len() * CIFAR_RECORD_LEN);
    for path in &cmd.images {
        records.push(0); // no label
        records.extend(image_planes(path, arch, cmd.resize)?);
    }
    let batch = Batch::from_cifar_records(&records, &arch.normalization())?;
    let device = cmd.device.backend()?.device();
    let probabilities = Classifier::new(arch, &model, &device)?.probabilities(&batch)?;
    for (path, row) in cmd.images.iter().zip(probabilities.rows()) {
        let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = ranked
            .iter()
            .take(cmd.top.max(1))
            .map(|(c, p)| format!("{} {:.1}%", class_name(*c), 100.0 * p))
            .collect();
        println!("{}: {}", path.display(), top.join(", "));
    }
    Ok(())
}

/// The stored model `cid` and its architecture.
fn load_model(repo: &Repo, cid: &Cid) -> anyhow::Result<(Architecture, Bundle)> {
    let model = Bundle::load(repo, cid)?;
    let arch = Architecture::of(&model).with_context(|| format!("model {cid}"))?;
    arch.check(&model).with_context(|| format!("model {cid}"))?;
    Ok((arch, model))
}

/// The test set as normalised batches for `arch`.
fn test_batches(test: cifar10::Images, arch: Architecture) -> Vec<Batch> {
    let mut config = PipelineConfig::evaluation(EVAL_BATCH);
    config.normalization = arch.normalization();
    Pipeline::new(test, config).collect_epoch(0)
}

fn per_class(eval: &Evaluation) -> Vec<Option<f64>> {
    eval.per_class.iter().map(|c| c.accuracy()).collect()
}

fn class_name(class: usize) -> String {
    CLASSES
        .get(class)
        .map_or_else(|| format!("class {class}"), |name| (*name).to_string())
}

/// The pixels of the image at `path` as `arch`'s input planes (R, G, B; row-major bytes).
fn image_planes(path: &Path, arch: Architecture, resize: bool) -> anyhow::Result<Vec<u8>> {
    let [channels, height, width] = arch.input_shape();
    if channels != 3 {
        bail!("{arch} does not take RGB images");
    }
    let image = image::ImageReader::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("reading {}", path.display()))?
        .decode()
        .with_context(|| format!("decoding {}", path.display()))?;
    let (w, h) = (image.width() as usize, image.height() as usize);
    let image = if (w, h) == (width, height) {
        image
    } else if resize {
        let side = w.min(h) as u32;
        let (x, y) = ((w as u32 - side) / 2, (h as u32 - side) / 2);
        image.crop_imm(x, y, side, side).resize_exact(
            width as u32,
            height as u32,
            image::imageops::FilterType::Triangle,
        )
    } else {
        bail!(
            "{} is {w}x{h}; {arch} takes {width}x{height} RGB images (pass --resize to scale it)",
            path.display()
        );
    };
    let rgb = image.to_rgb8();
    let mut planes = vec![0u8; 3 * width * height];
    for (i, pixel) in rgb.pixels().enumerate() {
        for c in 0..3 {
            planes[c * width * height + i] = pixel.0[c];
        }
    }
    Ok(planes)
}

/// JSON lines to standard output or a file, flushed line by line so they can be followed.
struct JsonLines(Box<dyn Write>);

impl JsonLines {
    fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        Ok(JsonLines(match path {
            Some(p) => Box::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ),
            None => Box::new(std::io::stdout()),
        }))
    }

    fn line(&mut self, value: &serde_json::Value) -> anyhow::Result<()> {
        writeln!(self.0, "{value}")?;
        self.0.flush()?;
        Ok(())
    }
}
