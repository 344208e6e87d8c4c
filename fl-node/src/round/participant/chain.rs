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
        self.rounds
            .record_chain(&ctx.terms.cid, reorg.from, &cids)?;
        let Some((head, last)) = reorg.chain.last().cloned() else {
            return Err(RoundError::EmptyChain);
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
                .filter(|(_, m)| ctx.terms.task.scores(m.body.round))
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
        verify::base(&self.inputs, &ctx.terms, round, head.zip(head_manifest)).await
    }

    /// A chain that parts from this node's at a round it has decided and wins the fork choice
    /// there ([`machine::Standing`]: more updates counted, then the signer placed first): its
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
        lock(&ctx.verdicts).decided(done);
        let vouched = self.vouched(ctx);
        for (tip, signed) in self.rival_tips(ctx, &vouched)? {
            let vouched = vouched.contains(&tip);
            let Some(path) = self.path_to_fork(ctx, tip, signed).await? else {
                continue;
            };
            let Some(from) = path
                .first()
                .map(|(_, m)| m.body.round)
                .filter(|r| *r <= done)
            else {
                lock(&ctx.verdicts).settled(tip);
                continue;
            };
            let Some(our_cid) = self.rounds.adopted(&ctx.terms.cid, from)? else {
                continue;
            };
            let our = self.load_manifest(&our_cid)?;
            let (first_cid, first) = &path[0];
            let (rival, ours) = (
                machine::Standing::of(*first_cid, first),
                machine::Standing::of(our_cid, &our),
            );
            if !machine::wins(&rival, &ours) {
                lock(&ctx.verdicts).settled(tip);
                continue;
            }
            let valid = self.holding_part(ctx, from, path, vouched, emit).await?;
            if !valid.is_empty() {
                return Ok(Some(Reorg { from, chain: valid }));
            }
        }
        Ok(None)
    }

    /// Heads that a live peer other than their signer stands on: that peer checked them (or
    /// made their inputs its own), so they are worth looking at again at the short pace.
    fn vouched(&self, ctx: &Ctx) -> HashSet<Cid> {
        let mut out = HashSet::new();
        for peer in ctx.inbox.live_peers() {
            if let Some(head) = ctx.inbox.head_of(&peer)
                && !out.contains(&head)
                && ctx
                    .inbox
                    .manifest(&head)
                    .is_some_and(|(_, m)| m.signer != peer)
            {
                out.insert(head);
            }
        }
        out
    }

    /// Manifests not on this node's chain, not yet settled, newest round first (a fork wins
    /// or loses for its whole chain), at most [`MAX_TIPS`]. One whose inputs stayed out of
    /// reach waits out the long pause unless another peer stands on it (`vouched`).
    fn rival_tips(
        &self,
        ctx: &Ctx,
        vouched: &HashSet<Cid>,
    ) -> Result<Vec<SignedManifest>, RoundError> {
        let mut tips = Vec::new();
        for round in ctx.inbox.manifest_rounds() {
            let adopted = self.rounds.adopted(&ctx.terms.cid, round)?;
            let v = lock(&ctx.verdicts);
            let now = Instant::now();
            tips.extend(ctx.inbox.manifests(round).into_iter().filter(|(c, _)| {
                Some(*c) != adopted && v.open_rival(c, vouched.contains(c), now) && !v.is_settled(c)
            }));
            if tips.len() >= MAX_TIPS {
                break;
            }
        }
        tips.truncate(MAX_TIPS);
        Ok(tips)
    }

    /// The manifests from `tip` back along its `prev` links to the round where it parts
    /// from this node's chain, oldest first; `None` when it does not part from it within
    /// what this node decided (settled), or when an earlier manifest cannot be fetched
    /// (looked at again after a pause, like a manifest it cannot check).
    async fn path_to_fork(
        &self,
        ctx: &Ctx,
        tip: Cid,
        signed: Arc<Signed<Manifest>>,
    ) -> Result<Option<Vec<SignedManifest>>, RoundError> {
        let ours = |round: u32| self.rounds.adopted(&ctx.terms.cid, round);
        let mut path = vec![(tip, signed)];
        loop {
            let Some((_, m)) = path.last() else {
                return Ok(None);
            };
            let round = m.body.round;
            if round == 1 {
                break;
            }
            let (Some(our_prev), Some(prev)) = (ours(round - 1)?, m.body.prev) else {
                // Beyond what this node decided: not a fork (yet).
                lock(&ctx.verdicts).settled(tip);
                return Ok(None);
            };
            if prev == our_prev {
                break;
            }
            if path.len() > ctx.terms.task.rounds as usize {
                lock(&ctx.verdicts).settled(tip);
                return Ok(None);
            }
            let bytes = match self.inputs.block(prev, "an earlier manifest").await {
                Ok(bytes) => bytes,
                Err(e) => {
                    let pause = lock(&ctx.verdicts).unreachable(tip, Instant::now());
                    tracing::info!(%tip, "cannot follow a chain back (again in {pause:?}): {}", chain(&e));
                    return Ok(None);
                }
            };
            match Signed::<Manifest>::from_bytes(&prev, &bytes) {
                Ok(p)
                    if p.body.round.checked_add(1) == Some(round)
                        && p.body.task == ctx.terms.cid =>
                {
                    path.push((prev, Arc::new(p)));
                }
                _ => {
                    lock(&ctx.verdicts).settled(tip);
                    return Ok(None);
                }
            }
        }
        path.reverse();
        Ok(Some(path))
    }

    /// The part of a rival chain parting at round `from` that holds up to recomputation,
    /// checked round by round from the base both chains share (a manifest out of reach at
    /// the long pause, unless another peer stands on the chain's tip: `vouched`).
    async fn holding_part(
        &self,
        ctx: &Ctx,
        from: u32,
        path: Vec<SignedManifest>,
        vouched: bool,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Vec<SignedManifest>, RoundError> {
        let (mut prev, mut prev_manifest) = match from {
            1 => (None, None),
            r => {
                let c = self.rounds.adopted(&ctx.terms.cid, r - 1)?;
                let m = c
                    .map(|c| self.load_manifest(&c).map(Arc::new))
                    .transpose()?;
                (c, m)
            }
        };
        let mut valid = Vec::new();
        for (cid, m) in path {
            // A manifest whose inputs stayed out of reach is not fetched again before its
            // pause is out, whichever tip of its chain leads here.
            if !lock(&ctx.verdicts).open_rival(&cid, vouched, Instant::now()) {
                break;
            }
            let base = match self
                .base(ctx, m.body.round, prev, prev_manifest.as_deref())
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
        Ok(valid)
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
            let bytes = self.inputs.block(cid, "an earlier manifest").await?;
            let signed = Signed::<Manifest>::from_bytes(&cid, &bytes)?;
            // Each link goes one round back, or the chain is not one.
            if signed.body.round.checked_add(1) != Some(at) {
                return Err(Refutation::BrokenLink {
                    manifest: cid,
                    round: signed.body.round,
                    from: at,
                }
                .into());
            }
            prev = signed.body.prev;
            at = signed.body.round;
            ctx.inbox.file_manifest(self.repo.blocks(), bytes)?;
        }
        Ok(())
    }
}
