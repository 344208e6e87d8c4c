//! Populations of clients apart from the nodes (`fl simulate --clients K --per-round M`):
//! each round trains exactly the clients its sample names, each on its host, anyone can
//! recompute who was due, a member that announces a client the round did not sample is
//! refused, and settings that cannot work get one clear message each.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::simulate::{fl, json_lines, refused, shared_cifar, simulate};
use fl_core::records::{ClientId, Population};

/// Each round's announced clients, by node, from the nodes' events.
fn announced(lines: &[serde_json::Value]) -> BTreeMap<u64, BTreeMap<u64, Vec<u64>>> {
    let mut by_round: BTreeMap<u64, BTreeMap<u64, Vec<u64>>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["type"] == "node") {
        if l["event"] != "announced" {
            continue;
        }
        let node = l["node"].as_u64().expect("a node");
        let round = l["round"].as_u64().expect("a round");
        let clients: Vec<u64> = l["clients"]
            .as_array()
            .expect("a population's announcement names its clients")
            .iter()
            .map(|c| c.as_u64().expect("a client number"))
            .collect();
        by_round.entry(round).or_default().insert(node, clients);
    }
    by_round
}

/// The task's CID, from the run's first line.
fn task_of(lines: &[serde_json::Value]) -> fl_core::content::Cid {
    let started = lines
        .iter()
        .find(|l| l["type"] == "started")
        .expect("a start");
    started["task"]
        .as_str()
        .expect("a task")
        .parse()
        .expect("a CID")
}

#[test]
fn each_round_trains_the_clients_its_sample_names_on_their_hosts_and_verifies() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let keep = dir.path().join("run");
    let Some((stdout, lines)) = simulate(&[
        "--nodes",
        "3",
        "--rounds",
        "3",
        "--clients",
        "12",
        "--per-round",
        "4",
        "--partition",
        "dirichlet:0.5",
        "--images",
        "1200",
        "--lr",
        "0.01",
        "--deadline",
        "120",
        "--grace",
        "10",
        "--keep",
        keep.to_str().expect("utf-8 path"),
    ]) else {
        return;
    };
    let rows: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "round").collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    let summary = lines.last().expect("a summary");
    assert_eq!(summary["agreeing"], 3, "{summary}");
    let population = Population {
        clients: 12,
        per_round: 4,
        partition: "dirichlet:0.5".into(),
        sampling: fl_core::records::Sampling::Fixed,
    };
    let task = task_of(&lines);
    let by_round = announced(&lines);
    for (r, row) in rows.iter().enumerate() {
        let round = r as u64 + 1;
        let nodes = &by_round[&round];
        // Each node trained only clients it hosts (client c: node c mod 3), once each.
        let mut trained = BTreeSet::new();
        for (node, clients) in nodes {
            for c in clients {
                assert_eq!(
                    c % 3,
                    *node,
                    "round {round}: node {node} trained client {c}"
                );
                assert!(
                    trained.insert(*c),
                    "round {round}: client {c} trained twice"
                );
            }
        }
        assert_eq!(
            row["participants"].as_u64(),
            Some(nodes.len() as u64),
            "{row}"
        );
        // Exactly the round's sample, recomputed here from the task and the round.
        let sample: BTreeSet<u64> = population
            .sample(&task, round as u32)
            .iter()
            .map(|c: ClientId| c.0)
            .collect();
        assert_eq!(trained, sample, "round {round}");
    }
    // Anyone recomputes a round, who was sampled included.
    let manifest = rows[2]["manifest"].as_str().expect("a manifest");
    let out = fl(&[
        "verify",
        manifest,
        "--repo",
        keep.join("node-001").to_str().expect("utf-8 path"),
    ]);
    let verdict = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && verdict.contains("valid"),
        "{verdict}"
    );
    let trained: Vec<String> = by_round[&3]
        .values()
        .flatten()
        .map(u64::to_string)
        .collect();
    let mut trained: Vec<u64> = trained
        .iter()
        .map(|c| c.parse().expect("a number"))
        .collect();
    trained.sort_unstable();
    let list = trained
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        verdict.contains(&format!("4 of 12 clients: {list}"))
            && verdict.contains(&format!(
                "counted: 4 clients, each sampled and named by its host: {list}"
            )),
        "{verdict}"
    );
}

#[test]
fn a_member_announcing_a_client_the_round_did_not_sample_is_refused() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let keep = dir.path().join("run");
    let Some((stdout, lines)) = simulate(&[
        "--nodes",
        "4",
        "--rounds",
        "2",
        "--clients",
        "16",
        "--per-round",
        "6",
        "--images",
        "1200",
        "--lr",
        "0.01",
        "--deadline",
        "300",
        "--grace",
        "10",
        "--attack",
        "3:unsampled-client",
        "--keep",
        keep.to_str().expect("utf-8 path"),
    ]) else {
        return;
    };
    let rows: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "round").collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    // A round whose sample names a client the attacker hosts does not wait for it: every
    // node refused what it announced instead (a round that waited would take the 300 s
    // deadline).
    for row in &rows {
        let seconds = row["seconds"].as_f64().expect("seconds");
        assert!(seconds < 200.0, "a round waited for the attacker: {row}");
    }
    let by_round = announced(&lines);
    let peer_of = |node: u64| -> String {
        let joined = lines
            .iter()
            .find(|l| l["node"] == node && l["event"] == "joined")
            .expect("every node joins");
        joined["peer"].as_str().expect("a peer").to_string()
    };
    let attacker = peer_of(3);
    // What the attacker announced (in the rounds it did not find closed already) names one
    // client of its own that the round did not sample.
    let population = Population {
        clients: 16,
        per_round: 6,
        partition: "iid".into(),
        sampling: fl_core::records::Sampling::Fixed,
    };
    let task = task_of(&lines);
    let mut attacks = 0;
    for (round, nodes) in &by_round {
        let Some(named) = nodes.get(&3) else {
            continue;
        };
        let sample = population.sample(&task, *round as u32);
        if [3, 7, 11, 15].iter().all(|c| sample.contains(ClientId(*c))) {
            continue; // every client it hosts was sampled: none is left to cheat with
        }
        assert_eq!(named.len(), 1, "round {round}: {named:?}");
        assert_eq!(named[0] % 4, 3, "round {round}: {named:?}");
        assert!(
            !sample.contains(ClientId(named[0])),
            "round {round}: {named:?}"
        );
        attacks += 1;
    }
    assert!(attacks >= 1, "the attacker announced nothing:\n{stdout}");
    // No manifest counts it: its announcements were refused by every honest node.
    let task = task.to_string();
    let out = fl(&[
        "status",
        "--task",
        &task,
        "--json",
        "--repo",
        keep.join("node-000").to_str().expect("utf-8 path"),
    ]);
    let (status, _) = json_lines(&out);
    assert!(
        !status.contains(&attacker),
        "the attacker earned credit:\n{status}"
    );
    for row in &rows {
        let manifest = row["manifest"].as_str().expect("a manifest");
        let out = fl(&[
            "verify",
            manifest,
            "--repo",
            keep.join("node-001").to_str().expect("utf-8 path"),
        ]);
        let verdict = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{verdict}");
        assert!(!verdict.contains(&attacker), "{verdict}");
    }
}

#[test]
fn populations_that_cannot_work_get_one_clear_message_each() {
    let data = shared_cifar();
    let data = data.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 7] = [
        (
            &["--clients", "100", "--per-round", "200", "--data", data],
            "--clients 100 --per-round 200: 200 clients a round is more than the 100 registered",
        ),
        (
            &["--clients", "100", "--fraction", "1.5", "--data", data],
            "--fraction 1.5: a fraction of the clients must be in (0, 1], got 1.5",
        ),
        (
            &["--clients", "100", "--fraction", "0", "--data", data],
            "--fraction 0: a fraction of the clients must be in (0, 1], got 0",
        ),
        (
            &["--clients", "100", "--data", data],
            "--clients 100: say how many are sampled each round, with --per-round M or --fraction F",
        ),
        (
            &["--per-round", "10", "--data", data],
            "the following required arguments were not provided",
        ),
        (
            &[
                "--clients",
                "100",
                "--per-round",
                "10",
                "--dp-epsilon",
                "8",
                "--data",
                data,
            ],
            "10 clients a round on average is too few for Poisson sampling (at least 20",
        ),
        (
            &[
                "--clients",
                "100",
                "--per-round",
                "20",
                "--dp",
                "sample",
                "--dp-epsilon",
                "8",
                "--data",
                data,
            ],
            "--dp sample with --clients: sample-level DP is not built for populations",
        ),
    ];
    for (args, expected) in cases {
        let stderr = refused(args);
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
    if shared_cifar().join("data_batch_1.bin").exists() {
        let stderr = refused(&[
            "--clients",
            "20000",
            "--per-round",
            "10",
            "--images",
            "1200",
            "--data",
            data,
        ]);
        assert!(
            stderr.contains(
                "--clients 20000 --partition iid: 20000 clients cannot each be dealt one of the 1200 training images by iid: use draw:N"
            ),
            "{stderr}"
        );
    }
}

/// DP-FedAvg over a population: Poisson-sampled clients, each clipped, each host's sum
/// noised, the model moved by the sum over the expected count; every manifest states the
/// amplified epsilon and recomputes (the fixed denominator included).
#[test]
fn client_level_dp_over_a_population_trains_states_its_epsilon_and_verifies() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let keep = dir.path().join("run");
    let Some((stdout, lines)) = simulate(&[
        "--nodes",
        "3",
        "--rounds",
        "2",
        "--clients",
        "60",
        "--per-round",
        "20",
        "--images",
        "1200",
        "--lr",
        "0.01",
        "--dp-epsilon",
        "8",
        "--dp-clip",
        "0.1",
        "--deadline",
        "120",
        "--grace",
        "10",
        "--keep",
        keep.to_str().expect("utf-8 path"),
    ]) else {
        return;
    };
    let rows: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "round").collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    let started = lines
        .iter()
        .find(|l| l["type"] == "started")
        .expect("a start");
    let z = started["noise_multiplier"]
        .as_f64()
        .expect("a noise multiplier");
    // epsilon 8 over 2 rounds at q = 20 / 60, amplified: far less noise than without.
    let unamplified =
        fl_core::privacy::accountant::noise_for_epsilon(1.0, 2, 1e-5, 8.0).expect("a z");
    assert!(z < unamplified, "z {z} against {unamplified} unamplified");
    for (r, row) in rows.iter().enumerate() {
        let epsilon = row["epsilon"].as_f64().expect("an epsilon");
        let want = fl_core::privacy::accountant::epsilon_for(1.0 / 3.0, z, r as u64 + 1, 1e-5)
            .expect("an epsilon");
        assert!(
            (epsilon - want).abs() < 1e-9,
            "round {}: {epsilon} against {want}",
            r + 1
        );
        let acc = row["accuracy"].as_f64().expect("an accuracy");
        assert!(acc.is_finite() && acc > 0.0, "{row}");
    }
    assert!(rows[1]["epsilon"].as_f64().unwrap_or(9.0) <= 8.0 + 1e-6);
    // Each host claimed its clients' count (every client weighs one).
    for l in lines.iter().filter(|l| l["event"] == "announced") {
        let clients = l["clients"].as_array().map_or(0, Vec::len) as u64;
        assert_eq!(l["samples"].as_u64(), Some(clients), "{l}");
    }
    let manifest = rows[1]["manifest"].as_str().expect("a manifest");
    let out = fl(&[
        "verify",
        manifest,
        "--repo",
        keep.join("node-002").to_str().expect("utf-8 path"),
    ]);
    let verdict = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && verdict.contains("valid"),
        "{verdict}"
    );
}
