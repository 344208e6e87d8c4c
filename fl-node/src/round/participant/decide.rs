//! How a round ends for this node: adopting a manifest that holds up, switching to a better
//! chain, or aggregating when its turn comes.

use super::*;
use crate::round::inclusion::{Closed, Inclusion, inclusion};
use fl_core::records::{RejectReason, rank_key};

/// What a node waiting for a round's manifest keeps from one look to the next.
struct Waiting {
    expected: Expected,
    /// Updates its first-ranked aggregator waits for, as of the last look.
    awaited: usize,
    /// This node and the live peers following the chain that are due to announce, as of
    /// the last look (`Participant::following`).
    following: Vec<PeerId>,
    /// When this node's view of the round closed (every awaited update in, or the
    /// deadline), once it has.
    closed: Option<Closed>,
    /// Signers of manifests that leave out updates this node had in time: passed over in
    /// the turn order, as if quiet.
    contested: HashSet<PeerId>,
    min: usize,
    deadline: Instant,
    grace: Duration,
    /// The manifest this node made for the round.
    made: Option<Cid>,
    /// Whether this node failed to aggregate and left the round to the next in rank.
    gave_up: bool,
    /// When an aggregator with too few usable updates tries again.
    retry_at: Option<Instant>,
    /// Attack `censor`: how many announcers it counted at its last try (`usize::MAX` once
    /// it published).
    censored: usize,
    /// When this node last logged where it stands.
    said: Instant,
    /// The most an update may hold: the size of the round's model.
    update_limit: u64,
    /// Updates found whole here (they stay so), and when each of the others was last found
    /// not to be: fair inclusion reads an update's blocks at most once per
    /// [`HOLDS_RECHECK`] however often the round is looked at.
    whole: HashMap<Cid, Option<Instant>>,
    /// Peers' heads judged for whether they stand elsewhere (`Participant::elsewhere`).
    heads: HashMap<Cid, bool>,
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
            awaited: 0,
            following: Vec::new(),
            closed: None,
            contested: HashSet::new(),
            min: ctx.terms.min_updates(round) as usize,
            deadline: opened + Duration::from_millis(task.round_deadline_ms),
            grace: Duration::from_millis(task.grace_ms),
            made: None,
            gave_up: false,
            retry_at: None,
            censored: 0,
            said: Instant::now(),
            update_limit: base.model.file_limit(),
            whole: HashMap::new(),
            heads: HashMap::new(),
        };
        loop {
            // Manifests filed from here on are new to this look.
            let look = Instant::now();
            self.report_evaluations(ctx, emit)?;
            self.answer_list(ctx, base, waiting.deadline, waiting.grace)
                .await;
            if let Some(reorg) = self.better_chain(ctx, done, emit).await? {
                return Ok(Decision::Switch(reorg));
            }
            let announced = self.announced_on(ctx, base);
            self.note_close(ctx, base, &mut waiting, &announced);
            if self.config.attack == Some(Attack::Censor) {
                self.censor(ctx, base, data, &announced, &mut waiting).await;
            }
            if let Some(adopt) = self
                .adoptable(ctx, base, &mut waiting, &announced, emit)
                .await
            {
                return Ok(adopt);
            }
            if ctx.inbox.latest_round() > round && self.newer_arrived(ctx, round, look).await {
                continue;
            }
            if waiting.made.is_none()
                && !waiting.gave_up
                && let Some(rank) = self.my_turn(ctx, base, &mut waiting, &announced)
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

    /// The round's manifest to adopt, if one has come that holds up and counts what this
    /// node had in time (fair inclusion, when this node announced: a manifest that leaves
    /// an update out is contested, and its signer passed over): candidates continuing this
    /// node's chain (one found valid on another chain, before a switch, is not this
    /// round's), best first. The one this node made is adopted as it is.
    async fn adoptable(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        waiting: &mut Waiting,
        announced: &[SignedAnnouncement],
        emit: &mut impl FnMut(&Event),
    ) -> Option<Decision> {
        let candidates = self.candidates(ctx, base);
        // The announcements on the base with when they came, when this node holds manifests
        // to fair inclusion.
        let held: Option<Vec<(Cid, Instant)>> =
            self.judges_inclusion(waiting, announced).then(|| {
                announced
                    .iter()
                    .filter_map(|(a, _)| Some((*a, ctx.inbox.arrived(base.round, a)?)))
                    .collect()
            });
        for (cid, signed) in candidates {
            if waiting.made == Some(cid) {
                return Some(Decision::Adopt(cid, signed, true));
            }
            if let Some(held) = &held
                && !self.fair(ctx, waiting, held, &cid, &signed, emit)
            {
                continue;
            }
            let (checked, missed) = {
                let v = lock(&ctx.verdicts);
                (v.is_valid(&cid), v.pause(&cid).is_some())
            };
            if checked {
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

    /// Whether this node holds manifests to fair inclusion now: it announced on the round's
    /// base (it stands to be left out, and may aggregate in the signer's place), it has not
    /// given up aggregating, and not every announcer has had its turn yet (after that, a
    /// manifest that counts less is better than none).
    fn judges_inclusion(&self, waiting: &Waiting, announced: &[SignedAnnouncement]) -> bool {
        let me = self.node.peer_id();
        let turns = waiting.grace * (announced.len() as u32 + 1);
        announced.iter().any(|(_, a)| a.signer == me)
            && !waiting.gave_up
            && Instant::now() < waiting.deadline + turns
    }

    /// Whether manifest `cid` counts every announcement this node `held` in time
    /// ([`inclusion`]): as a contribution, rejected for a reason it can check, or called
    /// unavailable while this node does not hold the update either. A manifest that does
    /// not is contested (said once).
    fn fair(
        &self,
        ctx: &Ctx,
        waiting: &mut Waiting,
        held: &[(Cid, Instant)],
        cid: &Cid,
        signed: &Signed<Manifest>,
        emit: &mut impl FnMut(&Event),
    ) -> bool {
        let m = &signed.body;
        let round = m.round;
        let held_here: HashSet<&Cid> = held.iter().map(|(a, _)| a).collect();
        let mut counted: HashSet<Cid> = m.contributions.iter().map(|c| c.announcement).collect();
        for r in &m.rejected {
            // Only what this node held in time bears on inclusion: an update called
            // unavailable is read here only for those.
            let left_out = r.reason == RejectReason::Unavailable
                && held_here.contains(&r.announcement)
                && self.holds(&r.update, waiting);
            if !left_out {
                counted.insert(r.announcement);
            }
        }
        let counts = |a: &Cid| counted.contains(a);
        let arrived = ctx.inbox.arrived(round, cid).unwrap_or_else(Instant::now);
        match inclusion(held, counts, arrived, waiting.closed, waiting.grace) {
            Inclusion::Fair => true,
            Inclusion::Early => false,
            Inclusion::LeavesOut(left_out) => {
                if waiting.contested.insert(signed.signer) {
                    tracing::warn!(round, manifest = %cid, %left_out, "contesting a manifest that leaves out an update this node had in time");
                    emit(&Event::Contested {
                        round,
                        manifest: cid.to_string(),
                        aggregator: signed.signer.to_string(),
                        left_out: left_out.to_string(),
                    });
                }
                false
            }
        }
    }

    /// Whether the whole of `update` (no larger than the round's model) is in this node's
    /// store. Its root alone is not enough: a fetch cut short by its deadline leaves the root
    /// and a few blocks of an update served at a trickle, and a node holding only those
    /// could not have counted it either. Read at most once per [`HOLDS_RECHECK`] an update.
    fn holds(&self, update: &Cid, waiting: &mut Waiting) -> bool {
        let now = Instant::now();
        match waiting.whole.get(update) {
            Some(None) => return true,
            Some(Some(at)) if now < *at + HOLDS_RECHECK => return false,
            _ => {}
        }
        // Its root is read first: a missing one ends the look at once.
        let whole = local_dag(&self.repo, *update, "an update", waiting.update_limit).is_ok();
        if waiting.whole.len() < MAX_ANNOUNCERS_PER_ROUND || waiting.whole.contains_key(update) {
            waiting.whole.insert(*update, (!whole).then_some(now));
        }
        whole
    }

    /// The round's manifests worth looking at now, best first ([`machine::candidates`]).
    pub(super) fn candidates(&self, ctx: &Ctx, base: &RoundBase) -> Vec<SignedManifest> {
        let manifests = ctx.inbox.manifests(base.round);
        let order = machine::candidates(
            manifests
                .iter()
                .map(|(c, m)| (machine::Standing::of(*c, m), m.body.prev)),
            base.prev,
            &lock(&ctx.verdicts),
            Instant::now(),
        );
        let mut manifests: HashMap<Cid, Arc<Signed<Manifest>>> = manifests.into_iter().collect();
        order
            .into_iter()
            .filter_map(|c| manifests.remove(&c).map(|m| (c, m)))
            .collect()
    }

    /// Whether a manifest for `round` not looked at yet came since `look` began, following a
    /// newer manifest back included. A newer manifest whose chain cannot be followed (yet,
    /// or ever: anyone may gossip one) is no reason to stop; one already looked at and
    /// still open (one this node contests, say) is none either: looking again at once would
    /// spin.
    async fn newer_arrived(&self, ctx: &Ctx, round: u32, look: Instant) -> bool {
        if let Err(e) = self.walk_back(ctx, round).await {
            tracing::info!(round, "cannot follow a newer manifest back: {e}");
        }
        ctx.inbox.manifests(round).iter().any(|(c, _)| {
            ctx.inbox.arrived(round, c).is_some_and(|at| at >= look)
                && lock(&ctx.verdicts).open(c, Instant::now())
        })
    }

    /// Attack `censor`: once a round, aggregates as soon as the minimum is in, counting only
    /// this node and the announcers ranked behind it (rank 0 among what it lists), and
    /// publishes that manifest; otherwise the node follows the round like any other (it
    /// does not adopt its manifest for being its own), so what the attack costs the others
    /// is the attack alone.
    async fn censor(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        data: &LocalData,
        announced: &[SignedAnnouncement],
        waiting: &mut Waiting,
    ) {
        let anchor = base.prev.unwrap_or(ctx.terms.cid);
        let place = |p: &PeerId| rank_key(&anchor, base.round, p);
        let mine = place(&self.node.peer_id());
        let behind: Vec<SignedAnnouncement> = announced
            .iter()
            .filter(|(_, a)| place(&a.signer) >= mine)
            .cloned()
            .collect();
        if waiting.censored == usize::MAX
            || behind.len() < waiting.min
            || behind.len() == waiting.censored
        {
            return;
        }
        waiting.censored = behind.len();
        tracing::info!(
            round = base.round,
            counted = behind.len(),
            of = announced.len(),
            "attack: aggregating early without the announcers ranked ahead"
        );
        match self.aggregate(ctx, base, data, &behind, 0).await {
            Ok(_) => waiting.censored = usize::MAX,
            Err(e) => tracing::info!(round = base.round, "attack: cannot aggregate yet: {e}"),
        }
    }

    /// The announcements for the round on its base so far.
    pub(super) fn announced_on(&self, ctx: &Ctx, base: &RoundBase) -> Vec<SignedAnnouncement> {
        ctx.inbox
            .announcements(base.round)
            .into_iter()
            .filter(|(_, a)| a.body.base == base.model_cid)
            .collect()
    }

    /// Updates the updates awaited, and notes when this node's view of the round closes:
    /// every awaited update in, or the deadline.
    fn note_close(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        waiting: &mut Waiting,
        announced: &[SignedAnnouncement],
    ) {
        let me = self.node.peer_id();
        let refused = ctx.inbox.refused(base.round);
        let elsewhere = match waiting.expected {
            Expected::Peers(_) => self.elsewhere(ctx, &mut waiting.heads),
            Expected::Joined(_) => HashSet::new(),
        };
        waiting.following = self.following(ctx, base, &refused);
        waiting.awaited = waiting
            .expected
            .awaited(
                &me,
                announced.iter().map(|(_, a)| &a.signer),
                &refused,
                |p| ctx.inbox.gone(p) || elsewhere.contains(p),
            )
            .max(waiting.min)
            .max(waiting.following.len());
        if waiting.closed.is_none() {
            let now = Instant::now();
            waiting.closed = if announced.len() >= waiting.awaited {
                Some(Closed::AllIn(now))
            } else if now >= waiting.deadline {
                Some(Closed::Deadline(waiting.deadline))
            } else {
                None
            };
        }
    }

    /// Whether it is this node's turn to aggregate the round (in the place of the first
    /// peer ranked ahead that is still heard from, when those ahead went quiet or made a
    /// manifest this node contests): its rank. The first in line among the peers that
    /// announced or are expected to (live, following the chain) fetches the updates while
    /// the round fills; the next in line fetches them when its turn comes, and the nodes
    /// that recompute the manifest while the next round trains. (Ranking those that
    /// announced so far alone would have each early announcer with a low key fetch every
    /// update until one with a lower key announced: about 2 ln N nodes a round.)
    fn my_turn(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        waiting: &mut Waiting,
        announced: &[SignedAnnouncement],
    ) -> Option<u32> {
        let me = self.node.peer_id();
        let round = base.round;
        let anchor = base.prev.unwrap_or(ctx.terms.cid);
        let order = ranking(&anchor, round, announced.iter().map(|(_, a)| a.signer));
        let expected = ranking(
            &anchor,
            round,
            announced
                .iter()
                .map(|(_, a)| a.signer)
                .chain(waiting.following.iter().copied()),
        );
        if expected.iter().take(PREFETCH_RANKS).any(|p| *p == me) {
            self.prefetch(ctx, round, &base.model_cid, base.model.file_limit());
        }
        if waiting.said.elapsed() >= STATUS_EVERY {
            waiting.said = Instant::now();
            tracing::info!(
                round,
                announced = announced.len(),
                expected = waiting.awaited,
                rank = ?order.iter().position(|p| *p == me),
                manifests = ctx.inbox.manifests(round).len(),
                "waiting for the round's manifest"
            );
        }
        let view = machine::Round {
            order: &order,
            announced: announced.len(),
            awaited: waiting.awaited,
            min: waiting.min,
            deadline: waiting.deadline,
            grace: waiting.grace,
        };
        let now = Instant::now();
        let passed = |p: &PeerId| ctx.inbox.gone(p) || waiting.contested.contains(p);
        let Turn::Aggregate { rank, ahead } =
            machine::turn(&view, &me, passed, waiting.retry_at, now)
        else {
            return None;
        };
        if ahead < rank {
            tracing::info!(
                round,
                rank,
                passed = rank - ahead,
                "aggregating in the place of peers ranked ahead that went quiet or left updates out"
            );
        }
        Some(rank as u32)
    }
}
