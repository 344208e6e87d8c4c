//! The round loop: joining a task, resuming where the node stood, playing each round
//! (train and announce, then adopt, make or follow its manifest), and serving after the
//! last until the federation settles.

use super::*;

impl Participant {
    /// The round loop: joins, resumes where the node stood, plays the rounds, confirms
    /// the last manifest taken on its claims, and serves until the federation settles.
    pub(super) async fn rounds_of_task(
        self,
        mut emit: impl FnMut(&Event),
    ) -> Result<Cid, RoundError> {
        let (ctx, data) = self.join().await?;
        let mut at = self.resume(&ctx, &mut emit).await?;
        // Rounds, then (after the last) serving while peers finish; a switch to a better
        // chain can take the node back to rounds it had decided. A manifest taken on its
        // claims is recomputed while the next round trains on it, and confirmed before the
        // next update is announced: a refuted one takes the node back to where it stood.
        let mut pending: Option<Pending> = None;
        loop {
            while at.0 < ctx.terms.task.rounds {
                at = self.round(&ctx, &data, at, &mut pending, &mut emit).await?;
            }
            if let Some(before) = self.confirm(&ctx, pending.take(), &mut emit).await? {
                at = before;
                continue;
            }
            at = self.serve(&ctx, &data, at, &mut emit).await?;
            if at.0 >= ctx.terms.task.rounds {
                break;
            }
        }
        let model = match &at.2 {
            Some(m) => m.body.model,
            None => ctx.terms.task.initial_model,
        };
        self.repo.pin(&model, PinMode::Recursive)?;
        emit(&Event::Done {
            model: model.to_string(),
            rounds: ctx.terms.task.rounds,
        });
        Ok(model)
    }

    /// Fetches the task record (a provider busy with many joining peers gets a few tries),
    /// checks this node may take part, and sets up what the rounds need: the inbox, the
    /// republisher and the local data. What the record links to (model, data) is fetched
    /// as it is needed.
    async fn join(&self) -> Result<(Ctx, LocalData), RoundError> {
        let me = self.node.peer_id();
        let task_cid = self.config.task;
        let mut tries = 0;
        let task_bytes = loop {
            match self.inputs.block(task_cid, "the task record").await {
                Ok(bytes) => break bytes,
                Err(e) if tries < JOIN_TRIES => {
                    tries += 1;
                    tracing::info!("trying again to fetch the task record: {}", chain(&e));
                    tokio::time::sleep(JOIN_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        };
        let terms = Terms::decode(task_cid, task_bytes)?;
        let terms = Arc::new(verify::bound_by_data(&self.inputs, terms).await?);
        if !terms.task.admits(&me) {
            return Err(RoundError::NotMember(me));
        }
        self.repo.pin(&task_cid, PinMode::Direct)?;
        let inbox = Inbox::start(
            &self.node,
            terms.clone(),
            Arc::new(self.repo.blocks().clone()),
        )
        .await?;
        let republish = Arc::new(Mutex::new(republish::Records::default()));
        republish::spawn(self.node.clone(), &task_cid, republish.clone());
        let ctx = Ctx {
            terms: terms.clone(),
            inbox,
            republish,
            verdicts: Mutex::default(),
            prefetched: Mutex::default(),
            prefetching: Arc::new(tokio::sync::Semaphore::new(PREFETCH_AT_ONCE)),
            unevaluated: Mutex::default(),
            carry: Arc::default(),
            secure: Mutex::default(),
        };
        let data = self.local_data(&terms).await?;
        Ok((ctx, data))
    }

    /// Where this node stands when it (re)starts: its stored head, after listening a while
    /// for peers' heads (peers re-publish their latest manifest when a peer joins: a node
    /// that restarts, or joins late, hears where the chain is before it decides to train).
    async fn resume(
        &self,
        ctx: &Ctx,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Position, RoundError> {
        if !self.node.peers().await?.is_empty() {
            let listen_until = Instant::now() + republish::TICK * 4;
            while ctx.inbox.latest_round() == 0 && Instant::now() < listen_until {
                ctx.inbox.changed(POLL).await;
            }
        }
        let (done, head) = self.rounds.head(&ctx.terms.cid)?;
        let head_manifest = match head {
            Some(cid) => Some(Arc::new(self.load_manifest(&cid)?)),
            None => None,
        };
        if let Some(bytes) = head.map(|c| self.block_bytes(&c)).transpose()? {
            lock(&ctx.republish).head = Some(bytes);
        }
        ctx.inbox.close_through(done);
        emit(&Event::Joined {
            peer: self.node.peer_id().to_string(),
            task: ctx.terms.cid.to_string(),
            rounds: ctx.terms.task.rounds,
            from_round: done + 1,
        });
        Ok((done, head, head_manifest))
    }

    /// Plays the round after `at`: trains and announces (unless the round is closed already
    /// or this node announced before a restart), then waits for, makes or follows its
    /// manifest. Returns where the node then stands: one round on, or back where a refuted
    /// manifest or a better chain puts it.
    async fn round(
        &self,
        ctx: &Ctx,
        data: &LocalData,
        at: Position,
        pending: &mut Option<Pending>,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Position, RoundError> {
        let (done, head, head_manifest) = at;
        let round = done + 1;
        tracing::Span::current().record("round", round);
        let opened = Instant::now();
        let base = self
            .base(ctx, round, head, head_manifest.as_deref())
            .await?;
        let closed = self.closed_already(ctx, &base, emit).await;
        let announced = !closed && self.rounds.announced(&ctx.terms.cid, round)?.is_some();
        let due = self.clients_due(ctx, &base);
        let mut train_seconds = 0.0;
        if closed || announced {
            if let Some(before) = self.confirm(ctx, pending.take(), emit).await? {
                return Ok(before);
            }
            if let Some(update) = self.announced_before(ctx, &base).await? {
                emit(&Event::AnnouncedAgain {
                    round,
                    update: update.to_string(),
                });
            }
        } else if due.as_ref().is_some_and(Vec::is_empty) {
            if let Some(before) = self.confirm(ctx, pending.take(), emit).await? {
                return Ok(before);
            }
            let sampled = ctx.terms.sample(round).map_or(0, |s| s.len());
            tracing::info!(round, "none of this node's clients was sampled");
            emit(&Event::NotSampled { round, sampled });
        } else {
            // A secure round's keys and shares go out while the node trains.
            let setup = self.start_secure(ctx, round);
            let trained = match self
                .train_confirming(ctx, &base, data, due, pending.take(), emit)
                .await?
            {
                ControlFlow::Continue(trained) => trained?,
                ControlFlow::Break(before) => return Ok(before),
            };
            train_seconds = trained.seconds;
            if self.set_up(ctx, round, setup).await {
                let epsilon = trained.epsilon;
                let clients = trained.clients.iter().map(|c| c.0).collect();
                let steps = trained.steps;
                let (update, samples) = self.announce(ctx, &base, trained).await?;
                self.misbehave(ctx, &base);
                emit(&Event::Announced {
                    round,
                    update: update.to_string(),
                    samples,
                    train_seconds,
                    epsilon,
                    clients,
                    steps,
                });
            }
        }
        let (cid, signed, checked) = match self.decide(ctx, &base, done, data, opened, emit).await?
        {
            Decision::Adopt(cid, signed, checked) => (cid, signed, checked),
            Decision::Switch(reorg) => return self.switch_to(ctx, reorg, emit),
        };
        let taken = Pending {
            cid,
            signed: signed.clone(),
            base,
            before: (done, head, head_manifest),
            seconds: opened.elapsed().as_secs_f64(),
            train_seconds,
        };
        if checked {
            self.commit(ctx, &taken, emit).await?;
        } else {
            tracing::info!(round, %cid, "took the round's manifest on its claims; recomputing it");
            *pending = Some(taken);
        }
        Ok((round, Some(cid), Some(signed)))
    }

    /// Whether the round `base` opens is closed already, so this node need not train for
    /// it. A node that is behind (restarted, or joined late) does not train for rounds that
    /// others have already closed: a chain of manifests from a later round back to this
    /// one, continuing this node's (a lone manifest for a later round proves nothing:
    /// anyone may sign one). Nor for a round whose manifest is out already, once its claims
    /// hold (a refuted one leaves the round open: the node trains after all).
    async fn closed_already(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        emit: &mut impl FnMut(&Event),
    ) -> bool {
        let round = base.round;
        let latest = ctx.inbox.latest_round();
        if latest > round {
            if let Err(e) = self.walk_back(ctx, round).await {
                tracing::info!(round, "cannot follow a newer manifest back: {}", chain(&e));
            }
            return !self.candidates(ctx, base).is_empty();
        }
        if latest == round {
            for (c, m) in self.candidates(ctx, base) {
                if matches!(
                    self.take_on_claims(ctx, base, &c, &m, emit).await,
                    Verdict::Valid
                ) {
                    return true;
                }
            }
        }
        false
    }

    /// Trains for the round `base` opens while the manifest taken on its claims before
    /// (`pending`) is recomputed; breaks with where the node stood before it, when it is
    /// refuted (the training, on a model that did not hold up, is left to finish on its own,
    /// unsent: the next training waits for it).
    async fn train_confirming(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        data: &LocalData,
        due: Option<Vec<ClientId>>,
        pending: Option<Pending>,
        emit: &mut impl FnMut(&Event),
    ) -> Result<ControlFlow<Position, Result<Trained, RoundError>>, RoundError> {
        let training = self.train(ctx, base, data, due);
        let confirming = self.confirm(ctx, pending, emit);
        tokio::pin!(training, confirming);
        Ok(tokio::select! {
            back = &mut confirming => match back? {
                Some(before) => ControlFlow::Break(before),
                None => ControlFlow::Continue(training.await),
            },
            trained = &mut training => match confirming.await? {
                Some(before) => ControlFlow::Break(before),
                None => ControlFlow::Continue(trained),
            },
        })
    }

    /// After the last round: keeps serving the last blocks (and the head) to peers still
    /// finishing, and follows a better chain if one turns up meanwhile, until every peer
    /// still heard from follows the same head (after a short settling time, for rivals
    /// still in flight) or the linger time runs out. Returns where the node then stands
    /// (before the last round when a better chain took it back).
    async fn serve(
        &self,
        ctx: &Ctx,
        data: &LocalData,
        mut at: Position,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Position, RoundError> {
        let me = self.node.peer_id();
        let started = Instant::now();
        let settle_until = started + self.config.linger;
        while let Some(c) = at.1 {
            let now = Instant::now();
            if now >= settle_until {
                break;
            }
            if let Some(reorg) = self.better_chain(ctx, at.0, emit).await? {
                at = self.switch_to(ctx, reorg, emit)?;
                if at.0 < ctx.terms.task.rounds {
                    return Ok(at);
                }
                continue;
            }
            // No better chain in sight: done once every live peer follows this head, and
            // its evaluation is here (when the task has a test set).
            self.report_evaluations(ctx, emit)?;
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
        Ok(at)
    }
}
