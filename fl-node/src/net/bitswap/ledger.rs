//! What the server owes one peer: its queued wants (capped), its serving budget (a token
//! bucket), and the answer bytes handed to its connections but not yet written. Pure state,
//! no I/O: the behaviour decides from it when to read blocks for the peer.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use cid::Cid;
use libp2p::swarm::ConnectionId;

use super::message::{Want, WantType};

/// One peer's account with us.
#[derive(Debug)]
pub struct Ledger {
    /// Queued wants by arrival number (oldest first).
    queue: BTreeMap<u64, Want>,
    /// Where each queued CID sits in `queue`.
    index: HashMap<Cid, u64>,
    /// Arrival numbers handed out so far.
    next: u64,
    /// Most wants queued at once.
    max_queued: usize,
    /// Bytes the peer may still be served now.
    budget: Budget,
    /// Answer bytes handed to each connection and not yet written or dropped.
    outstanding: HashMap<ConnectionId, usize>,
    /// Whether a store job is reading blocks for this peer.
    pub serving: bool,
    /// Which of the peer's ledgers this is (one per stay connected): a job begun for an
    /// earlier one lands nowhere.
    pub epoch: u64,
}

impl Ledger {
    /// An empty ledger holding at most `max_queued` wants, served `rate` bytes a second.
    pub fn new(max_queued: usize, rate: usize, now: Instant) -> Self {
        Ledger {
            queue: BTreeMap::new(),
            index: HashMap::new(),
            next: 0,
            max_queued,
            budget: Budget::new(rate, now),
            outstanding: HashMap::new(),
            serving: false,
            epoch: 0,
        }
    }

    /// Takes in a message's wants (`full`: they replace the queue); returns how many new
    /// wants were dropped because the queue was full.
    pub fn receive(&mut self, wants: Vec<Want>, full: bool) -> usize {
        if full {
            self.queue.clear();
            self.index.clear();
        }
        let mut dropped = 0;
        for want in wants {
            if want.cancel {
                if let Some(at) = self.index.remove(&want.cid) {
                    self.queue.remove(&at);
                }
                continue;
            }
            if let Some(at) = self.index.get(&want.cid) {
                // A block want supersedes a HAVE want for the same CID.
                if let Some(queued) = self.queue.get_mut(at)
                    && want.kind == WantType::Block
                {
                    *queued = want;
                }
                continue;
            }
            if self.queue.len() >= self.max_queued {
                dropped += 1;
                continue;
            }
            self.index.insert(want.cid, self.next);
            self.queue.insert(self.next, want);
            self.next += 1;
        }
        dropped
    }

    /// Takes up to `max` of the oldest wants, with their places to put back what is not served.
    pub fn take(&mut self, max: usize) -> Vec<(u64, Want)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((at, want)) = self.queue.pop_first() else {
                break;
            };
            self.index.remove(&want.cid);
            out.push((at, want));
        }
        out
    }

    /// Puts back wants taken but not served, in their old places (unless wanted again since).
    pub fn put_back(&mut self, wants: Vec<(u64, Want)>) {
        for (at, want) in wants {
            if self.index.contains_key(&want.cid) || self.queue.len() >= self.max_queued {
                continue;
            }
            self.index.insert(want.cid, at);
            self.queue.insert(at, want);
        }
    }

    /// Wants queued.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Counts `bytes` of answers handed to `connection` and spends them from the budget.
    pub fn sent(&mut self, connection: ConnectionId, bytes: usize, now: Instant) {
        *self.outstanding.entry(connection).or_default() += bytes;
        self.budget.spend(bytes, now);
    }

    /// `bytes` of answers on `connection` were written or dropped.
    pub fn settled(&mut self, connection: ConnectionId, bytes: usize) {
        if let Some(left) = self.outstanding.get_mut(&connection) {
            *left = left.saturating_sub(bytes);
        }
    }

    /// `connection` closed: what it had queued is gone with it.
    pub fn closed(&mut self, connection: ConnectionId) {
        self.outstanding.remove(&connection);
    }

    /// Answer bytes queued on the peer's connections.
    pub fn outstanding(&self) -> usize {
        self.outstanding.values().sum()
    }

    /// Whether blocks may be read for the peer now: wants queued, no job reading for it,
    /// fewer than `max_outstanding` bytes waiting to be written, and budget left.
    pub fn ready(&mut self, max_outstanding: usize, now: Instant) -> bool {
        !self.serving
            && !self.queue.is_empty()
            && self.outstanding() < max_outstanding
            && self.budget.available(now)
    }
}

/// A token bucket of bytes: refills at `rate` a second up to one second's worth; may go into
/// debt by one answer, which delays the next until it is paid back.
#[derive(Debug)]
pub struct Budget {
    left: f64,
    rate: f64,
    at: Instant,
}

impl Budget {
    /// A full bucket.
    pub fn new(rate: usize, now: Instant) -> Self {
        let rate = rate as f64;
        Budget {
            left: rate,
            rate,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        self.left = (self.left + elapsed.as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
    }

    /// Whether anything may be served now.
    pub fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.left > 0.0
    }

    /// Spends `bytes`, into debt if need be.
    pub fn spend(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.left -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use fl_core::content::Block;

    fn want(i: u32, kind: WantType) -> Want {
        Want {
            cid: *Block::hashed(0x55, i.to_le_bytes().to_vec()).cid(),
            kind,
            cancel: false,
            send_dont_have: true,
        }
    }

    #[test]
    fn the_queue_holds_at_most_its_cap_and_drops_the_rest() {
        let mut ledger = Ledger::new(1024, 1 << 20, Instant::now());
        let flood: Vec<_> = (0..20_000).map(|i| want(i, WantType::Block)).collect();
        assert_eq!(ledger.receive(flood.clone(), false), 20_000 - 1024);
        assert_eq!(ledger.queued(), 1024);
        // The same wants again take no more room.
        assert_eq!(ledger.receive(flood[..1024].to_vec(), false), 0);
        assert_eq!(ledger.queued(), 1024);
        // A full wantlist replaces the queue.
        assert_eq!(ledger.receive(flood[..10].to_vec(), true), 0);
        assert_eq!(ledger.queued(), 10);
    }

    #[test]
    fn cancels_remove_wants_and_block_wants_supersede_have_wants() {
        let mut ledger = Ledger::new(8, 1 << 20, Instant::now());
        ledger.receive(
            vec![want(1, WantType::Have), want(2, WantType::Block)],
            false,
        );
        ledger.receive(vec![want(1, WantType::Block)], false);
        let cancel = Want {
            cancel: true,
            ..want(2, WantType::Block)
        };
        ledger.receive(vec![cancel], false);
        let taken = ledger.take(10);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1.kind, WantType::Block);
        assert_eq!(taken[0].1.cid, want(1, WantType::Block).cid);
        ledger.put_back(taken);
        assert_eq!(ledger.queued(), 1);
    }

    #[test]
    fn outstanding_bytes_stop_serving_until_written() {
        let now = Instant::now();
        let mut ledger = Ledger::new(8, 100 << 20, now);
        ledger.receive(vec![want(1, WantType::Block)], false);
        assert!(ledger.ready(1 << 20, now));
        let conn = ConnectionId::new_unchecked(1);
        ledger.sent(conn, 2 << 20, now);
        assert!(!ledger.ready(1 << 20, now));
        ledger.settled(conn, 2 << 20);
        assert!(ledger.ready(1 << 20, now));
        ledger.sent(conn, 2 << 20, now);
        ledger.closed(conn);
        assert_eq!(ledger.outstanding(), 0);
    }

    #[test]
    fn the_serving_budget_refills_at_its_rate() {
        let now = Instant::now();
        let mut budget = Budget::new(1000, now);
        assert!(budget.available(now));
        budget.spend(1500, now);
        assert!(!budget.available(now));
        assert!(!budget.available(now + Duration::from_millis(400)));
        assert!(budget.available(now + Duration::from_millis(600)));
        // Never more than one second's worth saved up.
        budget.spend(0, now + Duration::from_secs(100));
        budget.spend(1000, now + Duration::from_secs(100));
        assert!(!budget.available(now + Duration::from_secs(100)));
    }
}
