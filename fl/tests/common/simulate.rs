//! Running the `fl` binary, and `fl simulate` on the shared CIFAR-10 images, for the tests of
//! whole federations.

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn shared_cifar() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/cifar10")
}

pub fn fl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fl"))
        .args(args)
        .env_remove("FL_DATA")
        .env_remove("FL_REPO")
        .output()
        .expect("running fl")
}

/// Standard output of a successful `fl simulate --json`, and its lines parsed.
pub fn json_lines(out: &Output) -> (String, Vec<serde_json::Value>) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "fl simulate failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (stdout, lines)
}

/// Runs `fl simulate ARGS --data ../shared/datasets/cifar10 --json`, expecting success:
/// its standard output and lines, or `None` (said why) where the shared images are absent.
pub fn simulate(args: &[&str]) -> Option<(String, Vec<serde_json::Value>)> {
    let data = shared_cifar();
    if !data.join("data_batch_1.bin").exists() {
        eprintln!("skipped: ../shared/datasets/cifar10 is not here");
        return None;
    }
    let mut all = vec!["simulate"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data", data.to_str().expect("utf-8 path"), "--json"]);
    Some(json_lines(&fl(&all)))
}

/// Runs `fl simulate` with `args`, expecting failure; returns standard error.
pub fn refused(args: &[&str]) -> String {
    let mut all = vec!["simulate"];
    all.extend_from_slice(args);
    let out = fl(&all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    stderr
}
