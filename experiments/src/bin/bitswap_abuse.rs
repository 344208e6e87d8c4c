//! Bitswap under abuse (issue "Rounds that hold against a dishonest member", acceptance 3):
//! an honest peer fetches a 16 MiB file from a serving node, first alone, then while other
//! peers abuse the node in each of four ways, and the rate it gets is compared with the
//! normal one, beside the serving node's memory.
//!
//! ```text
//! cargo run --release -p experiments --bin bitswap_abuse [-- FETCHES]
//! ```
//!
//! The serving node runs in a child process of its own (this binary, `serve`), with the
//! node's default limits and a blockstore on disk, so that its peak resident memory (VmHWM)
//! is its own; the honest peer and the abusers run in this process, on loopback. The abuses:
//! - `have-flood`: a peer sends messages of 1,024 HAVE wants for the file's blocks as fast
//!   as the node takes them, and never reads the answers;
//! - `never-reads`: a peer wants every block of the file again each second and never reads
//!   the answers;
//! - `stalled-frames`: eight peers each keep as many streams open as the node lets them, on
//!   each a length prefix of 4 MiB whose bytes never come;
//! - `new-peer-ids`: 10,000 connections, each from a new peer id, 64 being dialled at once,
//!   each held open once made (from one address, the node admits 64 at once and refuses the
//!   rest before their handshake).
//!
//! The honest peer connects before each abuse starts (a node full of abusers' connections
//! takes no new ones: that is its connection limit working). Machines with few cores share
//! them between the abusers, the honest peer and the node: the ratio is what the node keeps
//! for the honest peer on such a machine, not its limit.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cid::Cid;
use fl_core::content::unixfs::{ImportOptions, import};
use fl_core::content::{Blockstore, FsBlockstore, MemBlockstore, links};
use fl_node::net::bitswap::message::{Message, Want, WantType};
use fl_node::net::bitswap::{MAX_WANTLIST_ENTRIES, PROTOCOL};
use fl_node::net::fetch::FETCH_WINDOW;
use fl_node::net::{Node, NodeConfig, fetch_dag};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};

/// The file served: 16 MiB of seeded pseudo-random bytes.
const FILE_BYTES: usize = 16 << 20;
/// Connections from new peer ids in the `new-peer-ids` abuse.
const NEW_PEER_IDS: usize = 10_000;
/// Of those, dialled at once.
const DIALS_AT_ONCE: usize = 64;
/// Peers keeping stalled frames open.
const STALLING_PEERS: usize = 8;
/// The length prefix that never arrives.
const STALLED_FRAME: usize = 4 << 20;
/// How long an abuse runs before the honest fetches start.
const RAMP: Duration = Duration::from_secs(3);
/// Longest an abuse phase goes on for an abuse that has not done all it sets out to.
const ABUSE_LIMIT: Duration = Duration::from_secs(600);
/// How long one honest fetch may take.
const FETCH_LIMIT: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    if args.get(1).map(String::as_str) == Some("serve") {
        let dir = args.get(2).context("serve DIR")?;
        return runtime.block_on(serve(dir));
    }
    let fetches: usize = match args.get(1) {
        Some(n) => n.parse().context("FETCHES is a count")?,
        None => 5,
    };
    runtime.block_on(measure(fetches.max(1)))
}

/// The file, the same in both processes.
fn file() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..FILE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The child: a node serving the file from a blockstore on disk under `dir`, with the
/// default limits, until its standard input closes.
async fn serve(dir: &str) -> anyhow::Result<()> {
    let store = Arc::new(FsBlockstore::open(dir)?);
    let added = import(&file()[..], &ImportOptions::default(), |b| store.put(b))?;
    let config = NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        mdns: false,
        ..NodeConfig::default()
    };
    let node = Node::start(Keypair::generate_ed25519(), store, config).await?;
    let addr = node.listen_addrs().await?.remove(0);
    println!("serving {} {} {addr}", added.root, node.peer_id());
    // Until the parent goes.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    })
    .await?;
    drop(node);
    Ok(())
}

/// The serving child and what it serves.
struct Server {
    child: Child,
    root: Cid,
    peer: PeerId,
    addr: Multiaddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("the child's output")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let mut words = line.split_whitespace().skip(1);
        let (Some(root), Some(peer), Some(addr)) = (words.next(), words.next(), words.next())
        else {
            bail!("the serving node said {line:?}");
        };
        Ok(Server {
            child,
            root: root.parse()?,
            peer: peer.parse()?,
            addr: addr.parse()?,
            _dir: dir,
        })
    }

    /// The node's resident memory now and at its peak (VmRSS, VmHWM), bytes.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An honest peer: a node of its own with a store in memory, emptied before each fetch.
struct Honest {
    node: Node,
    store: Arc<MemBlockstore>,
}

impl Honest {
    async fn connect(server: &Server) -> anyhow::Result<Self> {
        let store = Arc::new(MemBlockstore::default());
        let config = NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            mdns: false,
            ..NodeConfig::default()
        };
        let node = Node::start(Keypair::generate_ed25519(), store.clone(), config).await?;
        node.dial(server.addr.clone()).await?;
        Ok(Honest { node, store })
    }

    /// Seconds to fetch the whole file, from an empty store.
    async fn fetch(&self, server: &Server) -> anyhow::Result<f64> {
        for hash in self.store.hashes()? {
            self.store.delete(&hash)?;
        }
        let started = Instant::now();
        let peers = [server.peer];
        let fetch = fetch_dag(
            self.node.bitswap(),
            server.root,
            &peers,
            FETCH_WINDOW,
            Duration::from_secs(10),
        );
        tokio::time::timeout(FETCH_LIMIT, fetch)
            .await
            .context("an honest fetch did not end in time")??;
        Ok(started.elapsed().as_secs_f64())
    }

    /// Every CID of the file's DAG (in the store after a fetch).
    fn cids(&self, root: Cid) -> Vec<Cid> {
        let mut found = vec![root];
        let mut seen = HashSet::from([root]);
        let mut next = 0;
        while next < found.len() {
            let cid = found[next];
            next += 1;
            let Ok(block) = self.store.get(&cid) else {
                continue;
            };
            for link in links::links(&block).unwrap_or_default() {
                if seen.insert(link) {
                    found.push(link);
                }
            }
        }
        found
    }
}

/// A bare swarm with raw streams only, dialling `addr`: a peer that speaks Bitswap by hand.
/// Runs until `stop`; returns its stream control.
fn raw_peer(addr: Multiaddr, stop: Arc<AtomicBool>) -> anyhow::Result<libp2p_stream::Control> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    let control = swarm.behaviour().new_control();
    swarm.dial(addr)?;
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let _ =
                tokio::time::timeout(Duration::from_millis(200), swarm.select_next_some()).await;
        }
    });
    Ok(control)
}

/// Opens a Bitswap stream to `peer`, retrying while the connection comes up.
async fn open(control: &mut libp2p_stream::Control, peer: PeerId) -> Option<libp2p::Stream> {
    for _ in 0..50 {
        if let Ok(stream) = control.open_stream(peer, PROTOCOL).await {
            return Some(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Accepts the node's answer streams and holds them unread.
fn hold_answers(control: &mut libp2p_stream::Control, stop: Arc<AtomicBool>) {
    if let Ok(mut incoming) = control.accept(PROTOCOL) {
        tokio::spawn(async move {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), incoming.next()).await {
                    Ok(Some((_, stream))) => held.push(stream),
                    Ok(None) => return,
                    Err(_) => {}
                }
            }
        });
    }
}

/// Writes one length-prefixed Bitswap message.
async fn write(stream: &mut libp2p::Stream, message: &Message) -> std::io::Result<()> {
    let body = message.encode_frame();
    let mut len = unsigned_varint::encode::usize_buffer();
    stream
        .write_all(unsigned_varint::encode::usize(body.len(), &mut len))
        .await?;
    stream.write_all(&body).await?;
    stream.flush().await
}

fn wants(cids: &[Cid], kind: WantType) -> Message {
    let wants: Vec<Want> = cids
        .iter()
        .cycle()
        .take(MAX_WANTLIST_ENTRIES)
        .map(|cid| Want {
            cid: *cid,
            kind,
            cancel: false,
            send_dont_have: true,
        })
        .collect();
    Message::with_wants(&wants, false)
}

/// Starts abuse `name` on `server` (the file's blocks are `cids`); it runs until `stop`.
/// Counts what it did in `done` (messages, streams or connections); sets `finished` once
/// it has done all it sets out to (at once for the abuses that go on until stopped).
fn start_abuse(
    name: &str,
    server: &Server,
    cids: &[Cid],
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicUsize>,
    finished: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    if name != "new-peer-ids" {
        finished.store(true, Ordering::Relaxed);
    }
    let (addr, peer) = (server.addr.clone(), server.peer);
    match name {
        "have-flood" | "never-reads" => {
            let mut control = raw_peer(addr, stop.clone())?;
            hold_answers(&mut control, stop.clone());
            let (kind, pause) = if name == "have-flood" {
                (WantType::Have, Duration::ZERO)
            } else {
                (WantType::Block, Duration::from_secs(1))
            };
            let message = wants(cids, kind);
            let (stop, done) = (stop.clone(), done.clone());
            tokio::spawn(async move {
                let Some(mut stream) = open(&mut control, peer).await else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    let sent =
                        tokio::time::timeout(Duration::from_secs(1), write(&mut stream, &message))
                            .await;
                    match sent {
                        Ok(Ok(())) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        // The node closed the stream: open another.
                        Ok(Err(_)) => match open(&mut control, peer).await {
                            Some(s) => stream = s,
                            None => return,
                        },
                        Err(_) => {}
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
        "stalled-frames" => {
            for _ in 0..STALLING_PEERS {
                let mut control = raw_peer(addr.clone(), stop.clone())?;
                let (stop, done) = (stop.clone(), done.clone());
                tokio::spawn(async move {
                    let mut prefix = unsigned_varint::encode::usize_buffer();
                    let prefix =
                        unsigned_varint::encode::usize(STALLED_FRAME, &mut prefix).to_vec();
                    let mut held = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let opened = tokio::time::timeout(
                            Duration::from_secs(1),
                            control.open_stream(peer, PROTOCOL),
                        )
                        .await;
                        let Ok(Ok(mut stream)) = opened else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        if stream.write_all(&prefix).await.is_ok() && stream.flush().await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                            held.push(stream);
                        }
                        // The node closes stalled streams at its frame timeout; keep the
                        // number held bounded here too.
                        if held.len() > 4096 {
                            held.drain(..1024);
                        }
                    }
                });
            }
        }
        "new-peer-ids" => {
            let (stop, done, finished) = (stop.clone(), done.clone(), finished.clone());
            tokio::spawn(async move {
                let mut dials = tokio::task::JoinSet::new();
                let mut started = 0;
                while started < NEW_PEER_IDS && !stop.load(Ordering::Relaxed) {
                    while dials.len() < DIALS_AT_ONCE && started < NEW_PEER_IDS {
                        started += 1;
                        let (addr, stop, done) = (addr.clone(), stop.clone(), done.clone());
                        dials.spawn(async move { hold_a_connection(addr, stop, done).await });
                    }
                    let _ = dials.join_next().await;
                }
                while dials.join_next().await.is_some() {}
                finished.store(true, Ordering::Relaxed);
            });
        }
        other => bail!("unknown abuse {other}"),
    }
    Ok(())
}

/// Dials `addr` from a new peer id and, once connected, keeps the connection (in a task of
/// its own) until `stop`; returns once connected or refused.
async fn hold_a_connection(addr: Multiaddr, stop: Arc<AtomicBool>, done: Arc<AtomicUsize>) {
    let Ok(builder) = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
    else {
        return;
    };
    let Ok(builder) = builder.with_behaviour(|_| libp2p_stream::Behaviour::new());
    let mut swarm = builder
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    if swarm.dial(addr).is_err() {
        return;
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, swarm.select_next_some()).await {
            Ok(libp2p::swarm::SwarmEvent::ConnectionEstablished { .. }) => break,
            Ok(libp2p::swarm::SwarmEvent::OutgoingConnectionError { .. }) | Err(_) => return,
            Ok(_) => {}
        }
    }
    done.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let event =
                tokio::time::timeout(Duration::from_millis(500), swarm.select_next_some()).await;
            if let Ok(libp2p::swarm::SwarmEvent::ConnectionClosed { .. }) = event {
                return;
            }
        }
    });
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn measure(fetches: usize) -> anyhow::Result<()> {
    let server = Server::start()?;
    let mib = FILE_BYTES as f64 / (1 << 20) as f64;
    let mb = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "the honest peer fetches {mib:.0} MiB {fetches} times in each phase; the serving node's memory beside"
    );
    println!(
        "| phase | fetches | median fetch (s) | rate (MiB/s) | rate / normal | serving node RSS (MiB) | its peak so far (MiB) | abuse done |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let honest = Honest::connect(&server).await?;
    let mut times = Vec::new();
    for _ in 0..fetches {
        times.push(honest.fetch(&server).await?);
    }
    let normal = median(times);
    let cids = honest.cids(server.root);
    let (rss, peak) = server.memory()?;
    println!(
        "| normal | {fetches} | {normal:.3} | {:.0} | 1.00 | {:.0} | {:.0} | - |",
        mib / normal,
        mb(rss),
        mb(peak)
    );
    for abuse in [
        "have-flood",
        "never-reads",
        "stalled-frames",
        "new-peer-ids",
    ] {
        // A fresh honest connection, made before the abuse starts.
        let honest = Honest::connect(&server).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        start_abuse(abuse, &server, &cids, &stop, &done, &finished)?;
        tokio::time::sleep(RAMP).await;
        // At least `fetches`, and on until the abuse has done all it sets out to.
        let until = Instant::now() + ABUSE_LIMIT;
        let mut times = Vec::new();
        while times.len() < fetches || (!finished.load(Ordering::Relaxed) && Instant::now() < until)
        {
            times.push(honest.fetch(&server).await?);
        }
        let count = times.len();
        let took = median(times);
        let (rss, peak) = server.memory()?;
        stop.store(true, Ordering::Relaxed);
        println!(
            "| {abuse} | {count} | {took:.3} | {:.0} | {:.2} | {:.0} | {:.0} | {} |",
            mib / took,
            normal / took,
            mb(rss),
            mb(peak),
            done.load(Ordering::Relaxed)
        );
        // Let the abusers' connections close before the next phase.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}
