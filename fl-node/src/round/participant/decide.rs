//! How a round ends for this node: adopting a manifest that holds up, switching to a better
//! chain, or aggregating when its turn comes.

use super::*;

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
                    self.prefetch(ctx, round, &base.model_cid, base.model.file_limit());
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
}
