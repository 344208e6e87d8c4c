//! A node's repo bounded to its last rounds: once a round is adopted, the models and updates
//! of the round `keep_rounds` before it are dropped (its manifest and the announcements,
//! small, stay), so a long task's disk use stays flat ([`ParticipantConfig::keep_rounds`]).

use fl_core::content::RepoError;
use fl_core::content::links::held;

use super::*;

impl Participant {
    /// After adopting `adopted`: drops the model the round `keep_rounds` before it started
    /// from and that round's updates (its own model is the next round's start, dropped
    /// with the next), unless a later round or the task holds the same blocks. A failure is logged, never the round's: nothing kept depends on it.
    pub(super) fn forget_old_round(&self, ctx: &Ctx, adopted: u32) {
        let Some(keep) = self.config.keep_rounds else {
            return;
        };
        let Some(old) = adopted.checked_sub(keep.get()).filter(|r| *r >= 1) else {
            return;
        };
        match self.forget(ctx, old, adopted) {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(round = old, removed, "dropped an old round's blocks"),
            Err(e) => {
                tracing::warn!(round = old, error = %chain(&e), "could not drop an old round's blocks")
            }
        }
    }

    /// Removes the blocks only round `old` needs, given rounds up to `newest`; how many.
    fn forget(&self, ctx: &Ctx, old: u32, newest: u32) -> Result<usize, RoundError> {
        let task = &ctx.terms.cid;
        let Some(manifest) = self.rounds.adopted(task, old)? else {
            return Ok(0);
        };
        let m = self.load_manifest(&manifest)?.body;
        let mut dropped = bulk(&m);
        dropped.push(m.base_model);
        // The task's own model stays: it is part of the task, which the node keeps.
        let mut kept = vec![ctx.terms.task.initial_model];
        for round in old + 1..=newest {
            if let Some(cid) = self.rounds.adopted(task, round)? {
                let m = self.load_manifest(&cid)?.body;
                kept.push(m.base_model);
                kept.extend(bulk(&m));
            }
        }
        let store = self.repo.blocks();
        let walk = |roots: &[Cid]| held(store, roots).map_err(|e| RoundError::Repo(e.into()));
        let live = walk(&kept)?;
        for root in dropped.iter().filter(|r| !live.contains(r)) {
            match self.repo.unpin(root) {
                Ok(()) | Err(RepoError::NotPinned { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut removed = 0;
        for cid in walk(&dropped)?.difference(&live) {
            store
                .delete(cid.hash())
                .map_err(|e| RoundError::Repo(e.into()))?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// The large files a manifest names: its model, the updates it counts, its server state and
/// secure record.
fn bulk(m: &Manifest) -> Vec<Cid> {
    let mut out = vec![m.model];
    out.extend(m.contributions.iter().map(|c| c.update));
    out.extend(m.server_state);
    out.extend(m.secure);
    out
}
