//! The round's decisions as pure functions of what a node knows and of the time it is told:
//! whose turn it is to aggregate, how many updates a round waits for, which of two rival
//! manifests wins, and when a manifest is looked at again. No I/O and no clock of its own,
//! so each decision is unit-tested in milliseconds; [`Participant`](super::Participant)
//! gathers what they need, calls them and acts.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cid::Cid;
use fl_core::records::{Manifest, Signed, rank_key};
use libp2p::PeerId;

/// Pause before a manifest whose inputs could not be fetched is looked at again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(2);
/// Longest such pause (it doubles each time).
pub const RECHECK_AT_MOST: Duration = Duration::from_secs(30);
/// Tries after which a rival manifest (a fork of a round this node decided on a manifest it
/// checked) whose inputs could not be fetched is looked at only once per
/// [`RIVAL_RECHECK_AFTER`] (unless a peer other than its signer stands on it: that peer has
/// its inputs): each try can hold the round loop for a whole fetch deadline, and a signer
/// that serves its inputs at a trickle must not take that time from every round.
pub const RIVAL_TRIES: u32 = 3;
/// Pause between looks at such a rival once [`RIVAL_TRIES`] have failed.
pub const RIVAL_RECHECK_AFTER: Duration = Duration::from_secs(600);

/// Who a round waits for before its first-ranked aggregator closes it early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Last round's contributors and latecomers, each while it is heard from.
    Peers(HashSet<PeerId>),
    /// First round: who joined, the task's members or, in an open task, this node and the
    /// peers on its updates topic (none has re-published anything yet to be heard by, so
    /// none is taken for quiet).
    Joined(HashSet<PeerId>),
}

impl Expected {
    /// How many updates to wait for now: a peer gone `quiet` (stopped, cut off) is not
    /// waited for unless its update is in already, so the round need not wait out its
    /// deadline; one heard from again is waited for again. Nor is one whose announcement
    /// was `refused` (a sample count out of bounds, a copied update), unless it since sent
    /// one that counts.
    pub fn awaited<'a>(
        &self,
        me: &PeerId,
        announced: impl IntoIterator<Item = &'a PeerId>,
        refused: &HashSet<PeerId>,
        quiet: impl Fn(&PeerId) -> bool,
    ) -> usize {
        let in_already: HashSet<&PeerId> = announced.into_iter().collect();
        let ruled_out = |p: &PeerId| p != me && !in_already.contains(p) && refused.contains(p);
        match self {
            Expected::Joined(peers) => peers.iter().filter(|p| !ruled_out(p)).count(),
            Expected::Peers(peers) => peers
                .iter()
                .filter(|p| *p == me || in_already.contains(p) || !quiet(p))
                .filter(|p| !ruled_out(p))
                .count(),
        }
    }
}

/// What a node knows of a round when it asks whether to aggregate it.
#[derive(Debug, Clone)]
pub struct Round<'a> {
    /// The announcers in rank order (the round's ranking).
    pub order: &'a [PeerId],
    /// Updates announced on the round's model.
    pub announced: usize,
    /// Updates the first-ranked aggregator waits for before closing early
    /// ([`Expected::awaited`], at least the task's minimum).
    pub awaited: usize,
    /// The task's minimum of updates.
    pub min: usize,
    /// When the round closes with whatever arrived.
    pub deadline: Instant,
    /// How long each next-ranked aggregator waits for the one before it.
    pub grace: Duration,
}

/// Whether it is this node's turn to aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Not an announcer this round: never entitled to aggregate it.
    NotEntitled,
    /// Not yet (or not at all, while a peer ranked ahead is still heard from).
    Wait,
    /// Aggregate now, as `rank`; `ahead` peers ranked before it are still heard from (fewer
    /// than `rank` when some went quiet: it acts in their place).
    Aggregate {
        /// This node's rank.
        rank: usize,
        /// Peers ranked ahead still heard from.
        ahead: usize,
    },
}

/// Whether `me` aggregates `round` at `now`. The first peer still heard from aggregates once
/// every awaited update is in, or at the deadline; the one after it waits one grace period
/// more, and so on. Never with fewer than the minimum, nor before `retry_at`.
pub fn turn(
    round: &Round<'_>,
    me: &PeerId,
    quiet: impl Fn(&PeerId) -> bool,
    retry_at: Option<Instant>,
    now: Instant,
) -> Turn {
    let Some(rank) = round.order.iter().position(|p| p == me) else {
        return Turn::NotEntitled;
    };
    if retry_at.is_some_and(|t| now < t) || round.announced < round.min {
        return Turn::Wait;
    }
    let ahead = round.order[..rank].iter().filter(|p| !quiet(p)).count();
    let due = if ahead == 0 {
        round.announced >= round.awaited || now >= round.deadline
    } else {
        now >= round.deadline + round.grace * ahead as u32
    };
    if due {
        Turn::Aggregate { rank, ahead }
    } else {
        Turn::Wait
    }
}

/// Where a manifest stands in the fork choice between rival manifests for one round: the
/// one that counts more updates wins (an aggregator that leaves updates out loses to one
/// that counts them), then the one listing more announcements, then the one whose signer
/// comes first in the round's order (a place fixed by the chain before the round: no choice
/// of updates and no re-signing moves it), then, between manifests of one signer, the lower
/// CID. Every honest node that sees both picks the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Standing {
    counted: Reverse<usize>,
    listed: Reverse<usize>,
    place: [u8; 32],
    cid: Cid,
}

impl Standing {
    /// Where manifest `cid` stands.
    pub fn of(cid: Cid, signed: &Signed<Manifest>) -> Self {
        let m = &signed.body;
        Standing {
            counted: Reverse(m.contributions.len()),
            listed: Reverse(m.contributions.len() + m.rejected.len()),
            place: rank_key(&m.rank_anchor(), m.round, &signed.signer),
            cid,
        }
    }
}

/// The fork choice between two manifests for one round ([`Standing`]): whether `rival`
/// beats `ours`.
pub fn wins(rival: &Standing, ours: &Standing) -> bool {
    rival < ours
}

/// Whether a peer whose head is `theirs` stays off this node's chain, whose manifest for that
/// round is `ours`: the fork choice never takes a peer from a manifest to one it beats, so
/// one standing on a rival that beats this node's will not announce on this node's chain
/// (not before that rival is refuted where it stands), and a round need not wait for it.
/// A peer on a rival that loses comes over, and is waited for.
pub fn stays_elsewhere(theirs: &Standing, ours: &Standing) -> bool {
    theirs.cid != ours.cid && wins(theirs, ours)
}

/// The manifests for a round worth looking at now, best first: those continuing this node's
/// chain (their `prev` is its head) that are neither refuted nor paused, in the order the
/// fork choice prefers. Each manifest is given as its standing and `prev`.
pub fn candidates(
    manifests: impl IntoIterator<Item = (Standing, Option<Cid>)>,
    head: Option<Cid>,
    verdicts: &Verdicts,
    now: Instant,
) -> Vec<Cid> {
    let mut open: Vec<Standing> = manifests
        .into_iter()
        .filter(|(s, prev)| *prev == head && verdicts.open(&s.cid, now))
        .map(|(s, _)| s)
        .collect();
    open.sort();
    open.into_iter().map(|s| s.cid).collect()
}

/// Manifests checked so far: valid ones, refuted ones (never checked again), and ones whose
/// inputs could not be fetched yet (checked again after a pause that doubles each time).
#[derive(Debug, Default)]
pub struct Verdicts {
    valid: HashSet<Cid>,
    refuted: HashSet<Cid>,
    /// When each is looked at again, the pause before that, and how many tries failed.
    unreachable: HashMap<Cid, (Instant, Duration, u32)>,
    /// Manifests off this node's chain found no better than it (or not forks of it), and
    /// the last round decided when they were: looked at again once that changes.
    settled: HashSet<Cid>,
    settled_at: u32,
}

impl Verdicts {
    /// Notes how many rounds are decided: forks settled before that are looked at again.
    pub fn decided(&mut self, done: u32) {
        if self.settled_at != done {
            self.settled.clear();
            self.settled_at = done;
        }
    }

    /// Notes that what `cid` needs could not be fetched at `now`: it is looked at again after
    /// a pause that doubles each time (returned).
    pub fn unreachable(&mut self, cid: Cid, now: Instant) -> Duration {
        let (pause, tries) = self
            .unreachable
            .get(&cid)
            .map_or((RECHECK_AFTER, 1), |(_, p, n)| {
                ((*p * 2).min(RECHECK_AT_MOST), n.saturating_add(1))
            });
        self.unreachable.insert(cid, (now + pause, pause, tries));
        pause
    }

    /// The pause before `cid` is looked at again, if its inputs were missing.
    pub fn pause(&self, cid: &Cid) -> Option<Duration> {
        self.unreachable.get(cid).map(|(_, p, _)| *p)
    }

    /// Notes that `cid` held up to recomputation.
    pub fn valid(&mut self, cid: Cid) {
        self.unreachable.remove(&cid);
        self.valid.insert(cid);
    }

    /// Whether `cid` held up to recomputation.
    pub fn is_valid(&self, cid: &Cid) -> bool {
        self.valid.contains(cid)
    }

    /// Whether `cid` was refuted.
    pub fn is_refuted(&self, cid: &Cid) -> bool {
        self.refuted.contains(cid)
    }

    /// Notes that `cid` is wrong: it is never looked at again.
    pub fn refuted(&mut self, cid: Cid) {
        self.refuted.insert(cid);
    }

    /// Notes that fork `cid` is no better than this node's chain (or not a fork of it) while
    /// the rounds decided stay as they are.
    pub fn settled(&mut self, cid: Cid) {
        self.settled.insert(cid);
    }

    /// Whether `cid` was found no better than this node's chain since the last change.
    pub fn is_settled(&self, cid: &Cid) -> bool {
        self.settled.contains(cid)
    }

    /// Forgets which forks were settled: this node's chain changed.
    pub fn forget_forks(&mut self) {
        self.settled.clear();
    }

    /// Whether `cid` is worth checking (or is known valid) at `now`.
    pub fn open(&self, cid: &Cid, now: Instant) -> bool {
        !self.refuted.contains(cid)
            && self
                .unreachable
                .get(cid)
                .is_none_or(|(at, _, _)| now >= *at)
    }

    /// Whether rival `cid` is worth checking at `now`: as [`open`](Self::open), but after
    /// [`RIVAL_TRIES`] failed fetches only once per [`RIVAL_RECHECK_AFTER`], unless it is
    /// `vouched` for (a peer other than its signer stands on it, so its inputs are there).
    /// (A fork's manifests are also this round's candidates while undecided, with the
    /// shorter pauses.)
    pub fn open_rival(&self, cid: &Cid, vouched: bool, now: Instant) -> bool {
        match self.unreachable.get(cid) {
            Some((at, pause, tries)) if !vouched && *tries >= RIVAL_TRIES => {
                !self.refuted.contains(cid) && now >= *at - *pause + RIVAL_RECHECK_AFTER
            }
            _ => self.open(cid, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use fl_core::content::dagcbor;
    use fl_core::records::{Contribution, Keypair, RejectReason, Rejected};

    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn cid(n: u8) -> Cid {
        *dagcbor::encode(&n).unwrap().cid()
    }

    /// A round of `order` where `announced` updates are in, awaiting `awaited`, minimum 2,
    /// deadline 60 s after `t0`, grace 10 s.
    fn round(order: &[PeerId], announced: usize, awaited: usize, t0: Instant) -> Round<'_> {
        Round {
            order,
            announced,
            awaited,
            min: 2,
            deadline: t0 + Duration::from_secs(60),
            grace: Duration::from_secs(10),
        }
    }

    const NONE_QUIET: fn(&PeerId) -> bool = |_| false;

    /// The turn order, everyone heard from: rank 0 closes early when all are in, the others
    /// only a grace period per rank after the deadline. (Reached otherwise only by real
    /// processes: `federation.rs::five_nodes_three_rounds_agree_verify_and_improve`.)
    #[test]
    fn the_first_ranked_closes_early_and_the_others_wait_their_grace() {
        let t0 = Instant::now();
        let order = peers(4);
        let all_in = round(&order, 4, 4, t0);
        assert_eq!(
            turn(&all_in, &order[0], NONE_QUIET, None, t0),
            Turn::Aggregate { rank: 0, ahead: 0 }
        );
        for (rank, p) in order.iter().enumerate().skip(1) {
            let at = |s: u64| t0 + Duration::from_secs(s);
            let due = 60 + 10 * rank as u64;
            assert_eq!(turn(&all_in, p, NONE_QUIET, None, at(due - 1)), Turn::Wait);
            assert_eq!(
                turn(&all_in, p, NONE_QUIET, None, at(due)),
                Turn::Aggregate { rank, ahead: rank }
            );
        }
        assert_eq!(
            turn(&all_in, &PeerId::random(), NONE_QUIET, None, t0),
            Turn::NotEntitled
        );
    }

    /// Closing with the minimum: before the deadline rank 0 waits for everyone awaited; at
    /// the deadline it closes with what it has, never with fewer than the minimum.
    /// (`simulate.rs::rounds_go_on_when_a_node_stops_mid_round` reaches it after a real
    /// deadline.)
    #[test]
    fn a_round_closes_at_its_deadline_with_the_minimum_and_not_below() {
        let t0 = Instant::now();
        let order = peers(3);
        let partial = round(&order[..2], 2, 3, t0);
        let before = t0 + Duration::from_secs(59);
        let deadline = t0 + Duration::from_secs(60);
        assert_eq!(
            turn(&partial, &order[0], NONE_QUIET, None, before),
            Turn::Wait
        );
        assert_eq!(
            turn(&partial, &order[0], NONE_QUIET, None, deadline),
            Turn::Aggregate { rank: 0, ahead: 0 }
        );
        let lone = round(&order[..1], 1, 3, t0);
        let late = t0 + Duration::from_secs(3600);
        assert_eq!(turn(&lone, &order[0], NONE_QUIET, None, late), Turn::Wait);
        // After a failed try (too few usable updates), not again before the retry time.
        let retry = Some(deadline + Duration::from_secs(2));
        assert_eq!(
            turn(&partial, &order[0], NONE_QUIET, retry, deadline),
            Turn::Wait
        );
    }

    /// Aggregator failover: peers ranked ahead that went quiet do not hold the round; the
    /// next one still heard from acts in their place at once, and one that comes back takes
    /// its turn again. (The decision behind
    /// `federation.rs::the_round_2_aggregator_is_killed_and_the_next_ranked_peer_publishes`
    /// and `simulate.rs::the_aggregator_stops_as_it_starts_and_the_next_in_rank_publishes`.)
    #[test]
    fn quiet_peers_ranked_ahead_are_passed_over_and_resume_when_heard_again() {
        let t0 = Instant::now();
        let order = peers(4);
        let all_in = round(&order, 4, 4, t0);
        let first_two_quiet = |p: &PeerId| *p == order[0] || *p == order[1];
        assert_eq!(
            turn(&all_in, &order[2], first_two_quiet, None, t0),
            Turn::Aggregate { rank: 2, ahead: 0 }
        );
        assert_eq!(
            turn(&all_in, &order[3], first_two_quiet, None, t0),
            Turn::Wait
        );
        let first_back = |p: &PeerId| *p == order[1];
        assert_eq!(turn(&all_in, &order[2], first_back, None, t0), Turn::Wait);
        assert_eq!(
            turn(
                &all_in,
                &order[2],
                first_back,
                None,
                t0 + Duration::from_secs(70)
            ),
            Turn::Aggregate { rank: 2, ahead: 1 }
        );
    }

    /// A peer that goes quiet is not waited for unless its update is in; when it is heard
    /// again it is awaited again. (The waiting part of
    /// `federation.rs::two_of_five_killed_the_rest_go_on_and_a_restarted_node_catches_up`.)
    #[test]
    fn a_quiet_peer_is_not_awaited_until_it_comes_back() {
        let all = peers(4);
        let (me, a, b, c) = (all[0], all[1], all[2], all[3]);
        let expected = Expected::Peers(all.iter().copied().collect());
        let none = HashSet::new();
        let quiet_b_c = |p: &PeerId| *p == b || *p == c;
        assert_eq!(expected.awaited(&me, [&a], &none, quiet_b_c), 2);
        // c's update arrived before it went quiet: it counts.
        assert_eq!(expected.awaited(&me, [&a, &c], &none, quiet_b_c), 3);
        assert_eq!(expected.awaited(&me, [&a], &none, |p| *p == b), 3);
        assert_eq!(expected.awaited(&me, [&a], &none, NONE_QUIET), 4);
        // Even quiet, this node waits for itself.
        assert_eq!(expected.awaited(&me, [], &none, |_| true), 1);
        // In the first round no peer is taken for quiet.
        let joined = Expected::Joined(all.iter().copied().collect());
        assert_eq!(joined.awaited(&me, [], &none, |_| true), 4);
    }

    /// A member whose announcement this node refused (inflated samples, a copied update) is
    /// not waited for, whether it keeps re-publishing or not, in the first round as in later
    /// ones; one that then sends an announcement that counts is. A refused peer that was not
    /// awaited (a fresh key in an open task) takes nothing off what the round waits for.
    /// (The waiting part of
    /// `simulate.rs::members_that_inflate_their_samples_or_copy_an_update_change_nothing`.)
    #[test]
    fn a_member_whose_announcement_was_refused_is_not_awaited() {
        let all = peers(6);
        let (me, a, b, c, stranger) = (all[0], all[1], all[2], all[3], all[5]);
        let refused: HashSet<PeerId> = [b, c, stranger].into_iter().collect();
        let five: HashSet<PeerId> = all[..5].iter().copied().collect();
        for expected in [Expected::Peers(five.clone()), Expected::Joined(five)] {
            assert_eq!(expected.awaited(&me, [&a], &refused, NONE_QUIET), 3);
            assert_eq!(expected.awaited(&me, [&a, &c], &refused, NONE_QUIET), 4);
            // This node is never ruled out.
            let mine: HashSet<PeerId> = [me].into_iter().collect();
            assert_eq!(expected.awaited(&me, [], &mine, NONE_QUIET), 5);
        }
    }

    /// A manifest for `round` after `prev` signed by `key`, counting `counted` updates (by
    /// fresh peers) and listing `rejected` more.
    fn manifest(
        key: &Keypair,
        prev: Cid,
        counted: usize,
        rejected: usize,
        rank: u32,
    ) -> (Cid, Signed<Manifest>) {
        let peer = PeerId::random();
        let contribution = |i: usize| Contribution {
            peer,
            announcement: cid(100 + i as u8),
            update: cid(200 + i as u8),
            samples: 10,
            weight: 1.0 / counted as f64,
            credits: 1,
            epsilon: None,
        };
        let manifest = Manifest {
            task: cid(50),
            round: 3,
            prev: Some(prev),
            base_model: cid(51),
            model: cid(52),
            rule: "fedavg".into(),
            server_state: None,
            contributions: (0..counted).map(contribution).collect(),
            rejected: (0..rejected)
                .map(|i| Rejected {
                    peer,
                    announcement: cid(150 + i as u8),
                    update: cid(250),
                    reason: RejectReason::NonFinite,
                })
                .collect(),
            epsilon: None,
            delta: None,
            metrics: None,
            rank,
            secure: None,
        };
        let signed = Signed::sign(manifest, key).unwrap();
        (*signed.to_block().unwrap().cid(), signed)
    }

    fn standing(m: &(Cid, Signed<Manifest>)) -> Standing {
        Standing::of(m.0, &m.1)
    }

    /// Fork choice between rival manifests for one round: the one counting more updates wins
    /// whoever signed it (an aggregator that leaves updates out loses to one that counts
    /// them), then the one listing more, then the signer placed first in the round's order
    /// whatever rank each claims among what it lists, and only between manifests of one
    /// signer the lower CID; re-signing the same manifest gives the same CID. (The choice
    /// itself in `federation.rs::a_partition_forks_the_chain_and_after_it_heals_every_node_follows_one`,
    /// leaving out in `simulate.rs::an_aggregator_that_leaves_updates_out_loses_the_round`.)
    #[test]
    fn the_manifest_counting_more_wins_then_the_signer_placed_first_and_grinding_gains_nothing() {
        let prev = cid(9);
        let keys: Vec<Keypair> = (0..2).map(|_| Keypair::generate_ed25519()).collect();
        let key = |k: &Keypair| rank_key(&prev, 3, &k.public().to_peer_id());
        let (first, second) = if key(&keys[0]) < key(&keys[1]) {
            (&keys[0], &keys[1])
        } else {
            (&keys[1], &keys[0])
        };
        let fuller = manifest(second, prev, 3, 0, 1);
        let censoring = manifest(first, prev, 2, 0, 0);
        assert!(wins(&standing(&fuller), &standing(&censoring)));
        assert!(!wins(&standing(&censoring), &standing(&fuller)));
        // Marking an update unavailable (listed, not counted) does not help either.
        let listing = manifest(first, prev, 2, 1, 0);
        assert!(wins(&standing(&fuller), &standing(&listing)));
        assert!(wins(&standing(&listing), &standing(&censoring)));
        // Equal counts: the signer placed first wins, whatever rank each claims.
        let a = manifest(first, prev, 3, 0, 5);
        let b = manifest(second, prev, 3, 0, 0);
        assert!(wins(&standing(&a), &standing(&b)));
        assert!(!wins(&standing(&b), &standing(&a)));
        // One signer's two manifests: the lower CID; the same one signed again is the same.
        let again = manifest(first, prev, 3, 0, 5);
        assert_ne!(again.0, a.0, "other contributions, other CID");
        let (low, high) = if a.0 < again.0 {
            (&a, &again)
        } else {
            (&again, &a)
        };
        assert!(wins(&standing(low), &standing(high)));
        let resigned = Signed::sign(a.1.body.clone(), first).unwrap();
        assert_eq!(*resigned.to_block().unwrap().cid(), a.0);
        assert!(!wins(&standing(&a), &standing(&a)));
    }

    /// A manifest whose inputs are missing is looked at again after 2, 4, 8 ... 30 s; a
    /// refuted one never; a valid one stays valid. A node that restarts mid-round starts
    /// from empty verdicts and looks at everything once more.
    #[test]
    fn unreachable_manifests_back_off_and_refuted_ones_stay_closed() {
        let t0 = Instant::now();
        let m = cid(3);
        let mut v = Verdicts::default();
        assert!(v.open(&m, t0));
        let pauses: Vec<u64> = (0..6).map(|_| v.unreachable(m, t0).as_secs()).collect();
        assert_eq!(pauses, [2, 4, 8, 16, 30, 30]);
        assert!(!v.open(&m, t0 + Duration::from_secs(29)));
        assert!(v.open(&m, t0 + Duration::from_secs(30)));
        v.valid(m);
        assert!(v.is_valid(&m) && v.pause(&m).is_none() && v.open(&m, t0));
        let bad = cid(4);
        v.refuted(bad);
        assert!(!v.open(&bad, t0 + Duration::from_secs(3600)));
        assert!(!v.open_rival(&bad, false, t0 + Duration::from_secs(3600)));
        assert!(Verdicts::default().open(&bad, t0));
    }

    /// A peer standing on a rival manifest that beats this node's (one the node cannot
    /// check, say, from a signer serving at a trickle) is not waited for; one on a rival that
    /// loses, or on the same manifest, is.
    #[test]
    fn peers_on_a_rival_that_wins_are_not_waited_for() {
        let key = Keypair::generate_ed25519();
        let prev = cid(20);
        let [fuller, ours] = [9, 8].map(|counted| manifest(&key, prev, counted, 0, 0));
        let (fuller, ours) = (standing(&fuller), standing(&ours));
        assert!(stays_elsewhere(&fuller, &ours));
        assert!(!stays_elsewhere(&ours, &fuller));
        assert!(!stays_elsewhere(&ours, &ours));
    }

    /// A rival whose inputs stay out of reach is looked at like any manifest for its first
    /// tries, then once per ten minutes: a signer serving at a trickle cannot hold every
    /// round loop a fetch deadline at a time. A candidate of an undecided round keeps the
    /// short pauses (a node catching up must not give up on the chain it needs).
    #[test]
    fn rivals_out_of_reach_are_looked_at_rarely_after_a_few_tries() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let rival = cid(6);
        let mut v = Verdicts::default();
        v.unreachable(rival, t0);
        assert!(v.open_rival(&rival, false, at(2)));
        v.unreachable(rival, at(2));
        assert!(v.open_rival(&rival, false, at(6)));
        v.unreachable(rival, at(6));
        assert!(v.open(&rival, at(14)));
        assert!(!v.open_rival(&rival, false, at(14)));
        assert!(!v.open_rival(&rival, false, at(6 + 599)));
        assert!(v.open_rival(&rival, false, at(6 + 600)));
        // Vouched for by a peer that stands on it: the short pace again.
        assert!(v.open_rival(&rival, true, at(14)));
        v.valid(rival);
        assert!(v.open_rival(&rival, false, at(7)));
    }

    /// A fork found no better stays settled while the rounds decided stay as they are, and is
    /// looked at again when they change or the chain switches.
    #[test]
    fn settled_forks_are_looked_at_again_when_the_chain_moves() {
        let fork = cid(5);
        let mut v = Verdicts::default();
        v.decided(3);
        v.settled(fork);
        v.decided(3);
        assert!(v.is_settled(&fork));
        v.decided(4);
        assert!(!v.is_settled(&fork));
        v.settled(fork);
        v.forget_forks();
        assert!(!v.is_settled(&fork));
    }

    /// A node that restarts mid-round starts with no verdicts: it looks again, best first,
    /// at every manifest for the round that continues the head it stored, including one it
    /// had refuted before (its verdicts were not kept); manifests on another chain are never
    /// this round's candidates, and one whose inputs were missing waits out its pause.
    /// (The restart in `federation.rs::two_of_five_killed_the_rest_go_on_and_a_restarted_node_catches_up`.)
    #[test]
    fn a_node_that_restarts_mid_round_looks_again_at_the_manifests_on_its_chain() {
        let t0 = Instant::now();
        let (head, elsewhere) = (cid(10), cid(11));
        let key = Keypair::generate_ed25519();
        let [a, b, c, d] = [(head, 2), (head, 4), (elsewhere, 4), (head, 1)]
            .map(|(prev, counted)| manifest(&key, prev, counted, 0, 0));
        let round = [&a, &b, &c, &d].map(|m| (standing(m), m.1.body.prev));
        let (a, b, d) = (a.0, b.0, d.0);
        let mut before = Verdicts::default();
        before.refuted(b);
        before.unreachable(a, t0);
        assert_eq!(candidates(round, Some(head), &before, t0), [d]);
        assert_eq!(
            candidates(round, Some(head), &before, t0 + RECHECK_AFTER),
            [a, d]
        );
        let restarted = Verdicts::default();
        assert_eq!(candidates(round, Some(head), &restarted, t0), [b, a, d]);
        // Round 1 has no head: only manifests that name none.
        let mut first = round;
        first[0].1 = None;
        assert_eq!(candidates(first, None, &restarted, t0), [a]);
    }
}
