//! Training throughput of the reference CNN, images per second of SGD steps (momentum 0.9,
//! cross-entropy) on synthetic images, per backend and batch size, next to PyTorch. A
//! measurement, not a check; meaningful only in release builds:
//!
//! ```text
//! # CPU: burn's flex and ndarray, then PyTorch on the same machine in the same run
//! FL_TORCH_PYTHON=python-with-torch FL_BENCH_BACKENDS=flex,ndarray \
//!   cargo test --release -p fl-core --features train,ndarray --test model throughput -- --ignored --nocapture
//! # GPU (H100): wgpu next to REFERENCE_CNN.md's PyTorch float32 figures
//! FL_BENCH_BACKENDS=wgpu FL_BENCH_BATCHES=64,256,1024 FL_BENCH_STEPS=200 \
//!   cargo test --release -p fl-core --features train,wgpu --test model throughput -- --ignored --nocapture
//! ```
//!
//! DP-SGD (feature `dp`): burn's private step (Poisson batches, per-example clipping, noise)
//! next to its own plain step and Opacus's (`bench_train.py --dp opacus` and `--dp ghost`):
//!
//! ```text
//! FL_TORCH_PYTHON=python-with-torch-and-opacus FL_BENCH_BATCHES=64,256 \
//!   cargo test --release -p fl-core --features train,dp --test model dp_sgd_throughput -- --ignored --nocapture
//! ```
//!
//! `FL_BENCH_STEPS` (default 20) sets the timed steps, `FL_BENCH_BACKENDS` (default
//! `flex`; `ndarray` needs the `ndarray` feature) the backends, `FL_BENCH_BATCHES` (default
//! 64) the batch sizes.
//! PyTorch runs `experiments/pytorch/bench_train.py` where `FL_TORCH_PYTHON` has torch.

use std::process::Command;

use fl_core::model::{Architecture, Backend, Batch, IMAGE_LEN, TrainConfig, train};

/// PyTorch 2.11 float32 on one H100 (REFERENCE_CNN.md), images/s by batch size.
const PYTORCH_H100_FP32: [(usize, f64); 4] = [
    (32, 18_770.0),
    (64, 28_499.0),
    (256, 87_906.0),
    (1024, 168_527.0),
];

const BENCH_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../experiments/pytorch/bench_train.py"
);

fn synthetic(n: usize) -> Batch {
    let mut x = 0x9e37_79b9u32;
    let images = (0..n * IMAGE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    Batch::new(images, (0..n).map(|i| (i % 10) as u8).collect()).unwrap()
}

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|item| item.trim().parse().unwrap())
        .collect()
}

/// Images/s of `steps` training steps at `batch` on `backend`, after a warm-up.
fn ours(backend: Backend, batch: usize, steps: usize) -> f64 {
    let config = TrainConfig {
        batch_size: batch,
        ..TrainConfig::default()
    };
    images_per_sec(backend, &config, steps)
}

/// Images/s of `steps` steps of `config` on `backend`, after a warm-up.
fn images_per_sec(backend: Backend, config: &TrainConfig, steps: usize) -> f64 {
    let arch = Architecture::FedAvgCnn;
    let global = arch.init(0).unwrap();
    let device = backend.device();
    let batch = config.batch_size;
    let config = config.clone();
    // Warm-up: allocators, thread pools, kernel compilation and autotuning.
    train(arch, &global, &[synthetic(3 * batch)], &config, &device).unwrap();
    let out = train(arch, &global, &[synthetic(steps * batch)], &config, &device).unwrap();
    out.epochs[0].images_per_sec
}

/// PyTorch's CPU images/s at `batch` on this machine, when a Python with torch is at hand.
fn pytorch_cpu(batch: usize, steps: usize) -> Option<f64> {
    pytorch_bench(batch, steps, &[])
}

/// `bench_train.py`'s images/s with `extra` arguments.
fn pytorch_bench(batch: usize, steps: usize, extra: &[&str]) -> Option<f64> {
    let python = super::parity::torch_python()?;
    let out = Command::new(python)
        .arg(BENCH_SCRIPT)
        .args(["--batch", &batch.to_string(), "--steps", &steps.to_string()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    line["images_per_sec"].as_f64()
}

// Slow in debug builds (minutes); run it in release as the module docs say.
#[test]
#[ignore = "measurement: run in release with --ignored --nocapture"]
fn training_throughput() {
    fl_core::model::allocator::keep_freed_memory();
    let steps: usize = env_list("FL_BENCH_STEPS", "20")[0];
    let backends: Vec<Backend> = env_list("FL_BENCH_BACKENDS", "flex");
    let batches: Vec<usize> = env_list("FL_BENCH_BATCHES", "64");
    let on_cpu = backends.iter().all(|b| b.name() != "wgpu");
    let torch = on_cpu.then(|| {
        batches
            .iter()
            .map(|&b| pytorch_cpu(b, steps))
            .collect::<Vec<_>>()
    });
    for (i, &batch) in batches.iter().enumerate() {
        for &backend in &backends {
            let ips = ours(backend, batch, steps);
            let anchor = match &torch {
                Some(cpu) => cpu[i].map(|t| ("PyTorch CPU, same run", t)),
                None => PYTORCH_H100_FP32
                    .iter()
                    .find(|(b, _)| *b == batch)
                    .map(|&(_, t)| ("PyTorch fp32 H100, REFERENCE_CNN.md", t)),
            };
            match anchor {
                Some((what, theirs)) => println!(
                    "{backend}: batch {batch}, {steps} steps: {ips:.1} images/s; {what}: {theirs:.1}; ratio {:.3}",
                    ips / theirs
                ),
                None => println!("{backend}: batch {batch}, {steps} steps: {ips:.1} images/s"),
            }
        }
    }
}

/// DP-SGD steps (Poisson sampling at `q = 1 / steps`, clipping to 1.0, noise multiplier 1.0)
/// next to our plain steps and Opacus's private steps, in turn, in one run.
#[cfg(feature = "dp")]
#[test]
#[ignore = "measurement: run in release with --ignored --nocapture"]
fn dp_sgd_throughput() {
    use fl_core::model::DpSgdConfig;

    let steps: usize = env_list("FL_BENCH_STEPS", "20")[0];
    let batches: Vec<usize> = env_list("FL_BENCH_BATCHES", "64");
    // FL_BENCH_NOISE=0 leaves the noise out, to see what clipping alone costs.
    let noise: f64 = env_list("FL_BENCH_NOISE", "1.0")[0];
    let with_torch = std::env::var("FL_BENCH_OPACUS").map_or(true, |v| v != "0");
    for &batch in &batches {
        let plain = TrainConfig {
            batch_size: batch,
            ..TrainConfig::default()
        };
        let private = TrainConfig {
            dp_sgd: Some(DpSgdConfig {
                clip_norm: 1.0,
                noise_multiplier: noise,
                steps_per_epoch: None,
            }),
            ..plain.clone()
        };
        let ours_plain = images_per_sec(Backend::Flex, &plain, steps);
        let ours_private = images_per_sec(Backend::Flex, &private, steps);
        let opacus = with_torch
            .then(|| pytorch_bench(batch, steps, &["--dp", "opacus"]))
            .flatten();
        let ghost = with_torch
            .then(|| pytorch_bench(batch, steps, &["--dp", "ghost"]))
            .flatten();
        let ratio = |theirs: Option<f64>| {
            theirs.map_or("-".to_string(), |t| {
                format!("{t:.1} (ratio {:.2})", ours_private / t)
            })
        };
        println!(
            "batch {batch}, {steps} steps: DP-SGD {ours_private:.1} images/s, our plain SGD {ours_plain:.1} (ratio {:.2}); Opacus {}; Opacus ghost clipping {}",
            ours_private / ours_plain,
            ratio(opacus),
            ratio(ghost)
        );
    }
}
