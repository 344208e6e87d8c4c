//! Verifying a manifest, one way for a node about to adopt it and for `fl verify`: gather
//! the round's base and the announcements it lists, check its claims against them (cheap,
//! before any update is fetched), fetch the updates it counts (none past the size of the
//! round's model) and recompute it ([`recompute`]).

use std::sync::Arc;

use std::collections::HashSet;

use cid::Cid;
use fl_core::content::Repo;
use fl_core::records::{
    Announcement, ClientId, DataSource, Manifest, PeerId, RejectReason, Sample, Signed,
};
use fl_core::tensors::Bundle;

use super::compute::{RoundBase, aggregate};
use super::inbox::{MAX_ANNOUNCERS_PER_ROUND, SignedAnnouncement};
use super::refutation::CLAIM_CHARS;
use super::{Inputs, Refutation, RoundError, Terms, claim};

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

/// `terms` bound by the task's published data: no update may claim more examples than its
/// largest shard ([`Terms::with_shards`]); in a task with a population, each client's
/// samples are what the pool (every shard, fetched) deals it ([`Terms::with_pool`]). Tasks
/// whose members bring their own data are bound by their own `max_samples`.
pub async fn bound_by_data(inputs: &Inputs, terms: Terms) -> Result<Terms, RoundError> {
    let DataSource::Shards { manifest } = terms.task.data else {
        return Ok(terms);
    };
    inputs.block(manifest, "the dataset manifest").await?;
    let dataset = datasets::shard::manifest(inputs.repo().blocks(), &manifest)?;
    if terms.task.population.is_some() {
        for entry in &dataset.shards {
            inputs
                .dag(entry.cid, "a shard of the pool", None, u64::MAX)
                .await?;
        }
        let pool = datasets::shard::fetch_pool(inputs.repo().blocks(), &dataset)?;
        return Ok(terms.with_pool(pool.labels())?);
    }
    let largest = dataset.shards.iter().map(|s| s.samples).max().unwrap_or(0);
    Ok(terms.with_shards(largest))
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
    check_claims(terms, base, m, &signed.signer, &announcements)?;
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

/// Fetches the secure record `signed` names, if it names one, from its signer first and
/// none past the size a record of the round's model can have.
pub async fn record(
    inputs: &Inputs,
    base: &RoundBase,
    signed: &Signed<Manifest>,
) -> Result<(), RoundError> {
    if let Some(cid) = signed.body.secure {
        let limit = super::secure::record_limit(base.model.num_values());
        inputs
            .dag(cid, "the secure record", Some(signed.signer), limit)
            .await?;
    }
    Ok(())
}

/// The cheap checks of a manifest, before anything is fetched or recomputed: it continues the
/// chain at `base`, lists each announcement once, every listed announcement is for this task,
/// round and base model, from a member, with a sane sample count; it counts at least the
/// task's minimum; and its signer holds the rank it claims among the announcers it lists.
pub fn check_claims(
    terms: &Terms,
    base: &RoundBase,
    manifest: &Manifest,
    signer: &PeerId,
    announcements: &[(Cid, Signed<Announcement>)],
) -> Result<(), RoundError> {
    let (task_cid, task) = (&terms.cid, &*terms.task);
    let refuted = |why: Refutation| Err(RoundError::Refuted(why));
    if manifest.task != *task_cid || manifest.round != base.round || manifest.prev != base.prev {
        return refuted(Refutation::OtherRound {
            task: manifest.task,
            round: manifest.round,
            prev: manifest.prev,
            expected_round: base.round,
            expected_prev: base.prev,
        });
    }
    if manifest.base_model != base.model_cid {
        return refuted(Refutation::OtherBase {
            claimed: manifest.base_model,
            chain: base.model_cid,
        });
    }
    if manifest.metrics.is_some() {
        return refuted(Refutation::Metrics);
    }
    if manifest.secure.is_some() != terms.secure.is_some() {
        return refuted(Refutation::SecureRecord {
            named: manifest.secure.is_some(),
        });
    }
    if manifest.rule != task.rule {
        return refuted(Refutation::OtherRule {
            claimed: manifest.rule.chars().take(CLAIM_CHARS).collect(),
            task: task.rule.clone(),
        });
    }
    let listed = manifest.contributions.len() + manifest.rejected.len();
    if announcements.len() != listed {
        return refuted(Refutation::Count {
            listed,
            given: announcements.len(),
        });
    }
    let authors = listed_authors(terms, base, announcements)?;
    let min = terms.min_updates(base.round);
    if manifest.contributions.len() < min as usize {
        return refuted(Refutation::TooFew {
            counted: manifest.contributions.len(),
            min,
        });
    }
    if !authors.contains(signer) {
        return refuted(Refutation::NotEntitled(*signer));
    }
    let ranking = fl_core::records::ranking(
        &manifest.rank_anchor(),
        manifest.round,
        authors.iter().copied(),
    );
    match ranking.iter().position(|p| p == signer) {
        Some(rank) if rank as u32 == manifest.rank => Ok(()),
        Some(rank) => refuted(Refutation::WrongRank {
            signer: *signer,
            rank,
            claimed: manifest.rank,
        }),
        None => refuted(Refutation::NotEntitled(*signer)),
    }
}

/// Recomputes `manifest` from the announcements it lists (whose claims
/// [`check_claims`] passed; the updates of all but those it calls unavailable in `repo`):
/// same model, contributions, rejections, server state and privacy.
pub fn recompute(
    repo: &Repo,
    terms: &Terms,
    base: &RoundBase,
    manifest: &Manifest,
    announcements: &[(Cid, Signed<Announcement>)],
) -> Result<(), RoundError> {
    let refuted = |why: Refutation| Err(RoundError::Refuted(why));
    if let Some(r) = manifest
        .rejected
        .iter()
        .find(|r| matches!(r.reason, RejectReason::Unknown(_)))
    {
        return refuted(Refutation::UnknownReason {
            update: r.update,
            code: r.reason.code().to_string(),
        });
    }
    let unavailable = manifest.unavailable();
    let (missing, present): (Vec<_>, Vec<_>) = announcements
        .iter()
        .cloned()
        .partition(|(cid, _)| unavailable.contains(cid));
    let again = match &manifest.secure {
        Some(cid) => {
            let record = super::secure::load_record(repo, cid, base.model.num_values())?;
            super::secure::aggregate_secure(repo, terms, base, &present, &missing, &record)?
        }
        None => aggregate(repo, terms, base, &present, &missing)?,
    };
    if again.manifest.model != manifest.model {
        return refuted(Refutation::Model {
            claimed: manifest.model,
            recomputed: again.manifest.model,
        });
    }
    if again.manifest.contributions != manifest.contributions
        || again.manifest.rejected != manifest.rejected
        || again.manifest.server_state != manifest.server_state
        || again.manifest.epsilon != manifest.epsilon
        || again.manifest.delta != manifest.delta
        || again.manifest.secure != manifest.secure
    {
        return refuted(Refutation::Listing);
    }
    Ok(())
}

/// The authors of the announcements a manifest lists, each checked: listed once (and its
/// author once), made for this task, round and base model, by a member, with claims the
/// task allows ([`claim::check`]: a sample count in bounds; sampled clients it hosts),
/// naming an update no other listed announcement names.
fn listed_authors(
    terms: &Terms,
    base: &RoundBase,
    announcements: &[SignedAnnouncement],
) -> Result<HashSet<PeerId>, Refutation> {
    let mut cids = HashSet::new();
    let mut authors = HashSet::new();
    let mut updates = HashSet::new();
    for (cid, a) in announcements {
        if !cids.insert(*cid) || !authors.insert(a.signer) {
            return Err(Refutation::Twice(*cid));
        }
        if !updates.insert(a.body.update) {
            return Err(Refutation::SharedUpdate(a.body.update));
        }
        let b = &a.body;
        if b.task != terms.cid || b.round != base.round || b.base != base.model_cid {
            return Err(Refutation::Foreign(*cid));
        }
        if !terms.task.admits(&a.signer) {
            return Err(Refutation::NotMember(a.signer));
        }
        if let Err(reason) = claim::check(terms, &a.signer, b) {
            return Err(Refutation::Claim {
                announcement: *cid,
                reason,
            });
        }
    }
    Ok(authors)
}

/// A manifest that held up, with the task it is of.
#[derive(Debug)]
pub struct Verified {
    /// The manifest.
    pub manifest: Signed<Manifest>,
    /// Its task.
    pub terms: Terms,
    /// In a task with a population: the round's sample, recomputed from the task, the
    /// round and its model, and the clients whose updates the manifest counts.
    pub clients: Option<(Arc<Sample>, Vec<ClientId>)>,
}

/// Verifies the manifest `cid` from public material alone: its task, the manifest before
/// it (one round back, same task), the base they give, its claims, and a recomputation from
/// the updates it counts.
pub async fn manifest(inputs: &Inputs, cid: Cid) -> Result<Verified, RoundError> {
    let bytes = inputs.block(cid, "the manifest").await?;
    let signed = Signed::<Manifest>::from_bytes(&cid, &bytes)?;
    let m = &signed.body;
    let terms = Terms::decode(m.task, inputs.block(m.task, "the task").await?)?;
    let terms = bound_by_data(inputs, terms).await?;
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
    record(inputs, &base, &signed).await?;
    let counted: HashSet<Cid> = m.contributions.iter().map(|c| c.announcement).collect();
    let clients = terms.sample(m.round).map(|sample| {
        let mut counted: Vec<ClientId> = announcements
            .iter()
            .filter(|(cid, _)| counted.contains(cid))
            .flat_map(|(_, a)| a.body.clients.iter().copied())
            .collect();
        counted.sort_unstable();
        (sample, counted)
    });
    let (repo, t, manifest) = (inputs.repo().clone(), terms.clone(), m.clone());
    tokio::task::spawn_blocking(move || recompute(&repo, &t, &base, &manifest, &announcements))
        .await??;
    Ok(Verified {
        manifest: signed,
        terms,
        clients,
    })
}
