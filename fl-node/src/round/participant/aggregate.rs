//! The aggregator's part: who a round waits for, fetching updates ahead, and making the
//! round's manifest when this node's turn comes.

use super::*;

impl Participant {
    /// Who closes a round early once they have all announced: last round's contributors and
    /// those whose updates came too late for it (they are back); in the first round, the
    /// task's members, or in an open task this node and the peers subscribed to its updates.
    pub(super) async fn expected_participants(
        &self,
        ctx: &Ctx,
        task: &Task,
        base: &RoundBase,
    ) -> Result<Expected, RoundError> {
        // A population's round waits for the hosts of its sample, and only them.
        if let Some(hosts) = ctx.terms.hosts(base.round) {
            return Ok(match base.prev {
                Some(_) => Expected::Peers(hosts),
                None => Expected::Joined(hosts),
            });
        }
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
            // Not those whose update the round called unavailable (not served in time): one
            // that follows the chain is waited for all the same (`following`), one that does
            // not (a member serving at a trickle, standing on a manifest of its own) would
            // hold the round to its deadline.
            for r in &m.body.rejected {
                if r.reason == fl_core::records::RejectReason::Unavailable {
                    alive.remove(&r.peer);
                }
            }
            return Ok(Expected::Peers(alive));
        }
        let joined = match &task.members {
            Some(members) => members.iter().copied().collect(),
            // An open task: this node and the peers following the task's updates.
            None => {
                let topic = Task::updates_topic(&ctx.terms.cid);
                let mut peers: HashSet<libp2p::PeerId> =
                    self.node.topic_peers(&topic).await?.into_iter().collect();
                peers.insert(self.node.peer_id());
                peers
            }
        };
        Ok(Expected::Joined(joined))
    }

    /// Starts fetching the updates announced for `round` on `base` that are not here yet,
    /// so an aggregator finds them here (communication overlaps the wait for the slowest
    /// node).
    pub(super) fn prefetch(&self, ctx: &Ctx, round: u32, base: &Cid, limit: u64) {
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
        if !fresh.is_empty() {
            tracing::debug!(round, updates = fresh.len(), "fetching updates ahead");
        }
        for (update, author) in fresh {
            let node = self.node.clone();
            let slots = ctx.prefetching.clone();
            let per_block = self.config.block_timeout;
            spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                // A slot is held no longer than an honest, slow author would need.
                let fetching = fetch_held(&node, update, Some(author), per_block, false, limit);
                let deadline = fetch_deadline(per_block, limit).unwrap_or(Duration::MAX);
                match tokio::time::timeout(deadline, fetching).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%update, "fetching ahead failed (fetched again when needed): {e}")
                    }
                    Err(_) => {
                        tracing::debug!(%update, "fetching ahead gave up after {deadline:?}")
                    }
                }
            });
        }
    }

    /// This node and the live peers that follow the chain to `base` (they re-publish its
    /// head): they will announce updates on it, so the round waits for them too, unless
    /// what they announced was `refused` (in a population, only those hosting a sampled
    /// client announce).
    pub(super) fn following(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        refused: &HashSet<libp2p::PeerId>,
    ) -> Vec<libp2p::PeerId> {
        let hosts = ctx.terms.hosts(base.round);
        let due = |p: &libp2p::PeerId| hosts.as_ref().is_none_or(|h| h.contains(p));
        let me = self.node.peer_id();
        let mut out: Vec<libp2p::PeerId> = Some(me).filter(due).into_iter().collect();
        let Some(head) = base.prev else {
            return out;
        };
        out.extend(
            ctx.inbox
                .live_peers()
                .into_iter()
                .filter(|p| *p != me && ctx.inbox.head_of(p) == Some(head))
                .filter(|p| !refused.contains(p) && due(p)),
        );
        out
    }

    /// Live peers whose head is a rival of the manifest this node adopted for its round,
    /// parting from this node's chain at that round, that beats it and that this node has
    /// not refuted ([`machine::stays_elsewhere`]): they will not announce on this node's
    /// chain, so a round does not wait for them. What each head decides is kept in `seen`
    /// for the round (the chain does not change while it is decided; a refutation is looked
    /// up each time), so a look costs a map lookup per peer.
    pub(super) fn elsewhere(
        &self,
        ctx: &Ctx,
        seen: &mut HashMap<Cid, bool>,
    ) -> HashSet<libp2p::PeerId> {
        let mut out = HashSet::new();
        for peer in ctx.inbox.live_peers() {
            let Some(head) = ctx.inbox.head_of(&peer) else {
                continue;
            };
            if seen.len() >= MAX_HEADS_JUDGED && !seen.contains_key(&head) {
                continue;
            }
            let beats = *seen
                .entry(head)
                .or_insert_with(|| self.beats_ours(ctx, head).unwrap_or(false));
            if beats && !lock(&ctx.verdicts).is_refuted(&head) {
                out.insert(peer);
            }
        }
        out
    }

    /// Whether manifest `head` parts from this node's chain at its round and beats the
    /// manifest this node adopted there.
    fn beats_ours(&self, ctx: &Ctx, head: Cid) -> Result<bool, RoundError> {
        let Some((round, theirs)) = ctx.inbox.manifest(&head) else {
            return Ok(false);
        };
        let task = &ctx.terms.cid;
        let Some(ours) = self.rounds.adopted(task, round)? else {
            return Ok(false);
        };
        let our_prev = match round {
            1 => None,
            r => self.rounds.adopted(task, r - 1)?,
        };
        if ours == head || theirs.body.prev != our_prev {
            return Ok(false);
        }
        let our_manifest = self.load_manifest(&ours)?;
        Ok(machine::stays_elsewhere(
            &machine::Standing::of(head, &theirs),
            &machine::Standing::of(ours, &our_manifest),
        ))
    }

    /// Aggregates the round as rank `rank`, publishes the signed manifest and files it.
    pub(super) async fn aggregate(
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
        let limit = base.model.file_limit();
        for entry in announced {
            let update = entry.1.body.update;
            match self
                .inputs
                .dag(update, "an update", Some(entry.1.signer), limit)
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
        let record = match ctx.terms.secure {
            Some(_) => Some(self.unmask_round(ctx, base, &present).await?),
            None => None,
        };
        let mut aggregated = {
            let (repo, terms, base) = (self.repo.clone(), ctx.terms.clone(), base.clone());
            let slot = self.computing().await?;
            blocking(move || {
                let _slot = slot;
                match record {
                    Some(record) => crate::round::secure::aggregate_secure(
                        &repo, &terms, &base, &present, &missing, &record,
                    ),
                    None => compute::aggregate(&repo, &terms, &base, &present, &missing),
                }
            })
            .await??
        };
        let computed = started.elapsed();
        aggregated.manifest.rank = rank;
        let needed = ctx.terms.min_updates(base.round) as usize;
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
            .map_err(|source| RoundError::StoreRecord {
                what: "manifest",
                source,
            })?;
        self.repo.pin(&signed.body.model, PinMode::Recursive)?;
        ctx.inbox.file_manifest(self.repo.blocks(), bytes.clone())?;
        let _ = self
            .node
            .publish(&Task::manifests_topic(&ctx.terms.cid), bytes)
            .await;
        if let Some(test) = data
            .test
            .as_ref()
            .filter(|_| ctx.terms.task.scores(base.round))
        {
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
        Ok((cid, Arc::new(signed)))
    }

    /// A turn at aggregating or recomputing a round (it holds the round's updates in memory).
    pub(super) async fn computing(&self) -> Result<tokio::sync::OwnedSemaphorePermit, RoundError> {
        self.config
            .limits
            .computing
            .clone()
            .acquire_owned()
            .await
            .map_err(RoundError::from)
    }
}
