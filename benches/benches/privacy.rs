//! Clipping and Gaussian noise of one update of the reference CNN (1,756,426 parameters),
//! beside two limits measured on the same machine in the same run: a plain copy of the
//! update, and drawing 8 secure random bytes per value from opendp (the least a 64-bit
//! sample could need). Prints ms per update and M values/s at the end.
//!
//!     cargo bench -p benches --bench privacy
//!
//! opendp's own exact `make_gaussian` is timed on 10,000 values and scaled to one update.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use fl_core::privacy::clip;
use fl_core::privacy::{GaussianNoise, NoiseConfig, privatize, privatize_flat};

const PARAMS: usize = 1_756_426;
const GROUP: &str = "privacy_1756426";
/// Values given to opendp's exact path (its cost is linear in them).
const OPENDP_VALUES: usize = 10_000;

/// DP-FedAvg settings typical of the literature: C = 1, z = 1.1.
fn config() -> NoiseConfig {
    NoiseConfig::new(1.0, 1.1)
}

/// An update of the reference size whose norm (about 5.9) is above C, so clipping scales it.
fn update() -> Vec<f32> {
    benches::pseudo_random(PARAMS, 1, 0.016)
}

fn bench(c: &mut Criterion) {
    let flat = update();
    let tensors = benches::reference_layout()
        .with_flat(&flat)
        .expect("PARAMS is the layout's size");
    let config = config();
    let noise = GaussianNoise::from_config(&config).expect("valid config");
    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Elements(PARAMS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));

    group.bench_function("copy", |b| b.iter(|| black_box(flat.clone())));
    group.bench_function("opendp_fill_bytes_8B_per_value", |b| {
        let mut bytes = vec![0u8; 1 << 16];
        b.iter(|| {
            for _ in 0..(PARAMS * 8).div_ceil(bytes.len()) {
                opendp::traits::samplers::fill_bytes(&mut bytes).expect("entropy");
            }
            black_box(&bytes);
        })
    });
    group.bench_function("clip", |b| {
        b.iter_batched_ref(
            || flat.clone(),
            |v| clip::clip_flat(v, config.clip_norm),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("noise", |b| {
        b.iter_batched_ref(|| flat.clone(), |v| noise.add_to(v), BatchSize::LargeInput)
    });
    group.bench_function("noise_1_thread", |b| {
        let one = noise.with_threads(1);
        b.iter_batched_ref(|| flat.clone(), |v| one.add_to(v), BatchSize::LargeInput)
    });
    group.bench_function("clip_and_noise", |b| {
        b.iter_batched_ref(
            || flat.clone(),
            |v| privatize_flat(v, &config),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("clip_and_noise_bundle", |b| {
        b.iter(|| privatize(&tensors, &config))
    });
    group.throughput(Throughput::Elements(OPENDP_VALUES as u64));
    group.bench_function("opendp_make_gaussian_10000", |b| {
        b.iter_batched_ref(
            || flat[..OPENDP_VALUES].to_vec(),
            |v| noise.add_to_with_make_gaussian(v),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\nClip and noise of one update of {PARAMS} values (C = 1, z = 1.1; ms per update, \
         M values/s; {threads} threads available):"
    );
    let line = |name: &str, ns: f64| {
        println!(
            "  {name:<36} {:>9.1} ms  {:>8.2} M values/s",
            ns / 1e6,
            PARAMS as f64 / ns * 1e3
        );
    };
    for f in [
        "copy",
        "opendp_fill_bytes_8B_per_value",
        "clip",
        "noise",
        "noise_1_thread",
        "clip_and_noise",
        "clip_and_noise_bundle",
    ] {
        if let Some(ns) = benches::mean_ns(GROUP, f) {
            line(f, ns);
        }
    }
    if let Some(ns) = benches::mean_ns(GROUP, "opendp_make_gaussian_10000") {
        line(
            "opendp_make_gaussian (scaled from 10k)",
            ns * PARAMS as f64 / OPENDP_VALUES as f64,
        );
    }
    // Budget: clip_and_noise must stay under 5% of one local training epoch on the same
    // machine: one epoch of the reference CNN over a node's shard (1,280 synthetic
    // CIFAR-shaped images, batch 32, the CPU default backend), timed in this run.
    if let Some(ns) = benches::mean_ns(GROUP, "clip_and_noise") {
        match local_epoch_seconds(1280) {
            Some(epoch) => println!(
                "  one local epoch (1,280 images): {epoch:.2} s; clip + noise is {:.2}% of it (target < 5%)",
                100.0 * ns / 1e9 / epoch
            ),
            None => println!(
                "  one local epoch: training failed; the 5% budget needs an epoch of at least {:.1} s",
                ns / 1e9 / 0.05
            ),
        }
    }
}

/// Seconds of one local training epoch over `n` synthetic images (batch 32).
fn local_epoch_seconds(n: usize) -> Option<f64> {
    use fl_core::model::{Architecture, Backend, Batch, IMAGE_LEN, TrainConfig, train};
    let arch = Architecture::FedAvgCnn;
    let global = arch.init(0).ok()?;
    let mut x = 0x2545_f491u32;
    let images: Vec<f32> = (0..n * IMAGE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    let batch = Batch::new(images, (0..n).map(|i| (i % 10) as u8).collect()).ok()?;
    let config = TrainConfig {
        batch_size: 32,
        ..TrainConfig::default()
    };
    let start = std::time::Instant::now();
    train(
        arch,
        &global,
        &[batch],
        &config,
        &Backend::default().device(),
    )
    .ok()?;
    Some(start.elapsed().as_secs_f64())
}
