//! Fair inclusion: whether a round's manifest counts the updates a member had in time, as
//! that member sees it. A manifest that leaves one out is not refuted (whether an update
//! came in time depends on where one stands, and validity must not), it is contested: the
//! member does not adopt it and takes its turn at aggregating, passing over its signer, and
//! the fork choice ([`machine::Standing`](super::machine::Standing)) prefers the manifest
//! that counts more on every node alike. Pure, like [`machine`](super::machine).

use std::time::{Duration, Instant};

use cid::Cid;

/// How long an announcement may take to reach every node after reaching one (gossip's
/// spread), allowed on top of the round's grace before a manifest is said to leave it out.
pub const PROPAGATION: Duration = Duration::from_secs(2);

/// When this node's own view of a round closed: what an honest aggregator standing here
/// would have counted by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Every update this node awaits was in at that time (no allowance: an honest
    /// aggregator waits for the same peers).
    AllIn(Instant),
    /// The round's deadline passed at that time (deadlines differ from node to node by the
    /// spread of the manifest before: allowed for).
    Deadline(Instant),
}

/// What a member that announced in a round makes of a manifest's choice of updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inclusion {
    /// It counts everything this node had in time: it may be adopted.
    Fair,
    /// It came before this node's view of the round closed: not adopted yet, since updates
    /// still on their way may be left out (an aggregator that closes early to leave them
    /// out is caught once they are in).
    Early,
    /// It leaves out this announcement, which this node had in time.
    LeavesOut(Cid),
}

/// Whether a manifest that arrived at `arrived` counts what this node had in time: each
/// announcement it `held` (with when it arrived) that came before this node's round closed
/// (`closed`), or more than the round's `grace` and [`PROPAGATION`] before the manifest,
/// must be one the manifest `counts` (as a contribution, or rejected for a reason the node
/// can check).
pub fn inclusion(
    held: &[(Cid, Instant)],
    counts: impl Fn(&Cid) -> bool,
    arrived: Instant,
    closed: Option<Closed>,
    grace: Duration,
) -> Inclusion {
    let Some(closed) = closed else {
        return Inclusion::Early;
    };
    let allowance = grace + PROPAGATION;
    let by_close = match closed {
        Closed::AllIn(at) => Some(at),
        Closed::Deadline(at) => at.checked_sub(allowance),
    };
    let Some(cutoff) = by_close.max(arrived.checked_sub(allowance)) else {
        return Inclusion::Fair;
    };
    held.iter()
        .find(|(cid, at)| *at <= cutoff && !counts(cid))
        .map_or(Inclusion::Fair, |(cid, _)| Inclusion::LeavesOut(*cid))
}

#[cfg(test)]
mod tests {
    use fl_core::content::dagcbor;

    use super::*;

    fn cid(n: u8) -> Cid {
        *dagcbor::encode(&n).unwrap().cid()
    }

    const GRACE: Duration = Duration::from_secs(10);

    /// An aggregator that closes as soon as the minimum is in, to leave out peers ranked
    /// ahead of it: its manifest waits until this node's round closes, and is contested
    /// once the updates it left out are in, however soon after it they came.
    #[test]
    fn a_manifest_made_early_to_leave_updates_out_is_caught_when_they_come() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (mine, other, late) = (cid(1), cid(2), cid(3));
        let counted = [mine];
        let counts = |c: &Cid| counted.contains(c);
        // The manifest came at 100 ms with only this node's update; the other came at 300.
        let held = [(mine, at(0)), (other, at(300))];
        assert_eq!(
            inclusion(&held[..1], counts, at(100), None, GRACE),
            Inclusion::Early
        );
        assert_eq!(
            inclusion(&held, counts, at(100), Some(Closed::AllIn(at(300))), GRACE),
            Inclusion::LeavesOut(other)
        );
        // What came after this node's round closed is not held against it.
        let after = [(mine, at(0)), (late, at(400))];
        assert_eq!(
            inclusion(&after, counts, at(100), Some(Closed::AllIn(at(300))), GRACE),
            Inclusion::Fair
        );
    }

    /// An honest aggregator that closed at its deadline without an update that came just
    /// before this node's deadline, or published a grace period later, is not contested;
    /// one that left out what was here a grace period and the spread of gossip before its
    /// manifest is.
    #[test]
    fn updates_near_the_deadline_or_the_manifest_are_allowed_for() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (mine, straggler) = (cid(1), cid(2));
        let counts = |c: &Cid| *c == mine;
        let deadline = Some(Closed::Deadline(at(60)));
        let near = [(mine, at(1)), (straggler, at(55))];
        assert_eq!(
            inclusion(&near, counts, at(61), deadline, GRACE),
            Inclusion::Fair
        );
        // Published 10 s after the deadline: still within grace and spread of 55 s.
        assert_eq!(
            inclusion(&near, counts, at(66), deadline, GRACE),
            Inclusion::Fair
        );
        assert_eq!(
            inclusion(&near, counts, at(68), deadline, GRACE),
            Inclusion::LeavesOut(straggler)
        );
        let early = [(mine, at(1)), (straggler, at(40))];
        assert_eq!(
            inclusion(&early, counts, at(61), deadline, GRACE),
            Inclusion::LeavesOut(straggler)
        );
        // Everything counted: fair whenever it came.
        let all = |_: &Cid| true;
        assert_eq!(
            inclusion(&early, all, at(61), deadline, GRACE),
            Inclusion::Fair
        );
    }
}
