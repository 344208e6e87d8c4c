//! The commands of `fl`: each turns flags into typed values and calls a library function.

mod car;
mod data;
mod ipfs;
mod model;
mod node;
mod privacy;
mod pubsub;
mod simulate;
mod task;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fl_core::content::Repo;

/// Federated learning on IPFS and libp2p.
#[derive(Debug, Parser)]
#[command(name = "fl", version, about, propagate_version = true)]
pub struct Cli {
    /// The node's repo (blocks, pins, keys); default: FL_REPO, else `fl` under the user's data directory.
    #[arg(long, global = true, env = "FL_REPO", value_name = "DIR")]
    repo: Option<PathBuf>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on standard error.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Files on IPFS: add, cat, get, pin, unpin, gc.
    #[command(subcommand)]
    Ipfs(ipfs::Ipfs),
    /// CAR archives, as `ipfs dag export/import`.
    #[command(subcommand)]
    Car(car::Car),
    /// Datasets: fetch CIFAR-10, partition it, publish shards as CIDs.
    #[command(subcommand)]
    Data(data::Data),
    /// Epsilon spent by DP-FedAvg or DP-SGD, or the noise a target epsilon needs.
    Privacy(privacy::Privacy),
    /// The node on the network: serves blocks (Bitswap), routes (Kademlia), gossips.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Training tasks: `fl task create` writes the genesis record.
    #[command(subcommand)]
    Task(task::TaskCmd),
    /// Recomputes a round from its inputs: confirms or refutes its model and signatures.
    Verify(task::Verify),
    /// A task's chain of rounds, next aggregators and credits (from this repo).
    Status(task::Status),
    /// Signed gossip on a topic, as `ipfs pubsub`: publish, or print what arrives.
    #[command(subcommand)]
    Pubsub(pubsub::Pubsub),
    /// A federation of N real nodes on this machine training on CIFAR-10, with a live table.
    Simulate(simulate::Simulate),
    /// Centralized training on the whole training set: the federation's point of comparison.
    Baseline(model::Baseline),
    /// Test loss and accuracy of a stored model.
    Eval(model::Eval),
    /// The most likely classes of images under a stored model.
    Infer(model::Infer),
}

impl Cli {
    /// Parses the process's arguments.
    pub fn parse_args() -> Result<Self, clap::Error> {
        Self::try_parse()
    }
}

/// Sets up tracing on standard error; `RUST_LOG` overrides the level.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    // Kademlia warns that it cannot bootstrap whenever a node starts alone, and gossipsub
    // when a peer re-grafts too early (mesh churn as many nodes join): not news.
    let directives = match verbose {
        0 => format!("{level},libp2p_kad::behaviour=error,libp2p_gossipsub::behaviour=error"),
        _ => level.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the chosen command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let repo = RepoPath(cli.repo);
    match cli.command {
        Command::Ipfs(cmd) => ipfs::run(cmd, &repo),
        Command::Car(cmd) => car::run(cmd, &repo),
        Command::Data(cmd) => data::run(cmd, &repo),
        Command::Privacy(cmd) => privacy::run(cmd),
        Command::Node(cmd) => node::run(cmd, &repo),
        Command::Pubsub(cmd) => pubsub::run(cmd, &repo),
        Command::Task(cmd) => task::run(cmd, &repo),
        Command::Verify(cmd) => task::verify(cmd, &repo),
        Command::Status(cmd) => task::status(cmd, &repo),
        Command::Simulate(cmd) => simulate::run(cmd, cli.quiet),
        Command::Baseline(cmd) => model::baseline(cmd, &repo),
        Command::Eval(cmd) => model::eval(cmd, &repo),
        Command::Infer(cmd) => model::infer(cmd, &repo),
    }
}

/// Whether the error is the reader of our standard output going away (`fl ipfs cat | head`).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Where the repo is, resolved lazily so that commands that need none do not create one.
struct RepoPath(Option<PathBuf>);

impl RepoPath {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.0 {
            return Ok(p.clone());
        }
        let base = dirs::data_dir()
            .context("no user data directory on this system; pass --repo DIR or set FL_REPO")?;
        Ok(base.join("fl"))
    }

    fn open(&self) -> anyhow::Result<Repo> {
        let path = self.path()?;
        Repo::open(&path).with_context(|| format!("opening repo {}", path.display()))
    }
}

/// Keeps only the first `n` training images (`--images N` of `fl simulate` and `fl
/// baseline`), refusing a count the data cannot give.
fn first_images(data: &mut datasets::cifar10::Cifar10, n: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = n {
        if n == 0 || n > data.train.len() {
            anyhow::bail!(
                "--images {n}: the data has {} training images",
                data.train.len()
            );
        }
        data.train = data.train.subset(&(0..n).collect::<Vec<_>>());
    }
    Ok(())
}

/// Parses a CID argument.
fn cid_arg(text: &str) -> Result<fl_core::content::Cid, String> {
    fl_core::content::parse_cid(text).map_err(|e| {
        let mut msg = e.to_string();
        msg.push_str(&format!(" ({})", e.source));
        msg
    })
}

/// A population of clients apart from the nodes, sampled each round; shared by `fl
/// simulate` and `fl task create`.
#[derive(Debug, clap::Args)]
struct PopulationArgs {
    /// Registered clients, apart from the nodes: a population of which --per-round (or
    /// --fraction) are sampled each round, hosted by the task's members in turn. Default:
    /// each node is one client that trains every round.
    #[arg(long, value_name = "K")]
    clients: Option<u64>,
    /// Clients sampled each round, uniformly without replacement (with --clients; with
    /// client-level DP, on average: each client is sampled on its own).
    #[arg(
        long,
        value_name = "M",
        requires = "clients",
        conflicts_with = "fraction"
    )]
    per_round: Option<u32>,
    /// Share of the clients sampled each round, in (0, 1], rounded down, at least one (Flower's
    /// fraction_fit; with --clients).
    #[arg(
        long,
        value_name = "F",
        requires = "clients",
        allow_negative_numbers = true
    )]
    fraction: Option<f64>,
}

impl PopulationArgs {
    /// The population asked for, its clients dealt the data by `partition`.
    fn population(
        &self,
        partition: String,
    ) -> anyhow::Result<Option<fl_core::records::Population>> {
        let Some(clients) = self.clients else {
            return Ok(None);
        };
        let population = match (self.per_round, self.fraction) {
            (Some(per_round), _) => fl_core::records::Population {
                clients,
                per_round,
                partition,
                sampling: fl_core::records::Sampling::Fixed,
            },
            (None, Some(fraction)) => {
                fl_core::records::Population::by_fraction(clients, fraction, partition)
                    .map_err(|e| anyhow::anyhow!("--fraction {fraction}: {e}"))?
            }
            (None, None) => anyhow::bail!(
                "--clients {clients}: say how many are sampled each round, with --per-round M or --fraction F"
            ),
        };
        population.validate().map_err(|e| {
            anyhow::anyhow!(
                "--clients {} --per-round {}: {e}",
                population.clients,
                population.per_round
            )
        })?;
        Ok(Some(population))
    }
}

/// Secure aggregation; shared by `fl simulate` and `fl task create`.
#[derive(Debug, clap::Args)]
struct SecureArgs {
    /// Secure aggregation (SecAgg): each member publishes its update masked, and a round
    /// reveals only the sum of the updates, which anyone can check. Needs a fixed member
    /// list and a mean rule (fedavg, fedavgm, fedadam, fedyogi); updates count equally.
    #[arg(long)]
    secure_aggregation: bool,
    /// Members whose shares unmask a round, and the fewest it sums: up to the members less
    /// this many may vanish after dealing; default 2n/3 + 1 (private against fewer than n/3
    /// colluding members).
    #[arg(long, value_name = "T", requires = "secure_aggregation")]
    secure_threshold: Option<u16>,
    /// Each coordinate of an update is clamped to [-R, R] before it is quantised.
    #[arg(
        long,
        value_name = "R",
        default_value_t = 1.0,
        requires = "secure_aggregation"
    )]
    secure_range: f64,
    /// Quantisation bits of a coordinate (8 for int8's precision); the mean is within
    /// R / (2^BITS - 1) of the true mean.
    #[arg(
        long,
        value_name = "BITS",
        default_value_t = 20,
        requires = "secure_aggregation"
    )]
    secure_bits: u8,
}

impl SecureArgs {
    /// The task's secure settings for `members` members, if asked for.
    fn settings(&self, members: usize) -> Option<fl_core::records::SecureAggregation> {
        let members = u16::try_from(members).unwrap_or(u16::MAX);
        self.secure_aggregation
            .then(|| fl_core::records::SecureAggregation {
                threshold: self
                    .secure_threshold
                    .unwrap_or_else(|| fl_core::secagg::Params::default_threshold(members)),
                range: self.secure_range,
                bits: self.secure_bits,
            })
    }
}

/// A target epsilon with its clip norm and delta, shared by `fl baseline` (DP-SGD) and `fl
/// simulate` (either level).
#[derive(Debug, clap::Args)]
struct DpTarget {
    /// Differential privacy reaching this epsilon by the end of training (the noise
    /// multiplier is derived); default: no DP.
    #[arg(long, value_name = "EPSILON", allow_negative_numbers = true)]
    dp_epsilon: Option<f64>,
    /// The L2 norm each example's gradient (DP-SGD) or each node's update (client level) is
    /// clipped to.
    #[arg(
        long,
        default_value_t = 1.0,
        requires = "dp_epsilon",
        allow_negative_numbers = true
    )]
    dp_clip: f64,
    /// The delta epsilon holds at (DP-SGD: below 1 / the number of training images).
    #[arg(
        long,
        default_value_t = 1e-5,
        requires = "dp_epsilon",
        allow_negative_numbers = true
    )]
    dp_delta: f64,
}

/// Parses a DP level: `client` or `sample`.
fn dp_level_arg(text: &str) -> Result<fl_core::records::DpLevel, String> {
    use fl_core::records::DpLevel;
    match text {
        "client" => Ok(DpLevel::Client),
        "sample" => Ok(DpLevel::Sample),
        other => Err(format!(
            "unknown DP level {other:?}: `client` (DP-FedAvg, each node's update) or `sample` (DP-SGD, each example)"
        )),
    }
}

/// Local training settings of a task (and how its updates are written), shared by `fl task
/// create` and `fl simulate`.
#[derive(Debug, clap::Args)]
struct LocalTraining {
    /// Local epochs per round.
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// Local SGD steps per round instead of whole epochs: each node goes on where its last
    /// round stopped, with the next batches of its shuffled data and its momentum.
    #[arg(long, conflicts_with = "epochs", value_parser = clap::value_parser!(u32).range(1..))]
    steps: Option<u32>,
    /// How local steps are shared out: `equal` (every node takes --steps) or `capacity`
    /// (each node in proportion to its throughput against the median the last round
    /// advertised, its update scaled back to --steps: FedNova), so a round ends when the
    /// median node would, not the slowest.
    #[arg(long, default_value = "equal", requires = "steps")]
    load: fl_core::records::Load,
    /// Local batch size.
    #[arg(long, default_value_t = 32)]
    batch: u32,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Local SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Local L2 weight decay.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// FedProx proximal term (0: plain local SGD, FedAvg).
    #[arg(long, default_value_t = 0.0)]
    mu: f64,
    /// How nodes write their updates: f32, or int8 with a scale per tensor (a quarter of
    /// the bytes to send).
    #[arg(long, default_value = "f32")]
    update_encoding: fl_core::tensors::Encoding,
}

impl LocalTraining {
    /// The task record's training settings, with the learning rate following `schedule`
    /// over the rounds.
    fn params(&self, schedule: fl_core::records::RoundSchedule) -> fl_core::records::TrainParams {
        fl_core::records::TrainParams {
            epochs: self.epochs,
            batch_size: self.batch,
            learning_rate: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            proximal_mu: self.mu,
            schedule,
            steps: self.steps,
            load: self.load,
        }
    }
}
