//! Real `fl` processes and in-process nodes on loopback: Bitswap between two nodes, provider
//! discovery through the DHT among ten nodes that each know one other, and a node that keeps
//! serving after malformed input.
//! Every wait is bounded.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fl_core::errors::chain;

const STARTUP: Duration = Duration::from_secs(30);

fn fl(repo: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fl"));
    cmd.env("FL_REPO", repo).env_remove("FL_DATA");
    cmd
}

/// A running `fl node run`, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `fl node run` on 127.0.0.1 (TCP only, no mDNS) and waits for its address.
fn serve(repo: &Path, bootstrap: Option<&str>) -> Server {
    let mut cmd = fl(repo);
    cmd.args([
        "node",
        "run",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(STARTUP)
        .expect("the node printed no address in time");
    Server { child, addr }
}

/// A file of `len` pseudo-random bytes.
fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let bytes = common::random(len, seed);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn add(repo: &Path, file: &Path) -> String {
    let out = fl(repo)
        .args(["ipfs", "add", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `fl ipfs get CID` with network flags, bounded by a timeout.
fn get(repo: &Path, cid: &str, out: &Path, flags: &[&str]) -> std::process::Output {
    let mut child = fl(repo)
        .args(["ipfs", "get", cid, "-o", out.to_str().unwrap(), "--no-mdns"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("fl ipfs get did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    output
}

fn dirs(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let repos = (0..n)
        .map(|i| dir.path().join(format!("repo{i}")))
        .collect();
    (dir, repos)
}

/// Opens a repo in each of `dirs` and adds `len` pseudo-random bytes (from `seed`) to the
/// first: the repos, the bytes, and what the first holds.
fn repos_with_a_file(
    dirs: &[PathBuf],
    len: usize,
    seed: u64,
) -> (
    Vec<fl_core::content::Repo>,
    Vec<u8>,
    fl_core::content::unixfs::Added,
) {
    let repos: Vec<_> = dirs
        .iter()
        .map(|r| fl_core::content::Repo::open(r).unwrap())
        .collect();
    let bytes = common::random(len, seed);
    let added = repos[0]
        .add(
            &bytes[..],
            &fl_core::content::unixfs::ImportOptions::default(),
        )
        .unwrap();
    (repos, bytes, added)
}

#[test]
fn a_10_mb_file_crosses_from_one_node_to_another_over_bitswap() {
    let (dir, repos) = dirs(2);
    let file = dir.path().join("model.bin");
    let bytes = random_file(&file, 10 << 20, 7);
    let cid = add(&repos[0], &file);
    let server = serve(&repos[0], None);

    let out = dir.path().join("fetched.bin");
    let result = get(&repos[1], &cid, &out, &["--peer", &server.addr]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == bytes, "bytes differ");

    // The fetched DAG is pinned: it is served offline now, and survives gc.
    let again = fl(&repos[1]).args(["ipfs", "gc"]).output().unwrap();
    assert!(again.status.success());
    let cat = fl(&repos[1]).args(["ipfs", "cat", &cid]).output().unwrap();
    assert!(cat.status.success() && cat.stdout == bytes);
}

#[test]
fn a_provider_is_found_through_the_dht_along_a_chain_of_ten_nodes() {
    let (dir, repos) = dirs(11);
    let file = dir.path().join("shard.bin");
    let bytes = random_file(&file, 300 << 10, 11);
    let cid = add(&repos[0], &file);
    // Node i knows only node i-1.
    let mut servers: Vec<Server> = Vec::new();
    for (i, repo) in repos.iter().take(10).enumerate() {
        let bootstrap = servers.last().map(|s| s.addr.clone());
        servers.push(serve(repo, bootstrap.as_deref()));
        if i == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // A newcomer that knows only the last node finds node 0 as the provider and fetches.
    let out = dir.path().join("fetched.bin");
    let result = get(&repos[10], &cid, &out, &["--bootstrap", &servers[9].addr]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == bytes);
}

/// One in-process node per repo, each bootstrapped from the node `pick` names among those
/// started before it.
async fn start_nodes(
    repos: &[fl_core::content::Repo],
    pick: fn(&[fl_node::net::Node]) -> Option<&fl_node::net::Node>,
) -> Vec<fl_node::net::Node> {
    let mut nodes = Vec::new();
    for repo in repos {
        let node = start_node(repo, pick(&nodes)).await;
        nodes.push(node);
    }
    nodes
}

/// An in-process node on `repo`, bootstrapped from `bootstrap` when given.
async fn start_node(
    repo: &fl_core::content::Repo,
    bootstrap: Option<&fl_node::net::Node>,
) -> fl_node::net::Node {
    let bootstrap = match bootstrap {
        Some(node) => vec![node.listen_addrs().await.unwrap().remove(0)],
        None => Vec::new(),
    };
    let config = fl_node::net::NodeConfig {
        bootstrap,
        ..common::loopback()
    };
    let key = libp2p::identity::Keypair::generate_ed25519();
    let store = std::sync::Arc::new(repo.blocks().clone());
    fl_node::net::Node::start(key, store, config).await.unwrap()
}

/// Sixteen in-process nodes on one address, all bootstrapped from node 0: every node gets
/// every other node's message on a topic (gossipsub's default peer scoring graylisted peers
/// past 10 on one IP, so a federation of more than 10 nodes on one host heard nothing).
#[test]
fn sixteen_nodes_on_one_address_all_hear_each_other() {
    use fl_core::content::Repo;
    use fl_node::net::Node;

    const N: usize = 16;
    let (_dir, repos) = dirs(N);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let repos: Vec<Repo> = repos.iter().map(|r| Repo::open(r).unwrap()).collect();
        let nodes = start_nodes(&repos, <[Node]>::first).await;
        let mut inboxes = Vec::new();
        for node in &nodes {
            inboxes.push(node.gossip());
            node.subscribe("crowd").await.unwrap();
        }
        // Let the mesh form, then each node says who it is, once a second until all heard.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut heard: Vec<std::collections::HashSet<libp2p::PeerId>> = vec![Default::default(); N];
        while heard.iter().any(|h| h.len() < N - 1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "after 60 s, nodes heard {:?} of {} others",
                heard.iter().map(|h| h.len()).collect::<Vec<_>>(),
                N - 1
            );
            for node in &nodes {
                let _ = node.publish("crowd", node.peer_id().to_bytes()).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (i, inbox) in inboxes.iter_mut().enumerate() {
                while let Ok(message) = inbox.try_recv() {
                    if let Some(source) = message.source {
                        heard[i].insert(source);
                    }
                }
            }
        }
    });
}

/// Ten in-process nodes, each started with one bootstrap address (the previous node's): all
/// nine that lack the file find node 0 as its provider through the DHT and fetch it at once.
#[test]
fn ten_nodes_with_one_bootstrap_address_each_find_the_provider_and_fetch() {
    use fl_node::net::{self, Node};

    let (_dir, repos) = dirs(10);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (repos, bytes, added) = repos_with_a_file(&repos, 3 << 20, 13);
        let nodes = start_nodes(&repos, <[Node]>::last).await;
        nodes[0].provide(added.root).await.unwrap();
        let fetches = nodes[1..].iter().map(|node| {
            let node = node.clone();
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(90),
                    net::fetch(&node, added.root, Vec::new(), true, Duration::from_secs(10)),
                )
                .await
            })
        });
        for (i, fetch) in futures::future::join_all(fetches)
            .await
            .into_iter()
            .enumerate()
        {
            let fetched = fetch
                .unwrap()
                .unwrap_or_else(|_| panic!("node {} did not finish within 90 s", i + 1))
                .unwrap_or_else(|e| panic!("node {}: {}", i + 1, chain(&e)));
            assert_eq!(
                fetched.providers,
                vec![nodes[0].peer_id()],
                "node {}",
                i + 1
            );
            assert_eq!(fetched.blocks, added.blocks, "node {}", i + 1);
            let mut got = Vec::new();
            repos[i + 1].cat(&added.root, &mut got).unwrap();
            assert!(got == bytes, "node {} holds different bytes", i + 1);
        }
    });
}

/// A node that learns of the provider only from a third node's provider record, before it
/// ever connected to the provider, still reaches it: the provider's addresses come with the
/// record and are dialled at once (they used to be lost when the DHT query ended, and the
/// fetch failed with "no peer sent").
#[test]
fn a_provider_known_only_from_a_record_is_reached() {
    use fl_node::net::{self, Node};

    let (_dir, repos) = dirs(3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (repos, bytes, added) = repos_with_a_file(&repos, 1 << 20, 17);
        // Provider and a relay that stores its record.
        let nodes = start_nodes(&repos[..2], <[Node]>::last).await;
        // Announced again each second until the relay holds the record (the first may go out
        // before the provider's DHT knows the relay).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while nodes[1]
            .stored_providers(added.root)
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay got no provider record within 30 s"
            );
            nodes[0].provide(added.root).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // A newcomer that knows only the relay asks for the file at once.
        let newcomer = start_node(&repos[2], Some(&nodes[1])).await;
        let fetched = tokio::time::timeout(
            Duration::from_secs(60),
            net::fetch(
                &newcomer,
                added.root,
                Vec::new(),
                true,
                Duration::from_secs(10),
            ),
        )
        .await
        .expect("the fetch did not finish within 60 s")
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
        assert_eq!(fetched.providers, vec![nodes[0].peer_id()]);
        let mut got = Vec::new();
        repos[2].cat(&added.root, &mut got).unwrap();
        assert!(got == bytes, "the newcomer holds different bytes");
    });
}

#[test]
fn fetching_from_a_peer_without_the_file_fails_clearly() {
    let (dir, repos) = dirs(2);
    let file = dir.path().join("x.bin");
    random_file(&file, 1000, 3);
    let cid = fl(&repos[1])
        .args(["ipfs", "add", "-n", file.to_str().unwrap()])
        .output()
        .unwrap();
    let cid = String::from_utf8(cid.stdout).unwrap().trim().to_string();
    let server = serve(&repos[0], None);
    let out = dir.path().join("out.bin");
    let result = get(
        &repos[1],
        &cid,
        &out,
        &["--peer", &server.addr, "--block-timeout", "2"],
    );
    assert!(!result.status.success());
    let msg = String::from_utf8_lossy(&result.stderr);
    assert!(msg.contains(&format!("no peer sent {cid}")), "{msg}");
    assert!(!out.exists());
}

/// A peer that breaks the Bitswap protocol in every way we guard against; the node under
/// attack keeps serving an honest peer afterwards and never panics.
#[test]
fn malformed_bitswap_input_is_refused_and_the_node_keeps_serving() {
    use fl_node::net::Node;
    use fl_node::net::bitswap::message::{Message, PayloadBlock, Want, WantType};
    use fl_node::net::bitswap::{MAX_MESSAGE_BYTES, PROTOCOL};
    use futures::{AsyncReadExt, AsyncWriteExt};

    let (dir, repos) = dirs(3);
    let file = dir.path().join("model.bin");
    let bytes = random_file(&file, 2 << 20, 5);
    let cid = add(&repos[0], &file);
    let mut server = serve(&repos[0], None);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = fl_core::content::FsBlockstore::open(repos[2].join("blocks")).unwrap();
        let config = common::loopback();
        let attacker = Node::start(
            libp2p::identity::Keypair::generate_ed25519(),
            std::sync::Arc::new(store),
            config,
        )
        .await
        .unwrap();
        let target = attacker.dial(server.addr.parse().unwrap()).await.unwrap();
        let frame = |body: &[u8]| {
            let mut buf = unsigned_varint::encode::usize_buffer();
            let mut out = unsigned_varint::encode::usize(body.len(), &mut buf).to_vec();
            out.extend_from_slice(body);
            out
        };
        let mut attacks: Vec<Vec<u8>> = vec![
            // Not protobuf.
            frame(&[0xff; 64]),
            // A length prefix far over the limit, then nothing.
            {
                let mut buf = unsigned_varint::encode::usize_buffer();
                unsigned_varint::encode::usize(MAX_MESSAGE_BYTES * 16, &mut buf).to_vec()
            },
            // A varint that never ends.
            vec![0x80; 32],
        ];
        // A wantlist flood: 20,000 wants for blocks nobody has, with DONT_HAVE asked.
        let flood: Vec<Want> = (0..20_000u32)
            .map(|i| Want {
                cid: fl_core::content::Block::hashed(0x55, i.to_le_bytes().to_vec())
                    .cid()
                    .to_owned(),
                kind: WantType::Block,
                cancel: false,
                send_dont_have: true,
            })
            .collect();
        attacks.push(frame(&Message::with_wants(&flood, true).encode_frame()));
        // Unsolicited blocks, and one under a prefix with an unknown hash function.
        let mut gifts = Message::default();
        gifts.payload.push(PayloadBlock {
            prefix: vec![1, 0x55, 0x12, 0x20],
            data: b"nobody asked".to_vec(),
        });
        gifts.payload.push(PayloadBlock {
            prefix: vec![1, 0x55, 0x99, 0x20],
            data: b"bad prefix".to_vec(),
        });
        attacks.push(frame(&gifts.encode_frame()));
        let addr: libp2p::Multiaddr = server.addr.parse().unwrap();
        let mut disconnected = 0;
        for (i, attack) in attacks.iter().enumerate() {
            // A peer that broke the protocol is disconnected: come back for the next attack.
            let mut stream = None;
            for _ in 0..20 {
                match attacker.open_stream(target, PROTOCOL).await {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(_) => {
                        let _ = attacker.dial(addr.clone()).await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            let mut stream = stream.unwrap_or_else(|| panic!("attack {i}: cannot reconnect"));
            let _ = stream.write_all(attack).await;
            let _ = stream.flush().await;
            // The node either closes the stream or waits for more; never longer than 2 s here.
            let mut sink = [0u8; 16];
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut sink)).await;
            // The stream closes first; the connection follows within moments.
            for _ in 0..20 {
                if !attacker.peers().await.unwrap().contains(&target) {
                    disconnected += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // The three malformed frames each cost the attacker its connection.
        assert!(
            disconnected >= 3,
            "disconnected after {disconnected} of the attacks"
        );
        // Many streams at once: the excess is refused, the node stays up.
        let mut open = Vec::new();
        let _ = attacker.dial(addr.clone()).await;
        for _ in 0..64 {
            if let Ok(s) = attacker.open_stream(target, PROTOCOL).await {
                open.push(s);
            }
        }
        drop(open);
    });
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the node under attack exited"
    );

    // An honest peer still gets the file.
    let out = dir.path().join("honest.bin");
    let result = get(&repos[1], &cid, &out, &["--peer", &server.addr]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == bytes);
    server.child.kill().unwrap();
}

/// Two in-process nodes on loopback: a message published on a topic reaches the other node
/// with its author, the signer, as source.
#[test]
fn a_signed_gossip_message_reaches_a_subscribed_peer() {
    use fl_node::net::Node;

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut nodes = Vec::new();
        for i in 0..2 {
            let store =
                fl_core::content::FsBlockstore::open(dir.path().join(format!("b{i}"))).unwrap();
            let config = common::loopback();
            let key = libp2p::identity::Keypair::generate_ed25519();
            nodes.push(
                Node::start(key, std::sync::Arc::new(store), config)
                    .await
                    .unwrap(),
            );
        }
        let topic = "fl/test/updates";
        for node in &nodes {
            node.subscribe(topic).await.unwrap();
        }
        let mut inbox = nodes[1].gossip();
        let addr = nodes[1].listen_addrs().await.unwrap().remove(0);
        nodes[0].dial(addr).await.unwrap();
        // The subscription travels with the first heartbeats; publish until it is known.
        let mut published = false;
        for _ in 0..100 {
            if nodes[0]
                .publish(topic, b"update bafy...".to_vec())
                .await
                .is_ok()
            {
                published = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(published, "no peer joined the topic within 10 s");
        let message = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .expect("no message within 10 s")
            .unwrap();
        assert_eq!(message.topic, topic);
        assert_eq!(message.data, b"update bafy...");
        assert_eq!(message.source, Some(nodes[0].peer_id()));
    });
}

/// The gossipsub wire format (rust-libp2p's `rpc.proto`), for a peer that writes its own.
mod meshsub {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Rpc {
        #[prost(message, repeated, tag = "1")]
        pub subscriptions: Vec<SubOpts>,
        #[prost(message, repeated, tag = "2")]
        pub publish: Vec<Message>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubOpts {
        #[prost(bool, optional, tag = "1")]
        pub subscribe: Option<bool>,
        #[prost(string, optional, tag = "2")]
        pub topic_id: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Message {
        #[prost(bytes = "vec", optional, tag = "1")]
        pub from: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub data: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub seqno: Option<Vec<u8>>,
        #[prost(string, required, tag = "4")]
        pub topic: String,
        #[prost(bytes = "vec", optional, tag = "5")]
        pub signature: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "6")]
        pub key: Option<Vec<u8>>,
    }
}

/// A message on `topic` from `author`, signed by `signer` as gossipsub signs
/// ("libp2p-pubsub:" and the message without signature and key).
fn gossip_message(
    author: &libp2p::identity::Keypair,
    signer: Option<&libp2p::identity::Keypair>,
    topic: &str,
    data: &[u8],
    seqno: u64,
) -> meshsub::Message {
    use prost::Message as _;
    let mut message = meshsub::Message {
        from: Some(author.public().to_peer_id().to_bytes()),
        data: Some(data.to_vec()),
        seqno: Some(seqno.to_be_bytes().to_vec()),
        topic: topic.to_string(),
        signature: None,
        key: None,
    };
    if let Some(signer) = signer {
        let mut signed = b"libp2p-pubsub:".to_vec();
        signed.extend(message.encode_to_vec());
        message.signature = Some(signer.sign(&signed).unwrap());
        if signer.public() != author.public() {
            message.key = Some(signer.public().encode_protobuf());
        }
    }
    message
}

/// A peer that speaks gossipsub's wire format by hand sends a node forged, impersonating and
/// unsigned messages, then one honest message: only the honest one is delivered.
#[test]
fn forged_impersonating_and_unsigned_gossip_is_dropped() {
    use fl_node::net::Node;
    use futures::{AsyncWriteExt, StreamExt};
    use libp2p::identity::Keypair;
    use prost::Message as _;

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = fl_core::content::FsBlockstore::open(dir.path().join("blocks")).unwrap();
        let config = common::loopback();
        let victim = Node::start(
            Keypair::generate_ed25519(),
            std::sync::Arc::new(store),
            config,
        )
        .await
        .unwrap();
        let topic = "fl/test/updates";
        victim.subscribe(topic).await.unwrap();
        let mut inbox = victim.gossip();

        // The attacker: a bare swarm with raw streams only, no gossipsub of its own.
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .build();
        let mut control = swarm.behaviour().new_control();
        // Accept (and ignore) the victim's own gossipsub stream: a peer that refuses it
        // is marked as not speaking gossipsub, and what it sent is then dropped unread,
        // which would race the very messages this test sends.
        let meshsub = libp2p::StreamProtocol::new("/meshsub/1.1.0");
        let mut incoming = control.accept(meshsub.clone()).unwrap();
        tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = futures::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
                });
            }
        });
        swarm
            .dial(victim.listen_addrs().await.unwrap().remove(0))
            .unwrap();
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        let mut stream = None;
        for _ in 0..50 {
            match control.open_stream(victim.peer_id(), meshsub.clone()).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let mut stream = stream.expect("no gossipsub stream to the victim within 5 s");

        let (alice, mallory, nobody) = (
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
        );
        // Signed by alice, then its data changed.
        let mut forged = gossip_message(&alice, Some(&alice), topic, b"update A", 1);
        forged.data = Some(b"update B".to_vec());
        let rpc = meshsub::Rpc {
            subscriptions: vec![meshsub::SubOpts {
                subscribe: Some(true),
                topic_id: Some(topic.to_string()),
            }],
            publish: vec![
                forged,
                // Claims to be alice, signed by mallory with mallory's key attached.
                gossip_message(&alice, Some(&mallory), topic, b"from alice, really", 2),
                // No signature at all.
                gossip_message(&nobody, None, topic, b"unsigned", 3),
                // Garbage in place of a signature.
                meshsub::Message {
                    signature: Some(vec![7; 64]),
                    ..gossip_message(&nobody, None, topic, b"bad signature", 4)
                },
                // The control: correctly signed by its author.
                gossip_message(&alice, Some(&alice), topic, b"honest", 5),
            ],
        };
        let body = rpc.encode_to_vec();
        let mut len = unsigned_varint::encode::usize_buffer();
        stream
            .write_all(unsigned_varint::encode::usize(body.len(), &mut len))
            .await
            .unwrap();
        stream.write_all(&body).await.unwrap();
        stream.flush().await.unwrap();

        let first = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .expect("not even the honest message arrived within 10 s")
            .unwrap();
        assert_eq!(first.data, b"honest", "a bad message was delivered first");
        assert_eq!(first.source, Some(alice.public().to_peer_id()));
        // Nothing else follows.
        let more = tokio::time::timeout(Duration::from_millis(1500), inbox.recv()).await;
        assert!(more.is_err(), "a bad message was delivered: {more:?}");
    });
}

/// A provider that answers every want with bytes that do not hash to the CID: nothing it
/// sends is stored, a fetch from it alone fails clearly, and with an honest provider beside
/// it the fetch completes with the right bytes.
#[test]
fn blocks_that_do_not_match_their_cid_are_refused() {
    use fl_core::content::Repo;
    use fl_node::net::bitswap::message::{Message, PayloadBlock, prefix_of};
    use fl_node::net::bitswap::{MAX_MESSAGE_BYTES, PROTOCOL};
    use fl_node::net::{self, Node};
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};

    let (dir, repos) = dirs(3);
    let file = dir.path().join("model.bin");
    let bytes = random_file(&file, 1 << 20, 17);
    let cid = add(&repos[0], &file);
    let honest = serve(&repos[0], None);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // The liar: a bare swarm that speaks Bitswap by hand.
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let liar_addr = loop {
            if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
                swarm.select_next_some().await
            {
                break address.with_p2p(*swarm.local_peer_id()).unwrap();
            }
        };
        let mut control = swarm.behaviour().new_control();
        let mut incoming = control.accept(PROTOCOL).unwrap();
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        tokio::spawn(async move {
            while let Some((peer, mut stream)) = incoming.next().await {
                let mut control = control.clone();
                tokio::spawn(async move {
                    while let Ok(len) = unsigned_varint::aio::read_usize(&mut stream).await {
                        if len > MAX_MESSAGE_BYTES {
                            return;
                        }
                        let mut frame = vec![0; len];
                        if stream.read_exact(&mut frame).await.is_err() {
                            return;
                        }
                        let Ok(message) = Message::decode_frame(&frame) else {
                            return;
                        };
                        let mut lies = Message::default();
                        for want in message.wants().into_iter().filter(|w| !w.cancel) {
                            lies.payload.push(PayloadBlock {
                                prefix: prefix_of(&want.cid),
                                data: b"not the block you want".to_vec(),
                            });
                        }
                        if lies.is_empty() {
                            continue;
                        }
                        let Ok(mut out) = control.open_stream(peer, PROTOCOL).await else {
                            return;
                        };
                        let body = lies.encode_frame();
                        let mut len = unsigned_varint::encode::usize_buffer();
                        let _ = out
                            .write_all(unsigned_varint::encode::usize(body.len(), &mut len))
                            .await;
                        let _ = out.write_all(&body).await;
                        let _ = out.flush().await;
                    }
                });
            }
        });

        let repo = Repo::open(&repos[1]).unwrap();
        let config = common::loopback();
        let node = Node::start(
            libp2p::identity::Keypair::generate_ed25519(),
            std::sync::Arc::new(repo.blocks().clone()),
            config,
        )
        .await
        .unwrap();
        let root: fl_core::content::Cid = cid.parse().unwrap();
        let liar = node.dial(liar_addr).await.unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            net::fetch(&node, root, vec![liar], false, Duration::from_secs(2)),
        )
        .await
        .expect("the fetch from the liar did not end within 30 s");
        let err = result
            .expect_err("a fetch from a liar succeeded")
            .to_string();
        assert!(err.contains(&format!("fetching {root}")), "{err}");
        let refused = node.bitswap().stats().blocks_refused;
        assert!(
            refused >= 1,
            "the liar's blocks were not counted as refused"
        );
        use fl_core::content::Blockstore as _;
        assert!(!repo.blocks().has(&root).unwrap(), "a lie was stored");

        let honest_peer = node.dial(honest.addr.parse().unwrap()).await.unwrap();
        let fetched = tokio::time::timeout(
            Duration::from_secs(30),
            net::fetch(
                &node,
                root,
                vec![liar, honest_peer],
                false,
                Duration::from_secs(2),
            ),
        )
        .await
        .expect("the fetch did not end within 30 s")
        .unwrap();
        assert!(fetched.blocks >= 1);
        let mut got = Vec::new();
        repo.cat(&root, &mut got).unwrap();
        assert!(got == bytes, "bytes differ");
    });
}

/// Gossip validation with three in-process nodes in a line, A - B - C: A sends a forged
/// announcement on a task's topic. B's inbox rejects it, so C, reached only through B, never
/// sees it, and B's gossipsub score of A drops below zero. A valid announcement from A then
/// reaches C through B: the path was open all along.
#[test]
fn a_forged_record_stops_at_the_first_honest_peer_and_costs_its_sender() {
    use std::sync::Arc;
    use std::time::Instant;

    use fl_core::content::{FsBlockstore, dagcbor};
    use fl_core::records::{Announcement, Signed, Task};
    use fl_node::net::Node;
    use fl_node::round::Terms;
    use fl_node::round::inbox::Inbox;
    use libp2p::identity::Keypair;

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let model = *dagcbor::encode(&"model").unwrap().cid();
        let task = common::open_task("gossip validation", model);
        let task_cid = *dagcbor::encode(&task).unwrap().cid();
        let topic = Task::updates_topic(&task_cid);
        let mut nodes = Vec::new();
        let mut stores = Vec::new();
        for name in ["a", "b", "c"] {
            let store = Arc::new(FsBlockstore::open(dir.path().join(name)).unwrap());
            let key = Keypair::generate_ed25519();
            nodes.push(
                Node::start(key.clone(), store.clone(), common::loopback())
                    .await
                    .unwrap(),
            );
            stores.push((key, store));
        }
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        let _inbox = Inbox::start(
            b,
            Arc::new(Terms::new(task_cid, task).unwrap()),
            stores[1].1.clone(),
        )
        .await
        .unwrap();
        a.subscribe(&topic).await.unwrap();
        c.subscribe(&topic).await.unwrap();
        let mut at_c = c.gossip();
        let b_addr = b.listen_addrs().await.unwrap().remove(0);
        a.dial(b_addr.clone()).await.unwrap();
        c.dial(b_addr).await.unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while !(a.topic_peers(&topic).await.unwrap().contains(&b.peer_id())
            && c.topic_peers(&topic).await.unwrap().contains(&b.peer_id())
            && b.topic_peers(&topic).await.unwrap().len() == 2)
        {
            assert!(
                Instant::now() < until,
                "the topic's peers did not meet in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!a.peers().await.unwrap().contains(&c.peer_id()));

        let announcement = |samples| Announcement {
            task: task_cid,
            round: 1,
            base: model,
            update: model,
            samples,
            epochs: 1,
            epsilon: None,
            clients: Vec::new(),
            steps: None,
            capacity: None,
        };
        // Signed for 10 samples, then changed to claim a million: the signature fails.
        let mut forged = Signed::sign(announcement(10), &stores[0].0).unwrap();
        forged.body.samples = 1_000_000;
        let forged = forged.to_block().unwrap().data().to_vec();
        let valid = Signed::sign(announcement(10), &stores[0].0).unwrap();
        let valid = valid.to_block().unwrap().data().to_vec();

        let before = b.gossip_score(a.peer_id()).await.unwrap().unwrap_or(0.0);
        a.publish(&topic, forged.clone()).await.unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let penalised = loop {
            let score = b.gossip_score(a.peer_id()).await.unwrap().unwrap_or(0.0);
            if score < 0.0 || Instant::now() >= until {
                break score;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            penalised < 0.0,
            "B's score of A went from {before} to {penalised}, not below zero"
        );

        // The valid record reaches C through B (published again while B's mesh forms).
        let mut seen = Vec::new();
        let mut arrived = false;
        for _ in 0..40 {
            a.publish(&topic, valid.clone()).await.unwrap();
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), at_c.recv()).await {
                arrived |= m.data == valid;
                seen.push(m.data);
            }
            if arrived {
                break;
            }
        }
        assert!(arrived, "A's valid announcement never reached C through B");
        assert!(
            !seen.contains(&forged),
            "the forged announcement went past B"
        );
        let after = b.gossip_score(a.peer_id()).await.unwrap().unwrap_or(0.0);
        assert!(after < 0.0, "B's score of A is back to {after}");
    });
}

/// A DAG fetch with a byte limit stops once the distinct blocks it has taken pass the limit,
/// and takes the same DAG whole when the limit allows it.
#[test]
fn a_dag_fetch_stops_at_its_byte_limit() {
    use std::sync::Arc;

    use fl_core::content::Repo;
    use fl_core::content::unixfs::ImportOptions;
    use fl_node::net::bitswap::DagError;
    use fl_node::net::{Node, fetch_dag_at_most};
    use libp2p::identity::Keypair;

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let holder_repo = Repo::open(dir.path().join("holder")).unwrap();
        let bytes = common::random(2 << 20, 7);
        let root = holder_repo
            .add(&bytes[..], &ImportOptions::default())
            .unwrap()
            .root;
        let holder = Node::start(
            Keypair::generate_ed25519(),
            Arc::new(holder_repo.blocks().clone()),
            common::loopback(),
        )
        .await
        .unwrap();
        let asker_repo = Repo::open(dir.path().join("asker")).unwrap();
        let asker = Node::start(
            Keypair::generate_ed25519(),
            Arc::new(asker_repo.blocks().clone()),
            common::loopback(),
        )
        .await
        .unwrap();
        let addr = holder.listen_addrs().await.unwrap().remove(0);
        let peer = asker.dial(addr).await.unwrap();
        let per_block = Duration::from_secs(10);
        let err = fetch_dag_at_most(asker.bitswap(), root, &[peer], 8, per_block, 1 << 20)
            .await
            .unwrap_err();
        assert!(
            matches!(err, DagError::TooLarge { root: r, limit } if r == root && limit == 1 << 20),
            "{err}"
        );
        fetch_dag_at_most(asker.bitswap(), root, &[peer], 8, per_block, 3 << 20)
            .await
            .unwrap();
        let mut out = Vec::new();
        asker_repo.cat(&root, &mut out).unwrap();
        assert!(out == bytes);
    });
}

/// A node whose last handle is dropped stops (its peers see it go) even while its task's
/// inbox is still listening for gossip: the inbox does not keep it running.
#[test]
fn a_node_stops_when_its_handles_go_even_with_an_inbox_listening() {
    use std::sync::Arc;
    use std::time::Instant;

    use fl_core::content::{FsBlockstore, dagcbor};
    use fl_node::net::Node;
    use fl_node::round::Terms;
    use fl_node::round::inbox::Inbox;
    use libp2p::identity::Keypair;

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let model = *dagcbor::encode(&"model").unwrap().cid();
        let task = common::open_task("stopping", model);
        let task_cid = *dagcbor::encode(&task).unwrap().cid();
        let start = |name: &str| {
            let store = Arc::new(FsBlockstore::open(dir.path().join(name)).unwrap());
            let config = common::loopback();
            async move {
                let node = Node::start(Keypair::generate_ed25519(), store.clone(), config)
                    .await
                    .unwrap();
                (node, store)
            }
        };
        let (a, _) = start("a").await;
        let (b, b_store) = start("b").await;
        let inbox = Inbox::start(&b, Arc::new(Terms::new(task_cid, task).unwrap()), b_store)
            .await
            .unwrap();
        let b_id = a
            .dial(b.listen_addrs().await.unwrap().remove(0))
            .await
            .unwrap();
        drop(b);
        let until = Instant::now() + Duration::from_secs(15);
        while a.peers().await.unwrap().contains(&b_id) {
            assert!(
                Instant::now() < until,
                "the node kept running 15 s after its last handle was dropped"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(inbox);
    });
}

// ---- Bitswap limits (added with Bitswap's own NetworkBehaviour; loopback only, in-process
// ---- nodes and a bare swarm as the attacker, every wait bounded).

/// A bare swarm with raw streams only, dialling `addr`: an attacker that speaks Bitswap by
/// hand. Returns its stream control, after its swarm task has started.
async fn raw_bitswap_peer(addr: libp2p::Multiaddr) -> libp2p_stream::Control {
    use futures::StreamExt;

    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .build();
    let control = swarm.behaviour().new_control();
    swarm.dial(addr).unwrap();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    control
}

/// Opens a Bitswap stream from `control` to `peer`, retrying while the connection comes up.
async fn raw_bitswap_stream(
    control: &mut libp2p_stream::Control,
    peer: libp2p::PeerId,
) -> libp2p::Stream {
    for _ in 0..50 {
        match control
            .open_stream(peer, fl_node::net::bitswap::PROTOCOL)
            .await
        {
            Ok(stream) => return stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("no Bitswap stream to {peer} within 5 s");
}

/// Writes one length-prefixed Bitswap message.
async fn write_bitswap(stream: &mut libp2p::Stream, message: &fl_node::net::bitswap::Message) {
    use futures::AsyncWriteExt;

    let body = message.encode_frame();
    let mut len = unsigned_varint::encode::usize_buffer();
    stream
        .write_all(unsigned_varint::encode::usize(body.len(), &mut len))
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    stream.flush().await.unwrap();
}

/// Bitswap limit: a peer that wants 16 MiB and never reads its answers is sent no more than
/// the per-peer outstanding bytes, has its queue dropped at the write timeout, and an honest
/// peer fetching the same blocks meanwhile gets them all.
#[test]
fn bitswap_a_peer_that_never_reads_is_sent_little_and_others_are_served() {
    use std::sync::Arc;

    use fl_core::content::{Block, Blockstore, MemBlockstore};
    use fl_node::net::bitswap::message::{Message, Want, WantType};
    use fl_node::net::bitswap::{self, MAX_BLOCK_BYTES, MAX_OUTSTANDING_BYTES_PER_PEER, PROTOCOL};
    use fl_node::net::{Node, NodeConfig};
    use futures::StreamExt;
    use libp2p::identity::Keypair;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Arc::new(MemBlockstore::default());
        let blocks: Vec<Block> = (0..16u64)
            .map(|i| Block::hashed(0x55, common::random(1 << 20, i + 100)))
            .collect();
        for block in &blocks {
            store.put(block.clone()).unwrap();
        }
        let config = NodeConfig {
            bitswap: bitswap::Config {
                write_timeout: Duration::from_secs(5),
                ..bitswap::Config::default()
            },
            ..common::loopback()
        };
        let server = Node::start(Keypair::generate_ed25519(), store, config)
            .await
            .unwrap();
        let addr = server.listen_addrs().await.unwrap().remove(0);

        // The non-reader accepts the server's answer streams and never reads them.
        let mut control = raw_bitswap_peer(addr.clone()).await;
        let mut incoming = control.accept(PROTOCOL).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((_, stream)) = incoming.next().await {
                held.push(stream);
            }
        });
        let mut out = raw_bitswap_stream(&mut control, server.peer_id()).await;
        let wants: Vec<Want> = blocks
            .iter()
            .map(|b| Want {
                cid: *b.cid(),
                kind: WantType::Block,
                cancel: false,
                send_dont_have: true,
            })
            .collect();
        write_bitswap(&mut out, &Message::with_wants(&wants, true)).await;

        // Before the write timeout: blocks are read for it only up to its outstanding bytes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sent = server.bitswap().stats().bytes_sent;
        assert!(
            sent >= 1 << 20
                && sent <= (MAX_OUTSTANDING_BYTES_PER_PEER + 2 * MAX_BLOCK_BYTES) as u64,
            "{sent} bytes of blocks handed out for a peer that reads nothing"
        );
        // At the write timeout its queue goes.
        let mut dropped = 0;
        for _ in 0..100 {
            dropped = server.bitswap().stats().answers_dropped;
            if dropped > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(dropped > 0, "the non-reader's answers were never dropped");

        // An honest peer gets every block.
        let honest = Node::start(
            Keypair::generate_ed25519(),
            Arc::new(MemBlockstore::default()),
            common::loopback(),
        )
        .await
        .unwrap();
        let peers = [honest.dial(addr).await.unwrap()];
        for block in &blocks {
            let fetch = honest
                .bitswap()
                .fetch(*block.cid(), &peers, 0, Duration::from_secs(10));
            let got = tokio::time::timeout(Duration::from_secs(30), fetch)
                .await
                .expect("an honest fetch did not end within 30 s")
                .unwrap();
            assert!(got == *block, "wrong bytes for {}", block.cid());
        }
        drop(out);
    });
}

/// Bitswap limit: a flood of HAVE wants (200 messages of 1,024 wants for blocks nobody has,
/// answers never read) is not a protocol violation and costs the server bounded work: its
/// queue holds at most 1,024 of the peer's wants, its unread answers stop the serving, and an
/// honest peer is served during it.
#[test]
fn bitswap_a_have_flood_is_capped_and_others_are_served() {
    use std::sync::Arc;

    use fl_core::content::{Block, Blockstore, MemBlockstore};
    use fl_node::net::Node;
    use fl_node::net::bitswap::PROTOCOL;
    use fl_node::net::bitswap::message::{Message, Want, WantType};
    use futures::StreamExt;
    use libp2p::identity::Keypair;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Arc::new(MemBlockstore::default());
        let block = Block::hashed(0x55, common::random(256 << 10, 3));
        store.put(block.clone()).unwrap();
        let server = Node::start(Keypair::generate_ed25519(), store, common::loopback())
            .await
            .unwrap();
        let addr = server.listen_addrs().await.unwrap().remove(0);

        let mut control = raw_bitswap_peer(addr.clone()).await;
        let mut incoming = control.accept(PROTOCOL).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((_, stream)) = incoming.next().await {
                held.push(stream);
            }
        });
        let mut out = raw_bitswap_stream(&mut control, server.peer_id()).await;
        let flood = tokio::spawn(async move {
            for round in 0..200u32 {
                let wants: Vec<Want> = (0..1024u32)
                    .map(|i| Want {
                        cid: *Block::hashed(0x55, (round * 1024 + i).to_le_bytes().to_vec()).cid(),
                        kind: WantType::Have,
                        cancel: false,
                        send_dont_have: true,
                    })
                    .collect();
                write_bitswap(&mut out, &Message::with_wants(&wants, false)).await;
            }
            out
        });

        let honest = Node::start(
            Keypair::generate_ed25519(),
            Arc::new(MemBlockstore::default()),
            common::loopback(),
        )
        .await
        .unwrap();
        let peers = [honest.dial(addr).await.unwrap()];
        let fetch = honest
            .bitswap()
            .fetch(*block.cid(), &peers, 0, Duration::from_secs(10));
        let got = tokio::time::timeout(Duration::from_secs(20), fetch)
            .await
            .expect("the honest fetch did not end within 20 s")
            .unwrap();
        assert!(got == block);
        let _out = tokio::time::timeout(Duration::from_secs(60), flood)
            .await
            .expect("the flood was not written within 60 s")
            .unwrap();
        let stats = server.bitswap().stats();
        assert_eq!(stats.bad_frames, 0, "a HAVE flood is no protocol violation");
        // Its answers pile up unread, so serving it stops and its queue overflows (or, had
        // the server kept up, the answers are dropped).
        assert!(
            stats.wants_dropped + stats.answers_dropped > 0,
            "200 x 1,024 wants, answers unread, and nothing was dropped: {stats:?}"
        );
        assert!(server.peers().await.unwrap().contains(&honest.peer_id()));
    });
}
