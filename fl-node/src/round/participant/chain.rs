//! The chain of manifests: the model a round starts from, rival chains and the switch to a
//! better one, and following a newer manifest back.

use super::*;

impl Participant {
    /// Follows a better chain from the round where it parts from this node's: records it in
    /// one step, re-publishes its head, and says so; returns the new position (last round
    /// decided, head and its manifest).
    pub(super) fn switch_to(
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
    pub(super) async fn base(
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

    /// A chain that parts from this node's at a round it has decided and wins the fork choice
    /// there (the lower rank, then the lower CID, of the two manifests for that round): its
    /// manifests from that round on that hold up to recomputation, checked in order. Every
    /// honest node that sees both chains ends up on the same one.
    pub(super) async fn better_chain(
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

    /// Files the manifests between the newest seen and `round` by following `prev` links.
    pub(super) async fn walk_back(&self, ctx: &Ctx, round: u32) -> Result<(), RoundError> {
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
            ctx.inbox.file_manifest(self.repo.blocks(), bytes)?;
        }
        Ok(())
    }
}
