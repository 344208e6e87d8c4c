//! Training throughput of the reference CNN at batch 64 on each CPU backend. A measurement,
//! not a check; meaningful only in release builds:
//!
//! ```text
//! cargo test --release -p fl-core --features train --test model_throughput -- --ignored --nocapture
//! ```
//!
//! `FL_BENCH_STEPS` (default 20) sets the timed steps, `FL_BENCH_BACKENDS` (default
//! `flex,ndarray`) the backends. `experiments/pytorch/bench_train.py` measures PyTorch the
//! same way.
#![cfg(feature = "train")]

use fl_core::model::{Architecture, Backend, Batch, IMAGE_LEN, TrainConfig, train};

const BATCH: usize = 64;

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

// Slow in debug builds (minutes); run it in release as the module docs say.
#[test]
#[ignore = "measurement: run in release with --ignored --nocapture"]
fn training_throughput_at_batch_64() {
    let steps: usize = std::env::var("FL_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let arch = Architecture::FedAvgCnn;
    let global = arch.init(0).unwrap();
    // FL_BENCH_BACKENDS=flex,ndarray picks the backends (default: every CPU backend).
    let backends: Vec<Backend> = std::env::var("FL_BENCH_BACKENDS")
        .unwrap_or_else(|_| "flex,ndarray".to_string())
        .split(',')
        .map(|name| name.trim().parse().unwrap())
        .collect();
    for backend in backends {
        let device = backend.device();
        let config = TrainConfig {
            batch_size: BATCH,
            ..TrainConfig::default()
        };
        // Warm-up: allocators, thread pools, autotune caches.
        train(arch, &global, &[synthetic(3 * BATCH)], &config, &device).unwrap();
        let out = train(arch, &global, &[synthetic(steps * BATCH)], &config, &device).unwrap();
        let e = &out.epochs[0];
        println!(
            "{backend}: batch {BATCH}, {steps} steps, {:.1} images/s ({:.2} s)",
            e.images_per_sec, e.seconds
        );
    }
}
