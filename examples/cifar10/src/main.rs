//! The end-to-end example: a federation of N nodes training the reference CNN on
//! CIFAR-10, every artefact content addressed.
//!
//! What runs today, for real: the dataset is partitioned and published as shards under a
//! DAG-CBOR manifest; each round the global model is stored as a safetensors file (a
//! UnixFS CID), every node fetches its shard by the manifest through the content layer,
//! trains locally (burn, CPU), stores its update as a CID, and the aggregator validates
//! the updates and combines them with FedAvg in a fixed order. The nodes run in this one
//! process, in turn, sharing one blockstore: libp2p networking and the rotating
//! aggregator arrive with their issues and will replace the loop below with `fl simulate`.
//!
//!     FL_DATA=../shared/datasets/cifar10 cargo run --release -p cifar10 [-- NODES ROUNDS]
//!
//! FL_REPO=DIR keeps every block for inspection; without it a scratch repo is removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use aggregator::{AggregatorConfig, Contribution, ServerState, aggregate_round};
use anyhow::{Context, bail};
use datasets::partition::{Scheme, partition};
use datasets::pipeline::{Pipeline, PipelineConfig};
use datasets::{cifar10, shard};
use fl_core::content::Repo;
use fl_core::model::{Architecture, Backend, Classifier, TrainConfig, train};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("NODES must be a number")?
        .unwrap_or(8);
    let rounds: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("ROUNDS must be a number")?
        .unwrap_or(3);
    if nodes == 0 || rounds == 0 {
        bail!("NODES and ROUNDS must be at least 1");
    }
    let data_dir = std::env::var_os("FL_DATA")
        .map(PathBuf::from)
        .context("set FL_DATA to a CIFAR-10 directory (`fl data fetch cifar10`, or ../shared/datasets/cifar10)")?;
    let data = cifar10::load(&data_dir)?;
    // FL_REPO keeps everything for inspection (`fl ipfs cat`, `fl car export`); otherwise
    // a scratch repo is used and removed at the end.
    let keep = std::env::var_os("FL_REPO").map(PathBuf::from);
    let scratch = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fl-cifar10-example-{}", std::process::id()))
    });
    let repo =
        Repo::open(&scratch).with_context(|| format!("opening repo {}", scratch.display()))?;

    // The dataset as content-addressed shards.
    let scheme = Scheme::Iid;
    let split = partition(data.train.labels(), nodes, &scheme, 0, 10)?;
    let manifest_cid = shard::publish(&repo, &data, &split, &scheme.to_string(), 0)?;
    let manifest = shard::manifest(repo.blocks(), &manifest_cid)?;
    let test = shard::fetch_test(repo.blocks(), &manifest)?;
    let test_batches = Pipeline::new(test, PipelineConfig::evaluation(256)).collect_epoch(0);
    println!(
        "dataset manifest {manifest_cid}: {} nodes, {} training images, {} test images",
        nodes,
        data.train.len(),
        data.test.len()
    );

    let arch = Architecture::FedAvgCnn;
    let device = Backend::default().device();
    let mut global = arch.init(0)?;
    let mut state = ServerState::empty();
    let config = TrainConfig {
        epochs: 1,
        batch_size: 32,
        learning_rate: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..TrainConfig::default()
    };
    println!(
        "{:>5} {:>12} {:>9} {:>8} {:>8}  model",
        "round", "participants", "accuracy", "loss", "seconds"
    );
    for round in 1..=rounds {
        let started = Instant::now();
        let global_cid = global.store(&repo)?;
        let mut contributions = Vec::with_capacity(nodes);
        for node in 0..nodes {
            let images = shard::fetch_shard(repo.blocks(), &manifest, node)?;
            let seed = (round * 1000 + node) as u64;
            let batches = Pipeline::new(images, PipelineConfig::training(config.batch_size, seed))
                .collect_epoch(round as u64);
            let local = TrainConfig {
                seed,
                ..config.clone()
            };
            let outcome = train(arch, &global, &batches, &local, &device)
                .with_context(|| format!("node {node}, round {round}"))?;
            let update_cid = outcome.update.store(&repo)?;
            contributions.push(Contribution::new(
                format!("node-{node:03}"),
                update_cid,
                global_cid,
                outcome.samples as u64,
                Arc::new(outcome.update),
            ));
        }
        let outcome = aggregate_round(
            &AggregatorConfig::default(),
            &global,
            global_cid,
            contributions,
            state,
        )?;
        for r in &outcome.rejected {
            eprintln!("rejected: {}", r.reason());
        }
        global = outcome.model;
        state = outcome.state;
        let eval = Classifier::new(arch, &global, &device)?.evaluate(&test_batches, 256)?;
        let model_cid = global.store(&repo)?;
        println!(
            "{round:>5} {:>12} {:>8.2}% {:>8.4} {:>8.1}  {model_cid}",
            outcome.accepted.len(),
            100.0 * eval.accuracy,
            eval.loss,
            started.elapsed().as_secs_f64()
        );
    }
    let final_cid = global.store(&repo)?;
    repo.pin(&final_cid, fl_core::content::pins::PinMode::Recursive)?;
    match keep {
        Some(dir) => println!("final model: {final_cid} (kept in repo {})", dir.display()),
        None => {
            drop(repo);
            let _ = std::fs::remove_dir_all(&scratch);
            println!("final model: {final_cid} (set FL_REPO=DIR to keep the repo)");
        }
    }
    Ok(())
}
