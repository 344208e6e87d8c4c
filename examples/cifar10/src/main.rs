//! The end-to-end example: a federation of N nodes training the reference CNN on CIFAR-10,
//! every artefact content addressed, every node a real peer.
//!
//! Each node has its own key, repo and libp2p swarm on loopback. Node 0 publishes the
//! dataset's shards under a manifest, the initial model and the task record; every node
//! fetches the task and its shard by CID over Bitswap, trains locally, announces its update
//! signed over gossipsub, and the round's aggregator (ranked by a hash every node computes)
//! publishes the FedAvg result as a signed manifest, which the others check before they
//! adopt it: each checks its claims, and each recomputes it from the updates with
//! probability 1/N, so one node a round does on average and none is known ahead. Rounds are
//! short: each node takes 5 local SGD steps a round, going on where it stopped, for as many
//! rounds as make EPOCHS passes over its data; the test set is scored once per such pass,
//! as centralized training scores once an epoch. This is `fl simulate --steps 5 --rounds R
//! --check-rate 1 --evaluate-every E` with its other defaults, written out.
//!
//!     FL_DATA=../shared/datasets/cifar10 cargo run --release -p cifar10 [-- NODES EPOCHS]

use std::path::PathBuf;

use anyhow::{Context, bail};
use datasets::cifar10;
use fl_sim::{Checkers, Plan, Progress};

/// Local SGD steps per round: short rounds keep federated training within reach of
/// centralized training at the same epochs (README, "Results").
const STEPS: u32 = 5;

/// Recomputations of each manifest a round, on average (docs/decisions.md, "Sampled
/// checking"): every node recomputing every round spent more of the machine on checking
/// than on training.
const CHECK_RATE: f64 = 1.0;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut number = |name: &str, default: u32| -> anyhow::Result<u32> {
        args.next()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("{name} must be a number, got {a:?}"))
            })
            .transpose()
            .map(|n| n.unwrap_or(default))
    };
    let nodes = number("NODES", 8)? as usize;
    let epochs = number("EPOCHS", 10)?;
    if nodes == 0 || epochs == 0 {
        bail!("NODES and EPOCHS must be at least 1");
    }
    let data_dir = std::env::var_os("FL_DATA").map(PathBuf::from).context(
        "set FL_DATA to a CIFAR-10 directory (`fl data fetch cifar10` downloads one; ../shared/datasets/cifar10 is a subset)",
    )?;
    let data = cifar10::load(&data_dir)
        .with_context(|| format!("reading CIFAR-10 from {}", data_dir.display()))?;

    let mut plan = Plan::new(nodes, 1)
        .in_steps(STEPS, epochs, data.train.len())
        .scored_each_epoch(data.train.len());
    plan.checkers = Checkers::Rate(CHECK_RATE);
    // Every node's repo lives here while the federation runs.
    let scratch = fl_sim::scratch_dir(&plan, &data, "fl-cifar10-example-")?;
    println!(
        "{nodes} nodes, {} rounds of FedAvg, {STEPS} local steps of batch {} a round: {epochs} epochs of {} training images",
        plan.rounds,
        plan.train.batch_size,
        data.train.len()
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(fl_sim::run(&plan, &data, scratch.path(), |p| match p {
        Progress::Started { task, .. } => println!("task {task}\n round  accuracy  seconds  model"),
        Progress::Round(r) => println!(
            "{:>6} {:>9} {:>8.1}  {}",
            r.round,
            // Rounds between scorings show no accuracy.
            r.accuracy
                .map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a)),
            r.seconds,
            r.model
        ),
        Progress::Errored { node, reason } => eprintln!("node {node}: {reason}"),
        _ => {}
    }))?;
    println!(
        "final model {} ({} of {nodes} nodes agree) after {:.0} s",
        report.model, report.agreeing, report.seconds
    );
    Ok(())
}
