//! Can the input pipeline keep up with training? Images/s of the augmented pipeline
//! (decode, random crop, flip, normalise on worker threads) beside images/s of the
//! training step it feeds (reference CNN, batch 64, CPU backend), in the same run, on
//! the real images in ../shared/datasets/cifar10.
//!
//!     cargo bench -p benches --bench pipeline
//!
//! On a GPU, compare the pipeline figure with the training figures of
//! `cargo test --release -p fl-core --features train,wgpu --test model throughput -- --ignored --nocapture`.

use std::path::PathBuf;
use std::time::Instant;

use datasets::pipeline::{Pipeline, PipelineConfig};
use fl_core::model::{Architecture, Backend, TrainConfig, train};

const BATCH: usize = 64;

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/cifar10");
    let data = match datasets::cifar10::load(&dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let images = data.train;
    let n = images.len();

    // Pipeline: three epochs, all workers, augmentation on.
    let pipeline = Pipeline::new(images.clone(), PipelineConfig::training(BATCH, 1));
    let start = Instant::now();
    let mut seen = 0;
    for epoch in 0..3 {
        for batch in pipeline.epoch(epoch) {
            seen += batch.len();
            std::hint::black_box(&batch);
        }
    }
    let pipeline_rate = seen as f64 / start.elapsed().as_secs_f64();

    // Training: one epoch over 1,280 images (20 steps of 64), flex backend.
    let arch = Architecture::FedAvgCnn;
    let global = match arch.init(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let subset = images.subset(&(0..1280).collect::<Vec<_>>());
    let batches = Pipeline::new(subset, PipelineConfig::training(BATCH, 2)).collect_epoch(0);
    let config = TrainConfig {
        batch_size: BATCH,
        ..TrainConfig::default()
    };
    let device = Backend::default().device();
    let start = Instant::now();
    let outcome = train(arch, &global, &batches, &config, &device);
    let train_rate = 1280.0 / start.elapsed().as_secs_f64();
    if let Err(e) = outcome {
        eprintln!("training failed: {e}");
        return;
    }

    println!("input pipeline vs training step, batch {BATCH}, {n} real CIFAR-10 images");
    println!(
        "  pipeline (augmented, {} workers) {:>10.0} images/s",
        PipelineConfig::training(BATCH, 1).workers,
        pipeline_rate
    );
    println!(
        "  training step ({})            {:>10.0} images/s",
        Backend::default().name(),
        train_rate
    );
    println!(
        "  pipeline / training             {:>10.1}x",
        pipeline_rate / train_rate
    );
}
