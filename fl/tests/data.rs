//! `fl data` on the real images in ../shared/datasets/cifar10.

use std::path::PathBuf;
use std::process::{Command, Output};

fn cifar() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/cifar10")
}

fn fl(repo: &std::path::Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fl"))
        .args(args)
        .env("FL_REPO", repo)
        .env("FL_DATA", cifar())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    out
}

#[test]
fn partition_table_png_publish_and_shard_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let png = dir.path().join("split.png");
    let out = fl(
        &repo,
        &[
            "data",
            "partition",
            "--clients",
            "6",
            "--scheme",
            "shards:2",
            "--seed",
            "3",
            "--png",
            png.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 7, "{table}");
    let totals: u64 = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(totals, 12_000);
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");

    let out = fl(
        &repo,
        &[
            "data",
            "publish",
            "--clients",
            "6",
            "--scheme",
            "dirichlet:0.5",
            "--seed",
            "3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    assert!(manifest.starts_with("bafyrei"), "{manifest}");
    let shard = dir.path().join("shard.bin");
    let out = fl(
        &repo,
        &[
            "data",
            "shard",
            &manifest,
            "--node",
            "2",
            "-o",
            shard.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(&shard).unwrap().len() % 3073, 0);
    // gc keeps what the manifest pins.
    let out = fl(&repo, &["ipfs", "gc"]);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("removed 0 blocks")
    );
}

#[test]
fn partition_writes_index_lists_of_the_first_images_that_match_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let indices = dir.path().join("split.json");
    let out = fl(
        &repo,
        &[
            "data",
            "partition",
            "--clients",
            "4",
            "--scheme",
            "dirichlet:0.1",
            "--images",
            "2400",
            "--indices",
            indices.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let totals: Vec<usize> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().last().unwrap().parse().unwrap())
        .collect();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&indices).unwrap()).unwrap();
    assert_eq!(json["scheme"], "dirichlet:0.1");
    assert_eq!(json["images"], 2400);
    let clients: Vec<Vec<usize>> = serde_json::from_value(json["clients"].clone()).unwrap();
    assert_eq!(
        clients.iter().map(Vec::len).collect::<Vec<_>>(),
        totals,
        "the lists are the table's nodes"
    );
    let mut all: Vec<usize> = clients.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..2400).collect::<Vec<_>>(),
        "each of the first 2,400 once"
    );

    // The shards a simulation of the same plan trains on.
    let mut plan = fl_sim::Plan::new(4, 1);
    plan.scheme = "dirichlet:0.1".parse().unwrap();
    let data = datasets::cifar10::load(&cifar()).unwrap();
    let split = plan.split(&data.train.labels()[..2400]).unwrap();
    assert_eq!(
        clients, split.clients,
        "fl simulate --images 2400 splits the same"
    );
}

#[test]
fn bad_data_requests_fail_with_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for (args, expect) in [
        (vec!["data", "partition", "--clients", "0"], "0 nodes"),
        (
            vec!["data", "partition", "--clients", "20000"],
            "20000 nodes",
        ),
        (
            vec![
                "data",
                "partition",
                "--clients",
                "4",
                "--scheme",
                "dirichlet:-2",
            ],
            "not a partition scheme",
        ),
        (
            vec![
                "data",
                "partition",
                "--clients",
                "4",
                "--data",
                "/nonexistent-dir",
            ],
            "does not exist",
        ),
        (
            vec!["data", "publish", "--clients", "2000", "--min-size", "10"],
            "at least 10",
        ),
        (
            vec![
                "data",
                "partition",
                "--clients",
                "4",
                "--images",
                "10000000",
            ],
            "--images 10000000",
        ),
    ] {
        let out = fl(&repo, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // Nothing was published by the failed publish.
    let out = fl(&repo, &["ipfs", "pins"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "");
}

/// `fl task create --clients K --per-round M` over a published dataset: the record names the
/// population (Poisson-sampled under client-level DP, its epsilon amplified by q = M / K),
/// and a population the pool cannot deal, or a fraction outside (0, 1], is refused with one
/// message each.
#[test]
fn task_create_records_a_population_the_published_pool_can_deal() {
    if !cifar().join("data_batch_1.bin").exists() {
        eprintln!("skipped: ../shared/datasets/cifar10 is not here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = fl(
        &repo,
        &["data", "publish", "--clients", "1", "--images", "1200"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let manifest = stdout.lines().last().unwrap().to_owned();
    let member = "12D3KooWKcs6Vsnezw7QdUeU9FWwcE3BVPGRZazwhv9MuhoqxSmK";
    let create = |extra: &[&str]| {
        let mut args = vec![
            "task", "create", "--data", &manifest, "--member", member, "--rounds", "10",
        ];
        args.extend_from_slice(extra);
        fl(&repo, &args)
    };
    let out = create(&[
        "--clients",
        "100",
        "--per-round",
        "20",
        "--partition",
        "dirichlet:0.5",
        "--dp-epsilon",
        "8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cid: fl_core::content::Cid = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Read, then closed: the repo takes one process at a time.
    let task = {
        let store = fl_core::content::Repo::open(&repo).unwrap();
        let block = fl_core::content::Blockstore::get(store.blocks(), &cid).unwrap();
        fl_core::records::Task::from_block(&block).unwrap()
    };
    let population = task.population.clone().expect("a population");
    assert_eq!((population.clients, population.per_round), (100, 20));
    assert_eq!(task.client_rate(), 0.2);
    assert_eq!(population.partition, "dirichlet:0.5");
    assert_eq!(population.sampling, fl_core::records::Sampling::Poisson);
    let dp = task.dp.clone().expect("DP");
    let epsilon = dp.client_epsilon(10, task.client_rate()).unwrap();
    assert!(epsilon <= 8.0 && epsilon > 7.9, "{epsilon}");
    for (extra, expected) in [
        (
            &["--clients", "2000", "--per-round", "10"][..],
            "2000 clients cannot each be dealt one of the 1200 training images by iid: use draw:N",
        ),
        (
            &["--clients", "100", "--fraction", "2"][..],
            "--fraction 2: a fraction of the clients must be in (0, 1], got 2",
        ),
        (
            &["--clients", "100", "--per-round", "101"][..],
            "101 clients a round is more than the 100 registered",
        ),
    ] {
        let out = create(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{extra:?}: {stderr}"
        );
    }
}
