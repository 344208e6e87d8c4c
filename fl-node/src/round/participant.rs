//! One node's part in a task, round after round: fetch the round's model, train on the local
//! data, clip and noise the update when the task asks, store and announce it (signed), then
//! wait for the round's manifest — or make it, when this node ranks first among the round's
//! announcers (or the ones before it let their turn pass). Every manifest is recomputed
//! before it is adopted; adopted rounds and announced updates survive restarts.

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
    Announcement, DataSource, Evaluation, Keypair, Manifest, Metrics, RejectReason, Signed, Task,
    ranking,
};
use fl_core::tensors::Bundle;
use libp2p::PeerId;
use serde::Serialize;
use tracing::Instrument;

use super::compute::{self, RoundBase};
use super::inbox::{Inbox, SignedAnnouncement, SignedManifest};
use super::machine::{self, Expected, Turn, Verdicts};
use super::republish;
use super::{RoundError, RoundStore};
use crate::net::{self, Node, fetch_dag};

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

/// What happened, for progress output (one JSON line each).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The node joined the task.
    Joined {
        /// This node.
        peer: String,
        /// The task.
        task: String,
        /// The task's rounds.
        rounds: u32,
        /// The first round this node will work on.
        from_round: u32,
    },
    /// Local training finished and the update was announced.
    Announced {
        /// The round.
        round: u32,
        /// The update file.
        update: String,
        /// Training samples.
        samples: u64,
        /// Seconds of local training.
        train_seconds: f64,
        /// Sample-level DP: the epsilon this node's data has spent, this round included.
        #[serde(skip_serializing_if = "Option::is_none")]
        epsilon: Option<f64>,
    },
    /// This node is aggregating the round.
    Aggregating {
        /// The round.
        round: u32,
        /// Its rank.
        rank: u32,
        /// Updates it aggregates.
        updates: usize,
    },
    /// A manifest did not hold up and was ignored.
    Refuted {
        /// The round.
        round: u32,
        /// The manifest.
        manifest: String,
        /// Why.
        reason: String,
    },
    /// A better-ranked manifest for a round already adopted was checked and is followed now.
    Switched {
        /// The round.
        round: u32,
        /// The manifest now followed.
        manifest: String,
        /// Its aggregator's rank.
        rank: u32,
        /// Updates that counted.
        participants: usize,
    },
    /// The round's manifest was checked and adopted.
    Adopted {
        /// The round.
        round: u32,
        /// The manifest.
        manifest: String,
        /// The new model.
        model: String,
        /// Who aggregated.
        aggregator: String,
        /// Its rank.
        rank: u32,
        /// Updates that counted.
        participants: usize,
        /// Test accuracy of the new model, if the task has a test set.
        accuracy: Option<f64>,
        /// Test loss.
        loss: Option<f64>,
        /// Privacy spent so far.
        epsilon: Option<f64>,
        /// Seconds from the round's start here to taking its manifest: the next round
        /// trains from then on, while the manifest is recomputed.
        seconds: f64,
        /// Seconds of this node's local training in the round (0 when it did not train).
        train_seconds: f64,
    },
    /// The aggregator's evaluation of an adopted round's model arrived (it comes after the
    /// manifest, so the next round does not wait for the test pass).
    Evaluated {
        /// The round.
        round: u32,
        /// Its manifest.
        manifest: String,
        /// Test accuracy of its model.
        accuracy: f64,
        /// Test loss.
        loss: f64,
    },
    /// The task is over.
    Done {
        /// The final model.
        model: String,
        /// Rounds run.
        rounds: u32,
    },
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

    /// Follows a better chain from the round where it parts from this node's: records it in
    /// one step, re-publishes its head, and says so; returns the new position (last round
    /// decided, head and its manifest).
    fn switch_to(
        &self,
        ctx: &Ctx,
        reorg: Reorg,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Position, RoundError> {
        let cids: Vec<Cid> = reorg.chain.iter().map(|(c, _)| *c).collect();
        self.rounds.record_chain(&ctx.task_cid, reorg.from, &cids)?;
        let Some((head, last)) = reorg.chain.last().cloned() else {
            return Err(RoundError::Task("switching to an empty chain".into()));
        };
        let done = last.body.round;
        ctx.inbox.close_through(done);
        {
            let mut r = lock(&ctx.republish);
            r.head = Some(self.block_bytes(&head)?);
            r.announcement = None;
        }
        lock(&ctx.verdicts).forget_forks();
        lock(&ctx.unevaluated).extend(
            reorg
                .chain
                .iter()
                .map(|(cid, m)| (m.body.round, *cid, m.signer, m.body.model)),
        );
        for (cid, m) in &reorg.chain {
            tracing::info!(round = m.body.round, %cid, "switching to a better chain");
            emit(&Event::Switched {
                round: m.body.round,
                manifest: cid.to_string(),
                rank: m.body.rank,
                participants: m.body.contributions.len(),
            });
        }
        Ok((done, Some(head), Some(last)))
    }

    /// The model, server state and chain position round `round` starts from.
    async fn base(
        &self,
        ctx: &Ctx,
        round: u32,
        head: Option<Cid>,
        head_manifest: Option<&Signed<Manifest>>,
    ) -> Result<RoundBase, RoundError> {
        let (model_cid, state_cid, aggregator) = match head_manifest {
            Some(m) => (m.body.model, m.body.server_state, Some(m.signer)),
            None => (ctx.task.initial_model, None, None),
        };
        self.ensure(model_cid, "the round's model", aggregator)
            .await?;
        let model = Bundle::load(&self.repo, &model_cid).map_err(|source| RoundError::Load {
            what: "model",
            cid: model_cid,
            source,
        })?;
        ctx.arch
            .check(&model)
            .map_err(|e| RoundError::Task(format!("model {model_cid}: {e}")))?;
        let state = match state_cid {
            Some(cid) => {
                self.ensure(cid, "the server state", aggregator).await?;
                let bundle = Bundle::load(&self.repo, &cid).map_err(|source| RoundError::Load {
                    what: "server state",
                    cid,
                    source,
                })?;
                aggregator::ServerState::from_bundle(bundle)
            }
            None => aggregator::ServerState::empty(),
        };
        Ok(RoundBase {
            round,
            prev: head,
            model: Arc::new(model),
            model_cid,
            state,
        })
    }

    /// The update this node announced for the round before a restart, if any (announced
    /// again when the chain still holds its base): a round gets one update from a node.
    async fn announced_before(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
    ) -> Result<Option<(Cid, u64, Option<f64>)>, RoundError> {
        let round = base.round;
        let Some(cid) = self.rounds.announced(&ctx.task_cid, round)? else {
            return Ok(None);
        };
        let bytes = self.block_bytes(&cid)?;
        let signed = Signed::<Announcement>::from_bytes(&cid, &bytes)?;
        if signed.body.base == base.model_cid {
            tracing::info!(round, %cid, "announcing again the update made before a restart");
            self.publish_announcement(ctx, bytes).await;
        }
        // Otherwise it was made on a model the chain no longer holds: that round went on
        // without it.
        Ok(Some((
            signed.body.update,
            signed.body.samples,
            signed.body.epsilon,
        )))
    }

    /// Trains on the local data from the round's model, then clips and noises the update
    /// when the task asks.
    async fn train(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        data: &LocalData,
    ) -> Result<Trained, RoundError> {
        let round = base.round;
        let task = ctx.task.clone();
        let arch = ctx.arch;
        let images = data.train.clone();
        let global = base.model.clone();
        let device = self.config.backend.device();
        let node_seed = task
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(self.config.shard.unwrap_or(0) as u64);
        let seed = node_seed.wrapping_add(u64::from(round) * 7919);
        // Held until the training ends, even one whose result is no longer wanted.
        let slot = self
            .config
            .limits
            .training
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| RoundError::Train(e.to_string()))?;
        // Rounds of a few steps go on with the momentum of the node's last round, as they go
        // on with its data; only the previous round's still points where the model is going.
        let carried = lock(&ctx.momentum)
            .take()
            .filter(|(last, _)| last + 1 == round)
            .map(|(_, momentum)| momentum);
        let momentum = task.train.steps.is_some().then(|| ctx.momentum.clone());
        // Sample-level DP: DP-SGD on every local step, within the task's epsilon budget.
        let private = task
            .dp
            .clone()
            .filter(|dp| dp.level() == fl_core::records::DpLevel::Sample);
        let epsilon = match &private {
            Some(dp) => {
                let samples = images.len() as u64;
                if dp.delta >= 1.0 / samples.max(1) as f64 {
                    let refused = fl_core::privacy::plan::PlanError::Delta {
                        delta: dp.delta,
                        examples: samples,
                    };
                    return Err(RoundError::Train(refused.to_string()));
                }
                let epsilon = dp
                    .sample_epsilon(&task.train, samples, round)
                    .map_err(|e| RoundError::Train(format!("privacy accounting: {e}")))?;
                if let Some(budget) = dp.epsilon_budget.filter(|&b| epsilon > b) {
                    return Err(RoundError::BudgetSpent {
                        round,
                        epsilon,
                        budget,
                    });
                }
                Some(epsilon)
            }
            None => None,
        };
        let started = Instant::now();
        let outcome = blocking(move || {
            let _slot = slot;
            let t = &task.train;
            let config = TrainConfig {
                epochs: t.epochs as usize,
                batch_size: t.batch_size as usize,
                learning_rate: t.schedule.rate(t.learning_rate, round, task.rounds),
                momentum: t.momentum,
                weight_decay: t.weight_decay,
                proximal_mu: t.proximal_mu,
                seed,
                dp_sgd: private.map(|dp| DpSgdConfig {
                    clip_norm: dp.clip_norm,
                    noise_multiplier: dp.noise_multiplier,
                    steps_per_epoch: t.steps.map(|s| s as usize),
                }),
                ..TrainConfig::default()
            };
            let mut pipeline = PipelineConfig::training(config.batch_size, seed);
            pipeline.normalization = arch.normalization();
            let batches = match t.steps {
                // DP-SGD draws its own batches from all the examples, as they are.
                _ if config.dp_sgd.is_some() => {
                    pipeline.augment = false;
                    pipeline.shuffle = false;
                    Pipeline::new(images, pipeline).collect_epoch(0)
                }
                None => Pipeline::new(images, pipeline).collect_epoch(u64::from(round)),
                Some(steps) => {
                    // One stream of epochs for the node's whole run: each round takes the
                    // steps after the last round's.
                    pipeline.seed = node_seed;
                    let first = u64::from(round.saturating_sub(1)) * u64::from(steps);
                    Pipeline::new(images, pipeline).steps(first, steps as usize)
                }
            };
            let (outcome, ended) =
                fl_core::model::train_carrying(arch, &global, &batches, &config, &device, carried)?;
            if let Some(momentum) = momentum {
                *lock(&momentum) = Some((round, ended));
            }
            Ok::<_, fl_core::model::TrainError>(outcome)
        })
        .await
        .map_err(|e| RoundError::Train(e.to_string()))?
        .map_err(|e| RoundError::Train(chain(&e)))?;
        let mut update = outcome.update;
        if let Some(dp) = ctx
            .task
            .dp
            .as_ref()
            .filter(|dp| dp.level() == fl_core::records::DpLevel::Client)
        {
            let noise = fl_core::privacy::NoiseConfig::new(dp.clip_norm, dp.noise_multiplier);
            update = fl_core::privacy::privatize(&update, &noise)
                .map_err(|e| RoundError::Train(format!("clipping and noising: {e}")))?
                .0;
        }
        Ok(Trained {
            update,
            samples: outcome.samples as u64,
            seconds: started.elapsed().as_secs_f64(),
            epsilon,
        })
    }

    /// Stores a trained update and announces it (signed); returns the update and its
    /// samples.
    async fn announce(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        trained: Trained,
    ) -> Result<(Cid, u64), RoundError> {
        let round = base.round;
        let update_cid = trained
            .update
            .store_encoded(&self.repo, ctx.task.update_encoding)
            .map_err(|source| RoundError::Store {
                what: "update",
                source,
            })?;
        let samples = trained.samples;
        let signed = Signed::sign(
            Announcement {
                task: ctx.task_cid,
                round,
                base: base.model_cid,
                update: update_cid,
                samples,
                epochs: ctx.task.train.epochs,
                epsilon: trained.epsilon,
            },
            &self.key,
        )?;
        let block = signed.to_block()?;
        let cid = *block.cid();
        let bytes = block.data().to_vec();
        self.repo
            .blocks()
            .put(block)
            .map_err(|e| RoundError::Task(format!("storing the announcement: {e}")))?;
        // Remembered before it leaves, so a restart never makes a second one.
        self.rounds.record_announced(&ctx.task_cid, round, &cid)?;
        let _ = self.node.provide(update_cid).await;
        self.publish_announcement(ctx, bytes).await;
        tracing::info!(
            round,
            %update_cid,
            "announced an update after {:.2} s of training",
            trained.seconds
        );
        Ok((update_cid, samples))
    }

    /// Recomputes a manifest taken on its claims (if any) and adopts it; returns where the
    /// node stood before taking it when it does not hold up (or cannot be checked yet).
    async fn confirm(
        &self,
        ctx: &Ctx,
        pending: Option<Pending>,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Option<Position>, RoundError> {
        let Some(p) = pending else { return Ok(None) };
        let mut tries = 0;
        loop {
            match self.judge(ctx, &p.base, &p.cid, &p.signed, emit).await {
                Verdict::Valid => {
                    self.commit(ctx, &p, emit).await?;
                    return Ok(None);
                }
                // Its inputs may turn up: nothing was announced on it yet, so waiting a
                // while costs no safety.
                Verdict::NotNow if tries < CONFIRM_TRIES => {
                    tries += 1;
                    let pause = lock(&ctx.verdicts)
                        .pause(&p.cid)
                        .unwrap_or(machine::RECHECK_AFTER);
                    tokio::time::sleep(pause).await;
                }
                Verdict::Refuted | Verdict::NotNow => {
                    tracing::info!(round = p.base.round, cid = %p.cid, "going back: the manifest taken on its claims is not confirmed");
                    return Ok(Some(p.before));
                }
            }
        }
    }

    /// Adopts a checked manifest: recorded (it survives restarts), re-published as this
    /// node's head, its model provided, and said.
    async fn commit(
        &self,
        ctx: &Ctx,
        p: &Pending,
        emit: &mut impl FnMut(&Event),
    ) -> Result<(), RoundError> {
        let (round, cid, signed) = (p.base.round, p.cid, &p.signed);
        self.rounds.record_adopted(&ctx.task_cid, round, &cid)?;
        ctx.inbox.close_through(round);
        {
            let mut r = lock(&ctx.republish);
            r.head = Some(self.block_bytes(&cid)?);
            r.announcement = None;
        }
        let _ = self.node.provide(signed.body.model).await;
        tracing::info!(round, %cid, "adopted the round's manifest");
        let m = &signed.body;
        emit(&Event::Adopted {
            round,
            manifest: cid.to_string(),
            model: m.model.to_string(),
            aggregator: signed.signer.to_string(),
            rank: m.rank,
            participants: m.contributions.len(),
            accuracy: m.metrics.as_ref().map(|x| x.test_accuracy),
            loss: m.metrics.as_ref().map(|x| x.test_loss),
            epsilon: m.epsilon,
            seconds: p.seconds,
            train_seconds: p.train_seconds,
        });
        lock(&ctx.unevaluated).push((round, cid, signed.signer, m.model));
        self.report_evaluations(ctx, emit)
    }

    /// Says (and records) the evaluations that arrived for adopted rounds; forgets those
    /// of rounds no longer on this node's chain.
    fn report_evaluations(
        &self,
        ctx: &Ctx,
        emit: &mut impl FnMut(&Event),
    ) -> Result<(), RoundError> {
        let waiting = std::mem::take(&mut *lock(&ctx.unevaluated));
        let mut still = Vec::new();
        for (round, cid, signer, model) in waiting {
            if self.rounds.adopted(&ctx.task_cid, round)? != Some(cid) {
                continue;
            }
            let Some((at, e)) = ctx.inbox.evaluation(round, &cid, &signer, &model) else {
                still.push((round, cid, signer, model));
                continue;
            };
            self.rounds.record_evaluated(&ctx.task_cid, round, &at)?;
            emit(&Event::Evaluated {
                round,
                manifest: cid.to_string(),
                accuracy: e.body.metrics.test_accuracy,
                loss: e.body.metrics.test_loss,
            });
        }
        lock(&ctx.unevaluated).extend(still);
        Ok(())
    }

    /// Scores the model of the manifest this node just published on the test set, off the
    /// round's path, and publishes the result signed (and re-publishes it).
    fn spawn_evaluation(
        &self,
        ctx: &Ctx,
        manifest: Cid,
        round: u32,
        model: (Cid, Arc<Bundle>),
        test: Vec<Batch>,
    ) {
        let (arch, device) = (ctx.arch, self.config.backend.device());
        let (key, node, repo) = (self.key.clone(), self.node.clone(), self.repo.clone());
        let (inbox, republish, task) = (ctx.inbox.clone(), ctx.republish.clone(), ctx.task_cid);
        spawn(async move {
            let started = Instant::now();
            let (model_cid, bundle) = model;
            let scored = blocking(move || {
                Classifier::new(arch, &bundle, &device)?.evaluate(&test, EVAL_BATCH)
            })
            .await;
            let eval = match scored {
                Ok(Ok(eval)) => eval,
                Ok(Err(e)) => return tracing::warn!(round, "evaluating the new model: {e}"),
                Err(e) => return tracing::warn!(round, "evaluating the new model: {e}"),
            };
            let record = Evaluation {
                task,
                round,
                manifest,
                model: model_cid,
                metrics: Metrics {
                    test_accuracy: eval.accuracy,
                    test_loss: eval.loss,
                },
            };
            let block = match Signed::sign(record, &key).and_then(|s| s.to_block()) {
                Ok(block) => block,
                Err(e) => return tracing::warn!(round, "signing the evaluation: {e}"),
            };
            let bytes = block.data().to_vec();
            if let Err(e) = inbox.file_evaluation(repo.blocks(), bytes.clone()) {
                return tracing::warn!(round, "filing our evaluation: {e}");
            }
            lock(&republish).evaluation = Some(bytes.clone());
            let _ = node.publish(&Task::evaluations_topic(&task), bytes).await;
            tracing::info!(
                round,
                accuracy = eval.accuracy,
                "published the evaluation of the round's model after {:.2} s",
                started.elapsed().as_secs_f64()
            );
        });
    }

    async fn publish_announcement(&self, ctx: &Ctx, bytes: Vec<u8>) {
        if let Err(why) = ctx
            .inbox
            .file_announcement(self.repo.blocks(), bytes.clone())
        {
            tracing::warn!("our own announcement was not filed: {why}");
        }
        let _ = self
            .node
            .publish(&Task::updates_topic(&ctx.task_cid), bytes.clone())
            .await;
        lock(&ctx.republish).announcement = Some(bytes);
    }

    /// Waits for the round's manifest (checking each candidate, best rank first), or makes
    /// it when this node's turn comes.
    async fn decide(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        done: u32,
        data: &LocalData,
        opened: Instant,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Decision, RoundError> {
        let me = self.node.peer_id();
        let round = base.round;
        let task = &ctx.task;
        let deadline = opened + Duration::from_millis(task.round_deadline_ms);
        let grace = Duration::from_millis(task.grace_ms);
        let expected = self.expected_participants(ctx, task, base).await?;
        let min = task.min_participants as usize;
        let mut made: Option<SignedManifest> = None;
        let mut gave_up = false;
        let mut retry_at: Option<Instant> = None;
        let mut said = Instant::now();
        loop {
            self.report_evaluations(ctx, emit)?;
            if let Some(reorg) = self.better_chain(ctx, done, emit).await? {
                return Ok(Decision::Switch(reorg));
            }
            // Only manifests that continue this node's chain: one found valid on another
            // chain (before a switch) is not this round's.
            let mut candidates: Vec<SignedManifest> = ctx
                .inbox
                .manifests(round)
                .into_iter()
                .filter(|(c, m)| {
                    m.body.prev == base.prev && lock(&ctx.verdicts).open(c, Instant::now())
                })
                .collect();
            candidates.sort_by_key(|(c, m)| (m.body.rank, *c));
            for (cid, signed) in candidates {
                let (checked, missed) = {
                    let v = lock(&ctx.verdicts);
                    (v.is_valid(&cid), v.pause(&cid).is_some())
                };
                if checked || made.as_ref().is_some_and(|(c, _)| *c == cid) {
                    return Ok(Decision::Adopt(cid, signed, true));
                }
                // The next round trains on it while it is recomputed (after the last round,
                // the recomputation comes before the node is done); a manifest whose inputs
                // were missing before is recomputed first.
                if !missed {
                    if let Verdict::Valid =
                        self.take_on_claims(ctx, base, &cid, &signed, emit).await
                    {
                        return Ok(Decision::Adopt(cid, signed, false));
                    }
                } else if let Verdict::Valid = self.judge(ctx, base, &cid, &signed, emit).await {
                    return Ok(Decision::Adopt(cid, signed, true));
                }
            }
            if ctx.inbox.latest_round() > round {
                // A newer manifest whose chain cannot be followed (yet, or ever: anyone may
                // gossip one) is no reason to stop.
                if let Err(e) = self.walk_back(ctx, round).await {
                    tracing::info!(round, "cannot follow a newer manifest back: {e}");
                }
                let fresh = ctx
                    .inbox
                    .manifests(round)
                    .iter()
                    .any(|(c, _)| lock(&ctx.verdicts).open(c, Instant::now()));
                if fresh {
                    continue;
                }
            }
            if made.is_none() && !gave_up {
                let announced: Vec<SignedAnnouncement> = ctx
                    .inbox
                    .announcements(round)
                    .into_iter()
                    .filter(|(_, a)| a.body.base == base.model_cid)
                    .collect();
                let anchor = base.prev.unwrap_or(ctx.task_cid);
                let order = ranking(&anchor, round, announced.iter().map(|(_, a)| a.signer));
                // The first two in line fetch the updates while the round fills; the others
                // fetch them to recompute the manifest, while the next round trains.
                if order.iter().take(PREFETCH_RANKS).any(|p| *p == me) {
                    self.prefetch(ctx, round, &base.model_cid);
                }
                let awaited = expected
                    .awaited(&me, announced.iter().map(|(_, a)| &a.signer), |p| {
                        ctx.inbox.gone(p)
                    })
                    .max(min)
                    .max(self.following(ctx, base));
                if said.elapsed() >= STATUS_EVERY {
                    said = Instant::now();
                    tracing::info!(
                        round,
                        announced = announced.len(),
                        expected = awaited,
                        rank = ?order.iter().position(|p| *p == me),
                        manifests = ctx.inbox.manifests(round).len(),
                        "waiting for the round's manifest"
                    );
                }
                let view = machine::Round {
                    order: &order,
                    announced: announced.len(),
                    awaited,
                    min,
                    deadline,
                    grace,
                };
                let turn =
                    machine::turn(&view, &me, |p| ctx.inbox.gone(p), retry_at, Instant::now());
                // Those ranked ahead that have gone quiet will not publish: the node acts in
                // the place of the first one still heard from.
                if let Turn::Aggregate { rank, ahead } = turn {
                    if ahead < rank {
                        tracing::info!(
                            round,
                            rank,
                            quiet = rank - ahead,
                            "aggregating in the place of peers ranked ahead that went quiet"
                        );
                    }
                    emit(&Event::Aggregating {
                        round,
                        rank: rank as u32,
                        updates: announced.len(),
                    });
                    match self
                        .aggregate(ctx, base, data, &announced, rank as u32)
                        .await
                    {
                        Ok(m) => made = Some(m),
                        Err(e @ RoundError::TooFew { .. }) => {
                            // Wait for more updates, and try again.
                            tracing::info!(round, "not closing yet: {e}");
                            retry_at = Some(Instant::now() + RETRY_AGGREGATION);
                        }
                        Err(e) => {
                            // Leave the round to the next rank rather than stop.
                            tracing::warn!(round, "cannot aggregate: {e}");
                            gave_up = true;
                        }
                    }
                    continue;
                }
            }
            ctx.inbox.changed(POLL).await;
        }
    }

    /// A chain that parts from this node's at a round it has decided and wins the fork choice
    /// there (the lower rank, then the lower CID, of the two manifests for that round): its
    /// manifests from that round on that hold up to recomputation, checked in order. Every
    /// honest node that sees both chains ends up on the same one.
    async fn better_chain(
        &self,
        ctx: &Ctx,
        done: u32,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Option<Reorg>, RoundError> {
        if done == 0 {
            return Ok(None);
        }
        let ours = |round: u32| self.rounds.adopted(&ctx.task_cid, round);
        lock(&ctx.verdicts).decided(done);
        // Tips not on our chain, newest first: a fork wins or loses for its whole chain.
        let mut tips = Vec::new();
        for round in ctx.inbox.manifest_rounds() {
            let adopted = ours(round)?;
            let v = lock(&ctx.verdicts);
            tips.extend(ctx.inbox.manifests(round).into_iter().filter(|(c, _)| {
                Some(*c) != adopted && v.open(c, Instant::now()) && !v.is_settled(c)
            }));
            if tips.len() >= MAX_TIPS {
                break;
            }
        }
        'tips: for (tip, signed) in tips.into_iter().take(MAX_TIPS) {
            // Back along its `prev` links to the round where it parts from ours.
            let mut path = vec![(tip, signed)];
            let parts = loop {
                let Some((_, m)) = path.last() else {
                    break None;
                };
                let round = m.body.round;
                if round == 1 {
                    break Some(1);
                }
                let Some(our_prev) = ours(round - 1)? else {
                    // Beyond what this node decided: not a fork (yet).
                    break None;
                };
                let Some(prev) = m.body.prev else { break None };
                if prev == our_prev {
                    break Some(round);
                }
                if path.len() > ctx.task.rounds as usize {
                    break None;
                }
                let bytes = match self.fetch_block(prev, "an earlier manifest").await {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        // Looked at again after a pause, like a manifest it cannot check.
                        let pause = lock(&ctx.verdicts).unreachable(tip, Instant::now());
                        tracing::info!(%tip, "cannot follow a chain back (again in {pause:?}): {}", chain(&e));
                        continue 'tips;
                    }
                };
                match Signed::<Manifest>::from_bytes(&prev, &bytes) {
                    Ok(p)
                        if p.body.round.checked_add(1) == Some(round)
                            && p.body.task == ctx.task_cid =>
                    {
                        path.push((prev, p));
                    }
                    _ => break None,
                }
            };
            let Some(from) = parts.filter(|r| *r <= done) else {
                lock(&ctx.verdicts).settled(tip);
                continue;
            };
            path.reverse();
            let Some(our_cid) = ours(from)? else { continue };
            let our = self.load_manifest(&our_cid)?;
            let (first_cid, first) = &path[0];
            if !machine::wins((first.body.rank, first_cid), (our.body.rank, &our_cid)) {
                lock(&ctx.verdicts).settled(tip);
                continue;
            }
            // It wins where it parts: check it round by round from the base we share.
            let (mut prev, mut prev_manifest) = match from {
                1 => (None, None),
                r => {
                    let c = ours(r - 1)?;
                    let m = c.map(|c| self.load_manifest(&c)).transpose()?;
                    (c, m)
                }
            };
            let mut valid = Vec::new();
            for (cid, m) in path {
                let base = match self
                    .base(ctx, m.body.round, prev, prev_manifest.as_ref())
                    .await
                {
                    Ok(base) => base,
                    Err(e) => {
                        // Its model could not be fetched yet: the valid part so far counts.
                        lock(&ctx.verdicts).unreachable(cid, Instant::now());
                        tracing::info!(%cid, "cannot load a rival chain's model: {}", chain(&e));
                        break;
                    }
                };
                if !matches!(self.judge(ctx, &base, &cid, &m, emit).await, Verdict::Valid) {
                    break;
                }
                prev = Some(cid);
                prev_manifest = Some(m.clone());
                valid.push((cid, m));
            }
            if !valid.is_empty() {
                return Ok(Some(Reorg { from, chain: valid }));
            }
        }
        Ok(None)
    }

    /// Checks a manifest once (or again, after a pause, while its inputs cannot be fetched)
    /// and remembers the verdict.
    async fn judge(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        cid: &Cid,
        signed: &Signed<Manifest>,
        emit: &mut impl FnMut(&Event),
    ) -> Verdict {
        if lock(&ctx.verdicts).is_valid(cid) {
            return Verdict::Valid;
        }
        let checked = self.check(ctx, base, signed).await;
        if checked.is_ok() {
            lock(&ctx.verdicts).valid(*cid);
        }
        Self::verdict(ctx, cid, signed.body.round, checked, emit)
    }

    /// Checks a manifest's claims only (signatures, entitlement, rank, what it lists) and
    /// that its model is here and loadable: enough to train on it while it is recomputed.
    async fn take_on_claims(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        cid: &Cid,
        signed: &Signed<Manifest>,
        emit: &mut impl FnMut(&Event),
    ) -> Verdict {
        let round = signed.body.round;
        let mut looked = self.claims(ctx, base, signed).await.map(|_| ());
        if looked.is_ok() && round < ctx.task.rounds {
            // The next round starts from its model (and server state): here and loadable.
            looked = self
                .base(ctx, round + 1, Some(*cid), Some(signed))
                .await
                .map(|_| ());
        }
        Self::verdict(ctx, cid, round, looked, emit)
    }

    /// What a look at manifest `cid` concluded, remembered: a fetch that failed is tried
    /// again after a pause, any other failure refutes it for good.
    fn verdict(
        ctx: &Ctx,
        cid: &Cid,
        round: u32,
        looked: Result<(), RoundError>,
        emit: &mut impl FnMut(&Event),
    ) -> Verdict {
        match looked {
            Ok(()) => Verdict::Valid,
            Err(e @ RoundError::Fetch { .. }) => {
                // Its inputs may turn up (a provider restarts, a connection comes back).
                let pause = lock(&ctx.verdicts).unreachable(*cid, Instant::now());
                tracing::info!(round, %cid, "cannot check a manifest yet (again in {pause:?}): {}", chain(&e));
                Verdict::NotNow
            }
            Err(e) => {
                lock(&ctx.verdicts).refuted(*cid);
                let reason = chain(&e);
                tracing::warn!(round, %cid, "manifest refuted: {reason}");
                emit(&Event::Refuted {
                    round,
                    manifest: cid.to_string(),
                    reason,
                });
                Verdict::Refuted
            }
        }
    }

    /// Who closes a round early once they have all announced: last round's contributors and
    /// those whose updates came too late for it (they are back); in the first round, the
    /// task's members, or in an open task this node and the peers subscribed to its updates.
    async fn expected_participants(
        &self,
        ctx: &Ctx,
        task: &Task,
        base: &RoundBase,
    ) -> Result<Expected, RoundError> {
        if let Some(prev) = base.prev {
            let m = self.load_manifest(&prev)?;
            let mut alive: HashSet<libp2p::PeerId> =
                m.body.contributions.iter().map(|c| c.peer).collect();
            // Those whose updates came after the aggregator closed the round, before or
            // after this node did.
            alive.extend(ctx.inbox.late(m.body.round));
            alive.extend(
                ctx.inbox
                    .announcements(m.body.round)
                    .into_iter()
                    .map(|(_, a)| a.signer),
            );
            return Ok(Expected::Peers(alive));
        }
        let joined = match &task.members {
            Some(members) => members.len(),
            // An open task: this node and the peers following the task's updates.
            None => {
                let topic = Task::updates_topic(&ctx.task_cid);
                1 + self.node.topic_peers(&topic).await?.len()
            }
        };
        Ok(Expected::Count(joined))
    }

    /// Starts fetching the updates announced for `round` on `base` that are not here yet,
    /// so an aggregator finds them here (communication overlaps the wait for the slowest
    /// node).
    fn prefetch(&self, ctx: &Ctx, round: u32, base: &Cid) {
        let fresh: Vec<(Cid, PeerId)> = {
            let mut seen = lock(&ctx.prefetched);
            ctx.inbox
                .announcements(round)
                .into_iter()
                .filter(|(_, a)| a.body.base == *base && a.signer != self.node.peer_id())
                .map(|(_, a)| (a.body.update, a.signer))
                .filter(|(u, _)| seen.insert(*u))
                .collect()
        };
        for (update, author) in fresh {
            let node = self.node.clone();
            let slots = ctx.prefetching.clone();
            let per_block = self.config.block_timeout;
            spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                if let Err(e) = fetch_held(&node, update, Some(author), per_block, false).await {
                    tracing::debug!(%update, "fetching ahead failed (fetched again when needed): {e}");
                }
            });
        }
    }

    /// This node and the live peers that follow the chain to `base` (they re-publish its
    /// head): they will announce updates on it, so the round waits for them too.
    fn following(&self, ctx: &Ctx, base: &RoundBase) -> usize {
        let Some(head) = base.prev else { return 1 };
        let me = self.node.peer_id();
        1 + ctx
            .inbox
            .live_peers()
            .iter()
            .filter(|p| **p != me && ctx.inbox.head_of(p) == Some(head))
            .count()
    }

    /// Files the manifests between the newest seen and `round` by following `prev` links.
    async fn walk_back(&self, ctx: &Ctx, round: u32) -> Result<(), RoundError> {
        let latest = ctx.inbox.latest_round();
        let Some((_, newest)) = ctx.inbox.manifests(latest).into_iter().next() else {
            return Ok(());
        };
        let mut prev = newest.body.prev;
        let mut at = latest;
        while at > round {
            let Some(cid) = prev else { break };
            let bytes = self.fetch_block(cid, "an earlier manifest").await?;
            let signed = Signed::<Manifest>::from_bytes(&cid, &bytes)?;
            // Each link goes one round back, or the chain is not one.
            if signed.body.round.checked_add(1) != Some(at) {
                return Err(RoundError::Refuted(format!(
                    "manifest {cid} is round {}, linked from round {at}",
                    signed.body.round
                )));
            }
            prev = signed.body.prev;
            at = signed.body.round;
            ctx.inbox
                .file_manifest(self.repo.blocks(), bytes)
                .map_err(RoundError::Refuted)?;
        }
        Ok(())
    }

    /// Aggregates the round as rank `rank`, publishes the signed manifest and files it.
    async fn aggregate(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        data: &LocalData,
        announced: &[SignedAnnouncement],
        rank: u32,
    ) -> Result<SignedManifest, RoundError> {
        let started = Instant::now();
        // An author that vanished after announcing leaves its update out, not the round.
        let mut present = Vec::new();
        let mut missing = Vec::new();
        for entry in announced {
            match self
                .ensure(entry.1.body.update, "an update", Some(entry.1.signer))
                .await
            {
                Ok(()) => present.push(entry.clone()),
                Err(e) => {
                    tracing::warn!(peer = %entry.1.signer, "leaving out an update: {e}");
                    missing.push(entry.clone());
                }
            }
        }
        let fetched = started.elapsed();
        let mut aggregated = {
            let (repo, task_cid, task, base) = (
                self.repo.clone(),
                ctx.task_cid,
                ctx.task.clone(),
                base.clone(),
            );
            let slot = self.computing().await?;
            blocking(move || {
                let _slot = slot;
                compute::aggregate(&repo, &task_cid, &task, &base, &present, &missing)
            })
            .await
            .map_err(|e| RoundError::Aggregate(e.to_string()))??
        };
        let computed = started.elapsed();
        aggregated.manifest.rank = rank;
        let needed = ctx.task.min_participants as usize;
        let usable = aggregated.manifest.contributions.len();
        if usable < needed {
            return Err(RoundError::TooFew { usable, needed });
        }
        let signed = Signed::sign(aggregated.manifest, &self.key)?;
        let block = signed.to_block()?;
        let cid = *block.cid();
        let bytes = block.data().to_vec();
        self.repo
            .blocks()
            .put(block)
            .map_err(|e| RoundError::Task(format!("storing the manifest: {e}")))?;
        self.repo.pin(&signed.body.model, PinMode::Recursive)?;
        ctx.inbox
            .file_manifest(self.repo.blocks(), bytes.clone())
            .map_err(RoundError::Refuted)?;
        let _ = self
            .node
            .publish(&Task::manifests_topic(&ctx.task_cid), bytes)
            .await;
        if let Some(test) = &data.test {
            let model = (signed.body.model, Arc::new(aggregated.model));
            self.spawn_evaluation(ctx, cid, base.round, model, test.clone());
        }
        tracing::info!(
            round = base.round,
            %cid,
            "published the round's manifest after {:.2} s (updates here at {:.2} s, \
             aggregated at {:.2} s)",
            started.elapsed().as_secs_f64(),
            fetched.as_secs_f64(),
            computed.as_secs_f64()
        );
        Ok((cid, signed))
    }

    /// Recomputes a manifest from the announcements it names before it is adopted.
    async fn check(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        signed: &Signed<Manifest>,
    ) -> Result<(), RoundError> {
        let started = Instant::now();
        let m = &signed.body;
        let announcements = self.claims(ctx, base, signed).await?;
        if !self.config.recompute {
            // Not made here, so fetched: the model (the node adopts and serves it) and the
            // server state the next round starts from.
            self.ensure(m.model, "the round's model", Some(signed.signer))
                .await?;
            if let Some(state) = m.server_state {
                self.ensure(state, "the server state", Some(signed.signer))
                    .await?;
            }
            return Ok(());
        }
        let unavailable: HashSet<Cid> = m
            .rejected
            .iter()
            .filter(|r| r.reason == RejectReason::Unavailable)
            .map(|r| r.announcement)
            .collect();
        for (cid, a) in &announcements {
            if !unavailable.contains(cid) {
                self.ensure(a.body.update, "an update", Some(a.signer))
                    .await?;
            }
        }
        let fetched = started.elapsed();
        let (repo, task_cid, task, base, manifest, signer) = (
            self.repo.clone(),
            ctx.task_cid,
            ctx.task.clone(),
            base.clone(),
            m.clone(),
            signed.signer,
        );
        let slot = self.computing().await?;
        blocking(move || {
            let _slot = slot;
            compute::check(
                &repo,
                &task_cid,
                &task,
                &base,
                &manifest,
                &signer,
                &announcements,
            )
        })
        .await
        .map_err(|e| RoundError::Aggregate(e.to_string()))??;
        tracing::info!(
            round = m.round,
            "checked a manifest in {:.2} s (updates here at {:.2} s)",
            started.elapsed().as_secs_f64(),
            fetched.as_secs_f64()
        );
        Ok(())
    }

    /// A turn at aggregating or recomputing a round (it holds the round's updates in memory).
    async fn computing(&self) -> Result<tokio::sync::OwnedSemaphorePermit, RoundError> {
        self.config
            .limits
            .computing
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| RoundError::Aggregate(e.to_string()))
    }

    /// Fetches the announcements a manifest lists (they are small) and checks its claims
    /// against them, before any update is fetched; returns the announcements.
    async fn claims(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        signed: &Signed<Manifest>,
    ) -> Result<Vec<(Cid, Signed<Announcement>)>, RoundError> {
        let m = &signed.body;
        let mut announcements = Vec::new();
        let listed = m
            .contributions
            .iter()
            .map(|c| c.announcement)
            .chain(m.rejected.iter().map(|r| r.announcement));
        // Announcements are small: fetched first, so the cheap checks run before any
        // update is.
        if m.contributions.len() + m.rejected.len() > super::inbox::MAX_ANNOUNCERS_PER_ROUND {
            return Err(RoundError::Refuted("it lists too many updates".into()));
        }
        for cid in listed {
            let bytes = self.fetch_block(cid, "an announcement").await?;
            let a = Signed::<Announcement>::from_bytes(&cid, &bytes)?;
            announcements.push((cid, a));
        }
        compute::check_claims(
            &ctx.task_cid,
            &ctx.task,
            base,
            m,
            &signed.signer,
            &announcements,
        )?;
        Ok(announcements)
    }

    /// The node's training images and, where the task has one, the test set.
    async fn local_data(&self, task: &Task) -> Result<LocalData, RoundError> {
        match &task.data {
            DataSource::Shards { manifest } => {
                let shard_index = self.config.shard.ok_or_else(|| {
                    RoundError::Data("the task's data is sharded: pass --shard I".into())
                })?;
                self.fetch_block(*manifest, "the dataset manifest").await?;
                let dataset = shard::manifest(self.repo.blocks(), manifest)
                    .map_err(|e| RoundError::Data(e.to_string()))?;
                let entry = dataset.shards.get(shard_index).ok_or_else(|| {
                    RoundError::Data(format!(
                        "shard {shard_index} does not exist: the dataset has {} shards",
                        dataset.shards.len()
                    ))
                })?;
                self.ensure(entry.cid, "this node's shard", None).await?;
                self.ensure(dataset.test.cid, "the test set", None).await?;
                let train = shard::fetch_shard(self.repo.blocks(), &dataset, shard_index)
                    .map_err(|e| RoundError::Data(e.to_string()))?;
                let test = shard::fetch_test(self.repo.blocks(), &dataset)
                    .map_err(|e| RoundError::Data(e.to_string()))?;
                let mut config = PipelineConfig::evaluation(EVAL_BATCH);
                config.normalization = task
                    .architecture
                    .parse::<Architecture>()
                    .map_err(|e| RoundError::Task(e.to_string()))?
                    .normalization();
                Ok(LocalData {
                    train,
                    test: Some(Pipeline::new(test, config).collect_epoch(0)),
                })
            }
            DataSource::OwnData => {
                let dir = self.config.own_data.as_ref().ok_or_else(|| {
                    RoundError::Data("the task brings its own data: pass --data DIR".into())
                })?;
                let data = datasets::cifar10::load(dir)
                    .map_err(|e| RoundError::Data(format!("{}: {e}", dir.display())))?;
                Ok(LocalData {
                    train: data.train,
                    test: None,
                })
            }
        }
    }

    /// Makes sure the DAG under `cid` is in the repo (see [`fetch_held`]).
    async fn ensure(&self, cid: Cid, what: &str, holder: Option<PeerId>) -> Result<(), RoundError> {
        fetch_held(&self.node, cid, holder, self.config.block_timeout, true)
            .await
            .map_err(|source| RoundError::Fetch {
                what: format!("{what} {cid}"),
                source,
            })
    }

    /// One block's bytes, fetched from peers if the repo lacks it.
    async fn fetch_block(&self, cid: Cid, what: &str) -> Result<Vec<u8>, RoundError> {
        let peers = self.node.peers().await?;
        match self
            .node
            .bitswap()
            .fetch(cid, &peers, 0, self.config.block_timeout)
            .await
        {
            Ok(block) => Ok(block.data().to_vec()),
            Err(e) => Err(RoundError::Fetch {
                what: format!("{what} {cid}"),
                source: net::NetFetchError::Dag {
                    root: cid,
                    source: e.into(),
                },
            }),
        }
    }

    fn block_bytes(&self, cid: &Cid) -> Result<Vec<u8>, RoundError> {
        self.repo
            .blocks()
            .get(cid)
            .map(|b| b.data().to_vec())
            .map_err(|e| RoundError::Task(format!("reading block {cid}: {e}")))
    }

    fn load_manifest(&self, cid: &Cid) -> Result<Signed<Manifest>, RoundError> {
        let bytes = self.block_bytes(cid)?;
        Ok(Signed::<Manifest>::from_bytes(cid, &bytes)?)
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

/// Fetches what the repo lacks of the DAG under `cid`: from `holder` first when one is
/// known to have it (the aggregator its model, an author its update) and connected, then from every
/// connected peer, then (with `use_dht`) from the providers the DHT names. Asked first, the
/// holder answers every want at once; asked in turn with the others, each block would wait
/// for a "don't have" from each peer before it, and busy peers are slow to say so.
async fn fetch_held(
    node: &Node,
    cid: Cid,
    holder: Option<PeerId>,
    per_block: Duration,
    use_dht: bool,
) -> Result<(), net::NetFetchError> {
    let window = net::fetch::FETCH_WINDOW;
    let peers = node.peers().await?;
    // A holder that is not connected (gone, or never met) is not waited for.
    if let Some(holder) = holder.filter(|h| peers.contains(h))
        && fetch_dag(node.bitswap(), cid, &[holder], window, per_block)
            .await
            .is_ok()
    {
        return Ok(());
    }
    let from_peers = fetch_dag(node.bitswap(), cid, &peers, window, per_block).await;
    match from_peers {
        Ok(_) => Ok(()),
        Err(_) if use_dht => net::fetch(node, cid, peers, true, per_block)
            .await
            .map(|_| ()),
        Err(source) => Err(net::NetFetchError::Dag { root: cid, source }),
    }
}
