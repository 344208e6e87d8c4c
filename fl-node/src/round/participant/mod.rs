//! One node's part in a task, round after round: fetch the round's model, train on the local
//! data, clip and noise the update when the task asks, store and announce it (signed), then
//! wait for the round's manifest — or make it, when this node ranks first among the round's
//! announcers (or the ones before it let their turn pass). Every manifest is recomputed
//! before it is adopted; adopted rounds and announced updates survive restarts.
//!
//! This module holds the participant's types and [`Participant::run`]; its parts are in
//! its private modules `rounds` (the loop itself), `decide` (how a round ends for this
//! node), `train`, `aggregate`, `check` (manifests: on their claims, recomputed, verdicts), `evaluate`, `chain` (rival chains and switching),
//! `fetch` and `event` (the progress events). The decisions themselves are pure functions
//! in [`super::machine`].

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cid::Cid;
use datasets::cifar10::Images;
use datasets::pipeline::{Pipeline, PipelineConfig};
use datasets::shard;
use fl_core::content::{Blockstore, Repo, pins::PinMode};
use fl_core::errors::chain;
use fl_core::model::{Architecture, Backend, Batch, Classifier, DpSgdConfig, TrainConfig};
use fl_core::records::{
    Announcement, ClientId, DataSource, Evaluation, Keypair, Manifest, Metrics, Signed, Task,
    ranking,
};
use fl_core::tensors::Bundle;
use libp2p::PeerId;
use tracing::Instrument;

use super::attack::Attack;
use super::compute::{self, RoundBase};
use super::inbox::{Inbox, MAX_ANNOUNCERS_PER_ROUND, SignedAnnouncement, SignedManifest};
use super::inputs::{fetch_deadline, fetch_held, local_dag};
use super::machine::{self, Expected, Turn, Verdicts};
use super::republish;
use super::{Inputs, Refutation, RoundError, RoundStore, Terms, verify};
use crate::net::{MessageAcceptance, Node};

mod aggregate;
mod chain;
mod check;
mod decide;
mod evaluate;
mod event;
mod fetch;
mod limits;
mod misbehave;
mod retain;
mod rounds;
mod secure;
mod steps;
mod train;

pub use event::Event;
pub use limits::Limits;

/// Tries beyond the first at fetching the task record when joining.
const JOIN_TRIES: u32 = 5;
/// Pause between those tries.
const JOIN_PAUSE: Duration = Duration::from_secs(2);
/// How often a node waiting for a round's manifest logs where it stands.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Nodes this early in the round's aggregator ranking (of the peers that announced or are
/// expected to) fetch its updates ahead of its manifest: the first only, since every other
/// node fetching every update doubles what a round sends.
const PREFETCH_RANKS: usize = 1;
/// Updates fetched ahead of the round's manifest at once.
const PREFETCH_AT_ONCE: usize = 4;
/// Most manifests off this node's chain looked at per pass of the fork choice.
const MAX_TIPS: usize = 16;
/// Least time a node that finished the task keeps serving, for rival manifests in flight.
const SETTLE: Duration = Duration::from_secs(3);
/// Longest wait between looks at the inbox.
const POLL: Duration = Duration::from_millis(200);
/// Pause before fair inclusion reads again an update it found not whole here.
const HOLDS_RECHECK: Duration = Duration::from_secs(2);
/// Peers' heads a round judges for whether they stand elsewhere; more (in an open task, a
/// crowd of peers gossiping distinct manifests) are taken to follow the chain.
const MAX_HEADS_JUDGED: usize = 256;
/// How long an aggregator with too few usable updates waits before trying again.
const RETRY_AGGREGATION: Duration = Duration::from_secs(2);
/// Tries beyond the first at recomputing a manifest taken on its claims whose inputs cannot
/// be fetched (pauses of 2, 4, 8 and 16 s) before the node goes back on it.
const CONFIRM_TRIES: u32 = 4;
/// How long a node told to copy another's update waits for one (attack `copy-update`).
const COPY_WAIT: Duration = Duration::from_secs(60);
/// Test images per evaluation batch.
const EVAL_BATCH: usize = 256;

/// How a node takes part.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    /// The task to join.
    pub task: Cid,
    /// This node's shard of the task's dataset manifest.
    pub shard: Option<usize>,
    /// This node's own CIFAR-10 directory, for tasks that bring their own data.
    pub own_data: Option<PathBuf>,
    /// Where to train.
    pub backend: Backend,
    /// How long each peer gets to send a block.
    pub block_timeout: Duration,
    /// How long to keep serving after the last round.
    pub linger: Duration,
    /// Rounds whose models and updates stay in the repo (`None`: all); older ones are
    /// dropped as later rounds are adopted, so a long task's disk use stays flat. Each kept
    /// round also keeps the model it started from.
    pub keep_rounds: Option<std::num::NonZeroU32>,
    /// Which manifests are recomputed from their updates before they are adopted; the others
    /// have their claims checked (signatures, entitlement, rank, what it lists, a loadable
    /// model) and their updates are not fetched ([`Checking`](super::Checking)).
    pub checking: super::Checking,
    /// Trainings and recomputations that may run at once.
    pub limits: Limits,
    /// A deviation from the protocol this node makes (`None` for every honest node): for
    /// measuring what the others withstand (`fl simulate --attack`).
    pub attack: Option<super::attack::Attack>,
    /// The least time a local step takes (`None`: as fast as it runs): emulates a machine
    /// of that speed where many nodes share one host (`fl simulate --step-ms`, `--slow`).
    pub pace: Option<Duration>,
}

/// The training data a node holds.
struct LocalData {
    /// Its shard or own data; in a task with a population, the pool its clients are dealt
    /// from.
    train: Images,
    test: Option<Vec<Batch>>,
}

/// One node's participation in a task.
pub struct Participant {
    node: Node,
    /// Where the round's blocks and files come from.
    inputs: Inputs,
    repo: Arc<Repo>,
    key: Keypair,
    rounds: RoundStore,
    config: ParticipantConfig,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("peer", &self.node.peer_id())
            .field("task", &self.config.task)
            .finish_non_exhaustive()
    }
}

/// The task, as every part of the loop needs it.
struct Ctx {
    terms: Arc<Terms>,
    inbox: Inbox,
    republish: Arc<Mutex<republish::Records>>,
    /// What this node concluded about each manifest it checked.
    verdicts: Mutex<Verdicts>,
    /// Updates being fetched (or fetched) ahead of the round's manifest.
    prefetched: Mutex<HashSet<Cid>>,
    /// Bounds the fetches ahead.
    prefetching: Arc<tokio::sync::Semaphore>,
    /// Adopted manifests (round, CID, signer, model) whose evaluation has not arrived yet.
    unevaluated: Mutex<Vec<(u32, Cid, libp2p::PeerId, Cid)>>,
    /// Where this node's last training of local steps ended.
    carry: Arc<Mutex<Option<steps::Carry>>>,
    /// In a secure task: the member this node plays in the round in flight, and its round.
    secure: Mutex<Option<(u32, fl_core::secagg::Member)>>,
}

/// What a look at one manifest concluded.
enum Verdict {
    Valid,
    Refuted,
    /// Its inputs could not be fetched; not to be looked at again before the pause ends.
    NotNow,
}

/// How a round ended for this node.
enum Decision {
    /// The round's manifest, and whether it was recomputed already (or only its claims
    /// checked).
    Adopt(Cid, Arc<Signed<Manifest>>, bool),
    /// A chain that wins the fork choice against this node's, to follow instead.
    Switch(Reorg),
}

/// Where a node stands on the chain: the last round decided, its manifest's CID and the
/// manifest (none before round 1).
type Position = (u32, Option<Cid>, Option<Arc<Signed<Manifest>>>);

/// A manifest taken for its round, on its claims or recomputed.
struct Pending {
    cid: Cid,
    signed: Arc<Signed<Manifest>>,
    /// What its round started from, to recompute it.
    base: RoundBase,
    /// Where the node stood before taking it.
    before: Position,
    /// Seconds from the round's start here to taking it.
    seconds: f64,
    /// Seconds this node trained in the round.
    train_seconds: f64,
}

/// An update trained, not yet stored or announced.
struct Trained {
    update: Bundle,
    samples: u64,
    /// In a task with a population: the clients whose updates it averages.
    clients: Vec<ClientId>,
    seconds: f64,
    /// Sample-level DP: the epsilon this node's data has spent, this round included.
    epsilon: Option<f64>,
    /// Under capacity load: the local steps taken, when not the task's.
    steps: Option<u32>,
    /// Under capacity load: images a second this training ran at.
    capacity: Option<f64>,
}

/// A better chain: its manifests from round `from` (where it parts from this node's) on.
struct Reorg {
    from: u32,
    chain: Vec<SignedManifest>,
}

impl Participant {
    /// A participant on `node`, storing in `repo`, signing with `key` (the node's key).
    pub fn new(
        node: Node,
        repo: Arc<Repo>,
        key: Keypair,
        rounds: RoundStore,
        config: ParticipantConfig,
    ) -> Self {
        Self {
            inputs: Inputs::networked(repo.clone(), node.clone(), config.block_timeout),
            node,
            repo,
            key,
            rounds,
            config,
        }
    }

    /// Runs the task to its last round; returns the final model's CID.
    pub async fn run(self, emit: impl FnMut(&Event)) -> Result<Cid, RoundError> {
        // Every line this node logs names it, its task and the round it is in (many nodes
        // share one process in `fl simulate`).
        let span = tracing::info_span!(
            "participant",
            peer = %short(&self.node.peer_id().to_string()),
            task = %short(&self.config.task.to_string()),
            round = tracing::field::Empty,
        );
        self.rounds_of_task(emit).instrument(span).await
    }
}

/// The last six characters of a peer id or CID: enough to tell a task's nodes apart in logs.
fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(6)..).unwrap_or(id)
}

/// Spawns `task` inside the current span, so that its log lines name the node and round.
fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(task.in_current_span());
}

/// Runs `work` on the blocking pool inside the current span.
fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> tokio::task::JoinHandle<R> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
