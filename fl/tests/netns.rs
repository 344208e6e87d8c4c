//! Nodes on separate hosts: each `fl` process runs in its own network namespace, joined to
//! the others by a veth pair to a bridge (created here, removed on drop), so nothing relies
//! on sharing one host's loopback. Needs root and `ip` (iproute2); where namespaces cannot be
//! made the tests say why and pass, unless FL_REQUIRE_NETNS=1 makes them fail.

mod common;
use common::lan::{ip, lan};
use common::random;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A running process, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and returns it with the rest of the first stdout line that starts with
/// `prefix`, and a channel of its later stdout lines.
fn start(mut cmd: Command, prefix: &'static str) -> (Running, String, mpsc::Receiver<String>) {
    let mut child = Running(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line starting {prefix:?} within {WAIT:?}"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return (child, rest.to_string(), rx);
        }
    }
}

/// Runs `cmd` to its end, bounded by `WAIT`.
fn finish(mut cmd: Command) -> Output {
    wait(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Three hosts: h0 holds a file; h1 knows h0; h2 knows only h1, finds h0 through the DHT
/// and fetches the file from it across the bridge. Then h2 publishes on a topic that h0
/// listens to.
#[test]
fn nodes_on_separate_hosts_find_fetch_and_gossip() {
    let Some(lan) = lan("a", 3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = |i: usize| dir.path().join(format!("repo{i}"));
    let bytes = random(6 << 20, 41);
    let file = dir.path().join("model.bin");
    std::fs::write(&file, &bytes).unwrap();
    let cid = ok(&finish(lan.fl(
        0,
        &repo(0),
        &["ipfs", "add", file.to_str().unwrap()],
    )));
    let listen = |i: usize| format!("/ip4/{}/tcp/4101", lan.addr(i));

    let (_h0, addr0, _) = start(
        lan.fl(
            0,
            &repo(0),
            &["node", "run", "--no-mdns", "--listen", &listen(0)],
        ),
        "listening on ",
    );
    assert!(addr0.starts_with(&listen(0)), "{addr0}");
    let (_h1, addr1, _) = start(
        lan.fl(
            1,
            &repo(1),
            &[
                "node",
                "run",
                "--no-mdns",
                "--listen",
                &listen(1),
                "--bootstrap",
                &addr0,
            ],
        ),
        "listening on ",
    );
    let out = dir.path().join("fetched.bin");
    let got = finish(lan.fl(
        2,
        &repo(2),
        &[
            "ipfs",
            "get",
            &cid,
            "-o",
            out.to_str().unwrap(),
            "--no-mdns",
            "--listen",
            &listen(2),
            "--bootstrap",
            &addr1,
        ],
    ));
    eprintln!("{}", ok(&got));
    assert!(
        std::fs::read(&out).unwrap() == bytes,
        "h2 got different bytes"
    );

    // Gossip across hosts: h0 listens on a topic, h2 publishes to it.
    let topic = format!("fl/{cid}/updates");
    let sub_listen = format!("/ip4/{}/tcp/4102", lan.addr(0));
    let (_sub, sub_addr, lines) = start(
        lan.fl(
            0,
            &repo(3),
            &[
                "pubsub",
                "sub",
                &topic,
                "--count",
                "1",
                "--timeout",
                "60",
                "--no-mdns",
                "--listen",
                &sub_listen,
            ],
        ),
        "listening on ",
    );
    ok(&finish(lan.fl(
        2,
        &repo(2),
        &[
            "pubsub",
            "pub",
            &topic,
            "update from h2",
            "--no-mdns",
            "--listen",
            &listen(2),
            "--bootstrap",
            &sub_addr,
        ],
    )));
    let line = lines.recv_timeout(WAIT).expect("h0 received no message");
    let message: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(message["data"], "update from h2");
    assert_eq!(message["topic"], topic.as_str());
}

/// Waits for `child` to exit, bounded by `WAIT`, and returns its output.
fn wait(mut child: Child) -> Output {
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a process did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Providers on 40 Mbit/s uplinks vanish part-way through a 7 MB transfer: with a second
/// provider the fetch completes from it; with none left it fails with a clear error, in
/// bounded time, and nothing half-fetched is written.
#[test]
fn a_provider_that_vanishes_mid_transfer() {
    let Some(lan) = lan("b", 3) else {
        return;
    };
    let rate = "tbf rate 40mbit burst 64kb latency 100ms";
    for i in [1, 2] {
        let host = lan.host(i);
        let mut args = vec![
            "netns", "exec", &host, "tc", "qdisc", "add", "dev", "eth0", "root",
        ];
        args.extend(rate.split(' '));
        if let Err(why) = ip(&args) {
            if std::env::var("FL_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
                panic!("cannot limit a link's rate: {why}");
            }
            eprintln!("skipped: cannot limit a link's rate here (tc {rate}): {why}");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = |name: &str| dir.path().join(name);
    let bytes = random(7 << 20, 43);
    let file = dir.path().join("model.bin");
    std::fs::write(&file, &bytes).unwrap();
    let mut cid = String::new();
    let mut providers = Vec::new();
    for i in [1, 2] {
        let r = repo(&format!("p{i}"));
        cid = ok(&finish(lan.fl(
            i,
            &r,
            &["ipfs", "add", file.to_str().unwrap()],
        )));
        let listen = format!("/ip4/{}/tcp/4101", lan.addr(i));
        providers.push(start(
            lan.fl(i, &r, &["node", "run", "--no-mdns", "--listen", &listen]),
            "listening on ",
        ));
    }
    let (p1, p2) = (providers[0].1.clone(), providers[1].1.clone());
    let get = |name: &str, peers: &[&str]| {
        let out = dir.path().join(format!("{name}.bin"));
        let mut args = vec![
            "ipfs",
            "get",
            &cid,
            "-o",
            out.to_str().unwrap(),
            "--no-mdns",
        ];
        args.extend(["--listen", "/ip4/10.199.0.1/tcp/0", "--block-timeout", "3"]);
        for p in peers {
            args.extend(["--peer", p]);
        }
        let child = lan
            .fl(0, &repo(name), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, out)
    };

    // Two providers; the first vanishes after 400 ms (about a third of its share).
    let (child, out) = get("both", &[&p1, &p2]);
    std::thread::sleep(Duration::from_millis(400));
    drop(providers.remove(0));
    let result = wait(child);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(std::fs::read(&out).unwrap() == bytes, "bytes differ");

    // One provider, which vanishes too.
    let (child, out) = get("alone", &[&p2]);
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    drop(providers.remove(0));
    let result = wait(child);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        !result.status.success(),
        "fetch succeeded with no provider left"
    );
    assert!(stderr.contains("no peer sent"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "a partial file was written");
    eprintln!(
        "failed {:?} after the provider vanished: {}",
        started.elapsed(),
        stderr.trim()
    );
}
