//! `fl baseline`, `fl eval` and `fl infer` on a few real CIFAR-10 images from
//! ../shared/datasets/cifar10 (debug builds of burn are slow, so a few).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fl_core::content::Repo;
use fl_core::model::Architecture;
use serde_json::Value;

const RECORD: usize = 3073;

fn shared_cifar() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/cifar10")
}

/// A CIFAR-10 directory with the first `n` records of each of the real files.
fn small_cifar(dir: &Path, n: usize) -> PathBuf {
    let out = dir.join("cifar");
    std::fs::create_dir_all(&out).unwrap();
    let names = (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string()]);
    for name in names {
        let bytes = std::fs::read(shared_cifar().join(&name)).unwrap();
        std::fs::write(out.join(&name), &bytes[..n * RECORD]).unwrap();
    }
    out
}

fn fl(repo: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fl"))
        .args(args)
        .env("FL_REPO", repo)
        .env_remove("FL_DATA")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// A `w` x `h` RGB PNG, a vertical gradient.
fn png(path: &Path, w: u32, h: u32) {
    let image =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
    image.save(path).unwrap();
}

#[test]
fn baseline_then_eval_then_infer_on_real_images() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let data = small_cifar(dir.path(), 8);
    let jsonl = dir.path().join("run.jsonl");
    let data_arg = data.to_str().unwrap();
    ok(&fl(
        &repo,
        &[
            "baseline",
            "--data",
            data_arg,
            "--epochs",
            "2",
            "--batch",
            "16",
            "--lr",
            "0.01",
            "--schedule",
            "cosine",
            "--jsonl",
            jsonl.to_str().unwrap(),
        ],
    ));
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "start, 2 epochs, done: {lines:?}");
    assert_eq!(lines[0]["event"], "start");
    assert_eq!(lines[0]["train_images"], 40);
    assert_eq!(lines[0]["test_images"], 8);
    for (i, epoch) in lines[1..3].iter().enumerate() {
        assert_eq!(epoch["event"], "epoch");
        assert_eq!(epoch["epoch"], i + 1);
        assert!(epoch["loss"].as_f64().unwrap().is_finite());
        assert!(epoch["images_per_sec"].as_f64().unwrap() > 0.0);
        let acc = epoch["test_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
    let done = &lines[3];
    assert_eq!(done["event"], "done");
    assert_eq!(done["per_class_accuracy"].as_array().unwrap().len(), 10);
    let model = done["model"].as_str().unwrap().to_string();
    assert_ne!(model, lines[0]["init"].as_str().unwrap());

    // The stored model is a PyTorch-readable file in the repo, and eval agrees with baseline.
    let stored =
        fl_core::tensors::Bundle::load(&Repo::open(&repo).unwrap(), &model.parse().unwrap())
            .unwrap();
    assert_eq!(Architecture::of(&stored).unwrap(), Architecture::FedAvgCnn);
    let eval: Value = serde_json::from_str(&ok(&fl(
        &repo,
        &["eval", &model, "--data", data_arg, "--json"],
    )))
    .unwrap();
    assert_eq!(eval["images"], 8);
    assert!(
        (eval["accuracy"].as_f64().unwrap() - done["test_accuracy"].as_f64().unwrap()).abs() < 1e-9
    );
    let table = ok(&fl(&repo, &["eval", &model, "--data", data_arg]));
    assert!(
        table.contains("airplane") && table.contains("accuracy"),
        "{table}"
    );

    // Inference: top-3 classes with probabilities; other sizes are refused unless --resize.
    let small = dir.path().join("cat.png");
    png(&small, 32, 32);
    let out = ok(&fl(&repo, &["infer", &model, small.to_str().unwrap()]));
    let line = out.lines().next().unwrap();
    let top: Vec<f64> = line
        .split(": ")
        .nth(1)
        .unwrap()
        .split(", ")
        .map(|c| {
            c.rsplit(' ')
                .next()
                .unwrap()
                .trim_end_matches('%')
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(top.len(), 3, "{line}");
    assert!(top.windows(2).all(|w| w[0] >= w[1]), "{line}");
    let big = dir.path().join("photo.png");
    png(&big, 64, 48);
    let msg = err(&fl(&repo, &["infer", &model, big.to_str().unwrap()]));
    assert!(
        msg.contains("is 64x48; fedavg-cnn takes 32x32 RGB images (pass --resize"),
        "{msg}"
    );
    ok(&fl(
        &repo,
        &[
            "infer",
            &model,
            big.to_str().unwrap(),
            "--resize",
            "--top",
            "5",
        ],
    ));
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let msg = err(&fl(&repo, &["infer", &model, text.to_str().unwrap()]));
    assert!(msg.contains("notes.png"), "{msg}");
}

#[test]
fn eval_names_what_is_wrong_with_a_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let data = small_cifar(dir.path(), 2);
    let repo = Repo::open(&repo_dir).unwrap();
    let mut model = Architecture::FedAvgCnn.init(1).unwrap();
    let mut broken = fl_core::tensors::Bundle::new();
    for (name, tensor) in model.iter() {
        if name != "fc2.bias" {
            broken
                .insert(name, tensor.shape.clone(), tensor.data.clone())
                .unwrap();
        }
    }
    for (k, v) in model.metadata() {
        broken.set_metadata(k.clone(), v.clone());
    }
    let missing = broken.store(&repo).unwrap();
    let w = model.get("fc1.weight").unwrap().clone();
    model
        .insert("fc1.weight", vec![192, 4096], w.data[..192 * 4096].to_vec())
        .unwrap();
    let reshaped = model.store(&repo).unwrap();
    let not_a_model = repo.add(&b"hello"[..], &Default::default()).unwrap().root;
    drop(repo);

    let data_arg = data.to_str().unwrap();
    let msg = err(&fl(
        &repo_dir,
        &["eval", &missing.to_string(), "--data", data_arg],
    ));
    assert!(msg.contains("fc2.bias is missing"), "{msg}");
    let msg = err(&fl(
        &repo_dir,
        &["eval", &reshaped.to_string(), "--data", data_arg],
    ));
    assert!(
        msg.contains("fc1.weight is [192, 4096], expected [384, 4096]"),
        "{msg}"
    );
    let msg = err(&fl(
        &repo_dir,
        &["eval", &not_a_model.to_string(), "--data", data_arg],
    ));
    assert!(msg.contains("not a valid safetensors bundle"), "{msg}");
    let msg = err(&fl(
        &repo_dir,
        &["baseline", "--data", data_arg, "--gpu", "--epochs", "1"],
    ));
    if cfg!(not(feature = "gpu")) {
        assert!(msg.contains("--features gpu"), "{msg}");
    }
}

#[test]
fn baseline_with_dp_sgd_reports_its_epsilon_every_epoch_and_stays_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // 5 x 40 = 200 training images: delta must be below 1/200.
    let data = small_cifar(dir.path(), 40);
    let jsonl = dir.path().join("run.jsonl");
    let out = ok(&fl(
        &repo,
        &[
            "baseline",
            "--data",
            data.to_str().unwrap(),
            "--epochs",
            "2",
            "--batch",
            "50",
            "--lr",
            "0.5",
            "--dp-epsilon",
            "4",
            "--dp-clip",
            "0.5",
            "--dp-delta",
            "1e-3",
            "--jsonl",
            jsonl.to_str().unwrap(),
        ],
    ));
    assert!(out.is_empty(), "JSON lines go to the file: {out}");
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dp = &lines[0]["dp"];
    assert_eq!(dp["level"], "sample", "{dp}");
    assert_eq!(dp["steps"], 8, "4 steps an epoch (q = 1/4), 2 epochs: {dp}");
    assert_eq!(dp["sampling_rate"], 0.25);
    let z = dp["noise_multiplier"].as_f64().unwrap();
    assert!(z > 0.5 && z < 10.0, "{z}");
    assert_eq!(
        lines[0]["augment"], false,
        "DP-SGD trains on the images as they are"
    );
    let eps: Vec<f64> = lines[1..3]
        .iter()
        .map(|l| l["epsilon"].as_f64().unwrap())
        .collect();
    assert!(eps[0] > 0.0 && eps[0] < eps[1] && eps[1] <= 4.0, "{eps:?}");
    assert!(
        eps[1] > 3.99,
        "the noise is the least that reaches the target: {eps:?}"
    );
    assert_eq!(lines[3]["epsilon"], lines[2]["epsilon"]);
    assert!(lines[3]["test_accuracy"].as_f64().is_some());
}

#[test]
fn baseline_refuses_dp_settings_that_cannot_work_with_one_message_each() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let data = small_cifar(dir.path(), 40);
    let data = data.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--dp-epsilon", "0"],
            "DP epsilon must be a finite number > 0, got 0",
        ),
        (
            &["--dp-epsilon", "-2"],
            "DP epsilon must be a finite number > 0, got -2",
        ),
        (
            &["--dp-epsilon", "8", "--dp-delta", "0.005"],
            "DP delta must be in (0, 1/n) for n = 200 training examples",
        ),
        (
            &["--dp-epsilon", "8", "--dp-clip", "0"],
            "DP clip norm must be a finite number > 0, got 0",
        ),
        (
            &[
                "--dp-epsilon",
                "0.3",
                "--dp-delta",
                "1e-3",
                "--epochs",
                "50",
            ],
            "needs noise multiplier",
        ),
        (&["--dp-clip", "1"], "--dp-epsilon <EPSILON>"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["baseline", "--data", data, "--batch", "50"];
        all.extend_from_slice(args);
        let stderr = err(&fl(&repo, &all));
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
}
