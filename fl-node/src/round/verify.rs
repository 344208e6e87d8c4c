//! Verifying a manifest, one way for a node about to adopt it and for `fl verify`: gather
//! the round's base and the announcements it lists, check its claims against them (cheap,
//! before any update is fetched), fetch the updates it counts (none past the size of the
//! round's model) and recompute it ([`compute::recompute`]).

use std::sync::Arc;

use cid::Cid;
use fl_core::records::{Announcement, Manifest, Signed};
use fl_core::tensors::Bundle;

use super::compute::{self, RoundBase};
use super::inbox::{MAX_ANNOUNCERS_PER_ROUND, SignedAnnouncement};
use super::{Inputs, Refutation, RoundError, Terms};

/// The round a manifest for `round` continues: the manifest before it (its CID and body;
/// none for the first round) names the model and server state it starts from, fetched from
/// its signer first, the model checked to be of the task's architecture.
pub async fn base(
    inputs: &Inputs,
    terms: &Terms,
    round: u32,
    prev: Option<(Cid, &Signed<Manifest>)>,
) -> Result<RoundBase, RoundError> {
    let (model_cid, state_cid, holder) = match prev {
        Some((_, m)) => (m.body.model, m.body.server_state, Some(m.signer)),
        None => (terms.task.initial_model, None, None),
    };
    inputs
        .dag(model_cid, "the round's model", holder, u64::MAX)
        .await?;
    let repo = inputs.repo();
    let model = Bundle::load(repo, &model_cid).map_err(|source| RoundError::Load {
        what: "model",
        cid: model_cid,
        source,
    })?;
    terms
        .architecture
        .check(&model)
        .map_err(|source| RoundError::Architecture {
            cid: model_cid,
            source,
        })?;
    let state = match state_cid {
        Some(cid) => {
            inputs
                .dag(cid, "the server state", holder, u64::MAX)
                .await?;
            let bundle = Bundle::load(repo, &cid).map_err(|source| RoundError::Load {
                what: "server state",
                cid,
                source,
            })?;
            aggregator::ServerState::from_bundle(bundle)
        }
        None => aggregator::ServerState::empty(),
    };
    Ok(RoundBase {
        round,
        prev: prev.map(|(cid, _)| cid),
        model: Arc::new(model),
        model_cid,
        state,
    })
}

/// Fetches the announcements `signed` lists (they are small: before any update) and checks
/// its claims against them ([`compute::check_claims`]); returns the announcements.
pub async fn claims(
    inputs: &Inputs,
    terms: &Terms,
    base: &RoundBase,
    signed: &Signed<Manifest>,
) -> Result<Vec<SignedAnnouncement>, RoundError> {
    let m = &signed.body;
    let listed = m.contributions.len() + m.rejected.len();
    if listed > MAX_ANNOUNCERS_PER_ROUND {
        return Err(Refutation::TooManyListed {
            listed,
            max: MAX_ANNOUNCERS_PER_ROUND,
        }
        .into());
    }
    let mut announcements = Vec::with_capacity(listed);
    let cids = m
        .contributions
        .iter()
        .map(|c| c.announcement)
        .chain(m.rejected.iter().map(|r| r.announcement));
    for cid in cids {
        let bytes = inputs.block(cid, "an announcement").await?;
        announcements.push((cid, Signed::<Announcement>::from_bytes(&cid, &bytes)?));
    }
    compute::check_claims(terms, base, m, &signed.signer, &announcements)?;
    Ok(announcements)
}

/// Fetches the updates `manifest` counts (all it lists but those it calls unavailable), each
/// from its author first and none past the size of the round's model.
pub async fn updates(
    inputs: &Inputs,
    base: &RoundBase,
    manifest: &Manifest,
    announcements: &[SignedAnnouncement],
) -> Result<(), RoundError> {
    let unavailable = manifest.unavailable();
    let limit = base.model.file_limit();
    for (cid, a) in announcements {
        if !unavailable.contains(cid) {
            inputs
                .dag(a.body.update, "an update", Some(a.signer), limit)
                .await?;
        }
    }
    Ok(())
}

/// A manifest that held up, with the task it is of.
#[derive(Debug)]
pub struct Verified {
    /// The manifest.
    pub manifest: Signed<Manifest>,
    /// Its task.
    pub terms: Terms,
}

/// Verifies the manifest `cid` from public material alone: its task, the manifest before
/// it (one round back, same task), the base they give, its claims, and a recomputation from
/// the updates it counts.
pub async fn manifest(inputs: &Inputs, cid: Cid) -> Result<Verified, RoundError> {
    let bytes = inputs.block(cid, "the manifest").await?;
    let signed = Signed::<Manifest>::from_bytes(&cid, &bytes)?;
    let m = &signed.body;
    let terms = Terms::decode(m.task, inputs.block(m.task, "the task").await?)?;
    let prev = match m.prev {
        Some(prev) => {
            let bytes = inputs.block(prev, "the previous manifest").await?;
            let p = Signed::<Manifest>::from_bytes(&prev, &bytes)?;
            if p.body.task != m.task {
                return Err(Refutation::ForeignPrevious {
                    manifest: prev,
                    task: p.body.task,
                }
                .into());
            }
            if p.body.round.checked_add(1) != Some(m.round) {
                return Err(Refutation::BrokenLink {
                    manifest: prev,
                    round: p.body.round,
                    from: m.round,
                }
                .into());
            }
            Some((prev, p))
        }
        None if m.round == 1 => None,
        None => return Err(Refutation::NoPrevious(m.round).into()),
    };
    let base = base(inputs, &terms, m.round, prev.as_ref().map(|(c, p)| (*c, p))).await?;
    let announcements = claims(inputs, &terms, &base, &signed).await?;
    updates(inputs, &base, m, &announcements).await?;
    let (repo, t, manifest) = (inputs.repo().clone(), terms.clone(), m.clone());
    tokio::task::spawn_blocking(move || {
        compute::recompute(&repo, &t, &base, &manifest, &announcements)
    })
    .await??;
    Ok(Verified {
        manifest: signed,
        terms,
    })
}
