//! One DP-SGD step of the reference CNN beside one plain SGD step on the same images in the
//! same run, at batch 64 and 256: what per-example clipping and the noise cost, as a ratio.
//! Each step takes every one of `batch` synthetic CIFAR-shaped images (q = 1, so the batch
//! size is exactly `batch`); the private step clips each example's gradient to 1 and adds
//! noise of multiplier 1 to their sum, drawn a step ahead as in training (the trainer keeps the
//! next draw from one call to the next). `clip_only` is the private step without noise.
//!
//!     cargo bench -p benches --bench dp_sgd
//!
//! Opacus's images/s on the same machine come from `fl-core`'s `dp_sgd_throughput` test (it
//! runs `experiments/pytorch/bench_train.py --dp opacus` in turn with burn's steps).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use fl_core::model::{Architecture, Backend, Batch, DpSgdConfig, IMAGE_LEN, TrainConfig, Trainer};

const BATCHES: [usize; 2] = [64, 256];

fn images(n: usize) -> Batch {
    let pixels = benches::pseudo_random(n * IMAGE_LEN, 7, 4.0);
    Batch::new(pixels, (0..n).map(|i| (i % 10) as u8).collect()).expect("sizes match")
}

fn config(batch: usize, noise: Option<f64>) -> TrainConfig {
    TrainConfig {
        batch_size: batch,
        learning_rate: 0.01,
        dp_sgd: noise.map(|noise_multiplier| DpSgdConfig {
            clip_norm: 1.0,
            noise_multiplier,
            steps_per_epoch: None,
        }),
        ..TrainConfig::default()
    }
}

fn group(batch: usize) -> String {
    format!("dp_sgd_step_b{batch}")
}

fn bench(c: &mut Criterion) {
    let arch = Architecture::FedAvgCnn;
    let global = arch.init(0).expect("the reference CNN initialises");
    let device = Backend::default().device();
    for batch in BATCHES {
        let data = [images(batch)];
        let mut g = c.benchmark_group(group(batch));
        g.throughput(Throughput::Elements(batch as u64));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(20));
        for (name, noise) in [
            ("sgd", None),
            ("dp_sgd", Some(1.0)),
            ("dp_sgd_clip_only", Some(0.0)),
        ] {
            let config = config(batch, noise);
            let mut trainer =
                Trainer::new(arch, &global, &config, 1, &device).expect("a valid config");
            g.bench_function(name, |b| {
                b.iter(|| {
                    let metrics = match noise {
                        None => trainer.epoch(data.iter().cloned(), |_| {}),
                        Some(_) => trainer.private_epoch(&data, Some(1), |_| {}),
                    };
                    black_box(metrics.expect("a training step"))
                })
            });
        }
        g.finish();
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    println!("\nOne step of the reference CNN (images/s; ratio to plain SGD at the same batch):");
    for batch in BATCHES {
        let g = group(batch);
        let Some(plain) = benches::mean_ns(&g, "sgd") else {
            continue;
        };
        for name in ["sgd", "dp_sgd", "dp_sgd_clip_only"] {
            if let Some(ns) = benches::mean_ns(&g, name) {
                println!(
                    "  batch {batch:>4} {name:<18} {:>8.1} images/s  ratio {:.2}",
                    batch as f64 / ns * 1e9,
                    plain / ns
                );
            }
        }
    }
}
