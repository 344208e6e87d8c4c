//! Training a round's update on the local data, and announcing it (once per round, even
//! across restarts).

use super::steps::{Carry, Span, sleep_out};
use super::*;

impl Participant {
    /// Whether this node announced an update for the round before (before a restart, or
    /// before going back to a better manifest of the round before): a round gets one update
    /// from a node. Announces it again, and returns it, when the chain still holds its base.
    pub(super) async fn announced_before(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
    ) -> Result<Option<Cid>, RoundError> {
        let round = base.round;
        let Some(cid) = self.rounds.announced(&ctx.terms.cid, round)? else {
            return Ok(None);
        };
        let bytes = self.block_bytes(&cid)?;
        let signed = Signed::<Announcement>::from_bytes(&cid, &bytes)?;
        if signed.body.base != base.model_cid {
            // Made on a model the chain no longer holds: that round went on without it.
            tracing::info!(round, %cid, "the update announced before was made on another model");
            return Ok(None);
        }
        tracing::info!(round, %cid, "announcing again the update made before");
        self.publish_announcement(ctx, bytes).await;
        Ok(Some(signed.body.update))
    }

    /// In a task with a population, the sampled clients this node hosts for the round
    /// `base` opens (none: it sits the round out); `None` in a task without one (the node
    /// trains its own shard).
    pub(super) fn clients_due(&self, ctx: &Ctx, base: &RoundBase) -> Option<Vec<ClientId>> {
        let population = ctx.terms.task.population.as_ref()?;
        let members = ctx.terms.task.members.as_deref().unwrap_or_default();
        let me = self.node.peer_id();
        let sample = ctx.terms.sample(base.round)?;
        let hosted = population.hosted_by(&sample, &me, members);
        if self.config.attack != Some(Attack::UnsampledClient) {
            return Some(hosted);
        }
        // The first client this node hosts that the round did not sample.
        let index = members.iter().position(|p| *p == me)? as u64;
        let unsampled = (0..=u64::from(population.per_round))
            .map(|k| ClientId(index + k * members.len() as u64))
            .take_while(|c| c.0 < population.clients)
            .find(|c| !sample.contains(*c));
        tracing::info!(
            round = base.round,
            ?unsampled,
            "attack: training a client not sampled"
        );
        Some(unsampled.map_or(hosted, |c| vec![c]))
    }

    /// Trains from the round's model on the local data, or on each of `due` (the sampled
    /// clients this node hosts) in turn, averaging their updates by their samples; then
    /// clips and noises the update when the task asks.
    pub(super) async fn train(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        data: &LocalData,
        due: Option<Vec<ClientId>>,
    ) -> Result<Trained, RoundError> {
        let round = base.round;
        let task = ctx.terms.task.clone();
        let arch = ctx.terms.architecture;
        let global = base.model.clone();
        let device = self.config.backend.device();
        let node_seed = task
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(self.config.shard.unwrap_or(0) as u64);
        // In a population, the clients due and what deals them their images (each client's
        // are cut from the pool as it trains, so one client's images are held at a time).
        let dealt = match (due, &ctx.terms.clients) {
            (None, _) => None,
            (Some(due), Some(clients)) => Some((clients.clone(), due)),
            (Some(_), None) => return Err(RoundError::NoPool),
        };
        let images = data.train.clone();
        // Held until the training ends, even one whose result is no longer wanted.
        let slot = self.config.limits.training_slot().await?;
        // Rounds of a few steps go on from where the node's last round ended: its momentum,
        // its place in its data and its throughput. Only the previous round's momentum still
        // points where the model is going.
        let carry = lock(&ctx.carry).take().filter(|c| c.round + 1 == round);
        let span = task.train.steps.map(|steps| {
            let advertised: Vec<f64> = ctx
                .inbox
                .announcements(round.saturating_sub(1))
                .iter()
                .filter_map(|(_, a)| a.body.capacity)
                .collect();
            let own = carry.as_ref().map(|c| c.capacity);
            Span {
                first: carry
                    .as_ref()
                    .map_or(u64::from(round.saturating_sub(1)) * u64::from(steps), |c| {
                        c.next_batch
                    }),
                steps: task.train.load.local_steps(steps, own, &advertised),
                nominal: steps,
            }
        });
        let carried = carry.map(|c| c.momentum);
        let keep = span.map(|_| ctx.carry.clone());
        let epsilon = match dealt {
            Some(_) => None,
            None => sample_epsilon(&task, images.len() as u64, round)?,
        };
        let pace = self.config.pace;
        let capacity_load = task.train.load == fl_core::records::Load::Capacity;
        let stop = span
            .filter(|_| capacity_load)
            .map(|span| self.early_stop(ctx, round, span.nominal));
        let started = Instant::now();
        // A population's clients are clipped and noised as they are summed.
        let clip = client_dp(&task).filter(|_| dealt.is_some());
        let (update, samples, clients, capacity, span) = blocking(move || {
            slot.run(|| {
                if let Some((clients, due)) = dealt {
                    let pool = Pool {
                        images: &images,
                        clients: &clients,
                    };
                    let (update, samples, clients) =
                        train_clients(&task, arch, &global, &pool, &due, round, &device, clip)?;
                    return Ok((update, samples, clients, None, None));
                }
                let config = train_config(&task, round, node_seed);
                let shard_images = images.len() as u64;
                let batches = local_batches(arch, images, &config, round, node_seed, span);
                let began = Instant::now();
                let taken = std::cell::Cell::new(0u32);
                let stopped = std::cell::Cell::new(false);
                let (outcome, ended) = fl_core::model::train_carrying(
                    arch,
                    &global,
                    &batches,
                    &config,
                    &device,
                    carried,
                    |_| {
                        taken.set(taken.get().saturating_add(1));
                        sleep_out(pace, began, taken.get());
                        let now = stop.as_ref().is_some_and(|s| s.now(taken.get()));
                        stopped.set(now);
                        !now
                    },
                )?;
                // Images a second over the steps (the model's build left out).
                let (images, seconds) = outcome.epochs.iter().fold((0.0, 0.0), |(n, t), e| {
                    (n + e.samples as f64, t + e.seconds)
                });
                let capacity = images / f64::max(seconds, 1e-9);
                // The steps taken, where the median member's announcement cut them short.
                let span = span.map(|s| match stopped.get() {
                    true => Span {
                        steps: taken.get().clamp(1, s.steps.max(1)),
                        ..s
                    },
                    false => s,
                });
                if let (Some(carry), Some(span)) = (keep, span) {
                    *lock(&carry) = Some(Carry {
                        round,
                        momentum: ended,
                        next_batch: span.first + u64::from(span.steps),
                        capacity,
                    });
                }
                let (update, samples) = match span {
                    Some(span) => {
                        let most = Terms::sample_bound(&task, Some(shard_images));
                        span.normalise(outcome.update, outcome.samples as u64, most)
                    }
                    None => (outcome.update, outcome.samples as u64),
                };
                Ok::<_, RoundError>((update, samples, Vec::new(), Some(capacity), span))
            })
        })
        .await??;
        tracing::debug!(round, ?span, ?capacity, "trained");
        let update = match clip {
            Some(_) => update,
            None => privatize_client(&ctx.terms.task, update)?,
        };
        Ok(Trained {
            update: match self.config.attack {
                Some(attack) => attack.update(update),
                None => update,
            },
            samples,
            clients,
            seconds: started.elapsed().as_secs_f64(),
            epsilon,
            steps: span.filter(|s| s.steps != s.nominal).map(|s| s.steps),
            capacity: capacity.filter(|_| capacity_load),
        })
    }

    /// Stores a trained update and announces it (signed); returns the update and its
    /// samples.
    pub(super) async fn announce(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        trained: Trained,
    ) -> Result<(Cid, u64), RoundError> {
        let round = base.round;
        let attack = self.config.attack;
        let copied = match attack {
            Some(Attack::CopyUpdate) => self.others_update(ctx, base).await,
            _ => None,
        };
        let update_cid = match copied {
            Some(cid) => cid,
            None if attack == Some(Attack::DagBomb) => {
                // Three blocks that name 256 GB: 256 KiB linked 1,000 times, that 1,000 times.
                fl_core::content::unixfs::bomb(self.repo.blocks(), 256 << 10, 1000, 2).map_err(
                    |source| RoundError::StoreRecord {
                        what: "update",
                        source,
                    },
                )?
            }
            None if ctx.terms.secure.is_some() => {
                self.store_masked(ctx, round, &trained.update).await?
            }
            None => trained
                .update
                .store_encoded(&self.repo, ctx.terms.task.update_encoding)
                .map_err(|source| RoundError::Store {
                    what: "update",
                    source,
                })?,
        };
        let samples = attack.map_or(trained.samples, |a| a.claimed_samples(trained.samples));
        let signed = Signed::sign(
            Announcement {
                task: ctx.terms.cid,
                round,
                base: base.model_cid,
                update: update_cid,
                samples,
                epochs: ctx.terms.task.train.epochs,
                epsilon: trained.epsilon,
                clients: trained.clients,
                steps: trained.steps,
                capacity: trained.capacity,
            },
            &self.key,
        )?;
        let block = signed.to_block()?;
        let cid = *block.cid();
        let bytes = block.data().to_vec();
        self.repo
            .blocks()
            .put(block)
            .map_err(|source| RoundError::StoreRecord {
                what: "announcement",
                source,
            })?;
        // Remembered before it leaves, so a restart never makes a second one.
        self.repo.pin(&cid, PinMode::Direct)?;
        self.rounds.record_announced(&ctx.terms.cid, round, &cid)?;
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

    /// Attack `copy-update`: the update another member announced first on the round's base,
    /// waited for a while (`None` if none comes).
    async fn others_update(&self, ctx: &Ctx, base: &RoundBase) -> Option<Cid> {
        let me = self.node.peer_id();
        let until = Instant::now() + COPY_WAIT;
        while Instant::now() < until {
            let found = ctx
                .inbox
                .announcements(base.round)
                .into_iter()
                .find(|(_, a)| a.signer != me && a.body.base == base.model_cid);
            if let Some((_, a)) = found {
                tracing::info!(round = base.round, update = %a.body.update, "attack: announcing another's update");
                return Some(a.body.update);
            }
            ctx.inbox.changed(POLL).await;
        }
        None
    }

    pub(super) async fn publish_announcement(&self, ctx: &Ctx, bytes: Vec<u8>) {
        if let Err(why) = ctx
            .inbox
            .file_announcement(self.repo.blocks(), bytes.clone())
        {
            tracing::warn!("our own announcement was not filed: {why}");
            // Peers would refuse it too, and count it against this node (an attacker whose
            // announcement is the attack sends it all the same).
            let refused = why.acceptance(&self.node.peer_id()) == MessageAcceptance::Reject;
            let sent_anyway = matches!(
                self.config.attack,
                Some(Attack::InflateSamples(_) | Attack::UnsampledClient)
            );
            if refused && !sent_anyway {
                return;
            }
        }
        let _ = self
            .node
            .publish(&Task::updates_topic(&ctx.terms.cid), bytes.clone())
            .await;
        lock(&ctx.republish).announcement = Some(bytes);
    }

    /// The node's training images (in a task with a population, the pool its clients are
    /// dealt from: every shard, which joining fetched) and, where the task has one, the
    /// test set.
    pub(super) async fn local_data(&self, terms: &Terms) -> Result<LocalData, RoundError> {
        match &terms.task.data {
            DataSource::Shards { manifest } if terms.task.population.is_some() => {
                let dataset = shard::manifest(self.repo.blocks(), manifest)?;
                self.inputs
                    .dag(dataset.test.cid, "the test set", None, u64::MAX)
                    .await?;
                let train = shard::fetch_pool(self.repo.blocks(), &dataset)?;
                Ok(LocalData {
                    train,
                    test: Some(self.test_batches(terms, &dataset)?),
                })
            }
            DataSource::Shards { manifest } => {
                let shard_index = self.config.shard.ok_or(RoundError::NoShard)?;
                self.inputs.block(*manifest, "the dataset manifest").await?;
                let dataset = shard::manifest(self.repo.blocks(), manifest)?;
                let entry =
                    dataset
                        .shards
                        .get(shard_index)
                        .ok_or_else(|| RoundError::NoSuchShard {
                            index: shard_index,
                            shards: dataset.shards.len(),
                        })?;
                self.inputs
                    .dag(entry.cid, "this node's shard", None, u64::MAX)
                    .await?;
                self.inputs
                    .dag(dataset.test.cid, "the test set", None, u64::MAX)
                    .await?;
                let train = shard::fetch_shard(self.repo.blocks(), &dataset, shard_index)?;
                Ok(LocalData {
                    train,
                    test: Some(self.test_batches(terms, &dataset)?),
                })
            }
            DataSource::OwnData => {
                let dir = self.config.own_data.as_ref().ok_or(RoundError::NoData)?;
                let data = datasets::cifar10::load(dir).map_err(|source| RoundError::OwnData {
                    dir: dir.clone(),
                    source,
                })?;
                Ok(LocalData {
                    train: data.train,
                    test: None,
                })
            }
        }
    }
}

impl Participant {
    /// The task's test set as evaluation batches.
    fn test_batches(
        &self,
        terms: &Terms,
        dataset: &shard::DatasetManifest,
    ) -> Result<Vec<Batch>, RoundError> {
        let test = shard::fetch_test(self.repo.blocks(), dataset)?;
        let mut config = PipelineConfig::evaluation(EVAL_BATCH);
        config.normalization = terms.architecture.normalization();
        Ok(Pipeline::new(test, config).collect_epoch(0))
    }
}

/// A population's pool of images and how its clients are dealt them.
struct Pool<'a> {
    images: &'a Images,
    clients: &'a datasets::population::Clients,
}

/// Trains each client of `due` from `global` in turn on its images of `pool`, as the task
/// sets it, each seeded by its number and the round (a client trains the same wherever it
/// is hosted); returns the update, its weight and the clients it counts. Without DP: the
/// clients' updates averaged by their samples, weighed by the samples. With client-level
/// DP (`clip`: C and z): each client's update clipped to C, their sum noised once with
/// N(0, (zC)²) per value (this host's full share: its update alone is protected), divided
/// by the clients; every client weighs one. A client whose training diverges (a NaN loss or
/// parameter) is left out of the round, not the host; when every one does, the host's
/// training has diverged.
#[allow(clippy::too_many_arguments)]
fn train_clients(
    task: &Task,
    arch: Architecture,
    global: &Bundle,
    pool: &Pool<'_>,
    due: &[ClientId],
    round: u32,
    device: &fl_core::model::Device,
    clip: Option<(f64, f64)>,
) -> Result<(Bundle, u64, Vec<ClientId>), RoundError> {
    let mut sum: Vec<f64> = Vec::new();
    let mut first: Option<Bundle> = None;
    let mut diverged = None;
    let (mut samples, mut clients) = (0u64, Vec::with_capacity(due.len()));
    for &client in due {
        let indices = pool
            .clients
            .images(client)
            .ok_or(RoundError::NoSuchClient(client))?;
        let images = pool.images.subset(&indices);
        let seed = task.seed.wrapping_mul(1_000_003).wrapping_add(client.0);
        let config = train_config(task, round, seed);
        let batches = local_batches(arch, images, &config, round, seed, None);
        let outcome = match fl_core::model::train(arch, global, &batches, &config, device) {
            Ok(outcome) => outcome,
            Err(
                e @ (fl_core::model::TrainError::NonFinite { .. }
                | fl_core::model::TrainError::NonFiniteParameter { .. }),
            ) => {
                tracing::warn!(client = client.0, "left out of the round: {e}");
                diverged = Some(e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut flat = outcome.update.flatten();
        let weight = match clip {
            Some((c, _)) => {
                fl_core::privacy::clip::clip_flat(&mut flat, c)
                    .map_err(fl_core::privacy::NoiseError::from)?;
                1
            }
            None => outcome.samples as u64,
        };
        sum.resize(flat.len(), 0.0);
        for (s, x) in sum.iter_mut().zip(&flat) {
            *s += weight as f64 * f64::from(*x);
        }
        samples += weight;
        clients.push(client);
        first.get_or_insert(outcome.update);
    }
    let Some(layout) = first else {
        return Err(diverged
            .unwrap_or(fl_core::model::TrainError::NoData)
            .into());
    };
    let mut values: Vec<f32> = sum.iter().map(|s| *s as f32).collect();
    if let Some((c, z)) = clip {
        let noise = fl_core::privacy::GaussianNoise::from_config(
            &fl_core::privacy::NoiseConfig::new(c, z),
        )?;
        noise.add_to(&mut values)?;
    }
    let over = samples.max(1) as f32;
    values.iter_mut().for_each(|v| *v /= over);
    let mut update = layout
        .with_flat(&values)
        .map_err(|e| fl_core::model::TrainError::Model(e.into()))?;
    update.set_metadata(fl_core::model::train::META_SAMPLES, samples.to_string());
    Ok((update, samples, clients))
}

/// Sample-level DP: the epsilon this node's `samples` examples will have spent after
/// `round`, refused past the task's budget (DP-SGD on every local step); `None` without it.
fn sample_epsilon(task: &Task, samples: u64, round: u32) -> Result<Option<f64>, RoundError> {
    let Some(dp) = task
        .dp
        .as_ref()
        .filter(|dp| dp.level() == fl_core::records::DpLevel::Sample)
    else {
        return Ok(None);
    };
    if dp.delta >= 1.0 / samples.max(1) as f64 {
        let refused = fl_core::privacy::plan::PlanError::Delta {
            delta: dp.delta,
            examples: samples,
        };
        return Err(refused.into());
    }
    let epsilon = dp.sample_epsilon(&task.train, samples, round)?;
    if let Some(budget) = dp.epsilon_budget.filter(|&b| epsilon > b) {
        return Err(RoundError::BudgetSpent {
            round,
            epsilon,
            budget,
        });
    }
    Ok(Some(epsilon))
}

/// The local training of `round` as the task sets it, seeded from the node's seed.
fn train_config(task: &Task, round: u32, node_seed: u64) -> TrainConfig {
    let t = &task.train;
    let private = task
        .dp
        .as_ref()
        .filter(|dp| dp.level() == fl_core::records::DpLevel::Sample);
    TrainConfig {
        epochs: t.epochs as usize,
        batch_size: t.batch_size as usize,
        learning_rate: t.schedule.rate(t.learning_rate, round, task.rounds),
        momentum: t.momentum,
        weight_decay: t.weight_decay,
        proximal_mu: t.proximal_mu,
        seed: node_seed.wrapping_add(u64::from(round) * 7919),
        dp_sgd: private.map(|dp| DpSgdConfig {
            clip_norm: dp.clip_norm,
            noise_multiplier: dp.noise_multiplier,
            steps_per_epoch: t.steps.map(|s| s as usize),
        }),
        ..TrainConfig::default()
    }
}

/// The batches `round` trains on: an epoch (or, with DP-SGD, every example as it is, for it
/// draws its own batches), or, in a task of local steps, `span`'s steps of one stream of
/// epochs for the node's whole run.
fn local_batches(
    arch: Architecture,
    images: Images,
    config: &TrainConfig,
    round: u32,
    node_seed: u64,
    span: Option<Span>,
) -> Vec<Batch> {
    let mut pipeline = PipelineConfig::training(config.batch_size, config.seed);
    pipeline.normalization = arch.normalization();
    match span {
        _ if config.dp_sgd.is_some() => {
            pipeline.augment = false;
            pipeline.shuffle = false;
            Pipeline::new(images, pipeline).collect_epoch(0)
        }
        None => Pipeline::new(images, pipeline).collect_epoch(u64::from(round)),
        Some(span) => {
            pipeline.seed = node_seed;
            Pipeline::new(images, pipeline).steps(span.first, span.steps as usize)
        }
    }
}

/// Client-level DP's clip norm and noise multiplier, where the task asks for it.
fn client_dp(task: &Task) -> Option<(f64, f64)> {
    task.dp
        .as_ref()
        .filter(|dp| dp.level() == fl_core::records::DpLevel::Client)
        .map(|dp| (dp.clip_norm, dp.noise_multiplier))
}

/// Client-level DP: the update clipped and noised as the task sets it (as it is without);
/// under secure aggregation with this member's share of the noise.
fn privatize_client(task: &Task, update: Bundle) -> Result<Bundle, RoundError> {
    let Some((clip_norm, z)) = client_dp(task) else {
        return Ok(update);
    };
    let mut noise = fl_core::privacy::NoiseConfig::new(clip_norm, z);
    // Under secure aggregation only the sum is seen: each member adds its share, so that
    // the sum of any threshold of members (the fewest a round unmasks) carries z·C.
    if let Some(secure) = &task.secure {
        noise = noise.distributed(u32::from(secure.threshold));
    }
    fl_core::privacy::privatize(&update, &noise)
        .map(|(private, _)| private)
        .map_err(RoundError::from)
}
