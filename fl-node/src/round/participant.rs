//! One node's part in a task, round after round: fetch the round's model, train on the local
//! data, clip and noise the update when the task asks, store and announce it (signed), then
//! wait for the round's manifest — or make it, when this node ranks first among the round's
//! announcers (or the ones before it let their turn pass). Every manifest is recomputed
//! before it is adopted; adopted rounds and announced updates survive restarts.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cid::Cid;
use datasets::cifar10::Images;
use datasets::pipeline::{Pipeline, PipelineConfig};
use datasets::shard;
use fl_core::content::{Blockstore, Repo, pins::PinMode};
use fl_core::model::{Architecture, Backend, Batch, Classifier, TrainConfig};
use fl_core::records::{
    Announcement, DataSource, Keypair, Manifest, Metrics, Signed, Task, ranking,
};
use fl_core::tensors::Bundle;
use serde::Serialize;

use super::compute::{self, RoundBase};
use super::inbox::{Inbox, SignedAnnouncement, SignedManifest};
use super::{RoundError, RoundStore};
use crate::net::{self, Node, fetch_dag};

/// How often this node re-publishes its latest announcement and adopted manifest, so peers
/// that missed them (or restarted) catch up.
const REPUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between looks at the inbox.
const POLL: Duration = Duration::from_millis(200);
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
        /// Seconds from the round's start here to adoption.
        seconds: f64,
        /// Seconds of this node's local training in the round (0 when it did not train).
        train_seconds: f64,
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

/// Things re-published every [`REPUBLISH_EVERY`]: the node's current announcement and its
/// latest adopted manifest, as block bytes.
#[derive(Default)]
struct Republish {
    announcement: Option<Vec<u8>>,
    head: Option<Vec<u8>>,
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
    republish: Arc<Mutex<Republish>>,
    /// Manifests that failed their check: never checked again.
    refuted: Mutex<HashSet<Cid>>,
}

/// How a round ended for this node.
enum Decision {
    /// The round's manifest.
    Adopt(Cid, Signed<Manifest>),
    /// A better-ranked manifest for the previous round, to follow instead.
    Switch(Cid, Signed<Manifest>),
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
    pub async fn run(self, mut emit: impl FnMut(&Event)) -> Result<Cid, RoundError> {
        let me = self.node.peer_id();
        let task_cid = self.config.task;
        self.ensure(task_cid, "the task record").await?;
        let task_block =
            self.repo.blocks().get(&task_cid).map_err(|e| {
                RoundError::Task(format!("reading the task record {task_cid}: {e}"))
            })?;
        let task = Task::from_block(&task_block).map_err(|e| RoundError::Task(e.to_string()))?;
        if !task.admits(&me) {
            return Err(RoundError::NotMember(me));
        }
        let arch: Architecture = task
            .architecture
            .parse()
            .map_err(|e| RoundError::Task(format!("{e}")))?;
        self.repo.pin(&task_cid, PinMode::Recursive)?;
        let task = Arc::new(task);
        let inbox = Inbox::start(
            &self.node,
            task_cid,
            task.clone(),
            Arc::new(self.repo.blocks().clone()),
        )
        .await?;
        let republish = Arc::new(Mutex::new(Republish::default()));
        self.spawn_republisher(&task_cid, republish.clone());
        let ctx = Ctx {
            task_cid,
            task: task.clone(),
            arch,
            inbox,
            republish,
            refuted: Mutex::default(),
        };
        let data = self.local_data(&task).await?;

        // Peers re-publish their latest manifest every second: a node that restarts (or
        // joins late) hears where the chain is before it decides to train.
        if !self.node.peers().await?.is_empty() {
            let listen_until = Instant::now() + REPUBLISH_EVERY * 3;
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

        // The base of the last adopted round: a better-ranked manifest for that round is
        // checked against it (fork choice).
        let mut prev_base: Option<RoundBase> = None;
        while done < task.rounds {
            let round = done + 1;
            let opened = Instant::now();
            let base = self.base(&ctx, round, head, head_manifest.as_ref()).await?;
            // A node that is behind (restarted, or joined late) does not train for rounds
            // that others have already closed.
            let mut train_seconds = 0.0;
            if ctx.inbox.latest_round() < round {
                let (update, samples, seconds) = self.announce(&ctx, &base, &data).await?;
                train_seconds = seconds;
                emit(&Event::Announced {
                    round,
                    update: update.to_string(),
                    samples,
                    train_seconds: seconds,
                });
            }
            let adopted = match (&prev_base, head, &head_manifest) {
                (Some(b), Some(c), Some(m)) => Some((b, c, m)),
                _ => None,
            };
            let (cid, signed) = match self
                .decide(&ctx, &base, adopted, &data, opened, &mut emit)
                .await?
            {
                Decision::Adopt(cid, signed) => (cid, signed),
                Decision::Switch(cid, signed) => {
                    // A better-ranked manifest for the previous round: follow it and start
                    // this round again from it.
                    self.switch_to(&ctx, done, &cid, &signed, &mut emit)?;
                    head = Some(cid);
                    head_manifest = Some(signed);
                    continue;
                }
            };
            self.rounds.record_adopted(&task_cid, round, &cid)?;
            ctx.inbox.close_through(round);
            {
                let mut r = lock(&ctx.republish);
                r.head = Some(self.block_bytes(&cid)?);
                r.announcement = None;
            }
            let _ = self.node.provide(signed.body.model).await;
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
                seconds: opened.elapsed().as_secs_f64(),
                train_seconds,
            });
            done = round;
            head = Some(cid);
            head_manifest = Some(signed);
            prev_base = Some(base);
        }

        // Keep serving the last blocks (and the head) to peers still finishing, and follow
        // a better-ranked manifest for the last round if one turns up meanwhile.
        let settle_until = Instant::now() + self.config.linger;
        while let (Some(b), Some(c), Some(m)) = (&prev_base, head, &head_manifest) {
            if Instant::now() >= settle_until {
                break;
            }
            if let Some((cid, signed)) = self.better(&ctx, b, c, m, &mut emit).await {
                self.switch_to(&ctx, done, &cid, &signed, &mut emit)?;
                head = Some(cid);
                head_manifest = Some(signed);
                continue;
            }
            ctx.inbox.changed(POLL).await;
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

    /// Follows `signed` (CID `cid`) for `round`, already adopted otherwise: records it,
    /// re-publishes it as the head, and says so.
    fn switch_to(
        &self,
        ctx: &Ctx,
        round: u32,
        cid: &Cid,
        signed: &Signed<Manifest>,
        emit: &mut impl FnMut(&Event),
    ) -> Result<(), RoundError> {
        self.rounds.record_adopted(&ctx.task_cid, round, cid)?;
        lock(&ctx.republish).head = Some(self.block_bytes(cid)?);
        emit(&Event::Switched {
            round,
            manifest: cid.to_string(),
            rank: signed.body.rank,
        });
        Ok(())
    }

    /// The model, server state and chain position round `round` starts from.
    async fn base(
        &self,
        ctx: &Ctx,
        round: u32,
        head: Option<Cid>,
        head_manifest: Option<&Signed<Manifest>>,
    ) -> Result<RoundBase, RoundError> {
        let (model_cid, state_cid) = match head_manifest {
            Some(m) => (m.body.model, m.body.server_state),
            None => (ctx.task.initial_model, None),
        };
        self.ensure(model_cid, "the round's model").await?;
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
                self.ensure(cid, "the server state").await?;
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

    /// Trains on the local data (or takes the update announced before a restart), stores
    /// and announces it; returns the update, its samples and the training seconds.
    async fn announce(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        data: &LocalData,
    ) -> Result<(Cid, u64, f64), RoundError> {
        let round = base.round;
        if let Some(cid) = self.rounds.announced(&ctx.task_cid, round)? {
            let bytes = self.block_bytes(&cid)?;
            let signed = Signed::<Announcement>::from_bytes(&cid, &bytes)?;
            if signed.body.base == base.model_cid {
                tracing::info!(round, %cid, "announcing again the update made before a restart");
                self.publish_announcement(ctx, bytes).await;
                return Ok((signed.body.update, signed.body.samples, 0.0));
            }
            // Announced on a model the chain no longer holds: that round went on without it.
            return Ok((signed.body.update, signed.body.samples, 0.0));
        }
        let started = Instant::now();
        let task = ctx.task.clone();
        let arch = ctx.arch;
        let images = data.train.clone();
        let global = base.model.clone();
        let device = self.config.backend.device();
        let seed = task
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(u64::from(round) * 7919)
            .wrapping_add(self.config.shard.unwrap_or(0) as u64);
        let outcome = tokio::task::spawn_blocking(move || {
            let t = &task.train;
            let config = TrainConfig {
                epochs: t.epochs as usize,
                batch_size: t.batch_size as usize,
                learning_rate: t.learning_rate,
                momentum: t.momentum,
                weight_decay: t.weight_decay,
                proximal_mu: t.proximal_mu,
                seed,
                ..TrainConfig::default()
            };
            let mut pipeline = PipelineConfig::training(config.batch_size, seed);
            pipeline.normalization = arch.normalization();
            let batches = Pipeline::new(images, pipeline).collect_epoch(u64::from(round));
            fl_core::model::train(arch, &global, &batches, &config, &device)
        })
        .await
        .map_err(|e| RoundError::Train(e.to_string()))?
        .map_err(|e| RoundError::Train(e.to_string()))?;
        let mut update = outcome.update;
        if let Some(dp) = &ctx.task.dp {
            let noise = fl_core::privacy::NoiseConfig::new(dp.clip_norm, dp.noise_multiplier);
            update = fl_core::privacy::privatize(&update, &noise)
                .map_err(|e| RoundError::Train(format!("clipping and noising: {e}")))?
                .0;
        }
        let update_cid = update
            .store(&self.repo)
            .map_err(|source| RoundError::Store {
                what: "update",
                source,
            })?;
        let samples = outcome.samples as u64;
        let signed = Signed::sign(
            Announcement {
                task: ctx.task_cid,
                round,
                base: base.model_cid,
                update: update_cid,
                samples,
                epochs: ctx.task.train.epochs,
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
        Ok((update_cid, samples, started.elapsed().as_secs_f64()))
    }

    async fn publish_announcement(&self, ctx: &Ctx, bytes: Vec<u8>) {
        if let Err(why) =
            ctx.inbox
                .file_announcement(&ctx.task_cid, &ctx.task, self.repo.blocks(), bytes.clone())
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
        adopted: Option<(&RoundBase, Cid, &Signed<Manifest>)>,
        data: &LocalData,
        opened: Instant,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Decision, RoundError> {
        let me = self.node.peer_id();
        let round = base.round;
        let task = &ctx.task;
        let deadline = opened + Duration::from_millis(task.round_deadline_ms);
        let grace = Duration::from_millis(task.grace_ms);
        let expected = self.expected_participants(ctx, task, base)?;
        let min = task.min_participants as usize;
        let mut made: Option<SignedManifest> = None;
        loop {
            if let Some((prev_base, cid, signed)) = adopted
                && let Some((cid, signed)) = self.better(ctx, prev_base, cid, signed, emit).await
            {
                return Ok(Decision::Switch(cid, signed));
            }
            let mut candidates: Vec<SignedManifest> = ctx
                .inbox
                .manifests(round)
                .into_iter()
                .filter(|(c, _)| !lock(&ctx.refuted).contains(c))
                .collect();
            candidates.sort_by_key(|(c, m)| (m.body.rank, *c));
            for (cid, signed) in candidates {
                if made.as_ref().is_some_and(|(c, _)| *c == cid) {
                    return Ok(Decision::Adopt(cid, signed));
                }
                match self.check(ctx, base, &signed).await {
                    Ok(()) => return Ok(Decision::Adopt(cid, signed)),
                    Err(e) => {
                        lock(&ctx.refuted).insert(cid);
                        tracing::warn!(round, %cid, "manifest refuted: {e}");
                        emit(&Event::Refuted {
                            round,
                            manifest: cid.to_string(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            if ctx.inbox.latest_round() > round {
                self.walk_back(ctx, round).await?;
                continue;
            }
            if made.is_none() {
                let announced: Vec<SignedAnnouncement> = ctx
                    .inbox
                    .announcements(round)
                    .into_iter()
                    .filter(|(_, a)| a.body.base == base.model_cid)
                    .collect();
                let anchor = base.prev.unwrap_or(ctx.task_cid);
                let order = ranking(&anchor, round, announced.iter().map(|(_, a)| a.signer));
                if let Some(rank) = order.iter().position(|p| *p == me) {
                    let now = Instant::now();
                    let enough = announced.len() >= min;
                    let due = if rank == 0 {
                        enough && (announced.len() >= expected || now >= deadline)
                    } else {
                        enough && now >= deadline + grace * rank as u32
                    };
                    if due {
                        emit(&Event::Aggregating {
                            round,
                            rank: rank as u32,
                            updates: announced.len(),
                        });
                        let m = self
                            .aggregate(ctx, base, data, &announced, rank as u32)
                            .await?;
                        made = Some(m);
                        continue;
                    }
                }
            }
            ctx.inbox.changed(POLL).await;
        }
    }

    /// A valid manifest for the adopted manifest's round that ranks better (lower rank, then
    /// lower CID): the fork choice every node makes alike.
    async fn better(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        adopted: Cid,
        signed: &Signed<Manifest>,
        emit: &mut impl FnMut(&Event),
    ) -> Option<SignedManifest> {
        let key = (signed.body.rank, adopted);
        let mut rivals: Vec<SignedManifest> = ctx
            .inbox
            .manifests(signed.body.round)
            .into_iter()
            .filter(|(c, m)| (m.body.rank, *c) < key)
            .collect();
        rivals.sort_by_key(|(c, m)| (m.body.rank, *c));
        for (cid, rival) in rivals {
            if lock(&ctx.refuted).contains(&cid) {
                continue;
            }
            match self.check(ctx, base, &rival).await {
                Ok(()) => return Some((cid, rival)),
                Err(e) => {
                    lock(&ctx.refuted).insert(cid);
                    emit(&Event::Refuted {
                        round: rival.body.round,
                        manifest: cid.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        None
    }

    /// How many updates close a round early: last round's contributors and those whose
    /// updates came too late for it (they are back), else the task's members, else its
    /// minimum.
    fn expected_participants(
        &self,
        ctx: &Ctx,
        task: &Task,
        base: &RoundBase,
    ) -> Result<usize, RoundError> {
        if let Some(prev) = base.prev {
            let m = self.load_manifest(&prev)?;
            let mut alive: HashSet<libp2p::PeerId> =
                m.body.contributions.iter().map(|c| c.peer).collect();
            alive.extend(ctx.inbox.late(m.body.round));
            return Ok(alive.len().max(task.min_participants as usize));
        }
        Ok(task
            .members
            .as_ref()
            .map_or(task.min_participants as usize, Vec::len))
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
            prev = signed.body.prev;
            at = signed.body.round;
            if let Err(why) = ctx
                .inbox
                .file_manifest(&ctx.task_cid, self.repo.blocks(), bytes)
            {
                return Err(RoundError::Refuted(why));
            }
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
        // An author that vanished after announcing leaves its update out, not the round.
        let mut present = Vec::new();
        let mut missing = Vec::new();
        for entry in announced {
            match self.ensure(entry.1.body.update, "an update").await {
                Ok(()) => present.push(entry.clone()),
                Err(e) => {
                    tracing::warn!(peer = %entry.1.signer, "leaving out an update: {e}");
                    missing.push(entry.clone());
                }
            }
        }
        let mut aggregated = compute::aggregate(
            &self.repo,
            &ctx.task_cid,
            &ctx.task,
            base,
            &present,
            &missing,
        )?;
        aggregated.manifest.rank = rank;
        if let Some(test) = &data.test {
            let arch = ctx.arch;
            let model = aggregated.model.clone();
            let test = test.clone();
            let device = self.config.backend.device();
            let eval = tokio::task::spawn_blocking(move || {
                Classifier::new(arch, &model, &device)?.evaluate(&test, EVAL_BATCH)
            })
            .await
            .map_err(|e| RoundError::Train(e.to_string()))?
            .map_err(|e| RoundError::Train(format!("evaluating: {e}")))?;
            aggregated.manifest.metrics = Some(Metrics {
                test_accuracy: eval.accuracy,
                test_loss: eval.loss,
            });
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
            .file_manifest(&ctx.task_cid, self.repo.blocks(), bytes.clone())
            .map_err(RoundError::Refuted)?;
        let _ = self
            .node
            .publish(&Task::manifests_topic(&ctx.task_cid), bytes)
            .await;
        Ok((cid, signed))
    }

    /// Recomputes a manifest from the announcements it names before it is adopted.
    async fn check(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        signed: &Signed<Manifest>,
    ) -> Result<(), RoundError> {
        let m = &signed.body;
        let mut announcements = Vec::new();
        let listed = m
            .contributions
            .iter()
            .map(|c| c.announcement)
            .chain(m.rejected.iter().map(|r| r.announcement));
        let unavailable: HashSet<Cid> = m
            .rejected
            .iter()
            .filter(|r| r.reason == compute::UNAVAILABLE)
            .map(|r| r.announcement)
            .collect();
        for cid in listed {
            let bytes = self.fetch_block(cid, "an announcement").await?;
            let a = Signed::<Announcement>::from_bytes(&cid, &bytes)?;
            if !unavailable.contains(&cid) {
                self.ensure(a.body.update, "an update").await?;
            }
            announcements.push((cid, a));
        }
        compute::check(
            &self.repo,
            &ctx.task_cid,
            &ctx.task,
            base,
            m,
            &signed.signer,
            &announcements,
        )
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
                self.ensure(entry.cid, "this node's shard").await?;
                self.ensure(dataset.test.cid, "the test set").await?;
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

    /// Makes sure the DAG under `cid` is in the repo, fetching what is missing from
    /// connected peers, then from providers the DHT finds.
    async fn ensure(&self, cid: Cid, what: &str) -> Result<(), RoundError> {
        let peers = self.node.peers().await?;
        let per_block = self.config.block_timeout;
        if fetch_dag(
            self.node.bitswap(),
            cid,
            &peers,
            net::fetch::FETCH_WINDOW,
            per_block,
        )
        .await
        .is_ok()
        {
            return Ok(());
        }
        net::fetch(&self.node, cid, peers, true, per_block)
            .await
            .map(|_| ())
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

    /// Re-publishes the current announcement and head manifest every [`REPUBLISH_EVERY`].
    fn spawn_republisher(&self, task_cid: &Cid, what: Arc<Mutex<Republish>>) {
        let node = self.node.clone();
        let updates = Task::updates_topic(task_cid);
        let manifests = Task::manifests_topic(task_cid);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REPUBLISH_EVERY);
            loop {
                tick.tick().await;
                let (announcement, head) = {
                    let r = lock(&what);
                    (r.announcement.clone(), r.head.clone())
                };
                if let Some(bytes) = announcement {
                    let _ = node.publish(&updates, bytes).await;
                }
                if let Some(bytes) = head {
                    let _ = node.publish(&manifests, bytes).await;
                }
                if Arc::strong_count(&what) == 1 {
                    return;
                }
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
