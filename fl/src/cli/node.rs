//! `fl node run` (serve this repo's blocks to the network) and the network side of
//! `fl ipfs get` (fetch what the repo lacks from peers).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fl_core::content::pins::PinMode;
use fl_core::content::{Cid, Repo};
use fl_node::net::{self, Node, NodeConfig, keys};
use fl_node::round::{Checking, Event, Limits, Participant, ParticipantConfig, RoundStore};
use libp2p::{Multiaddr, PeerId};

use super::RepoPath;

#[derive(Debug, Subcommand)]
pub(super) enum NodeCmd {
    /// Runs the node: serves the repo's blocks over Bitswap, provides its pins in the DHT;
    /// with --task, takes part in that training task round by round (JSON lines on stdout).
    Run(RunArgs),
}

/// `fl node run`.
#[derive(Debug, Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Take part in this task (`fl task create` prints its CID).
    #[arg(long, value_name = "CID", value_parser = super::cid_arg)]
    task: Option<Cid>,
    /// This node's shard of the task's dataset (0-based).
    #[arg(long, requires = "task")]
    shard: Option<usize>,
    /// This node's own CIFAR-10 directory, for tasks that bring their own data.
    #[arg(long, value_name = "DIR", requires = "task")]
    data: Option<std::path::PathBuf>,
    /// Most seconds to keep serving after the task's last round (less once every
    /// contributor to it follows the same final manifest).
    #[arg(long, default_value_t = 60.0)]
    linger: f64,
    /// Keep the models and updates of only the last N rounds in the repo (and the model the
    /// oldest started from); older ones are dropped as rounds are adopted. Default: all.
    #[arg(long, value_name = "N", requires = "task")]
    keep_rounds: Option<std::num::NonZeroU32>,
    /// Seconds each peer gets to send a block before the next is asked.
    #[arg(long, default_value_t = 10)]
    block_timeout: u64,
    /// The chance of recomputing each round's manifest from its updates before adopting it
    /// (else its claims are checked and the updates are not fetched), drawn by this node
    /// alone; 1 recomputes every one. With N nodes at P each, a wrong manifest is refuted by
    /// at least one honest node with probability 1 - (1 - P)^(honest nodes): see
    /// docs/decisions.md, "Sampled checking".
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    check_probability: f64,
    #[command(flatten)]
    device: super::model::DeviceArgs,
}

/// How to reach the network.
#[derive(Debug, Clone, Args)]
pub(super) struct NetArgs {
    /// Address to listen on (repeatable); default: TCP and QUIC on port 4101, all interfaces.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// A peer to connect to at start, `/ip4/.../tcp/.../p2p/PEER_ID` (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub(super) bootstrap: Vec<Multiaddr>,
    /// Do not look for peers on the local network (mDNS).
    #[arg(long)]
    no_mdns: bool,
}

impl NetArgs {
    pub(super) fn config(&self, default_listen: &[&str]) -> anyhow::Result<NodeConfig> {
        let listen = if self.listen.is_empty() {
            default_listen
                .iter()
                .map(|a| a.parse().context("default listen address"))
                .collect::<anyhow::Result<_>>()?
        } else {
            self.listen.clone()
        };
        Ok(NodeConfig {
            listen,
            bootstrap: self.bootstrap.clone(),
            mdns: !self.no_mdns,
            ..NodeConfig::default()
        })
    }
}

/// Options of `fl ipfs get` for fetching from the network.
#[derive(Debug, Clone, Args)]
pub(super) struct FetchArgs {
    /// A peer to fetch from, `/ip4/.../tcp/.../p2p/PEER_ID` (repeatable); others are found
    /// through the DHT from the bootstrap peers.
    #[arg(long, value_name = "MULTIADDR")]
    peer: Vec<Multiaddr>,
    #[command(flatten)]
    net: NetArgs,
    /// Seconds each peer gets to send a block before the next is asked.
    #[arg(long, default_value_t = 10)]
    block_timeout: u64,
}

impl FetchArgs {
    /// Whether any way to reach peers was given.
    pub(super) fn wants_network(&self) -> bool {
        !self.peer.is_empty() || !self.net.bootstrap.is_empty()
    }
}

pub(super) fn run(cmd: NodeCmd, repo: &RepoPath) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Run(args) => runtime()?.block_on(serve(args, repo)),
    }
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(super) async fn start(repo: &Repo, config: NodeConfig) -> anyhow::Result<Node> {
    let key = keys::load_or_create(repo.root())?;
    let store = Arc::new(repo.blocks().clone());
    Ok(Node::start(key, store, config).await?)
}

async fn serve(args: RunArgs, repo: &RepoPath) -> anyhow::Result<()> {
    let root = repo.path()?;
    let repo = Arc::new(repo.open()?);
    // Opened first: it refuses a second node on the same repo.
    let rounds = match args.task {
        Some(_) => Some(RoundStore::open(&root)?),
        None => None,
    };
    let backend = args.device.backend()?;
    let checking = Checking::sampled(args.check_probability).context("--check-probability")?;
    let key = keys::load_or_create(repo.root())?;
    let store = Arc::new(repo.blocks().clone());
    let config = args
        .net
        .config(&["/ip4/0.0.0.0/tcp/4101", "/ip4/0.0.0.0/udp/4101/quic-v1"])?;
    let node = Node::start(key.clone(), store, config).await?;
    let mut out = std::io::stdout();
    writeln!(out, "peer id {}", node.peer_id())?;
    for addr in node.listen_addrs().await? {
        writeln!(out, "listening on {addr}")?;
    }
    out.flush()?;
    for (cid, mode) in repo.pins().list()? {
        if mode == PinMode::Recursive {
            node.provide(cid).await?;
        }
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    if let (Some(task), Some(rounds)) = (args.task, rounds) {
        let linger = args.linger;
        if !(linger.is_finite() && linger >= 0.0) {
            bail!("--linger must be a number of seconds >= 0, got {linger}");
        }

        let participant = Participant::new(
            node.clone(),
            repo.clone(),
            key,
            rounds,
            ParticipantConfig {
                task,
                shard: args.shard,
                own_data: args.data,
                backend,
                block_timeout: Duration::from_secs(args.block_timeout.max(1)),
                linger: Duration::from_secs_f64(linger),
                keep_rounds: args.keep_rounds,
                checking,
                limits: Limits::per_node(),
                attack: None,
                pace: None,
            },
        );
        let emit = |event: &Event| {
            if let Ok(line) = serde_json::to_string(event) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        };
        tokio::select! {
            result = participant.run(emit) => {
                result.with_context(|| format!("task {task}"))?;
            }
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        return Ok(());
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("stopping; {:?}", node.bitswap().stats());
    Ok(())
}

/// Fetches the DAG under `root` into `repo` from the peers `args` names or the DHT finds, and
/// pins it.
pub(super) fn fetch(repo: &Repo, root: Cid, args: &FetchArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let node = start(repo, args.net.config(&["/ip4/0.0.0.0/tcp/0"])?).await?;
        let mut peers: Vec<PeerId> = Vec::new();
        for addr in &args.peer {
            match node.dial(addr.clone()).await {
                Ok(peer) => peers.push(peer),
                Err(e) => eprintln!("fl: {e}"),
            }
        }
        let use_dht = !args.net.bootstrap.is_empty();
        let per_block = Duration::from_secs(args.block_timeout.max(1));
        net::fetch(&node, root, peers, use_dht, per_block).await?;
        repo.pin(&root, PinMode::Recursive)
            .with_context(|| format!("pinning {root}"))?;
        Ok(())
    })
}
