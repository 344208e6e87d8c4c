//! Adding and catting a 1 GiB file stays in bounded memory (peak RSS under 64 MiB), as
//! measured by GNU time around real `fl` processes. The file streams through pipes, so
//! the only gibibyte on disk is the repo's blocks.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const GIB: usize = 1 << 30;
const LIMIT_KIB: u64 = 64 * 1024;
/// Disk the test needs: the repo's blocks plus room for the filesystem's own overhead.
const NEEDED_BYTES: u64 = GIB as u64 * 3 / 2;

/// The test file, 1 MiB at a time: xorshift bytes, so no chunk repeats or compresses.
struct Pattern(u64);

impl Pattern {
    fn new() -> Self {
        Self(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, block: &mut [u8]) {
        for b in block.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            b.copy_from_slice(&self.0.to_le_bytes());
        }
    }
}

/// Starts `fl` under `/usr/bin/time -f %M` with piped standard streams.
fn spawn_timed(repo: &Path, report: &Path, args: &[&str]) -> Child {
    Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(report)
        .arg(env!("CARGO_BIN_EXE_fl"))
        .args(args)
        .env("FL_REPO", repo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The peak RSS in KiB that GNU time wrote to `report`.
fn peak_kib(report: &Path) -> u64 {
    let text = std::fs::read_to_string(report).unwrap();
    text.trim().lines().last().unwrap().parse().unwrap()
}

/// Bytes available to unprivileged users on the filesystem holding `dir`, by `df`.
fn available_bytes(dir: &Path) -> Option<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

#[test]
fn one_gib_add_and_cat_stay_under_64_mib() {
    if !Path::new("/usr/bin/time").exists() {
        eprintln!("skipped: /usr/bin/time (GNU time) is not installed; .ci/run installs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    match available_bytes(dir.path()) {
        Some(free) if free < NEEDED_BYTES => {
            eprintln!(
                "skipped: {} has {} MiB free; this test needs {} MiB",
                dir.path().display(),
                free >> 20,
                NEEDED_BYTES >> 20
            );
            return;
        }
        _ => {}
    }
    let repo = dir.path().join("repo");
    let add_report = dir.path().join("add.time");
    let cat_report = dir.path().join("cat.time");

    let mut add = spawn_timed(&repo, &add_report, &["ipfs", "add", "-"]);
    let mut input = add.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut pattern = Pattern::new();
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..GIB / block.len() {
            pattern.fill(&mut block);
            input.write_all(&block).unwrap();
        }
    });
    let mut printed = String::new();
    add.stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    writer.join().unwrap();
    assert!(add.wait().unwrap().success(), "fl ipfs add - failed");
    let cid = printed.trim().to_owned();

    let mut cat = spawn_timed(&repo, &cat_report, &["ipfs", "cat", &cid]);
    drop(cat.stdin.take());
    let mut output = cat.stdout.take().unwrap();
    let mut pattern = Pattern::new();
    let (mut want, mut got) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for i in 0..GIB / want.len() {
        pattern.fill(&mut want);
        output
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("cat ended before MiB {i}: {e}"));
        assert!(want == got, "cat gave other bytes in MiB {i}");
    }
    assert_eq!(
        output.read(&mut got).unwrap(),
        0,
        "cat gave more than 1 GiB"
    );
    assert!(cat.wait().unwrap().success(), "fl ipfs cat failed");

    let (added, catted) = (peak_kib(&add_report), peak_kib(&cat_report));
    eprintln!("peak RSS: add {added} KiB, cat {catted} KiB (limit {LIMIT_KIB} KiB)");
    assert!(added < LIMIT_KIB, "add peaked at {added} KiB");
    assert!(catted < LIMIT_KIB, "cat peaked at {catted} KiB");
}
