//! Parity with PyTorch: the same weights give the same logits, loss and accuracy on real
//! CIFAR-10 test images, and the same SGD steps (momentum, weight decay, FedProx) give the
//! same parameters. PyTorch runs `experiments/pytorch/fedavg_cnn.py`.
//!
//! Runs where `$FL_TORCH_PYTHON` (default `python3`) can import torch and safetensors, and is
//! skipped with a printed reason elsewhere; `FL_REQUIRE_TORCH=1` turns the skip into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use fl_core::model::batch::CIFAR_RECORD_LEN;
use fl_core::model::{
    Architecture, Backend, Batch, CIFAR10_NORMALIZATION, Classifier, TrainConfig, train,
};
use fl_core::tensors::Bundle;

const ARCH: Architecture = Architecture::FedAvgCnn;
pub(crate) const TEST_BATCH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/datasets/cifar10/test_batch.bin"
);
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../experiments/pytorch/fedavg_cnn.py"
);

/// The Python that has torch, or `None` after printing why the test is skipped.
pub(crate) fn torch_python() -> Option<String> {
    let python = std::env::var("FL_TORCH_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let probe = Command::new(&python)
        .args(["-c", "import torch, safetensors"])
        .output();
    let reason = match probe {
        Ok(out) if out.status.success() => return Some(python),
        Ok(out) => format!(
            "{python} cannot import torch and safetensors: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => format!("cannot run {python}: {e}"),
    };
    if std::env::var("FL_REQUIRE_TORCH").is_ok_and(|v| v == "1") {
        panic!("FL_REQUIRE_TORCH=1 but {reason}");
    }
    eprintln!("skipped: {reason} (set FL_TORCH_PYTHON to a Python with torch)");
    None
}

/// Runs the PyTorch script with `args`; returns its stdout.
pub(crate) fn pytorch(python: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "fedavg_cnn.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first `n` CIFAR-10 test images, normalised as the model expects.
pub(crate) fn test_images(n: usize) -> Batch {
    let bytes = std::fs::read(TEST_BATCH).expect("read the CIFAR-10 test batch");
    Batch::from_cifar_records(&bytes[..n * CIFAR_RECORD_LEN], &CIFAR10_NORMALIZATION).unwrap()
}

pub(crate) fn save(bundle: &Bundle, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bundle.to_safetensors().unwrap()).unwrap();
    path
}

pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A model with larger weights than a fresh one, so that logits are far from zero.
pub(crate) fn sharpened(seed: u64) -> Bundle {
    let init = ARCH.init(seed).unwrap();
    let flat: Vec<f32> = init.flatten().iter().map(|v| v * 2.0).collect();
    init.with_flat(&flat).unwrap()
}

#[test]
fn logits_match_pytorch_on_16_cifar_test_images() {
    let Some(python) = torch_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = test_images(16);
    for (label, bundle) in [
        ("initial", ARCH.init(11).unwrap()),
        ("sharpened", sharpened(12)),
    ] {
        let path = save(&bundle, dir.path(), &format!("{label}.safetensors"));
        let ours = Classifier::new(ARCH, &bundle, &Backend::Flex.device())
            .unwrap()
            .logits(&images)
            .unwrap();
        let json_path = dir.path().join(format!("{label}.json"));
        pytorch(
            &python,
            &[
                "logits",
                path.to_str().unwrap(),
                TEST_BATCH,
                "--n",
                "16",
                "--out",
                json_path.to_str().unwrap(),
            ],
        );
        let theirs: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
        let theirs: Vec<f32> = theirs["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        let largest = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&ours.values, &theirs);
        eprintln!(
            "{label} model: max |logit| {largest:.4}, max abs difference from PyTorch {diff:.3e}"
        );
        assert!(
            diff < 1e-4,
            "{label}: logits differ from PyTorch's by {diff}"
        );
    }
}

#[test]
fn loss_and_accuracy_match_pytorch_on_32_cifar_test_images() {
    let Some(python) = torch_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bundle = sharpened(13);
    let path = save(&bundle, dir.path(), "model.safetensors");
    let ours = Classifier::new(ARCH, &bundle, &Backend::Flex.device())
        .unwrap()
        .evaluate(&[test_images(32)], 16)
        .unwrap();
    let out = pytorch(
        &python,
        &[
            "accuracy",
            path.to_str().unwrap(),
            TEST_BATCH,
            "--limit",
            "32",
        ],
    );
    let theirs: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!(
        "ours: loss {} accuracy {}; PyTorch: {}",
        ours.loss,
        ours.accuracy,
        out.trim()
    );
    assert_eq!(theirs["images"].as_u64(), Some(32));
    assert!((ours.loss - theirs["loss"].as_f64().unwrap()).abs() < 1e-4);
    assert_eq!(ours.accuracy, theirs["accuracy"].as_f64().unwrap());
}

#[test]
fn sgd_with_momentum_weight_decay_and_fedprox_matches_pytorch() {
    let Some(python) = torch_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let global = ARCH.init(14).unwrap();
    let path = save(&global, dir.path(), "global.safetensors");
    // Full-batch steps: one step per epoch, so the order of the examples cannot matter.
    let config = TrainConfig {
        epochs: 3,
        batch_size: 8,
        learning_rate: 0.05,
        momentum: 0.9,
        weight_decay: 5e-3,
        proximal_mu: 0.5,
        ..TrainConfig::default()
    };
    let ours = train(
        ARCH,
        &global,
        &[test_images(8)],
        &config,
        &Backend::Flex.device(),
    )
    .unwrap();
    let out_path = dir.path().join("trained.safetensors");
    pytorch(
        &python,
        &[
            "train",
            path.to_str().unwrap(),
            TEST_BATCH,
            "--n",
            "8",
            "--steps",
            "3",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--weight-decay",
            "5e-3",
            "--mu",
            "0.5",
            "--out",
            out_path.to_str().unwrap(),
        ],
    );
    let theirs = Bundle::from_safetensors(&std::fs::read(&out_path).unwrap()).unwrap();
    ARCH.check(&theirs).unwrap();
    let moved = max_abs_diff(&ours.model.flatten(), &global.flatten());
    let diff = max_abs_diff(&ours.model.flatten(), &theirs.flatten());
    eprintln!(
        "3 SGD steps: parameters moved up to {moved:.3e}; max abs difference from PyTorch {diff:.3e}"
    );
    assert!(moved > 1e-3, "training should move the parameters");
    assert!(diff < 1e-5, "parameters differ from PyTorch's by {diff}");
}
