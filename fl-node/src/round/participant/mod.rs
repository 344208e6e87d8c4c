//! One node's part in a task, round after round: fetch the round's model, train on the local
//! data, clip and noise the update when the task asks, store and announce it (signed), then
//! wait for the round's manifest — or make it, when this node ranks first among the round's
//! announcers (or the ones before it let their turn pass). Every manifest is recomputed
//! before it is adopted; adopted rounds and announced updates survive restarts.
//!
//! This module holds the round loop ([`Participant::run`]); its parts are in its private
//! modules `decide` (how a round ends for this node), `train`, `aggregate`, `verify`,
//! `evaluate`, `chain` (rival chains and switching), `fetch` and `event` (the progress
//! events). The decisions themselves are pure functions in [`super::machine`].

use std::collections::HashSet;
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
use fl_core::model::{
    Architecture, Backend, Batch, Classifier, DpSgdConfig, Momentum, TrainConfig,
};
use fl_core::records::{
    Announcement, DataSource, Evaluation, Keypair, Manifest, Metrics, Signed, Task, ranking,
};
use fl_core::tensors::Bundle;
use libp2p::PeerId;
use tracing::Instrument;

use super::compute::{self, RoundBase};
use super::inbox::{Inbox, SignedAnnouncement, SignedManifest};
use super::machine::{self, Expected, Turn, Verdicts};
use super::republish;
use super::{RoundError, RoundStore};
use crate::net::bitswap::DagError;
use crate::net::{self, MessageAcceptance, Node, fetch_dag_at_most};

mod aggregate;
mod chain;
mod decide;
mod evaluate;
mod event;
mod fetch;
mod train;
mod verify;

pub use event::Event;
use fetch::fetch_held;

/// Tries beyond the first at fetching the task record when joining.
const JOIN_TRIES: u32 = 5;
/// Pause between those tries.
const JOIN_PAUSE: Duration = Duration::from_secs(2);
/// How often a node waiting for a round's manifest logs where it stands.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Nodes this early in the round's aggregator ranking fetch its updates ahead of its
/// manifest.
const PREFETCH_RANKS: usize = 2;
/// Updates fetched ahead of the round's manifest at once.
const PREFETCH_AT_ONCE: usize = 4;
/// Most manifests off this node's chain looked at per pass of the fork choice.
const MAX_TIPS: usize = 16;
/// Least time a node that finished the task keeps serving, for rival manifests in flight.
const SETTLE: Duration = Duration::from_secs(3);
/// Longest wait between looks at the inbox.
const POLL: Duration = Duration::from_millis(200);
/// How long an aggregator with too few usable updates waits before trying again.
const RETRY_AGGREGATION: Duration = Duration::from_secs(2);
/// Tries beyond the first at recomputing a manifest taken on its claims whose inputs cannot
/// be fetched (pauses of 2, 4, 8 and 16 s) before the node goes back on it.
const CONFIRM_TRIES: u32 = 4;
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
    /// Whether every manifest is recomputed from its updates before it is adopted; without,
    /// its claims are checked (signatures, entitlement, rank, what it lists, a loadable
    /// model) and the updates are never fetched. Only for federations whose nodes are all
    /// run by one party (`fl simulate`, where a few checkers recompute for everyone).
    pub recompute: bool,
    /// Trainings and recomputations that may run at once.
    pub limits: Limits,
}

/// Bounds on a node's heavy work, shared by the nodes of one process (`fl simulate`) so that
/// many nodes on one machine neither thrash its cores nor hold every update in memory at once.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Trainings at once (one left running after its base was refuted included).
    pub training: Arc<tokio::sync::Semaphore>,
    /// Aggregations and recomputations at once (each holds a round's updates in memory).
    pub computing: Arc<tokio::sync::Semaphore>,
}

impl Limits {
    /// One node alone in its process: one training at a time, two computations.
    pub fn per_node() -> Self {
        Self::shared(1, 2)
    }

    /// Limits to share among the nodes of one process.
    pub fn shared(trainings: usize, computations: usize) -> Self {
        Self {
            training: Arc::new(tokio::sync::Semaphore::new(trainings.max(1))),
            computing: Arc::new(tokio::sync::Semaphore::new(computations.max(1))),
        }
    }
}

/// The training data a node holds.
struct LocalData {
    train: Images,
    test: Option<Vec<Batch>>,
}

/// One node's participation in a task.
pub struct Participant {
    node: Node,
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
    task_cid: Cid,
    task: Arc<Task>,
    arch: Architecture,
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
    /// The momentum this node's last training ended with, and its round.
    momentum: Arc<Mutex<Option<(u32, Momentum)>>>,
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
    Adopt(Cid, Signed<Manifest>, bool),
    /// A chain that wins the fork choice against this node's, to follow instead.
    Switch(Reorg),
}

/// Where a node stands on the chain: the last round decided, its manifest's CID and the
/// manifest (none before round 1).
type Position = (u32, Option<Cid>, Option<Signed<Manifest>>);

/// A manifest taken for its round, on its claims or recomputed.
struct Pending {
    cid: Cid,
    signed: Signed<Manifest>,
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
    seconds: f64,
    /// Sample-level DP: the epsilon this node's data has spent, this round included.
    epsilon: Option<f64>,
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

    async fn rounds_of_task(self, mut emit: impl FnMut(&Event)) -> Result<Cid, RoundError> {
        let me = self.node.peer_id();
        let task_cid = self.config.task;
        // The record alone: what it links to (model, data) is fetched as it is needed. A
        // provider busy with many joining peers gets a few tries.
        let mut tries = 0;
        let task_bytes = loop {
            match self.fetch_block(task_cid, "the task record").await {
                Ok(bytes) => break bytes,
                Err(e) if tries < JOIN_TRIES => {
                    tries += 1;
                    tracing::info!("trying again to fetch the task record: {}", chain(&e));
                    tokio::time::sleep(JOIN_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        };
        let task_block = fl_core::content::Block::new(task_cid, task_bytes)
            .map_err(|e| RoundError::Task(format!("the task record {task_cid}: {e}")))?;
        let task = Task::from_block(&task_block).map_err(|e| RoundError::Task(e.to_string()))?;
        if !task.admits(&me) {
            return Err(RoundError::NotMember(me));
        }
        let arch: Architecture = task
            .architecture
            .parse()
            .map_err(|e| RoundError::Task(format!("{e}")))?;
        self.repo.pin(&task_cid, PinMode::Direct)?;
        let task = Arc::new(task);
        let inbox = Inbox::start(
            &self.node,
            task_cid,
            task.clone(),
            Arc::new(self.repo.blocks().clone()),
        )
        .await?;
        let republish = Arc::new(Mutex::new(republish::Records::default()));
        republish::spawn(self.node.clone(), &task_cid, republish.clone());
        let ctx = Ctx {
            task_cid,
            task: task.clone(),
            arch,
            inbox,
            republish,
            verdicts: Mutex::default(),
            prefetched: Mutex::default(),
            prefetching: Arc::new(tokio::sync::Semaphore::new(PREFETCH_AT_ONCE)),
            unevaluated: Mutex::default(),
            momentum: Arc::default(),
        };
        let data = self.local_data(&task).await?;

        // Peers re-publish their latest manifest when a peer joins: a node that restarts
        // (or joins late) hears where the chain is before it decides to train.
        if !self.node.peers().await?.is_empty() {
            let listen_until = Instant::now() + republish::TICK * 4;
            while ctx.inbox.latest_round() == 0 && Instant::now() < listen_until {
                ctx.inbox.changed(POLL).await;
            }
        }
        let (mut done, mut head) = self.rounds.head(&task_cid)?;
        let mut head_manifest = match head {
            Some(cid) => Some(self.load_manifest(&cid)?),
            None => None,
        };
        if let Some(bytes) = head.map(|c| self.block_bytes(&c)).transpose()? {
            lock(&ctx.republish).head = Some(bytes);
        }
        ctx.inbox.close_through(done);
        emit(&Event::Joined {
            peer: me.to_string(),
            task: task_cid.to_string(),
            rounds: task.rounds,
            from_round: done + 1,
        });

        // Rounds, then (after the last) serving while peers finish; a switch to a better
        // chain can take the node back to rounds it had decided. A manifest taken on its
        // claims is recomputed while the next round trains on it, and confirmed before the
        // next update is announced: a refuted one takes the node back to where it stood.
        let mut pending: Option<Pending> = None;
        'task: loop {
            while done < task.rounds {
                let round = done + 1;
                tracing::Span::current().record("round", round);
                let opened = Instant::now();
                let base = self.base(&ctx, round, head, head_manifest.as_ref()).await?;
                // A node that is behind (restarted, or joined late) does not train for rounds
                // that others have already closed: a chain of manifests from a later round
                // back to this one, continuing this node's (a lone manifest for a later
                // round proves nothing: anyone may sign one).
                // Nor for a round whose manifest is out already, once its claims hold (a
                // refuted one leaves the round open: the node trains after all).
                let latest = ctx.inbox.latest_round();
                let mut closed = latest > round && {
                    if let Err(e) = self.walk_back(&ctx, round).await {
                        tracing::info!(round, "cannot follow a newer manifest back: {}", chain(&e));
                    }
                    ctx.inbox.manifests(round).iter().any(|(c, m)| {
                        m.body.prev == base.prev && lock(&ctx.verdicts).open(c, Instant::now())
                    })
                };
                if latest == round {
                    for (c, m) in ctx.inbox.manifests(round) {
                        let open = m.body.prev == base.prev
                            && lock(&ctx.verdicts).open(&c, Instant::now());
                        if open
                            && matches!(
                                self.take_on_claims(&ctx, &base, &c, &m, &mut emit).await,
                                Verdict::Valid
                            )
                        {
                            closed = true;
                            break;
                        }
                    }
                }
                let announced = !closed && self.rounds.announced(&ctx.task_cid, round)?.is_some();
                let mut train_seconds = 0.0;
                if closed || announced {
                    if let Some(before) = self.confirm(&ctx, pending.take(), &mut emit).await? {
                        (done, head, head_manifest) = before;
                        continue;
                    }
                    if let Some((update, samples, epsilon)) =
                        self.announced_before(&ctx, &base).await?
                    {
                        emit(&Event::Announced {
                            round,
                            update: update.to_string(),
                            samples,
                            train_seconds: 0.0,
                            epsilon,
                        });
                    }
                } else {
                    let overlap = {
                        let training = self.train(&ctx, &base, &data);
                        let confirming = self.confirm(&ctx, pending.take(), &mut emit);
                        tokio::pin!(training, confirming);
                        tokio::select! {
                            back = &mut confirming => match back? {
                                // Training on a model that did not hold up: left to finish
                                // on its own (the next training waits for it), unsent.
                                Some(before) => ControlFlow::Break(before),
                                None => ControlFlow::Continue(training.await),
                            },
                            trained = &mut training => match confirming.await? {
                                Some(before) => ControlFlow::Break(before),
                                None => ControlFlow::Continue(trained),
                            },
                        }
                    };
                    let trained = match overlap {
                        ControlFlow::Continue(trained) => trained?,
                        ControlFlow::Break(before) => {
                            (done, head, head_manifest) = before;
                            continue;
                        }
                    };
                    train_seconds = trained.seconds;
                    let epsilon = trained.epsilon;
                    let (update, samples) = self.announce(&ctx, &base, trained).await?;
                    emit(&Event::Announced {
                        round,
                        update: update.to_string(),
                        samples,
                        train_seconds,
                        epsilon,
                    });
                }
                let (cid, signed, checked) = match self
                    .decide(&ctx, &base, done, &data, opened, &mut emit)
                    .await?
                {
                    Decision::Adopt(cid, signed, checked) => (cid, signed, checked),
                    Decision::Switch(reorg) => {
                        (done, head, head_manifest) = self.switch_to(&ctx, reorg, &mut emit)?;
                        continue;
                    }
                };
                let taken = Pending {
                    cid,
                    signed: signed.clone(),
                    base,
                    before: (done, head, head_manifest.clone()),
                    seconds: opened.elapsed().as_secs_f64(),
                    train_seconds,
                };
                if checked {
                    self.commit(&ctx, &taken, &mut emit).await?;
                } else {
                    tracing::info!(round, %cid, "took the round's manifest on its claims; recomputing it");
                    pending = Some(taken);
                }
                done = round;
                head = Some(cid);
                head_manifest = Some(signed);
            }
            if let Some(before) = self.confirm(&ctx, pending.take(), &mut emit).await? {
                (done, head, head_manifest) = before;
                continue 'task;
            }

            // Keep serving the last blocks (and the head) to peers still finishing, and
            // follow a better chain if one turns up meanwhile: until every peer still heard
            // from follows the same head (after a short settling time, for rivals still in
            // flight), or the linger time runs out.
            let started = Instant::now();
            let settle_until = started + self.config.linger;
            while let Some(c) = head {
                let now = Instant::now();
                if now >= settle_until {
                    break;
                }
                if let Some(reorg) = self.better_chain(&ctx, done, &mut emit).await? {
                    (done, head, head_manifest) = self.switch_to(&ctx, reorg, &mut emit)?;
                    if done < task.rounds {
                        continue 'task;
                    }
                    continue;
                }
                // No better chain in sight: done once every live peer follows this head, and
                // its evaluation is here (when the task has a test set).
                self.report_evaluations(&ctx, &mut emit)?;
                let everyone = ctx
                    .inbox
                    .live_peers()
                    .iter()
                    .all(|p| *p == me || ctx.inbox.head_of(p) == Some(c));
                let evaluated = data.test.is_none() || lock(&ctx.unevaluated).is_empty();
                if everyone && evaluated && now >= started + SETTLE.min(self.config.linger) {
                    break;
                }
                ctx.inbox.changed(POLL).await;
            }
            break;
        }

        let model = match &head_manifest {
            Some(m) => m.body.model,
            None => task.initial_model,
        };
        self.repo.pin(&model, PinMode::Recursive)?;
        emit(&Event::Done {
            model: model.to_string(),
            rounds: task.rounds,
        });
        Ok(model)
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
