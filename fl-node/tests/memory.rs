//! Adding and catting a 1 GiB file stays in bounded memory (peak RSS under 64 MiB), as
//! measured by GNU time around real `fl` processes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const GIB: usize = 1 << 30;
const LIMIT_KIB: u64 = 64 * 1024;

/// Runs `fl` under `/usr/bin/time -f %M`; returns its peak RSS in KiB and its stdout.
fn peak_rss(repo: &Path, args: &[&str], stdout_to: Stdio) -> u64 {
    let report = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(env!("CARGO_BIN_EXE_fl"))
        .args(args)
        .env("FL_REPO", repo)
        .stdout(stdout_to)
        .status()
        .unwrap();
    assert!(status.success(), "fl {args:?} failed");
    let text = std::fs::read_to_string(report.path()).unwrap();
    text.trim().lines().last().unwrap().parse().unwrap()
}

#[test]
fn one_gib_add_and_cat_stay_under_64_mib() {
    if !Path::new("/usr/bin/time").exists() {
        eprintln!("skipped: /usr/bin/time (GNU time) is not installed; .ci/run installs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    {
        let mut out = BufWriter::new(File::create(&file).unwrap());
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..GIB / block.len() {
            for b in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            out.write_all(&block).unwrap();
        }
    }
    let repo = dir.path().join("repo");
    let added = peak_rss(
        &repo,
        &["ipfs", "add", file.to_str().unwrap()],
        Stdio::null(),
    );
    let cid = Command::new(env!("CARGO_BIN_EXE_fl"))
        .args(["ipfs", "add", "-n", file.to_str().unwrap()])
        .output()
        .unwrap();
    let cid = String::from_utf8(cid.stdout).unwrap().trim().to_owned();
    let copy = dir.path().join("copy.bin");
    let catted = peak_rss(
        &repo,
        &["ipfs", "cat", &cid],
        Stdio::from(File::create(&copy).unwrap()),
    );
    eprintln!("peak RSS: add {added} KiB, cat {catted} KiB (limit {LIMIT_KIB} KiB)");
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), GIB as u64);
    assert!(added < LIMIT_KIB, "add peaked at {added} KiB");
    assert!(catted < LIMIT_KIB, "cat peaked at {catted} KiB");
}
