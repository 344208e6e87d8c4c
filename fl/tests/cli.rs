//! The `fl ipfs` and `fl car` commands as a user runs them: real processes on a real repo.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Fl {
    dir: tempfile::TempDir,
}

impl Fl {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_fl"))
            .args(args)
            .env("FL_REPO", self.repo())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "fl {args:?} panicked: {stderr}"
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "fl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Runs a command that must fail with one line on stderr; returns that line.
    fn fails(&self, args: &[&str]) -> (Output, String) {
        let out = self.run(args);
        assert!(!out.status.success(), "fl {args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert_eq!(
            stderr.lines().count(),
            1,
            "fl {args:?}: not one line: {stderr}"
        );
        (out, stderr)
    }

    fn add(&self, name: &str, data: &[u8]) -> String {
        let file = self.path(name);
        fs::write(&file, data).unwrap();
        self.ok(&["ipfs", "add", file.to_str().unwrap()])
    }

    /// Every block file in the repo with its bytes.
    fn block_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        visit(&self.repo().join("blocks"), &mut out);
        out.sort();
        out
    }
}

fn visit(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, out);
        } else if path.extension().is_some_and(|e| e == "data") {
            let bytes = fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
}

fn data(size: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn add_prints_the_cids_kubo_prints() {
    let fl = Fl::new();
    let file = fl.path("hello.txt");
    fs::write(&file, b"hello world\n").unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(
        fl.ok(&["ipfs", "add", f]),
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    );
    assert_eq!(
        fl.ok(&["ipfs", "add", "--cid-version", "0", f]),
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    );
    assert_eq!(
        fl.ok(&["ipfs", "add", "-n", f]),
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    );
}

#[test]
fn add_get_pin_gc_and_car_round_trip() {
    let fl = Fl::new();
    let original = data(1_500_000, 1);
    let cid = fl.add("a.bin", &original);
    let out = fl.path("out.bin");
    fl.ok(&["ipfs", "get", &cid, "-o", out.to_str().unwrap()]);
    assert_eq!(fs::read(&out).unwrap(), original);

    let car = fl.path("a.car");
    fl.ok(&["car", "export", &cid, "-o", car.to_str().unwrap()]);
    fl.ok(&["ipfs", "unpin", &cid]);
    assert!(fl.ok(&["ipfs", "gc"]).starts_with("removed 7 blocks"));
    fl.fails(&["ipfs", "cat", &cid]);
    assert_eq!(
        fl.ok(&["car", "import", car.to_str().unwrap()]),
        format!("pinned root {cid}")
    );
    let out = fl.run(&["ipfs", "cat", &cid]);
    assert!(out.status.success());
    assert_eq!(out.stdout, original);
    // Pinned again by the import: gc keeps it.
    assert!(fl.ok(&["ipfs", "gc"]).starts_with("removed 0 blocks"));
    assert!(fl.ok(&["ipfs", "pins"]).contains(&cid));
}

#[test]
fn flipped_block_on_disk_fails_cat_naming_the_cid_and_writes_no_corrupt_bytes() {
    let fl = Fl::new();
    let original = data(1_000_000, 2);
    let cid = fl.add("b.bin", &original);
    // Flip one byte in the third leaf (files sort by name, so pick a leaf by size).
    let leaves: Vec<_> = fl
        .block_files()
        .into_iter()
        .filter(|(_, b)| b.len() == 262_144)
        .collect();
    let (path, mut bytes) = leaves[2].clone();
    bytes[1234] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let (out, err) = fl.fails(&["ipfs", "cat", &cid]);
    assert!(err.contains("is corrupt"), "{err}");
    assert!(err.contains("fails verification"), "{err}");
    // Whatever reached standard output is a prefix of the genuine file.
    assert!(out.stdout.len() < original.len());
    assert_eq!(out.stdout[..], original[..out.stdout.len()]);

    let target = fl.path("never.bin");
    fl.fails(&["ipfs", "get", &cid, "-o", target.to_str().unwrap()]);
    assert!(!target.exists(), "get left a partial file");
}

#[test]
fn truncated_or_garbage_car_leaves_the_store_unchanged() {
    let fl = Fl::new();
    let cid = fl.add("c.bin", &data(900_000, 3));
    let car = fl.path("c.car");
    fl.ok(&["car", "export", &cid, "-o", car.to_str().unwrap()]);
    let bytes = fs::read(&car).unwrap();

    // A fresh repo with one unrelated file in it.
    let other = Fl::new();
    other.add("x.bin", b"unrelated");
    let before = other.block_files();
    let pins_before = other.ok(&["ipfs", "pins"]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.car",
            bytes[..bytes.len() - 100].to_vec(),
            "truncated",
        ),
        (
            "cut-in-prefix.car",
            bytes[..bytes.len() / 2].to_vec(),
            "truncated",
        ),
        (
            "garbage.car",
            b"this is not a CAR file at all".to_vec(),
            "CAR",
        ),
        ("empty.car", Vec::new(), "truncated"),
        (
            "flipped.car",
            {
                let mut b = bytes.clone();
                let n = b.len() - 5;
                b[n] ^= 0xff;
                b
            },
            "bad block",
        ),
    ];
    for (name, content, expect) in cases {
        let path = other.path(name);
        fs::write(&path, content).unwrap();
        let (_, err) = other.fails(&["car", "import", path.to_str().unwrap()]);
        assert!(err.contains(name), "{err}");
        assert!(err.contains(expect), "{name}: {err}");
        assert_eq!(other.block_files(), before, "{name} changed the store");
        assert_eq!(other.ok(&["ipfs", "pins"]), pins_before);
    }
}

#[test]
fn unknown_cid_malformed_cid_and_missing_file_give_one_line_errors() {
    let fl = Fl::new();
    fl.add("d.bin", b"something");
    let (_, err) = fl.fails(&[
        "ipfs",
        "cat",
        "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
    ]);
    assert!(err.contains("not in the store"), "{err}");
    let (out, err) = fl.fails(&["ipfs", "cat", "bafy-not-a-cid"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("not a valid CID"), "{err}");
    let (_, err) = fl.fails(&["ipfs", "add", fl.path("missing.bin").to_str().unwrap()]);
    assert!(err.contains("missing.bin"), "{err}");
    let (_, err) = fl.fails(&["car", "import", fl.path("missing.car").to_str().unwrap()]);
    assert!(err.contains("missing.car"), "{err}");
    let (_, err) = fl.fails(&[
        "ipfs",
        "unpin",
        "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
    ]);
    assert!(err.contains("not pinned"), "{err}");
}

#[test]
fn a_record_is_refused_as_a_file() {
    // A DAG-CBOR record imported from a CAR is not a file: cat says so instead of
    // printing CBOR.
    use fl_core::content::{Blockstore, MemBlockstore, car, dagcbor};
    let store = MemBlockstore::default();
    let record = dagcbor::encode(&std::collections::BTreeMap::from([("round", 3u32)])).unwrap();
    let cid = *record.cid();
    store.put(record).unwrap();
    let mut bytes = Vec::new();
    car::export(&store, &[cid], &mut bytes).unwrap();

    let fl = Fl::new();
    let path = fl.path("record.car");
    fs::write(&path, bytes).unwrap();
    assert_eq!(
        fl.ok(&["car", "import", path.to_str().unwrap()]),
        format!("pinned root {cid}")
    );
    let (_, err) = fl.fails(&["ipfs", "cat", &cid.to_string()]);
    assert!(err.contains("is not a UnixFS file"), "{err}");
}

#[test]
fn task_create_refuses_dp_settings_that_cannot_work_with_one_message_each() {
    let t = Fl::new();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--dp-clip", "1", "--dp-noise", "0"],
            "DP noise multiplier must be a finite number > 0 (0 gives no privacy), got 0",
        ),
        (
            &["--dp-clip", "0", "--dp-noise", "1"],
            "DP clip norm must be a finite number > 0, got 0",
        ),
        (
            &["--dp", "local", "--dp-noise", "1"],
            "unknown DP level \"local\"",
        ),
        (
            &["--dp", "sample", "--dp-epsilon", "8"],
            "the task cannot know how many examples each node has; give --dp-noise",
        ),
        (
            &[
                "--dp",
                "sample",
                "--dp-noise",
                "1",
                "--dp-neighbours",
                "replace-one",
            ],
            "sample-level DP is accounted for add-remove neighbours",
        ),
        (
            &["--dp-noise", "1", "--dp-delta", "1.5"],
            "dp.delta = 1.5: must be in (0, 1)",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["task", "create", "--own-data"];
        all.extend_from_slice(args);
        let out = t.run(&all);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
    // A sample-level task names its level, neighbours and budget in the record.
    let cid = t.ok(&[
        "task",
        "create",
        "--own-data",
        "--dp",
        "sample",
        "--dp-noise",
        "1.1",
        "--dp-epsilon",
        "8",
    ]);
    let cid = cid.trim();
    let repo = fl_core::content::Repo::open(t.repo()).unwrap();
    let block = fl_core::content::Blockstore::get(repo.blocks(), &cid.parse().unwrap()).unwrap();
    let task = fl_core::records::Task::from_block(&block).unwrap();
    let dp = task.dp.expect("a DP section");
    assert_eq!(dp.level, Some(fl_core::records::DpLevel::Sample));
    assert_eq!(dp.neighbours, Some(fl_core::records::Neighbours::AddRemove));
    assert_eq!(dp.epsilon_budget, Some(8.0));
    assert_eq!(dp.noise_multiplier, 1.1);
}

/// The task records its rule with every parameter, defaults too, so a later change of a
/// default cannot change what its manifests are recomputed with.
#[test]
fn task_create_records_the_rule_in_full() {
    let t = Fl::new();
    for (given, recorded) in [
        ("median", "median:screen=2"),
        ("trimmed-mean:0.3:screen=0", "trimmed-mean:0.3:screen=0"),
        ("fedavg", "fedavg"),
    ] {
        let cid = t.ok(&["task", "create", "--own-data", "--rule", given]);
        let repo = fl_core::content::Repo::open(t.repo()).unwrap();
        let block =
            fl_core::content::Blockstore::get(repo.blocks(), &cid.trim().parse().unwrap()).unwrap();
        let task = fl_core::records::Task::from_block(&block).unwrap();
        assert_eq!(task.rule, recorded, "{given}");
    }
}

#[test]
fn privacy_answers_for_dp_sgd_steps_as_well_as_rounds() {
    let t = Fl::new();
    // 12,000 examples at expected batch 256 (q = 1/47) for 10 epochs: z = 0.697 spends 8.
    let out = t.ok(&[
        "privacy",
        "--examples",
        "12000",
        "--batch",
        "256",
        "--steps",
        "470",
        "--z",
        "0.697",
    ]);
    let eps: f64 = out
        .strip_prefix("epsilon = ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!((eps - 8.0).abs() < 0.01, "{out}");
    assert!(
        out.contains("DP-SGD") && out.contains("steps = 470"),
        "{out}"
    );
    let out = t.ok(&[
        "privacy",
        "--q",
        "0.0212766",
        "--steps",
        "470",
        "--epsilon",
        "8",
    ]);
    assert!(out.starts_with("z = 0.69"), "{out}");
    // Client level, as before: rounds.
    let out = t.ok(&["privacy", "--q", "1", "--z", "2", "--rounds", "10"]);
    assert!(
        out.starts_with("epsilon = ") && out.contains("rounds = 10"),
        "{out}"
    );
    let (_, err) = t.fails(&["privacy", "--q", "1", "--z", "2"]);
    assert!(err.contains("--rounds") || err.contains("--steps"), "{err}");
}
