//! This node's part in a secure round: its keys and shares, exchanged beside its training;
//! its masked update; its answer to the round's survivor list; and, when it aggregates, the
//! list, the unmasking and the secure record its manifest names.

use std::collections::{BTreeSet, HashMap};

use fl_core::content::unixfs::ImportOptions;
use fl_core::records::{SecureRecord, SecureStep, Step};
use fl_core::secagg::{
    self, Dealing, MaskedInput, Member, Public, Reveal, SecAggError, Slot, Survivors,
};

use super::*;
use crate::round::inbox::RoundSteps;
use crate::round::secure as secure_round;
use crate::round::terms::Secure;

/// Longest a node waits for every member's keys, then shares, before going on with those
/// that came (at least the threshold), and for every answer to a survivor list.
const PATIENCE: Duration = Duration::from_secs(30);

/// A node's secure steps, by their place among the records it re-publishes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sent {
    Keys = 0,
    Shares = 1,
    List = 2,
    Answer = 3,
}

/// The keys and shares of a round, exchanged beside its training.
pub(super) type Setup = tokio::task::JoinHandle<Result<Member, RoundError>>;

/// What a secure step needs to go out: the node, its inbox, key and re-published records.
#[derive(Clone)]
struct Sender {
    node: Node,
    inbox: Inbox,
    key: Keypair,
    records: Arc<Mutex<republish::Records>>,
    task: Cid,
}

impl Sender {
    /// Signs, files, publishes and re-publishes one of this node's steps.
    async fn send(&self, round: u32, step: Step) -> Result<(), RoundError> {
        let which = match &step {
            Step::Keys(_) => Sent::Keys,
            Step::Shares(_) => Sent::Shares,
            Step::Survivors(_) => Sent::List,
            Step::Answer(_) => Sent::Answer,
        };
        let signed = Signed::sign(
            SecureStep {
                task: self.task,
                round,
                step,
            },
            &self.key,
        )?;
        let bytes = signed.to_block()?.data().to_vec();
        self.inbox.file_secure_step(bytes.clone())?;
        let _ = self
            .node
            .publish(&Task::secure_topic(&self.task), bytes.clone())
            .await;
        lock(&self.records).secure[which as usize] = Some((round, bytes));
        Ok(())
    }
}

/// Waits until every member in `expected` has sent what `have` picks, or is gone (heard
/// from, then silent: one never heard from may be slow to join); past [`PATIENCE`], goes
/// on with at least `threshold` of them; past twice that, with what came.
async fn wait_for(
    inbox: &Inbox,
    round: u32,
    expected: &[(Slot, PeerId)],
    threshold: usize,
    have: impl Fn(&RoundSteps) -> BTreeSet<Slot>,
) -> RoundSteps {
    let started = Instant::now();
    loop {
        let steps = inbox.secure_round(round);
        let got = have(&steps);
        let awaited = expected.iter().any(|(slot, peer)| {
            let gone = inbox.ever_heard(peer) && inbox.gone(peer);
            !(got.contains(slot) || gone)
        });
        let waited = started.elapsed();
        if !awaited || (waited >= PATIENCE && got.len() >= threshold) || waited >= PATIENCE * 2 {
            return steps;
        }
        inbox.changed(POLL).await;
    }
}

/// This node's keys and shares for `round`: advertises its keys, deals its shares to the
/// members whose keys came, and opens theirs.
async fn setup(sender: Sender, secure: Arc<Secure>, round: u32) -> Result<Member, RoundError> {
    let me = sender.node.peer_id();
    let slot = secure.members.slot(&me).ok_or(RoundError::NotMember(me))?;
    let session = SecureStep::session(&sender.task, round);
    let threshold = usize::from(secure.params.threshold);
    let (mut member, advert) = Member::new(secure.params, session, slot, &mut rand::rng())?;
    sender.send(round, Step::Keys(advert)).await?;
    let everyone: Vec<(Slot, PeerId)> = (0..secure.members.len())
        .filter_map(|i| {
            let slot = Slot(i as u8);
            secure.members.peer(slot).map(|p| (slot, *p))
        })
        .collect();
    let steps = wait_for(&sender.inbox, round, &everyone, threshold, |s| {
        s.keys.keys().copied().collect()
    })
    .await;
    let adverts = steps.adverts();
    let advertised: Vec<(Slot, PeerId)> = everyone
        .iter()
        .filter(|(slot, _)| steps.keys.contains_key(slot))
        .copied()
        .collect();
    let (dealing, faults) = member.deal(&adverts)?;
    for fault in faults {
        tracing::info!(round, "secure round: keys left out: {fault}");
    }
    sender.send(round, Step::Shares(dealing)).await?;
    let steps = wait_for(&sender.inbox, round, &advertised, threshold, |s| {
        s.dealings.keys().copied().collect()
    })
    .await;
    let dealings: Vec<Dealing> = steps.dealings.into_values().collect();
    for fault in member.open(&dealings)? {
        tracing::info!(round, "secure round: shares left out: {fault}");
    }
    Ok(member)
}

impl Participant {
    fn sender(&self, ctx: &Ctx) -> Sender {
        Sender {
            node: self.node.clone(),
            inbox: ctx.inbox.clone(),
            key: self.key.clone(),
            records: ctx.republish.clone(),
            task: ctx.terms.cid,
        }
    }

    /// Starts this node's keys and shares for `round` beside its training; none in a task
    /// without secure aggregation.
    pub(super) fn start_secure(&self, ctx: &Ctx, round: u32) -> Option<Setup> {
        let secure = ctx.terms.secure.clone()?;
        let sender = self.sender(ctx);
        Some(tokio::spawn(setup(sender, secure, round).in_current_span()))
    }

    /// Waits for this round's keys and shares, if the task is secure, and keeps the member
    /// for masking and answering; whether the node can announce (it sits out a round whose
    /// setup failed: too few members took part).
    pub(super) async fn set_up(&self, ctx: &Ctx, round: u32, setup: Option<Setup>) -> bool {
        let Some(setup) = setup else {
            return true;
        };
        match setup.await.map_err(RoundError::from).and_then(|r| r) {
            Ok(member) => {
                *lock(&ctx.secure) = Some((round, member));
                true
            }
            Err(e) => {
                tracing::warn!(round, "sitting this secure round out: {}", chain(&e));
                false
            }
        }
    }

    /// Masks this node's update with the member it set up for `round` (on the blocking
    /// pool: one mask a member of the round) and stores the masked file (pinned); returns
    /// its CID.
    pub(super) async fn store_masked(
        &self,
        ctx: &Ctx,
        round: u32,
        update: &Bundle,
    ) -> Result<Cid, RoundError> {
        let member = match lock(&ctx.secure).take() {
            Some((r, member)) if r == round => member,
            other => {
                *lock(&ctx.secure) = other;
                return Err(SecAggError::Order("no keys and shares for this round").into());
            }
        };
        let flat = update.flatten();
        let (member, masked) = blocking(move || {
            let masked = member.mask(&flat);
            (member, masked)
        })
        .await?;
        *lock(&ctx.secure) = Some((round, member));
        let bytes = masked?.to_bytes()?;
        Ok(self.repo.add(&bytes[..], &ImportOptions::default())?.root)
    }

    /// The round's announcers on its base in their turn order as aggregators.
    fn turn_order(&self, ctx: &Ctx, base: &RoundBase) -> Vec<PeerId> {
        let anchor = base.prev.unwrap_or(ctx.terms.cid);
        let announced = self.announced_on(ctx, base);
        ranking(&anchor, base.round, announced.iter().map(|(_, a)| a.signer))
    }

    /// Answers the round's survivor list once one has come from the announcer whose turn
    /// it is to aggregate (the best ranked, or one ranked after it once the turns before
    /// its own have passed): once a round, the member refuses any other list.
    pub(super) async fn answer_list(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        deadline: Instant,
        grace: Duration,
    ) {
        let round = base.round;
        // Once a list is answered there is nothing more to do this round (a member answers
        // one); nor in a task without secure aggregation.
        let pending = lock(&ctx.secure)
            .as_ref()
            .is_some_and(|(r, member)| *r == round && member.answered().is_none());
        if !pending {
            return;
        }
        let steps = ctx.inbox.secure_round(round);
        if steps.lists.is_empty() {
            return;
        }
        let order = self.turn_order(ctx, base);
        let now = Instant::now();
        let Some(list) = steps
            .lists
            .iter()
            .filter_map(|(signer, list)| {
                let rank = order.iter().position(|p| p == signer)?;
                let turn = deadline + grace * u32::try_from(rank).unwrap_or(u32::MAX);
                (rank == 0 || now >= turn).then_some((rank, list))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, list)| list.clone())
        else {
            return;
        };
        let _ = self.answer(ctx, round, &list).await;
    }

    /// This node's answer to `list`, sent (once: the same list again sends nothing new).
    async fn answer(&self, ctx: &Ctx, round: u32, list: &Survivors) -> Result<(), RoundError> {
        if self.config.attack == Some(Attack::Mute) {
            return Ok(());
        }
        let reveal: Reveal = {
            let mut kept = lock(&ctx.secure);
            let Some((_, member)) = kept.as_mut().filter(|(r, _)| *r == round) else {
                return Ok(());
            };
            match member.answered() {
                Some(answered) if answered == list.digest(&member.session()) => return Ok(()),
                Some(_) => return Err(SecAggError::SecondSurvivorList.into()),
                None => {}
            }
            // Shares that came after this member masked still let it answer for their dealers.
            let steps = ctx.inbox.secure_round(round);
            let adverts = steps.adverts();
            let dealings: Vec<Dealing> = steps.dealings.into_values().collect();
            for fault in member.hold(&adverts, &dealings) {
                tracing::debug!(round, "secure round: late shares left out: {fault}");
            }
            match member.answer(list) {
                Ok(reveal) => reveal,
                Err(e) => {
                    tracing::info!(round, "not answering a survivor list: {e}");
                    return Err(e.into());
                }
            }
        };
        self.sender(ctx).send(round, Step::Answer(reveal)).await
    }

    /// The aggregator's secure step: names the survivors (reusing a list another
    /// aggregator published this round, which members may have answered already), answers
    /// it, waits for the members' answers and unmasks; returns the secure record.
    pub(super) async fn unmask_round(
        &self,
        ctx: &Ctx,
        base: &RoundBase,
        present: &[SignedAnnouncement],
    ) -> Result<SecureRecord, RoundError> {
        let secure = ctx
            .terms
            .secure
            .clone()
            .ok_or(SecAggError::Order("not a secure task"))?;
        let round = base.round;
        let me = self.node.peer_id();
        let session = SecureStep::session(&ctx.terms.cid, round);
        let threshold = usize::from(secure.params.threshold);
        let inputs = {
            let (repo, terms, base, present) = (
                self.repo.clone(),
                ctx.terms.clone(),
                base.clone(),
                present.to_vec(),
            );
            blocking(move || secure_round::masked_inputs(&repo, &terms, &base, &present))
                .await??
                .0
        };
        let digests: HashMap<Slot, secagg::Digest> = inputs
            .iter()
            .map(|(_, i)| (i.member, i.digest(&session)))
            .collect();
        let steps = ctx.inbox.secure_round(round);
        // A list an announcer ranked ahead of this node published this round, which members
        // may have answered already: reused when this node holds every masked update it
        // considered.
        let order = self.turn_order(ctx, base);
        let mine = order.iter().position(|p| *p == me);
        let earlier = steps
            .lists
            .iter()
            .filter(|(signer, _)| {
                *signer != me
                    && order
                        .iter()
                        .position(|p| p == signer)
                        .is_some_and(|rank| mine.is_none_or(|m| rank < m))
            })
            .find(|(_, list)| {
                list.considered
                    .iter()
                    .all(|s| digests.get(&s.member) == Some(&s.input))
            });
        let list = match earlier {
            Some((_, list)) => list.clone(),
            None => {
                let known: BTreeSet<Slot> = steps.keys.keys().copied().collect();
                secure_round::survivors_of(&ctx.terms, round, &inputs, &known)?
            }
        };
        // Keys of every member a considered masked update names: what checkers need to
        // rerun the list's rule and to check the sum.
        let named: BTreeSet<Slot> = inputs
            .iter()
            .filter(|(_, i)| list.considered.iter().any(|s| s.member == i.member))
            .flat_map(|(_, i)| i.pairs.iter().copied())
            .collect();
        if list.inputs.len() < threshold {
            return Err(RoundError::TooFew {
                usable: list.inputs.len(),
                needed: threshold,
            });
        }
        if earlier.is_none() {
            self.sender(ctx)
                .send(round, Step::Survivors(list.clone()))
                .await?;
        }
        let _ = self.answer(ctx, round, &list).await;
        let digest = list.digest(&session);
        let masked: Arc<Vec<MaskedInput>> = Arc::new(
            inputs
                .iter()
                .filter(|(_, i)| list.inputs.iter().any(|s| s.member == i.member))
                .map(|(_, i)| i.clone())
                .collect(),
        );
        let len = base.model.num_values();
        let started = Instant::now();
        let mut tried = 0;
        loop {
            let steps = ctx.inbox.secure_round(round);
            let answers: Vec<Reveal> = steps
                .answers
                .values()
                .filter(|r| r.survivors == digest)
                .cloned()
                .collect();
            if answers.len() >= threshold && answers.len() > tried {
                tried = answers.len();
                let keys: Vec<Signed<SecureStep>> = named
                    .iter()
                    .filter_map(|slot| steps.keys.get(slot).cloned())
                    .collect();
                if keys.len() != named.len() {
                    return Err(SecAggError::Survivors {
                        reason: "a member masked against has no keys here",
                    }
                    .into());
                }
                let adverts = secure_round::adverts(&ctx.terms, round, &keys)?;
                let dealings: Vec<Dealing> = steps.dealings.into_values().collect();
                let (secure, masked, list) = (secure.clone(), masked.clone(), list.clone());
                let unmasked = blocking(move || {
                    let public = Public {
                        params: &secure.params,
                        session: &session,
                        adverts: &adverts,
                        inputs: &masked,
                        len,
                    };
                    secagg::unmask(&public, &dealings, &list, &answers)
                })
                .await?;
                match unmasked {
                    Ok(unmasked) => {
                        for fault in &unmasked.faults {
                            tracing::warn!(round, "secure round: an answer refused: {fault}");
                        }
                        return Ok(SecureRecord {
                            sum: unmasked.sum,
                            keys,
                        });
                    }
                    Err(e) => tracing::debug!(round, "cannot unmask yet: {e}"),
                }
            }
            if started.elapsed() >= PATIENCE {
                return Err(SecAggError::TooFewMembers {
                    step: "answers",
                    present: tried,
                    threshold: secure.params.threshold,
                }
                .into());
            }
            ctx.inbox.changed(POLL).await;
        }
    }
}
