//! What arrives over gossip for one task: update announcements, manifests and the
//! aggregators' evaluations, each a signed DAG-CBOR block sent whole. Each is verified (its
//! signature, and that its author may take part) and stored as a block before it is kept and
//! forwarded; an invalid one is not forwarded and costs the peer that sent it gossipsub
//! score, one over a limit of this node's is dropped without blame.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cid::Cid;
use fl_core::content::{Block, Blockstore, DAG_CBOR, FsBlockstore, StoreError};
use fl_core::records::{
    Announcement, Evaluation, Manifest, PeerId, SecureStep, Signed, SignedError, Task,
};
use tokio::sync::Notify;

use super::Terms;
use crate::net::{MessageAcceptance, Node};

/// Largest gossip message read as a record (a manifest of 10,000 contributions fits).
pub const MAX_RECORD_BYTES: usize = 2 << 20;
/// Most announcements kept for one round (one per author); more are dropped.
pub const MAX_ANNOUNCERS_PER_ROUND: usize = 4096;
/// Most manifests kept for one round; more are dropped.
pub const MAX_MANIFESTS_PER_ROUND: usize = 256;
/// Most manifests kept for one round from one signer (an aggregator makes one, or a few
/// after switching chains): one peer cannot fill a round's slots.
pub const MAX_MANIFESTS_PER_SIGNER: usize = 4;

/// Rounds behind the last one closed whose manifests (and evaluations) are kept, for the
/// fork choice between rival chains; older ones are dropped.
pub const KEEP_ROUNDS_BEHIND: u32 = 16;
/// Most bytes of manifests held at once, over all rounds: a member that signs manifests
/// for many rounds ahead fills this, not the node's memory (more are dropped until rounds
/// close).
pub const MAX_MANIFEST_BYTES_HELD: usize = 256 << 20;
/// Most bytes of manifests held from one signer, over all rounds: one member alone cannot
/// fill [`MAX_MANIFEST_BYTES_HELD`] and crowd out the others' manifests (an aggregator signs
/// one a round, a few after switching chains).
pub const MAX_MANIFEST_BYTES_PER_SIGNER: usize = MAX_MANIFEST_BYTES_HELD / 8;

/// Most evaluations kept for one manifest (its signer makes one; others are kept, up to
/// this many, until the manifest shows who signed it).
pub const MAX_EVALUATIONS_PER_MANIFEST: usize = 4;

/// Why a record was not filed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not a signed record of its kind, or its signature fails.
    #[error(transparent)]
    Record(#[from] SignedError),
    /// Larger than any record may be.
    #[error("a record of {0} bytes, more than {MAX_RECORD_BYTES}")]
    TooLarge(usize),
    /// For another task than this topic's.
    #[error("a record for another task, {0}")]
    OtherTask(Cid),
    /// Signed by a peer the task does not admit.
    #[error("signed by {0}, not a member of the task")]
    NotMember(PeerId),
    /// For a round the task does not have.
    #[error("a record for round {round} of {rounds}")]
    NoSuchRound {
        /// The record's round.
        round: u32,
        /// The task's rounds.
        rounds: u32,
    },
    /// An announcement claiming what the task does not allow (a sample count out of
    /// bounds, a client not sampled this round or not its author's).
    #[error("an announcement: {0}")]
    Claim(super::claim::ClaimError),
    /// An announcement naming an update another author announced this round first (a copy:
    /// an update has one author).
    #[error("an announcement of update {update}, which {first} announced first")]
    SharedUpdate {
        /// The update.
        update: Cid,
        /// The author that announced it first.
        first: PeerId,
    },
    /// A second, different announcement from one author for one round.
    #[error("{author} announced a second update for round {round}")]
    SecondUpdate {
        /// Its author.
        author: PeerId,
        /// The round.
        round: u32,
    },
    /// An evaluation with an accuracy outside 0..=1 or a loss that is not finite.
    #[error("an evaluation with accuracy {accuracy} and loss {loss}")]
    Metrics {
        /// Its accuracy.
        accuracy: f64,
        /// Its loss.
        loss: f64,
    },
    /// A limit of this node's on what it keeps is reached; the record may be fine.
    #[error("{what} already holds {limit}")]
    Full {
        /// What is full (`"round 3's announcers"`).
        what: String,
        /// Its limit.
        limit: usize,
    },
    /// This node's store failed.
    #[error("storing the record: {0}")]
    Store(#[from] StoreError),
    /// A secure round's step in a task without secure aggregation.
    #[error("a secure round's step in a task without secure aggregation")]
    NotSecure,
    /// A secure round's step that does not fit its round (its signer's slot, its shape).
    #[error("a secure round's step: {0}")]
    Secure(#[from] fl_core::records::SecureStepError),
    /// A second, different step of one kind from one member for one round.
    #[error("{author} sent a second, different {kind} for round {round}")]
    SecondStep {
        /// Its author.
        author: PeerId,
        /// The round.
        round: u32,
        /// Which step.
        kind: &'static str,
    },
    /// A survivor list from a member whose announcement for the round is not here: only
    /// an announcer can be the round's aggregator (it may come later, and be re-sent).
    #[error("a survivor list for round {round} from {signer}, who has not announced here")]
    Unannounced {
        /// The list's signer.
        signer: PeerId,
        /// The round.
        round: u32,
    },
    /// A secure round's step for a round not in flight here.
    #[error("a secure round's step for round {round}, not in flight here")]
    SecureWindow {
        /// Its round.
        round: u32,
    },
}

impl FileError {
    /// What gossipsub does with a message holding such a record that came from peer `via`:
    /// a record every honest node finds invalid is rejected (not forwarded, and `via`
    /// penalised). A second update is invalid only after the first: honest peers that saw
    /// the two in the other order forward it in good faith, so only its author is blamed
    /// for it. Of two announcements of one update, the first to arrive counts; which one
    /// that is depends on the path, so the second is ignored, not blamed. A full inbox or a
    /// failing store is this node's state, not anyone's fault.
    pub fn acceptance(&self, via: &PeerId) -> MessageAcceptance {
        match self {
            FileError::Full { .. }
            | FileError::Store(_)
            | FileError::SharedUpdate { .. }
            | FileError::SecureWindow { .. }
            | FileError::Unannounced { .. } => MessageAcceptance::Ignore,
            FileError::SecondUpdate { author, .. } | FileError::SecondStep { author, .. }
                if author != via =>
            {
                MessageAcceptance::Ignore
            }
            _ => MessageAcceptance::Reject,
        }
    }
}

/// A verified evaluation and its block's CID.
pub type SignedEvaluation = (Cid, Signed<Evaluation>);
/// A verified announcement and its block's CID.
pub type SignedAnnouncement = (Cid, Signed<Announcement>);
/// A verified manifest and its block's CID.
pub type SignedManifest = (Cid, Arc<Signed<Manifest>>);

mod contents;
pub mod secure;

use contents::Contents;
pub use secure::RoundSteps;

/// The task's gossip, sorted by round.
#[derive(Clone)]
pub struct Inbox {
    contents: Arc<Mutex<Contents>>,
    changed: Arc<Notify>,
    terms: Arc<Terms>,
    /// When this node started listening: a peer not heard from since is only taken for gone
    /// once a whole liveness window has passed.
    listening_since: Instant,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    /// Subscribes `node` to the task's topics and files what arrives, judged by its
    /// `terms`; needs a tokio runtime.
    pub async fn start(
        node: &Node,
        terms: Arc<Terms>,
        store: Arc<FsBlockstore>,
    ) -> Result<Self, crate::net::NodeError> {
        let task_cid = terms.cid;
        let inbox = Inbox {
            contents: Arc::default(),
            listening_since: Instant::now(),
            changed: Arc::new(Notify::new()),
            terms,
        };
        let updates = Task::updates_topic(&task_cid);
        let manifests = Task::manifests_topic(&task_cid);
        let evaluations = Task::evaluations_topic(&task_cid);
        let secure = Task::secure_topic(&task_cid);
        let mut gossip = node.gossip();
        node.subscribe_validated(&updates).await?;
        node.subscribe_validated(&manifests).await?;
        node.subscribe_validated(&evaluations).await?;
        if inbox.terms.secure.is_some() {
            node.subscribe_validated(&secure).await?;
        }
        let this = inbox.clone();
        // A weak handle: the inbox must not keep a node running whose participant stopped.
        let reporter = node.reporter();
        tokio::spawn(async move {
            loop {
                let mut message = match gossip.recv().await {
                    Ok(m) => m,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("round gossip: {n} messages dropped (reading too slowly)");
                        continue;
                    }
                    Err(_) => return,
                };
                if ![&updates, &manifests, &evaluations, &secure].contains(&&message.topic) {
                    continue;
                }
                // The record's bytes move into the inbox; reporting needs only the id. Decoding,
                // checking the signature and storing a record of up to 2 MiB is work for the
                // blocking pool, not for the workers every swarm of the process runs on.
                let data = std::mem::take(&mut message.data);
                let (filer, store, topic, source) = (
                    this.clone(),
                    store.clone(),
                    message.topic.clone(),
                    message.source,
                );
                let (updates, manifests, secure) =
                    (updates.clone(), manifests.clone(), secure.clone());
                let filed = tokio::task::spawn_blocking(move || {
                    if data.len() > MAX_RECORD_BYTES {
                        Err(FileError::TooLarge(data.len()))
                    } else if topic == updates {
                        filer.file_announcement(&store, data)
                    } else if topic == secure {
                        filer.file_secure_step(data)
                    } else if topic == manifests {
                        filer.file_manifest(&store, data).map(|cid| {
                            if let Some(from) = source.filter(|p| filer.terms.task.admits(p)) {
                                filer.held_by(cid, from);
                            }
                        })
                    } else {
                        filer.file_evaluation(&store, data)
                    }
                })
                .await;
                let result = match filed {
                    Ok(result) => result,
                    // A bug in filing one record must not deafen the node to the rest.
                    Err(e) => {
                        tracing::error!("round gossip: filing a record failed: {e}");
                        continue;
                    }
                };
                let verdict = match &result {
                    Ok(()) => MessageAcceptance::Accept,
                    Err(e) => e.acceptance(&message.via),
                };
                // Only members are heard from: a non-member relaying members' valid records
                // would raise the number of updates a round waits for.
                if let (Ok(()), Some(from)) = (&result, message.source)
                    && this.terms.task.admits(&from)
                {
                    this.heard_from(from);
                }
                if let Err(why) = result {
                    tracing::info!(from = ?message.source, via = %message.via, "round gossip dropped: {why}");
                }
                if reporter.report(&message, verdict).await.is_err() {
                    return;
                }
            }
        });
        Ok(inbox)
    }

    /// Whether a record for `task` and `round` signed by `signer` belongs in this inbox.
    fn admits(&self, task: Cid, round: u32, signer: &PeerId) -> Result<(), FileError> {
        if task != self.terms.cid {
            return Err(FileError::OtherTask(task));
        }
        if round == 0 || round > self.terms.task.rounds {
            return Err(FileError::NoSuchRound {
                round,
                rounds: self.terms.task.rounds,
            });
        }
        if !self.terms.task.admits(signer) {
            return Err(FileError::NotMember(*signer));
        }
        Ok(())
    }

    /// Files an announcement (ours, or one that came over gossip); one for a closed round only
    /// marks its author as alive.
    pub fn file_announcement(&self, store: &FsBlockstore, bytes: Vec<u8>) -> Result<(), FileError> {
        let block = Block::hashed(DAG_CBOR, bytes);
        let signed = Signed::<Announcement>::from_block(&block)?;
        self.admits(signed.body.task, signed.body.round, &signed.signer)?;
        let cid = *block.cid();
        let round = signed.body.round;
        // Judged before the lock: drawing a round's sample is the costliest check.
        let claimed = super::claim::check(&self.terms, &signed.signer, &signed.body);
        let mut c = lock(&self.contents);
        let refused = c.refused.get(&round).map_or(0, |r| r.len());
        let admitted = c.admit_announcement(cid, &signed, claimed);
        if c.refused.get(&round).map_or(0, |r| r.len()) > refused {
            // One author fewer to wait for (once per author and round).
            self.changed.notify_waiters();
        }
        if !admitted? {
            return Ok(());
        }
        // Stored once accepted, so others can fetch it from us (and replays fill nothing).
        store.put(block)?;
        c.keep_announcement(cid, signed);
        drop(c);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Files a manifest (ours, or one that came over gossip) and returns its CID; checks only
    /// its signature, round and signer here (the rest takes a recomputation).
    pub fn file_manifest(&self, store: &FsBlockstore, bytes: Vec<u8>) -> Result<Cid, FileError> {
        let block = Block::hashed(DAG_CBOR, bytes);
        let signed = Signed::<Manifest>::from_block(&block)?;
        let cid = *block.cid();
        let round = signed.body.round;
        self.admits(signed.body.task, round, &signed.signer)?;
        let size = block.len();
        if !lock(&self.contents).wants_manifest(round, &cid, &signed.signer, size)? {
            return Ok(cid);
        }
        // Written without the inbox locked (up to 2 MiB): other records are filed meanwhile,
        // so whether it still has room is asked again after (an unkept block is left to gc).
        store.put(block)?;
        let mut c = lock(&self.contents);
        if !c.wants_manifest(round, &cid, &signed.signer, size)? {
            return Ok(cid);
        }
        c.keep_manifest(cid, signed, size);
        drop(c);
        self.changed.notify_waiters();
        Ok(cid)
    }

    /// Files a secure round's step (ours, or one that came over gossip), checked against
    /// the signer's slot among the task's members.
    pub fn file_secure_step(&self, bytes: Vec<u8>) -> Result<(), FileError> {
        let secure = self.terms.secure.as_ref().ok_or(FileError::NotSecure)?;
        let block = Block::hashed(DAG_CBOR, bytes);
        let signed = Signed::<SecureStep>::from_block(&block)?;
        let step = &signed.body;
        self.admits(step.task, step.round, &signed.signer)?;
        step.check(
            &signed.signer,
            &self.terms.cid,
            step.round,
            &secure.members,
            &secure.params,
        )?;
        let mut c = lock(&self.contents);
        if matches!(step.step, fl_core::records::Step::Survivors(_))
            && !c
                .announcements
                .get(&step.round)
                .is_some_and(|a| a.contains_key(&signed.signer))
        {
            return Err(FileError::Unannounced {
                signer: signed.signer,
                round: step.round,
            });
        }
        let closed = c.closed_through;
        if c.secure.admit(closed, signed)? {
            drop(c);
            self.changed.notify_waiters();
        }
        Ok(())
    }

    /// The steps of secure round `round` that arrived so far.
    pub fn secure_round(&self, round: u32) -> RoundSteps {
        lock(&self.contents).secure.round(round)
    }

    /// Files an evaluation (ours, or one that came over gossip); whether its signer made the
    /// manifest it names is checked when it is looked up.
    pub fn file_evaluation(&self, store: &FsBlockstore, bytes: Vec<u8>) -> Result<(), FileError> {
        let block = Block::hashed(DAG_CBOR, bytes);
        let signed = Signed::<Evaluation>::from_block(&block)?;
        let e = &signed.body;
        self.admits(e.task, e.round, &signed.signer)?;
        let m = &e.metrics;
        let sane = (0.0..=1.0).contains(&m.test_accuracy) && m.test_loss.is_finite();
        if !sane {
            return Err(FileError::Metrics {
                accuracy: m.test_accuracy,
                loss: m.test_loss,
            });
        }
        let cid = *block.cid();
        let (round, manifest) = (e.round, e.manifest);
        let mut c = lock(&self.contents);
        let per_round = c.evaluations.entry(round).or_default();
        if !per_round.contains_key(&manifest) && per_round.len() >= MAX_MANIFESTS_PER_ROUND {
            return Err(FileError::Full {
                what: format!("round {round}'s evaluated manifests"),
                limit: MAX_MANIFESTS_PER_ROUND,
            });
        }
        let kept = per_round.entry(manifest).or_default();
        if kept.iter().any(|(c, _)| *c == cid) {
            return Ok(());
        }
        if kept.len() >= MAX_EVALUATIONS_PER_MANIFEST {
            return Err(FileError::Full {
                what: format!("manifest {manifest}'s evaluations"),
                limit: MAX_EVALUATIONS_PER_MANIFEST,
            });
        }
        store.put(block)?;
        kept.push((cid, signed));
        drop(c);
        self.changed.notify_waiters();
        Ok(())
    }

    /// The evaluation of manifest `cid` (round `round`) made by its signer `by`, of its
    /// model `model`, if one arrived.
    pub fn evaluation(
        &self,
        round: u32,
        cid: &Cid,
        by: &PeerId,
        model: &Cid,
    ) -> Option<SignedEvaluation> {
        lock(&self.contents)
            .evaluations
            .get(&round)?
            .get(cid)?
            .iter()
            .find(|(_, e)| e.signer == *by && e.body.model == *model)
            .cloned()
    }

    /// Notes that a valid record from `peer` arrived just now.
    fn heard_from(&self, peer: PeerId) {
        let mut c = lock(&self.contents);
        // Bounded: peers past the cap are not tracked (they still take part).
        if c.heard.len() < MAX_ANNOUNCERS_PER_ROUND || c.heard.contains_key(&peer) {
            c.heard.insert(peer, Instant::now());
        }
    }

    /// Peers heard from lately (within their re-publishing pace): alive and following the
    /// task.
    pub fn live_peers(&self) -> Vec<PeerId> {
        let c = lock(&self.contents);
        let window = c.liveness_window();
        c.heard
            .iter()
            .filter(|(_, at)| at.elapsed() <= window)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether `peer` has gone quiet: this node listened for longer than peers' re-publishing
    /// pace allows between two of their records and heard none from it (it stopped, or is
    /// cut off). A round stops waiting for such a peer.
    pub fn gone(&self, peer: &PeerId) -> bool {
        let c = lock(&self.contents);
        let window = c.liveness_window();
        let since = match c.heard.get(peer) {
            Some(at) => *at,
            // Not tracked (past the cap): not known to be gone.
            None if c.heard.len() >= MAX_ANNOUNCERS_PER_ROUND => return false,
            None => self.listening_since,
        };
        since.elapsed() > window
    }

    /// Whether a valid record from `peer` ever arrived here: a peer never heard from may be
    /// slow to join rather than gone.
    pub fn ever_heard(&self, peer: &PeerId) -> bool {
        lock(&self.contents).heard.contains_key(peer)
    }

    /// Notes that `peer` gossiped manifest `cid` (peers re-publish the head they follow).
    fn held_by(&self, cid: Cid, peer: PeerId) {
        let mut c = lock(&self.contents);
        // Bounded: peers past the cap are not tracked (they still take part).
        if c.heads.len() >= MAX_ANNOUNCERS_PER_ROUND && !c.heads.contains_key(&peer) {
            return;
        }
        let moved = c.heads.insert(peer, cid) != Some(cid);
        drop(c);
        if moved {
            self.changed.notify_waiters();
        }
    }

    /// The manifest `peer` gossiped last: the head it follows, as far as this node knows.
    pub fn head_of(&self, peer: &PeerId) -> Option<Cid> {
        lock(&self.contents).heads.get(peer).copied()
    }

    /// How many authors announced an update for `round` so far.
    pub fn announcers(&self, round: u32) -> usize {
        lock(&self.contents)
            .announcements
            .get(&round)
            .map_or(0, |m| m.len())
    }

    /// The announcements of `round` so far, by author.
    pub fn announcements(&self, round: u32) -> Vec<SignedAnnouncement> {
        lock(&self.contents)
            .announcements
            .get(&round)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// When the announcement or manifest `cid` of `round` was filed here, if it is kept.
    pub fn arrived(&self, round: u32, cid: &Cid) -> Option<Instant> {
        lock(&self.contents).arrived.get(&round)?.get(cid).copied()
    }

    /// The manifests of `round` seen so far.
    pub fn manifests(&self, round: u32) -> Vec<SignedManifest> {
        lock(&self.contents)
            .manifests
            .get(&round)
            .map(|m| m.iter().map(|(c, s)| (*c, s.clone())).collect())
            .unwrap_or_default()
    }

    /// Manifest `cid` and its round, if it is kept here.
    pub fn manifest(&self, cid: &Cid) -> Option<(u32, Arc<Signed<Manifest>>)> {
        lock(&self.contents)
            .manifests
            .iter()
            .rev()
            .find_map(|(round, m)| m.get(cid).map(|s| (*round, s.clone())))
    }

    /// Authors that announced for `round` after it closed.
    pub fn late(&self, round: u32) -> Vec<PeerId> {
        lock(&self.contents)
            .late
            .get(&round)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Authors that announced for `round` only what this node refused (a sample count out
    /// of bounds, an update another author announced first here): the round has no update
    /// of theirs to wait for.
    pub fn refused(&self, round: u32) -> HashSet<PeerId> {
        lock(&self.contents).refused(round)
    }

    /// The rounds with manifests seen, newest first.
    pub fn manifest_rounds(&self) -> Vec<u32> {
        lock(&self.contents)
            .manifests
            .keys()
            .rev()
            .copied()
            .collect()
    }

    /// The highest round any manifest seen is for.
    pub fn latest_round(&self) -> u32 {
        lock(&self.contents)
            .manifests
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
    }

    /// Marks rounds up to `round` decided: later announcements for them are refused.
    pub fn close_through(&self, round: u32) {
        let mut c = lock(&self.contents);
        c.closed_through = c.closed_through.max(round);
        // The round just closed keeps its announcements: the fork choice ranks its
        // manifests among them. Older ones go.
        let keep = c.announcements.split_off(&round);
        c.announcements = keep;
        let keep = c.refused.split_off(&round);
        c.refused = keep;
        // Manifests, their evaluations and late authors of rounds far behind go too.
        let oldest = round.saturating_sub(KEEP_ROUNDS_BEHIND);
        c.manifests = c.manifests.split_off(&oldest);
        c.evaluations = c.evaluations.split_off(&oldest);
        c.late = c.late.split_off(&oldest);
        c.arrived = c.arrived.split_off(&oldest);
        c.secure.close_through(round);
        let kept = c.manifest_bytes.split_off(&oldest);
        let dropped: usize = c.manifest_bytes.values().flat_map(|m| m.values()).sum();
        c.manifest_bytes = kept;
        c.manifest_bytes_held = c.manifest_bytes_held.saturating_sub(dropped);
    }

    /// Waits until something new is filed, or `timeout` passes.
    pub async fn changed(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the author of a second update is blamed for it; records every honest node finds
    /// invalid cost whoever sent them; this node's own limits cost no one.
    #[test]
    fn only_what_every_honest_node_refuses_costs_the_sender() {
        let (author, forwarder) = (PeerId::random(), PeerId::random());
        let second = FileError::SecondUpdate { author, round: 2 };
        assert_eq!(second.acceptance(&author), MessageAcceptance::Reject);
        assert_eq!(second.acceptance(&forwarder), MessageAcceptance::Ignore);
        for invalid in [
            FileError::Claim(super::super::claim::ClaimError::NoClients),
            FileError::NotMember(author),
            FileError::NoSuchRound {
                round: 9,
                rounds: 3,
            },
            FileError::TooLarge(3 << 20),
        ] {
            assert_eq!(invalid.acceptance(&forwarder), MessageAcceptance::Reject);
        }
        let full = FileError::Full {
            what: "round 2's announcers".into(),
            limit: MAX_ANNOUNCERS_PER_ROUND,
        };
        assert_eq!(full.acceptance(&author), MessageAcceptance::Ignore);
        // Which of two announcements of one update arrives first depends on the path.
        let copy = FileError::SharedUpdate {
            update: Cid::default(),
            first: forwarder,
        };
        assert_eq!(copy.acceptance(&author), MessageAcceptance::Ignore);
    }
}
