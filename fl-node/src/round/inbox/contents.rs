//! What an inbox holds for one task, and the decisions on it that need no I/O: which
//! records to keep, within which bounds, and whom a round need not wait for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use cid::Cid;
use fl_core::records::{Announcement, Manifest, PeerId, Signed};

use super::super::claim::ClaimError;
use super::{
    FileError, KEEP_ROUNDS_BEHIND, MAX_ANNOUNCERS_PER_ROUND, MAX_MANIFEST_BYTES_HELD,
    MAX_MANIFEST_BYTES_PER_SIGNER, MAX_MANIFESTS_PER_ROUND, MAX_MANIFESTS_PER_SIGNER,
    SignedAnnouncement, SignedEvaluation,
};

/// The records an inbox keeps and what it notes of their authors, behind the inbox's lock.
#[derive(Default)]
pub(super) struct Contents {
    /// Round -> author -> announcement (the first one per author and round counts).
    pub(super) announcements: BTreeMap<u32, BTreeMap<PeerId, SignedAnnouncement>>,
    /// Round -> manifests seen, by CID.
    pub(super) manifests: BTreeMap<u32, HashMap<Cid, Arc<Signed<Manifest>>>>,
    /// Round -> signer -> bytes of its manifests, and their sum
    /// ([`MAX_MANIFEST_BYTES_HELD`]).
    pub(super) manifest_bytes: BTreeMap<u32, HashMap<PeerId, usize>>,
    pub(super) manifest_bytes_held: usize,
    /// Round -> manifest -> evaluations of its model (the one its signer made counts).
    pub(super) evaluations: BTreeMap<u32, HashMap<Cid, Vec<SignedEvaluation>>>,
    /// Rounds already decided: their announcements only mark their authors as late.
    pub(super) closed_through: u32,
    /// Round -> authors whose announcements came after the round closed: alive, and
    /// expected in the next round.
    pub(super) late: BTreeMap<u32, std::collections::BTreeSet<PeerId>>,
    /// Round -> authors whose announcement for it this node refused (a sample count out of
    /// bounds, which every node refuses; an update another author announced first here):
    /// the round does not wait for them. This node's view, from what reached it first: it
    /// decides only what this node waits for, never a penalty.
    pub(super) refused: BTreeMap<u32, std::collections::BTreeSet<PeerId>>,
    /// Peer -> the manifest it gossiped last: the head it follows (peers re-publish it).
    pub(super) heads: HashMap<PeerId, Cid>,
    /// Peer -> when a valid record of theirs last arrived (peers re-publish at a pace).
    pub(super) heard: HashMap<PeerId, Instant>,
    /// Round -> announcement or manifest -> when it was filed (fair inclusion compares them).
    pub(super) arrived: BTreeMap<u32, HashMap<Cid, Instant>>,
    /// The steps of secure rounds in flight.
    pub(super) secure: super::secure::SecureSteps,
}

impl Contents {
    /// Whether a new manifest of `size` bytes signed by `signer` for `round` may be kept:
    /// within the bytes held in all and from one signer, and the round's slots and the
    /// signer's among them.
    pub(super) fn room_for_manifest(
        &self,
        round: u32,
        signer: &PeerId,
        size: usize,
    ) -> Result<(), FileError> {
        if self.manifest_bytes_held + size > MAX_MANIFEST_BYTES_HELD {
            return Err(FileError::Full {
                what: "the manifests held".into(),
                limit: MAX_MANIFEST_BYTES_HELD,
            });
        }
        let signers: usize = self
            .manifest_bytes
            .values()
            .filter_map(|m| m.get(signer))
            .sum();
        if signers + size > MAX_MANIFEST_BYTES_PER_SIGNER {
            return Err(FileError::Full {
                what: format!("the manifests held signed by {signer}"),
                limit: MAX_MANIFEST_BYTES_PER_SIGNER,
            });
        }
        let Some(seen) = self.manifests.get(&round) else {
            return Ok(());
        };
        if seen.len() >= MAX_MANIFESTS_PER_ROUND {
            return Err(FileError::Full {
                what: format!("round {round}'s manifests"),
                limit: MAX_MANIFESTS_PER_ROUND,
            });
        }
        if seen.values().filter(|m| m.signer == *signer).count() >= MAX_MANIFESTS_PER_SIGNER {
            return Err(FileError::Full {
                what: format!("round {round}'s manifests signed by {signer}"),
                limit: MAX_MANIFESTS_PER_SIGNER,
            });
        }
        Ok(())
    }

    /// Whether manifest `cid` of `round`, `size` bytes signed by `signer`, is to be kept:
    /// not one kept already, nor older than any fork this node still looks at (noted as the
    /// signer's head only), and with room for it.
    pub(super) fn wants_manifest(
        &self,
        round: u32,
        cid: &Cid,
        signer: &PeerId,
        size: usize,
    ) -> Result<bool, FileError> {
        if round + KEEP_ROUNDS_BEHIND < self.closed_through
            || self
                .manifests
                .get(&round)
                .is_some_and(|m| m.contains_key(cid))
        {
            return Ok(false);
        }
        self.room_for_manifest(round, signer, size)?;
        Ok(true)
    }

    /// Keeps manifest `cid` of `size` bytes, arrived just now.
    pub(super) fn keep_manifest(&mut self, cid: Cid, signed: Signed<Manifest>, size: usize) {
        let (round, signer) = (signed.body.round, signed.signer);
        self.manifests
            .entry(round)
            .or_default()
            .insert(cid, Arc::new(signed));
        self.arrived_now(round, cid);
        *self
            .manifest_bytes
            .entry(round)
            .or_default()
            .entry(signer)
            .or_default() += size;
        self.manifest_bytes_held += size;
    }

    /// Whether announcement `cid` is new and to be kept (`false`: a replay, or one for a
    /// closed round, which only marks its author as late). One whose claims the task does
    /// not allow (`claimed`: a sample count out of bounds, a client not sampled or not its
    /// author's) or that names an update another author announced first marks its author
    /// as refused for the round ([`Contents::refuse`]).
    pub(super) fn admit_announcement(
        &mut self,
        cid: Cid,
        signed: &Signed<Announcement>,
        claimed: Result<(), ClaimError>,
    ) -> Result<bool, FileError> {
        let (a, author) = (&signed.body, signed.signer);
        let round = a.round;
        if let Err(why) = claimed {
            self.refuse(round, author);
            return Err(FileError::Claim(why));
        }
        if round <= self.closed_through {
            // Routine (authors re-publish until they adopt the round): noted, not kept.
            let late = self.late.entry(round).or_default();
            if late.len() < MAX_ANNOUNCERS_PER_ROUND {
                late.insert(author);
            }
            return Ok(false);
        }
        let entry = self.announcements.entry(round).or_default();
        if let Some((existing, _)) = entry.get(&author) {
            if *existing != cid {
                return Err(FileError::SecondUpdate { author, round });
            }
            return Ok(false);
        }
        if let Some((_, (_, first))) = entry.iter().find(|(_, (_, o))| o.body.update == a.update) {
            let first = first.signer;
            self.refuse(round, author);
            return Err(FileError::SharedUpdate {
                update: a.update,
                first,
            });
        }
        if entry.len() >= MAX_ANNOUNCERS_PER_ROUND {
            return Err(FileError::Full {
                what: format!("round {round}'s announcers"),
                limit: MAX_ANNOUNCERS_PER_ROUND,
            });
        }
        Ok(true)
    }

    /// Keeps announcement `cid`, admitted and arrived just now.
    pub(super) fn keep_announcement(&mut self, cid: Cid, signed: Signed<Announcement>) {
        let round = signed.body.round;
        self.announcements
            .entry(round)
            .or_default()
            .insert(signed.signer, (cid, signed));
        self.arrived_now(round, cid);
    }

    /// See [`super::Inbox::refused`].
    pub(super) fn refused(&self, round: u32) -> HashSet<PeerId> {
        let filed = self.announcements.get(&round);
        self.refused
            .get(&round)
            .into_iter()
            .flatten()
            .filter(|p| !filed.is_some_and(|a| a.contains_key(p)))
            .copied()
            .collect()
    }

    /// Notes that `author`'s announcement for `round` was refused, unless the round is
    /// closed already (bounded like the round's announcers).
    pub(super) fn refuse(&mut self, round: u32, author: PeerId) {
        if round <= self.closed_through {
            return;
        }
        let refused = self.refused.entry(round).or_default();
        if refused.len() < MAX_ANNOUNCERS_PER_ROUND {
            refused.insert(author);
        }
    }

    /// Notes that record `cid` of `round` was filed just now.
    pub(super) fn arrived_now(&mut self, round: u32, cid: Cid) {
        self.arrived
            .entry(round)
            .or_default()
            .insert(cid, Instant::now());
    }

    /// How long a peer stays alive after its last record, given the peers heard so far.
    pub(super) fn liveness_window(&self) -> std::time::Duration {
        crate::round::republish::liveness(self.heard.len())
    }
}

#[cfg(test)]
mod tests {
    use fl_core::content::{Block, DAG_CBOR};

    use super::super::MAX_RECORD_BYTES;
    use super::*;

    /// A manifest of `round` signed by `signer`, as the inbox keeps it (its signature is
    /// checked before this point).
    fn manifest(round: u32, signer: PeerId, rank: u32) -> (Cid, Signed<Manifest>) {
        let body =
            Manifest::counting_nothing(Cid::default(), round, None, Cid::default(), "fedavg", rank);
        unsigned(body, signer, format!("{signer} {round} {rank}"))
    }

    /// `body` as if `signer` had signed it, under a CID made from `id` (the inbox checks
    /// signatures before these tests' point).
    fn unsigned<R>(body: R, signer: PeerId, id: String) -> (Cid, Signed<R>) {
        let cid = *Block::hashed(DAG_CBOR, id.into_bytes()).cid();
        let signed = Signed {
            body,
            signer,
            key: Vec::new(),
            signature: Vec::new(),
        };
        (cid, signed)
    }

    /// An announcement by `signer` of `update` with `samples`, as the inbox keeps it (its
    /// signature is checked before this point).
    fn announcement(
        round: u32,
        signer: PeerId,
        update: &str,
        samples: u64,
    ) -> (Cid, Signed<Announcement>) {
        let update = *Block::hashed(DAG_CBOR, update.as_bytes().to_vec()).cid();
        let body = Announcement {
            task: Cid::default(),
            round,
            base: Cid::default(),
            update,
            samples,
            epochs: 1,
            epsilon: None,
            clients: Vec::new(),
            steps: None,
            capacity: None,
        };
        unsigned(body, signer, format!("{signer} {round} {update} {samples}"))
    }

    /// A member that inflates its samples or names another's update is refused and marked
    /// so for the round (the round stops waiting for it), until it sends one that counts;
    /// a replay is not kept twice, and a closed round marks its authors late, not refused.
    /// Of two announcers of one update, the one that arrives second is refused.
    #[test]
    fn a_refused_announcement_marks_its_author_for_the_round() {
        let mut c = Contents::default();
        let (honest, inflater, copier) = (PeerId::random(), PeerId::random(), PeerId::random());
        let file = |c: &mut Contents, (cid, signed): (Cid, Signed<Announcement>)| {
            let s = signed.body.samples;
            let claimed = match s {
                1..=1200 => Ok(()),
                _ => Err(ClaimError::Samples {
                    claimed: s,
                    bound: 1200,
                }),
            };
            let admitted = c.admit_announcement(cid, &signed, claimed)?;
            if admitted {
                c.keep_announcement(cid, signed);
            }
            Ok::<bool, FileError>(admitted)
        };
        assert!(matches!(
            file(&mut c, announcement(2, honest, "h", 1200)),
            Ok(true)
        ));
        assert!(matches!(
            file(&mut c, announcement(2, honest, "h", 1200)),
            Ok(false)
        ));
        assert!(matches!(
            file(&mut c, announcement(2, inflater, "i", 1 << 32)),
            Err(FileError::Claim(ClaimError::Samples { .. }))
        ));
        assert!(matches!(
            file(&mut c, announcement(2, copier, "h", 1200)),
            Err(FileError::SharedUpdate { first, .. }) if first == honest
        ));
        assert_eq!(c.refused(2), [inflater, copier].into_iter().collect());
        assert!(c.refused(3).is_empty());
        // The inflater thinks better of it: its update counts, and it is awaited again.
        assert!(matches!(
            file(&mut c, announcement(2, inflater, "i", 600)),
            Ok(true)
        ));
        assert_eq!(c.refused(2), [copier].into_iter().collect());
        assert_eq!(c.announcements[&2].len(), 2);
        c.closed_through = 2;
        let late = PeerId::random();
        assert!(matches!(
            file(&mut c, announcement(2, late, "l", 0)),
            Err(FileError::Claim(ClaimError::Samples { claimed: 0, .. }))
        ));
        assert!(matches!(
            file(&mut c, announcement(2, late, "l", 10)),
            Ok(false)
        ));
        assert!(!c.refused(2).contains(&late));
        assert!(c.late[&2].contains(&late));
        // Which of two announcers of one update is refused is this node's view: the one
        // that reached it second (a copy that outruns its original leaves the original's
        // author refused here, which decides only what this node waits for).
        let mut c = Contents::default();
        assert!(matches!(
            file(&mut c, announcement(3, copier, "h", 1200)),
            Ok(true)
        ));
        assert!(file(&mut c, announcement(3, honest, "h", 1200)).is_err());
        assert_eq!(c.refused(3), [honest].into_iter().collect());
    }

    /// A member that signs near-2 MiB manifests for every round ahead fills its own share of
    /// the inbox (4 a round, 32 MiB in all), not the node's memory, and an honest signer's
    /// manifest is kept after it.
    #[test]
    fn one_signer_floods_only_its_share_of_the_manifests_held() {
        let mut c = Contents::default();
        let (flooder, honest) = (PeerId::random(), PeerId::random());
        let size = MAX_RECORD_BYTES - 4096;
        let mut kept = 0;
        for round in 1..=100 {
            for rank in 0..6 {
                if c.room_for_manifest(round, &flooder, size).is_ok() {
                    let (cid, signed) = manifest(round, flooder, rank);
                    c.keep_manifest(cid, signed, size);
                    kept += 1;
                }
            }
            if round == 1 {
                assert_eq!(
                    kept, MAX_MANIFESTS_PER_SIGNER,
                    "a signer's slots in a round"
                );
            }
        }
        assert_eq!(kept, MAX_MANIFEST_BYTES_PER_SIGNER / size);
        assert!(c.manifest_bytes_held <= MAX_MANIFEST_BYTES_PER_SIGNER);
        assert!(matches!(
            c.room_for_manifest(101, &flooder, size),
            Err(FileError::Full { .. })
        ));
        assert!(c.room_for_manifest(1, &honest, size).is_ok());
    }
}
