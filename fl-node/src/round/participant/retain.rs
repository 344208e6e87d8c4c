//! A node's repo bounded to its last rounds: once a round is adopted, the updates of the
//! round `keep_rounds` before it and the model (and server state) that round started from
//! are dropped, while manifests and announcements (small) stay
//! ([`ParticipantConfig::keep_rounds`]).

use std::collections::HashSet;

use fl_core::content::RepoError;
use fl_core::content::links::held;
use multihash::Multihash;

use super::*;

impl Participant {
    /// After adopting `adopted`: drops what only the round `keep_rounds` before it needed.
    /// A failure is logged, never the round's: nothing kept depends on it.
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

    /// Removes the blocks only round `old` needed, given rounds up to `newest`; how many.
    /// A block goes only if nothing else reaches its bytes: not a pin (the task, its data,
    /// records, published models), not a later round's files or the files they start from,
    /// not an update announced for a round still open. Blocks are compared by multihash, as
    /// the store keeps them: an update whose leaves name other blocks' bytes under another
    /// codec takes nothing with it.
    fn forget(&self, ctx: &Ctx, old: u32, newest: u32) -> Result<usize, RoundError> {
        let task = &ctx.terms.cid;
        let Some(manifest) = self.rounds.adopted(task, old)? else {
            return Ok(0);
        };
        let m = self.load_manifest(&manifest)?.body;
        let mut dropped = inputs(&m);
        dropped.push(m.base_model);
        // What the round started from besides its model (its server state) was made by the
        // round before.
        if let Some(prev) = m.prev {
            dropped.extend(self.load_manifest(&prev)?.body.server_state);
        }
        // The oldest kept round starts from this round's own outputs.
        let mut kept = vec![ctx.terms.task.initial_model, m.model];
        kept.extend(m.server_state);
        for round in old + 1..=newest {
            if let Some(cid) = self.rounds.adopted(task, round)? {
                let m = self.load_manifest(&cid)?.body;
                kept.push(m.base_model);
                kept.extend(inputs(&m));
                kept.push(m.model);
                kept.extend(m.server_state);
            }
        }
        for round in old + 1..=newest.saturating_add(1) {
            kept.extend(
                ctx.inbox
                    .announcements(round)
                    .iter()
                    .map(|(_, a)| a.body.update),
            );
        }
        // Dropped roots lose their pins first (an aggregator pins the model it published).
        let kept_roots: HashSet<Multihash<64>> = kept.iter().map(|c| *c.hash()).collect();
        for root in dropped.iter().filter(|r| !kept_roots.contains(r.hash())) {
            match self.repo.unpin(root) {
                Ok(()) | Err(RepoError::NotPinned { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let store = self.repo.blocks();
        let walk = |roots: &[Cid]| held(store, roots).map_err(|e| RoundError::Repo(e.into()));
        let mut recursive = Vec::new();
        let mut live: HashSet<Multihash<64>> = HashSet::new();
        for (cid, mode) in self.repo.pins().list().map_err(RepoError::from)? {
            live.insert(*cid.hash());
            if mode == PinMode::Recursive {
                recursive.push(cid);
            }
        }
        live.extend(walk(&recursive)?.iter().map(|c| *c.hash()));
        live.extend(walk(&kept)?.iter().map(|c| *c.hash()));
        let mut removed = 0;
        for cid in walk(&dropped)? {
            if !live.contains(cid.hash()) {
                store
                    .delete(cid.hash())
                    .map_err(|e| RoundError::Repo(e.into()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The files a round took in: the updates it counted or rejected, and its secure record.
fn inputs(m: &Manifest) -> Vec<Cid> {
    let mut out: Vec<Cid> = m.contributions.iter().map(|c| c.update).collect();
    out.extend(m.rejected.iter().map(|r| r.update));
    out.extend(m.secure);
    out
}
