//! How a round ends for this node: adopting a manifest that holds up, switching to a better
//! chain, or aggregating when its turn comes.

use super::*;

/// What a node waiting for a round's manifest keeps from one look to the next.
struct Waiting {
    expected: Expected,
    min: usize,
    deadline: Instant,
    grace: Duration,
    /// The manifest this node made for the round.
    made: Option<Cid>,
    /// Whether this node failed to aggregate and left the round to the next in rank.
    gave_up: bool,
    /// When an aggregator with too few usable updates tries again.
    retry_at: Option<Instant>,
    /// When this node last logged where it stands.
    said: Instant,
}

impl Participant {
    /// Waits for the round's manifest (checking each candidate, best rank first), or makes
    /// it when this node's turn comes.
    pub(super) async fn decide(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        done: u32,
        data: &LocalData,
        opened: Instant,
        emit: &mut impl FnMut(&Event),
    ) -> Result<Decision, RoundError> {
        let round = base.round;
        let task = &ctx.terms.task;
        let mut waiting = Waiting {
            expected: self.expected_participants(ctx, task, base).await?,
            min: task.min_participants as usize,
            deadline: opened + Duration::from_millis(task.round_deadline_ms),
            grace: Duration::from_millis(task.grace_ms),
            made: None,
            gave_up: false,
            retry_at: None,
            said: Instant::now(),
        };
        loop {
            self.report_evaluations(ctx, emit)?;
            if let Some(reorg) = self.better_chain(ctx, done, emit).await? {
                return Ok(Decision::Switch(reorg));
            }
            if let Some(adopt) = self.adoptable(ctx, base, waiting.made, emit).await {
                return Ok(adopt);
            }
            if ctx.inbox.latest_round() > round && self.newer_arrived(ctx, round).await {
                continue;
            }
            if waiting.made.is_none()
                && !waiting.gave_up
                && let Some((rank, announced)) = self.my_turn(ctx, base, &mut waiting)
            {
                emit(&Event::Aggregating {
                    round,
                    rank,
                    updates: announced.len(),
                });
                match self.aggregate(ctx, base, data, &announced, rank).await {
                    Ok((cid, _)) => waiting.made = Some(cid),
                    Err(e @ RoundError::TooFew { .. }) => {
                        // Wait for more updates, and try again.
                        tracing::info!(round, "not closing yet: {e}");
                        waiting.retry_at = Some(Instant::now() + RETRY_AGGREGATION);
                    }
                    Err(e) => {
                        // Leave the round to the next rank rather than stop.
                        tracing::warn!(round, "cannot aggregate: {e}");
                        waiting.gave_up = true;
                    }
                }
                continue;
            }
            ctx.inbox.changed(POLL).await;
        }
    }

    /// The round's manifest to adopt, if one has come that holds up: candidates continuing
    /// this node's chain (one found valid on another chain, before a switch, is not this
    /// round's), best rank first. `made` is the one this node made, if any.
    async fn adoptable(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        made: Option<Cid>,
        emit: &mut impl FnMut(&Event),
    ) -> Option<Decision> {
        let candidates = self.candidates(ctx, base);
        for (cid, signed) in candidates {
            let (checked, missed) = {
                let v = lock(&ctx.verdicts);
                (v.is_valid(&cid), v.pause(&cid).is_some())
            };
            if checked || made == Some(cid) {
                return Some(Decision::Adopt(cid, signed, true));
            }
            // The next round trains on it while it is recomputed (after the last round, the
            // recomputation comes before the node is done); a manifest whose inputs were
            // missing before is recomputed first.
            if !missed {
                if let Verdict::Valid = self.take_on_claims(ctx, base, &cid, &signed, emit).await {
                    return Some(Decision::Adopt(cid, signed, false));
                }
            } else if let Verdict::Valid = self.judge(ctx, base, &cid, &signed, emit).await {
                return Some(Decision::Adopt(cid, signed, true));
            }
        }
        None
    }

    /// The round's manifests worth looking at now, best first ([`machine::candidates`]).
    pub(super) fn candidates(&self, ctx: &Ctx, base: &RoundBase) -> Vec<SignedManifest> {
        let manifests = ctx.inbox.manifests(base.round);
        let order = machine::candidates(
            manifests
                .iter()
                .map(|(c, m)| (*c, m.body.rank, m.body.prev)),
            base.prev,
            &lock(&ctx.verdicts),
            Instant::now(),
        );
        let mut manifests: HashMap<Cid, Signed<Manifest>> = manifests.into_iter().collect();
        order
            .into_iter()
            .filter_map(|c| manifests.remove(&c).map(|m| (c, m)))
            .collect()
    }

    /// Whether following a newer manifest back brought a manifest for `round` not looked at
    /// yet. A newer manifest whose chain cannot be followed (yet, or ever: anyone may gossip
    /// one) is no reason to stop.
    async fn newer_arrived(&self, ctx: &Ctx, round: u32) -> bool {
        if let Err(e) = self.walk_back(ctx, round).await {
            tracing::info!(round, "cannot follow a newer manifest back: {e}");
        }
        ctx.inbox
            .manifests(round)
            .iter()
            .any(|(c, _)| lock(&ctx.verdicts).open(c, Instant::now()))
    }

    /// Whether it is this node's turn to aggregate the round (in the place of the first
    /// peer ranked ahead that is still heard from, when those ahead went quiet): its rank,
    /// and the announcements on the round's base. The first two in line fetch the updates
    /// while the round fills; the others fetch them to recompute the manifest, while the
    /// next round trains.
    fn my_turn(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        waiting: &mut Waiting,
    ) -> Option<(u32, Vec<SignedAnnouncement>)> {
        let me = self.node.peer_id();
        let round = base.round;
        let announced: Vec<SignedAnnouncement> = ctx
            .inbox
            .announcements(round)
            .into_iter()
            .filter(|(_, a)| a.body.base == base.model_cid)
            .collect();
        let anchor = base.prev.unwrap_or(ctx.terms.cid);
        let order = ranking(&anchor, round, announced.iter().map(|(_, a)| a.signer));
        if order.iter().take(PREFETCH_RANKS).any(|p| *p == me) {
            self.prefetch(ctx, round, &base.model_cid, base.model.file_limit());
        }
        let awaited = waiting
            .expected
            .awaited(&me, announced.iter().map(|(_, a)| &a.signer), |p| {
                ctx.inbox.gone(p)
            })
            .max(waiting.min)
            .max(self.following(ctx, base));
        if waiting.said.elapsed() >= STATUS_EVERY {
            waiting.said = Instant::now();
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
            min: waiting.min,
            deadline: waiting.deadline,
            grace: waiting.grace,
        };
        let now = Instant::now();
        let Turn::Aggregate { rank, ahead } =
            machine::turn(&view, &me, |p| ctx.inbox.gone(p), waiting.retry_at, now)
        else {
            return None;
        };
        if ahead < rank {
            tracing::info!(
                round,
                rank,
                quiet = rank - ahead,
                "aggregating in the place of peers ranked ahead that went quiet"
            );
        }
        Some((rank as u32, announced))
    }
}
