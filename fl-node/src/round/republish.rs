//! Re-publishing a node's latest records (announcement, adopted manifest, evaluation) so
//! peers that missed them, restarted or were cut off catch up.
//!
//! Each record goes out again soon after it changes or a peer joins the task's topics, then
//! at pauses that double up to a ceiling that grows with the number of peers. As with
//! RTCP's report interval (RFC 3550, section 6.2), the whole task's re-publishing traffic
//! then stays near a fixed rate however many nodes there are: at 64 nodes re-publishing
//! every second, gossip queues filled faster than two cores could drain them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;
use fl_core::records::Task;
use libp2p::PeerId;
use tokio::time::Instant;

use crate::net::Node;

/// How often the re-publisher looks for changes and new peers.
pub const TICK: Duration = Duration::from_secs(1);
/// The pause ceiling never falls below this, however few the peers.
const MIN_CEILING: Duration = Duration::from_secs(4);
/// Nor rises above this.
const MAX_CEILING: Duration = Duration::from_secs(60);
/// Each peer adds this much to the ceiling: the task's peers together re-publish each
/// record about twice a second at most.
const CEILING_PER_PEER: Duration = Duration::from_millis(500);

/// The records a node re-publishes, as block bytes; `None` where it has none yet.
#[derive(Debug, Default)]
pub struct Records {
    /// The node's announcement for the round it is in.
    pub announcement: Option<Vec<u8>>,
    /// The latest manifest it adopted.
    pub head: Option<Vec<u8>>,
    /// The last evaluation it made as an aggregator.
    pub evaluation: Option<Vec<u8>>,
    /// In a secure task, its latest steps with their round: keys, shares, survivor list (as
    /// aggregator) and answer.
    pub secure: [Option<(u32, Vec<u8>)>; 4],
}

/// When one record goes out next.
#[derive(Debug)]
struct Pacer {
    /// The bytes last sent, and when.
    sent: Option<(Vec<u8>, Instant)>,
    pause: Duration,
}

impl Pacer {
    fn new() -> Self {
        Self {
            sent: None,
            pause: TICK,
        }
    }

    /// Whether `bytes` go out now; a change or a new peer starts the pauses over.
    fn due(&mut self, bytes: &[u8], joined: bool, ceiling: Duration, now: Instant) -> bool {
        let send = match &self.sent {
            Some((sent, _)) if sent != bytes => {
                self.pause = TICK;
                true
            }
            _ if joined => {
                self.pause = TICK;
                true
            }
            Some((_, at)) => {
                let due = now.duration_since(*at) >= self.pause;
                if due {
                    self.pause = (self.pause * 2).min(ceiling);
                }
                due
            }
            None => true,
        };
        if send {
            self.sent = Some((bytes.to_vec(), now));
        }
        send
    }
}

/// The pause ceiling for `peers` peers.
fn ceiling(peers: usize) -> Duration {
    (CEILING_PER_PEER * u32::try_from(peers).unwrap_or(u32::MAX)).clamp(MIN_CEILING, MAX_CEILING)
}

/// How long after a peer's last record it still counts as alive, among `peers` peers: two
/// of its longest pauses, so one lost message does not make it look gone.
pub fn liveness(peers: usize) -> Duration {
    ceiling(peers) * 2 + TICK
}

/// Starts re-publishing `records` for the task; it stops once nothing else holds them.
pub fn spawn(node: Node, task: &Cid, records: Arc<Mutex<Records>>) {
    let secure = Task::secure_topic(task);
    let topics = [
        Task::updates_topic(task),
        Task::manifests_topic(task),
        Task::evaluations_topic(task),
        secure.clone(),
        secure.clone(),
        secure.clone(),
        secure,
    ];
    tokio::spawn(async move {
        let mut pacers = [(); 7].map(|()| Pacer::new());
        let mut known: HashSet<PeerId> = HashSet::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            if Arc::strong_count(&records) == 1 {
                return;
            }
            let Ok(peers) = node.topic_peers(&topics[1]).await else {
                return;
            };
            let peers: HashSet<PeerId> = peers.into_iter().collect();
            let joined = peers.difference(&known).next().is_some();
            let ceiling = ceiling(peers.len());
            known = peers;
            let current = {
                let r = records
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let [keys, shares, list, answer] = r.secure.clone().map(|s| s.map(|(_, b)| b));
                [
                    r.announcement.clone(),
                    r.head.clone(),
                    r.evaluation.clone(),
                    keys,
                    shares,
                    list,
                    answer,
                ]
            };
            let now = Instant::now();
            for ((topic, pacer), bytes) in topics.iter().zip(&mut pacers).zip(current) {
                if let Some(bytes) = bytes
                    && pacer.due(&bytes, joined, ceiling, now)
                {
                    let _ = node.publish(topic, bytes).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seconds (from 0 to `until`) at which a record that never changes goes out.
    fn sends(pacer: &mut Pacer, bytes: &[u8], ceiling: Duration, until: u64) -> Vec<u64> {
        let start = Instant::now();
        (0..=until)
            .filter(|&s| pacer.due(bytes, false, ceiling, start + Duration::from_secs(s)))
            .collect()
    }

    #[test]
    fn pauses_double_up_to_the_ceiling() {
        let mut pacer = Pacer::new();
        let sent = sends(&mut pacer, b"m", Duration::from_secs(8), 40);
        assert_eq!(sent, vec![0, 1, 3, 7, 15, 23, 31, 39]);
    }

    #[test]
    fn a_change_or_a_new_peer_starts_the_pauses_over() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let ceiling = Duration::from_secs(30);
        let mut pacer = Pacer::new();
        assert_eq!(sends(&mut pacer, b"a", ceiling, 20), vec![0, 1, 3, 7, 15]);
        assert!(
            pacer.due(b"b", false, ceiling, at(21)),
            "a changed record waits"
        );
        assert!(!pacer.due(b"b", false, ceiling, at(21)));
        assert!(pacer.due(b"b", false, ceiling, at(22)));
        assert!(!pacer.due(b"b", false, ceiling, at(23)));
        assert!(pacer.due(b"b", true, ceiling, at(23)), "a new peer waits");
        assert!(pacer.due(b"b", false, ceiling, at(24)));
    }

    #[test]
    fn the_ceiling_grows_with_the_peers_within_bounds() {
        assert_eq!(ceiling(0), MIN_CEILING);
        assert_eq!(ceiling(4), MIN_CEILING);
        assert_eq!(ceiling(63), Duration::from_millis(31_500));
        assert_eq!(ceiling(10_000), MAX_CEILING);
        assert_eq!(liveness(4), Duration::from_secs(9));
    }
}
