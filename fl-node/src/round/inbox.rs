//! What arrives over gossip for one task: update announcements and manifests, each a signed
//! DAG-CBOR block sent whole. Each is verified (its signature, and that its author may take
//! part) and stored as a block before it is kept; anything else is dropped with a log line.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cid::Cid;
use fl_core::content::{Block, Blockstore, DAG_CBOR, FsBlockstore};
use fl_core::records::{Announcement, Manifest, PeerId, Signed, Task};
use tokio::sync::Notify;

use crate::net::Node;

/// Largest gossip message read as a record (a manifest of 10,000 contributions fits).
pub const MAX_RECORD_BYTES: usize = 2 << 20;

/// A verified announcement and its block's CID.
pub type SignedAnnouncement = (Cid, Signed<Announcement>);
/// A verified manifest and its block's CID.
pub type SignedManifest = (Cid, Signed<Manifest>);

#[derive(Default)]
struct Contents {
    /// Round -> author -> announcement (the first one per author and round counts).
    announcements: BTreeMap<u32, BTreeMap<PeerId, SignedAnnouncement>>,
    /// Round -> manifests seen, by CID.
    manifests: BTreeMap<u32, HashMap<Cid, Signed<Manifest>>>,
    /// Rounds already decided: their announcements are refused as late.
    closed_through: u32,
    /// Round -> authors whose announcements came after the round closed: alive, and
    /// expected in the next round.
    late: BTreeMap<u32, std::collections::BTreeSet<PeerId>>,
}

/// The task's gossip, sorted by round.
#[derive(Clone)]
pub struct Inbox {
    contents: Arc<Mutex<Contents>>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    /// Subscribes `node` to `task`'s topics and files what arrives; needs a tokio runtime.
    pub async fn start(
        node: &Node,
        task_cid: Cid,
        task: Arc<Task>,
        store: Arc<FsBlockstore>,
    ) -> Result<Self, crate::net::NodeError> {
        let inbox = Inbox {
            contents: Arc::default(),
            changed: Arc::new(Notify::new()),
        };
        let updates = Task::updates_topic(&task_cid);
        let manifests = Task::manifests_topic(&task_cid);
        let mut gossip = node.gossip();
        node.subscribe(&updates).await?;
        node.subscribe(&manifests).await?;
        let this = inbox.clone();
        tokio::spawn(async move {
            loop {
                let message = match gossip.recv().await {
                    Ok(m) => m,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("round gossip: {n} messages dropped (reading too slowly)");
                        continue;
                    }
                    Err(_) => return,
                };
                if message.data.len() > MAX_RECORD_BYTES {
                    tracing::debug!(topic = %message.topic, "record too large, dropped");
                    continue;
                }
                let result = if message.topic == updates {
                    this.file_announcement(&task_cid, &task, &store, message.data)
                } else if message.topic == manifests {
                    this.file_manifest(&task_cid, &store, message.data)
                } else {
                    continue;
                };
                if let Err(why) = result {
                    tracing::info!(from = ?message.source, "round gossip dropped: {why}");
                }
            }
        });
        Ok(inbox)
    }

    /// Files an announcement (ours, or one that came over gossip).
    pub fn file_announcement(
        &self,
        task_cid: &Cid,
        task: &Task,
        store: &FsBlockstore,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        let block = Block::hashed(DAG_CBOR, bytes);
        let signed = Signed::<Announcement>::from_block(&block).map_err(|e| e.to_string())?;
        let a = &signed.body;
        if a.task != *task_cid {
            return Err(format!("announcement for another task {}", a.task));
        }
        if !task.admits(&signed.signer) {
            return Err(format!("{} is not a member of the task", signed.signer));
        }
        if a.round == 0 || a.round > task.rounds {
            return Err(format!(
                "announcement for round {} of {}",
                a.round, task.rounds
            ));
        }
        let cid = *block.cid();
        store.put(block).map_err(|e| e.to_string())?;
        let mut c = lock(&self.contents);
        if a.round <= c.closed_through {
            c.late.entry(a.round).or_default().insert(signed.signer);
            return Err(format!("late: round {} is closed", a.round));
        }
        let author = signed.signer;
        let round = a.round;
        let entry = c.announcements.entry(round).or_default();
        if let Some((existing, _)) = entry.get(&author) {
            if *existing != cid {
                return Err(format!(
                    "{author} announced a second update for round {round}"
                ));
            }
            return Ok(());
        }
        entry.insert(author, (cid, signed));
        drop(c);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Files a manifest (ours, or one that came over gossip); checks only its signature here.
    pub fn file_manifest(
        &self,
        task_cid: &Cid,
        store: &FsBlockstore,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        let block = Block::hashed(DAG_CBOR, bytes);
        let signed = Signed::<Manifest>::from_block(&block).map_err(|e| e.to_string())?;
        if signed.body.task != *task_cid {
            return Err(format!("manifest for another task {}", signed.body.task));
        }
        let cid = *block.cid();
        store.put(block).map_err(|e| e.to_string())?;
        let fresh = lock(&self.contents)
            .manifests
            .entry(signed.body.round)
            .or_default()
            .insert(cid, signed)
            .is_none();
        if fresh {
            self.changed.notify_waiters();
        }
        Ok(())
    }

    /// The announcements of `round` so far, by author.
    pub fn announcements(&self, round: u32) -> Vec<SignedAnnouncement> {
        lock(&self.contents)
            .announcements
            .get(&round)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The manifests of `round` seen so far.
    pub fn manifests(&self, round: u32) -> Vec<SignedManifest> {
        lock(&self.contents)
            .manifests
            .get(&round)
            .map(|m| m.iter().map(|(c, s)| (*c, s.clone())).collect())
            .unwrap_or_default()
    }

    /// Authors that announced for `round` after it closed.
    pub fn late(&self, round: u32) -> Vec<PeerId> {
        lock(&self.contents)
            .late
            .get(&round)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
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
        let keep = c.announcements.split_off(&(round + 1));
        c.announcements = keep;
    }

    /// Waits until something new is filed, or `timeout` passes.
    pub async fn changed(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
