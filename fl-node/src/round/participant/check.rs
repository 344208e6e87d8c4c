//! Checking manifests: on their claims to train on at once, by recomputation before adopting
//! them, and the verdicts that come of it.

use super::*;

impl Participant {
    /// Recomputes a manifest taken on its claims (if any) and adopts it; returns where the
    /// node stood before taking it when it does not hold up (or cannot be checked yet).
    pub(super) async fn confirm(
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
    /// node's head, said, and its model provided; the round that falls out of what the node
    /// keeps is dropped.
    pub(super) async fn commit(
        &self,
        ctx: &Ctx,
        p: &Pending,
        emit: &mut impl FnMut(&Event),
    ) -> Result<(), RoundError> {
        let (round, cid, signed) = (p.base.round, p.cid, &p.signed);
        // Pinned: a restart reads its head from the repo, and `fl ipfs gc` must not drop it.
        self.repo.pin(&cid, PinMode::Direct)?;
        self.rounds.record_adopted(&ctx.terms.cid, round, &cid)?;
        ctx.inbox.close_through(round);
        {
            let mut r = lock(&ctx.republish);
            r.head = Some(self.block_bytes(&cid)?);
            r.announcement = None;
            // A decided round's secure steps are of no use to anyone (the next round's,
            // sent while this one was checked, stay).
            for step in &mut r.secure {
                if step.as_ref().is_some_and(|(r, _)| *r <= round) {
                    *step = None;
                }
            }
        }
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
        // Said before anything else is awaited: peers may end the run as soon as they see
        // the new head, and the event must not be lost with it.
        let _ = self.node.provide(m.model).await;
        self.forget_old_round(ctx, round);
        if ctx.terms.task.scores(round) {
            lock(&ctx.unevaluated).push((round, cid, signed.signer, m.model));
        }
        self.report_evaluations(ctx, emit)
    }

    /// Checks a manifest once (or again, after a pause, while its inputs cannot be fetched)
    /// and remembers the verdict.
    pub(super) async fn judge(
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
        let started = Instant::now();
        let checked = self.check(ctx, base, cid, signed).await;
        if checked.is_ok() {
            lock(&ctx.verdicts).valid(*cid);
        }
        emit(&Event::Checked {
            round: signed.body.round,
            manifest: cid.to_string(),
            recomputed: self.config.checking.recomputes(cid),
            valid: checked.is_ok(),
            seconds: started.elapsed().as_secs_f64(),
        });
        Self::verdict(ctx, cid, signed.body.round, checked, emit)
    }

    /// Checks a manifest's claims only (signatures, entitlement, rank, what it lists) and
    /// that its model is here and loadable: enough to train on it while it is recomputed.
    pub(super) async fn take_on_claims(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        cid: &Cid,
        signed: &Signed<Manifest>,
        emit: &mut impl FnMut(&Event),
    ) -> Verdict {
        let round = signed.body.round;
        let mut looked = self.claims(ctx, base, signed).await.map(|_| ());
        if looked.is_ok() && round < ctx.terms.task.rounds {
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
    pub(super) fn verdict(
        ctx: &Ctx,
        cid: &Cid,
        round: u32,
        looked: Result<(), RoundError>,
        emit: &mut impl FnMut(&Event),
    ) -> Verdict {
        match looked {
            Ok(()) => Verdict::Valid,
            Err(e @ (RoundError::Fetch { .. } | RoundError::TooSlow { .. })) => {
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

    /// Checks manifest `cid` before it is adopted: its claims, and, when this node's
    /// [`Checking`](crate::round::Checking) draws it, a recomputation from the announcements
    /// it names.
    pub(super) async fn check(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        cid: &Cid,
        signed: &Signed<Manifest>,
    ) -> Result<(), RoundError> {
        let started = Instant::now();
        let m = &signed.body;
        let announcements = self.claims(ctx, base, signed).await?;
        if !self.config.checking.recomputes(cid) {
            // Not made here, so fetched: the model (the node adopts and serves it) and the
            // server state the next round starts from.
            self.inputs
                .dag(m.model, "the round's model", Some(signed.signer), u64::MAX)
                .await?;
            if let Some(state) = m.server_state {
                self.inputs
                    .dag(state, "the server state", Some(signed.signer), u64::MAX)
                    .await?;
            }
            return Ok(());
        }
        verify::updates(&self.inputs, base, m, &announcements).await?;
        verify::record(&self.inputs, base, signed).await?;
        let fetched = started.elapsed();
        let (repo, terms, base, manifest) = (
            self.repo.clone(),
            ctx.terms.clone(),
            base.clone(),
            m.clone(),
        );
        let slot = self.computing().await?;
        blocking(move || {
            let _slot = slot;
            verify::recompute(&repo, &terms, &base, &manifest, &announcements)
        })
        .await??;
        tracing::info!(
            round = m.round,
            "checked a manifest in {:.2} s (updates here at {:.2} s)",
            started.elapsed().as_secs_f64(),
            fetched.as_secs_f64()
        );
        Ok(())
    }

    /// Fetches the announcements a manifest lists and checks its claims against them
    /// ([`verify::claims`]); returns the announcements.
    pub(super) async fn claims(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        signed: &Signed<Manifest>,
    ) -> Result<Vec<(Cid, Signed<Announcement>)>, RoundError> {
        verify::claims(&self.inputs, &ctx.terms, base, signed).await
    }
}
