//! A round's aggregation as a pure function of published bytes: the aggregator runs it to
//! make a manifest, every other node and `fl verify` run it again to check one.

use std::collections::HashSet;
use std::sync::Arc;

use aggregator::{AggregatorConfig, Contribution as Offered, ServerState, aggregate_round};
use cid::Cid;
use fl_core::content::Repo;
use fl_core::records::{Announcement, Contribution, Manifest, PeerId, Rejected, Signed, Task};
use fl_core::tensors::Bundle;

use super::RoundError;

/// What a round starts from.
#[derive(Debug)]
pub struct RoundBase {
    /// The round.
    pub round: u32,
    /// The previous manifest (`None` for round 1).
    pub prev: Option<Cid>,
    /// The model the round starts from, and its CID.
    pub model: Arc<Bundle>,
    /// Its CID.
    pub model_cid: Cid,
    /// Server state after the previous round (empty for stateless rules).
    pub state: ServerState,
}

/// A round aggregated: the manifest body (unsigned, rank and metrics to be filled in) and
/// the new model.
#[derive(Debug)]
pub struct Aggregated {
    /// The manifest body.
    pub manifest: Manifest,
    /// The new model.
    pub model: Bundle,
    /// The server state after the round.
    pub state: ServerState,
}

/// The reason recorded for an announced update the aggregator could not fetch.
pub const UNAVAILABLE: &str = "update unavailable: its author did not serve it in time";

/// Aggregates the updates `announcements` name (all already in `repo`) onto `base`, as
/// `task` says, storing the new model (and server state) in `repo`. `unavailable` are
/// announcements whose updates could not be fetched: listed as rejected, they still count
/// for the aggregator ranking.
pub fn aggregate(
    repo: &Repo,
    task_cid: &Cid,
    task: &Task,
    base: &RoundBase,
    announcements: &[(Cid, Signed<Announcement>)],
    unavailable: &[(Cid, Signed<Announcement>)],
) -> Result<Aggregated, RoundError> {
    let rule = task
        .rule
        .parse()
        .map_err(|e: aggregator::RuleError| RoundError::Task(e.to_string()))?;
    let mut offered = Vec::with_capacity(announcements.len());
    let mut by_update = std::collections::HashMap::new();
    for (cid, a) in announcements {
        let body = &a.body;
        let delta = Bundle::load(repo, &body.update).map_err(|source| RoundError::Load {
            what: "update",
            cid: body.update,
            source,
        })?;
        by_update.insert(body.update, (*cid, a.signer, body.samples));
        offered.push(Offered::new(
            a.signer.to_string(),
            body.update,
            body.base,
            body.samples,
            Arc::new(delta),
        ));
    }
    let outcome = aggregate_round(
        &AggregatorConfig::new(rule),
        &base.model,
        base.model_cid,
        offered,
        base.state.clone(),
    )
    .map_err(|e| RoundError::Aggregate(e.to_string()))?;
    let total: u64 = outcome.accepted.iter().map(|a| a.samples).sum();
    let contributions = outcome
        .accepted
        .iter()
        .map(|a| {
            let (announcement, peer, samples) = by_update[&a.update];
            Contribution {
                peer,
                announcement,
                update: a.update,
                samples,
                weight: if total == 0 {
                    0.0
                } else {
                    samples as f64 / total as f64
                },
                credits: task.credits(samples),
            }
        })
        .collect();
    let rejected = outcome
        .rejected
        .iter()
        .map(|r| {
            let (announcement, peer, _) = by_update[r.update()];
            Rejected {
                peer,
                announcement,
                update: *r.update(),
                reason: r.to_string(),
            }
        })
        .chain(unavailable.iter().map(|(cid, a)| Rejected {
            peer: a.signer,
            announcement: *cid,
            update: a.body.update,
            reason: UNAVAILABLE.to_string(),
        }))
        .collect();
    let model_cid = outcome
        .model
        .store(repo)
        .map_err(|source| RoundError::Store {
            what: "model",
            source,
        })?;
    let server_state = if outcome.state.is_empty() {
        None
    } else {
        Some(
            outcome
                .state
                .as_bundle()
                .store(repo)
                .map_err(|source| RoundError::Store {
                    what: "server state",
                    source,
                })?,
        )
    };
    let (epsilon, delta) = match &task.dp {
        Some(dp) => {
            let eps = fl_core::privacy::accountant::epsilon_for(
                1.0,
                dp.noise_multiplier,
                u64::from(base.round),
                dp.delta,
            )
            .ok();
            (eps, Some(dp.delta))
        }
        None => (None, None),
    };
    Ok(Aggregated {
        manifest: Manifest {
            task: *task_cid,
            round: base.round,
            prev: base.prev,
            base_model: base.model_cid,
            model: model_cid,
            rule: task.rule.clone(),
            server_state,
            contributions,
            rejected,
            epsilon,
            delta,
            metrics: None,
            rank: 0,
        },
        model: outcome.model,
        state: outcome.state,
    })
}

/// Checks `manifest`, signed by `signer`, against a recomputation from the announcements it
/// lists (verified here; the updates of all but those it calls unavailable in `repo`): same
/// model, same contributions, same rejections, and the signer holds the rank it claims
/// among the round's announcers.
pub fn check(
    repo: &Repo,
    task_cid: &Cid,
    task: &Task,
    base: &RoundBase,
    manifest: &Manifest,
    signer: &PeerId,
    announcements: &[(Cid, Signed<Announcement>)],
) -> Result<(), RoundError> {
    let refuted = |why: String| Err(RoundError::Refuted(why));
    if manifest.task != *task_cid || manifest.round != base.round || manifest.prev != base.prev {
        return refuted(format!(
            "it is for task {} round {} after {:?}, expected round {} after {:?}",
            manifest.task, manifest.round, manifest.prev, base.round, base.prev
        ));
    }
    if manifest.base_model != base.model_cid {
        return refuted(format!(
            "it starts from model {}, the chain says {}",
            manifest.base_model, base.model_cid
        ));
    }
    let peers: Vec<PeerId> = announcements.iter().map(|(_, a)| a.signer).collect();
    let ranking = fl_core::records::ranking(&manifest.rank_anchor(), manifest.round, peers);
    match ranking.iter().position(|p| p == signer) {
        Some(rank) if rank as u32 == manifest.rank => {}
        Some(rank) => {
            return refuted(format!(
                "its signer {signer} has rank {rank}, the manifest claims {}",
                manifest.rank
            ));
        }
        None => {
            return refuted(format!(
                "its signer {signer} announced no update this round: not entitled to aggregate"
            ));
        }
    }
    if let Some(missing) = task
        .members
        .as_ref()
        .and_then(|_| announcements.iter().find(|(_, a)| !task.admits(&a.signer)))
    {
        return refuted(format!(
            "it counts {}, not a member of the task",
            missing.1.signer
        ));
    }
    let unavailable: HashSet<Cid> = manifest
        .rejected
        .iter()
        .filter(|r| r.reason == UNAVAILABLE)
        .map(|r| r.announcement)
        .collect();
    let (missing, present): (Vec<_>, Vec<_>) = announcements
        .iter()
        .cloned()
        .partition(|(cid, _)| unavailable.contains(cid));
    let again = aggregate(repo, task_cid, task, base, &present, &missing)?;
    if again.manifest.model != manifest.model {
        return refuted(format!(
            "its model is {}, but its inputs give {}",
            manifest.model, again.manifest.model
        ));
    }
    if again.manifest.contributions != manifest.contributions
        || again.manifest.rejected != manifest.rejected
        || again.manifest.server_state != manifest.server_state
    {
        return refuted(
            "its contributions, rejections or server state differ from a recomputation".into(),
        );
    }
    Ok(())
}
