//! A round's aggregation as a pure function of published bytes: the aggregator runs it to
//! make a manifest, every other node and `fl verify` run it again to check one.

use std::collections::HashMap;
use std::sync::Arc;

use aggregator::{AggregatorConfig, Contribution as Offered, ServerState, aggregate_round};
use cid::Cid;
use fl_core::content::Repo;
use fl_core::records::{
    Announcement, Contribution, DpLevel, Manifest, PeerId, RejectReason, Rejected, Signed, Task,
};
use fl_core::tensors::{Bundle, StoredError};

use super::{RoundError, Terms};

/// What a round starts from.
#[derive(Debug, Clone)]
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

/// Aggregates the updates `announcements` name (all already in `repo`) onto `base`, as
/// `task` says, storing the new model (and server state) in `repo`. `unavailable` are
/// announcements whose updates could not be fetched: listed as rejected, they still count
/// for the aggregator ranking.
pub fn aggregate(
    repo: &Repo,
    terms: &Terms,
    base: &RoundBase,
    announcements: &[(Cid, Signed<Announcement>)],
    unavailable: &[(Cid, Signed<Announcement>)],
) -> Result<Aggregated, RoundError> {
    let task = &terms.task;
    let loaded = load_updates(repo, announcements, base.model.file_limit());
    let mut config = AggregatorConfig::new(terms.rule);
    if let Some(bound) = terms.update_norm_bound(base.model.num_values()) {
        config = config.with_max_update_norm(bound);
    }
    // DP-FedAvg over a population: the sum over the expected count, whoever came.
    if let Some(population) = task.population.as_ref().filter(|_| task.dp.is_some()) {
        config = config.with_fixed_total(u64::from(population.per_round));
    }
    let outcome = aggregate_round(
        &config,
        &base.model,
        base.model_cid,
        loaded.offered,
        base.state.clone(),
    )
    .map_err(RoundError::Aggregate)?;
    let by_update = &loaded.by_update;
    let contributions = contributions(task, base.round, &outcome.accepted, by_update);
    let rejected = outcome
        .rejected
        .iter()
        .map(|r| {
            let (announcement, peer, _) = by_update[&(r.sender().to_string(), *r.update())];
            Rejected {
                peer,
                announcement,
                update: *r.update(),
                reason: r.reason(),
            }
        })
        .chain(loaded.unreadable)
        .chain(unavailable.iter().map(|(cid, a)| Rejected {
            peer: a.signer,
            announcement: *cid,
            update: a.body.update,
            reason: RejectReason::Unavailable,
        }))
        .collect();
    let (model, server_state) = store_outcome(repo, &outcome)?;
    let (epsilon, delta) = round_privacy(task, base.round, &contributions);
    Ok(Aggregated {
        manifest: Manifest {
            task: terms.cid,
            round: base.round,
            prev: base.prev,
            base_model: base.model_cid,
            model,
            rule: task.rule.clone(),
            server_state,
            contributions,
            rejected,
            epsilon,
            delta,
            metrics: None,
            rank: 0,
            secure: None,
        },
        model: outcome.model,
        state: outcome.state,
    })
}

/// The accepted updates as the manifest lists them: weight in proportion to samples,
/// credits, and (sample level) each author's epsilon.
fn contributions(
    task: &Task,
    round: u32,
    accepted: &[aggregator::Accepted],
    by_update: &HashMap<(String, Cid), (Cid, PeerId, u64)>,
) -> Vec<Contribution> {
    let total: u64 = accepted.iter().map(|a| a.samples).sum();
    accepted
        .iter()
        .map(|a| {
            let (announcement, peer, samples) = by_update[&(a.sender.to_string(), a.update)];
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
                epsilon: sample_epsilon(task, samples, round),
            }
        })
        .collect()
}

/// The updates of a round, read from the repo for the aggregator.
struct Loaded {
    offered: Vec<Offered>,
    /// Each offered update's announcement, author and samples, by author and update (two
    /// peers may name the same update file).
    by_update: HashMap<(String, Cid), (Cid, PeerId, u64)>,
    /// The announcements whose update could not be read, as rejections.
    unreadable: Vec<Rejected>,
}

/// Reads the update each announcement names, none past `limit` bytes (no update of the
/// round's model is larger, and a few blocks that link each other many times name any
/// size). A file that is not a tensor bundle is its author's fault, not the round's: it is
/// rejected.
fn load_updates(repo: &Repo, announcements: &[(Cid, Signed<Announcement>)], limit: u64) -> Loaded {
    let mut loaded = Loaded {
        offered: Vec::with_capacity(announcements.len()),
        by_update: HashMap::new(),
        unreadable: Vec::new(),
    };
    for (cid, a) in announcements {
        let body = &a.body;
        let delta = match Bundle::load_at_most(repo, &body.update, limit) {
            Ok(delta) => delta,
            Err(e) => {
                tracing::info!(update = %body.update, author = %a.signer, "update unreadable: {e}");
                let reason = match e {
                    StoredError::TooLarge { .. } => RejectReason::TooLarge,
                    _ => RejectReason::Unreadable,
                };
                loaded.unreadable.push(Rejected {
                    peer: a.signer,
                    announcement: *cid,
                    update: body.update,
                    reason,
                });
                continue;
            }
        };
        loaded.by_update.insert(
            (a.signer.to_string(), body.update),
            (*cid, a.signer, body.samples),
        );
        loaded.offered.push(Offered::new(
            a.signer.to_string(),
            body.update,
            body.base,
            body.samples,
            Arc::new(delta),
        ));
    }
    loaded
}

/// Stores the round's new model and (for stateful rules) server state; returns their CIDs.
pub(super) fn store_outcome(
    repo: &Repo,
    outcome: &aggregator::Outcome,
) -> Result<(Cid, Option<Cid>), RoundError> {
    store_model(repo, &outcome.model, &outcome.state)
}

/// Stores a round's new model and, for rules that carry one, its server state.
pub(super) fn store_model(
    repo: &Repo,
    model: &Bundle,
    state: &ServerState,
) -> Result<(Cid, Option<Cid>), RoundError> {
    let model = model.store(repo).map_err(|source| RoundError::Store {
        what: "model",
        source,
    })?;
    if state.is_empty() {
        return Ok((model, None));
    }
    let state = state
        .as_bundle()
        .store(repo)
        .map_err(|source| RoundError::Store {
            what: "server state",
            source,
        })?;
    Ok((model, Some(state)))
}

/// The privacy the round's manifest states: epsilon spent through `round` and delta.
/// Client level: the task's; sample level: each node's own, so the round states the
/// weakest guarantee among its contributors.
pub(super) fn round_privacy(
    task: &Task,
    round: u32,
    contributions: &[Contribution],
) -> (Option<f64>, Option<f64>) {
    let Some(dp) = &task.dp else {
        return (None, None);
    };
    let epsilon = match dp.level() {
        DpLevel::Client => dp.client_epsilon(round, task.client_rate()).ok(),
        DpLevel::Sample => contributions
            .iter()
            .filter_map(|c| c.epsilon)
            .fold(None, |most: Option<f64>, e| {
                Some(most.map_or(e, |m| m.max(e)))
            }),
    };
    (epsilon, Some(dp.delta))
}

/// Sample-level DP: the epsilon a contributor with `samples` examples has spent through
/// `round` (see [`DpParams::sample_epsilon`](fl_core::records::DpParams::sample_epsilon)).
pub fn sample_epsilon(task: &Task, samples: u64, round: u32) -> Option<f64> {
    let dp = task
        .dp
        .as_ref()
        .filter(|dp| dp.level() == DpLevel::Sample)?;
    dp.sample_epsilon(&task.train, samples, round).ok()
}

#[cfg(test)]
pub(super) mod tests {
    use fl_core::content::dagcbor;
    use fl_core::content::unixfs::ImportOptions;
    use fl_core::records::task::TASK_FORMAT;
    use fl_core::records::{DataSource, Keypair, RoundSchedule, TrainParams};
    use fl_core::tensors::Encoding;

    use super::*;
    use crate::round::Refutation;
    use crate::round::claim::ClaimError;
    use crate::round::verify::{check_claims, recompute};

    /// Announcements with their CIDs, as a manifest lists them.
    type Listed = Vec<(Cid, Signed<Announcement>)>;

    /// A round of four authors: one good update, one holding a NaN, one file that is not a
    /// tensor bundle and one its author never served.
    struct Round {
        _dir: tempfile::TempDir,
        repo: Repo,
        terms: Terms,
        base: RoundBase,
        present: Vec<(Cid, Signed<Announcement>)>,
        missing: Vec<(Cid, Signed<Announcement>)>,
    }

    /// A one-round FedAvg task on `model` with no data of its own.
    pub(in crate::round) fn one_round_task(model: Cid) -> Task {
        Task {
            format: TASK_FORMAT.into(),
            name: "typed reasons".into(),
            architecture: "fedavg-cnn".into(),
            initial_model: model,
            data: DataSource::OwnData,
            train: TrainParams {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.1,
                momentum: 0.0,
                weight_decay: 0.0,
                proximal_mu: 0.0,
                schedule: RoundSchedule::Constant,
                steps: None,
                load: fl_core::records::Load::Equal,
            },
            rounds: 1,
            min_participants: 1,
            round_deadline_ms: 1000,
            grace_ms: 1000,
            dp: None,
            rule: "fedavg".into(),
            members: None,
            flops_per_sample: 1,
            seed: 0,
            update_encoding: Encoding::F32,
            max_samples: None,
            evaluate_every: None,
            secure: None,
            population: None,
        }
    }

    fn round() -> Round {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path().join("repo")).unwrap();
        let bundle = |values: [f32; 2]| {
            let mut b = Bundle::new();
            b.insert("fc.weight", vec![2], values.to_vec()).unwrap();
            b
        };
        let model = bundle([1.0, 1.0]);
        let model_cid = model.store(&repo).unwrap();
        let task = one_round_task(model_cid);
        let task_cid = dagcbor::encode(&task).unwrap().cid().to_owned();
        let not_a_bundle = repo
            .add(&b"not a tensor bundle"[..], &ImportOptions::default())
            .unwrap()
            .root;
        let never_served = repo
            .add(&b"stored elsewhere"[..], &ImportOptions::default())
            .unwrap()
            .root;
        let updates = [
            bundle([0.5, -1.0]).store(&repo).unwrap(),
            bundle([f32::NAN, 0.0]).store(&repo).unwrap(),
            not_a_bundle,
            never_served,
        ];
        let announced: Vec<(Cid, Signed<Announcement>)> = updates
            .iter()
            .enumerate()
            .map(|(i, update)| {
                let key = Keypair::ed25519_from_bytes([i as u8 + 1; 32]).unwrap();
                let body = Announcement {
                    task: task_cid,
                    round: 1,
                    base: model_cid,
                    update: *update,
                    samples: 10 * (i as u64 + 1),
                    epochs: 1,
                    epsilon: None,
                    clients: Vec::new(),
                    steps: None,
                    capacity: None,
                };
                let signed = Signed::sign(body, &key).unwrap();
                (*signed.to_block().unwrap().cid(), signed)
            })
            .collect();
        let (present, missing) = announced.split_at(3);
        Round {
            _dir: dir,
            repo,
            terms: Terms::new(task_cid, task).unwrap(),
            base: RoundBase {
                round: 1,
                prev: None,
                model: Arc::new(model),
                model_cid,
                state: ServerState::empty(),
            },
            present: present.to_vec(),
            missing: missing.to_vec(),
        }
    }

    impl Round {
        fn manifest(&self) -> Manifest {
            aggregate(
                &self.repo,
                &self.terms,
                &self.base,
                &self.present,
                &self.missing,
            )
            .unwrap()
            .manifest
        }

        fn check(&self, manifest: &Manifest) -> Result<(), RoundError> {
            let (manifest, all) = self.check_claims(manifest)?;
            recompute(&self.repo, &self.terms, &self.base, &manifest, &all)
        }

        /// What a node that does not recompute checks: the claims.
        fn check_claims(&self, manifest: &Manifest) -> Result<(Manifest, Listed), RoundError> {
            let all: Vec<_> = self.present.iter().chain(&self.missing).cloned().collect();
            let signer = all[0].1.signer;
            let rank = fl_core::records::ranking(
                &manifest.rank_anchor(),
                manifest.round,
                all.iter().map(|(_, a)| a.signer),
            )
            .iter()
            .position(|p| *p == signer)
            .unwrap();
            let manifest = Manifest {
                rank: rank as u32,
                ..manifest.clone()
            };
            check_claims(&self.terms, &self.base, &manifest, &signer, &all)?;
            Ok((manifest, all))
        }
    }

    /// Sampled checking (`fl node run --check-probability`): a manifest whose model has one
    /// wrong tensor passes a check of its claims, is refuted by every node that recomputes
    /// it, and a federation of seven honest nodes, each recomputing with probability 0.05
    /// (0.4 recomputations a round among eight), refuses it at the rate
    /// [`checking::detection`] states, 1 - 0.95^7 = 0.302, over 400 federations with fresh
    /// secrets.
    #[test]
    fn a_manifest_with_one_wrong_tensor_is_refused_at_the_rate_sampled_checking_states() {
        use crate::round::checking::{self, Checking};
        let round = round();
        let honest = aggregate(
            &round.repo,
            &round.terms,
            &round.base,
            &round.present,
            &round.missing,
        )
        .unwrap();
        round.check(&honest.manifest).unwrap();
        // One tensor off by a little: every value of `fc.weight` plus 0.01.
        let wrong: Vec<f32> = honest.model.flatten().iter().map(|x| x + 0.01).collect();
        let wrong = honest.model.with_flat(&wrong).unwrap();
        let mut manifest = honest.manifest.clone();
        manifest.model = wrong.store(&round.repo).unwrap();
        assert!(round.check_claims(&manifest).is_ok(), "its claims hold");
        match round.check(&manifest) {
            Err(RoundError::Refuted(Refutation::Model { claimed, .. })) => {
                assert_eq!(claimed, manifest.model)
            }
            other => panic!("{other:?}"),
        }
        let cid = *dagcbor::encode(&manifest).unwrap().cid();
        let (honest_nodes, p, trials) = (7, checking::probability_for_rate(0.4, 8), 400);
        let mut refused = 0;
        for _ in 0..trials {
            let mut any = false;
            for _ in 0..honest_nodes {
                let node = Checking::sampled(p).unwrap();
                let verdict = if node.recomputes(&cid) {
                    round.check(&manifest)
                } else {
                    round.check_claims(&manifest).map(|_| ())
                };
                any |= verdict.is_err();
            }
            refused += usize::from(any);
        }
        let rate = checking::detection(vec![p; honest_nodes]);
        assert!((rate - (1.0 - 0.95f64.powi(7))).abs() < 1e-12);
        let expected = trials as f64 * rate;
        let sigma = (expected * (1.0 - rate)).sqrt();
        // 5 sigma: a correct implementation fails this about once in 1.7 million runs.
        assert!(
            (refused as f64 - expected).abs() < 5.0 * sigma,
            "refused {refused} of {trials}, expected {expected:.1} +- {sigma:.1}"
        );
    }

    /// The manifest this round gives, as this version wrote it: a round recomputed by any
    /// later version, whatever its error messages say, must give these bytes again.
    const MANIFEST_CID: &str = "bafyreiej42ngi6xz275ydirfpbz5wjatoqeslomlrtp2xcolgupejpagby";

    #[test]
    fn rejections_are_codes_so_rewording_a_message_cannot_change_a_manifest() {
        let round = round();
        let manifest = round.manifest();
        let reasons: Vec<&RejectReason> = manifest.rejected.iter().map(|r| &r.reason).collect();
        assert_eq!(
            reasons,
            [
                &RejectReason::NonFinite,
                &RejectReason::Unreadable,
                &RejectReason::Unavailable
            ]
        );
        let block = dagcbor::encode(&manifest).unwrap();
        // No error text reaches the bytes: only the codes.
        let text = String::from_utf8_lossy(block.data());
        for message in [
            "holds",
            "NaN",
            "unreadable:",
            "did not serve",
            "update bafy",
        ] {
            assert!(!text.contains(message), "{message:?} in the manifest");
        }
        assert_eq!(block.cid().to_string(), MANIFEST_CID);
        round.check(&manifest).unwrap();
    }

    #[test]
    fn a_reason_without_a_code_loads_as_written_and_is_refused_as_a_format() {
        let round = round();
        let mut manifest = round.manifest();
        // As a manifest written before reasons were codes said it.
        let old = "update unreadable: not a safetensors file";
        manifest.rejected[1].reason = RejectReason::Unknown(old.into());
        let block = dagcbor::encode(&manifest).unwrap();
        let back: Manifest = dagcbor::decode(&block).unwrap();
        assert_eq!(back, manifest);
        assert_eq!(dagcbor::encode(&back).unwrap().cid(), block.cid());
        match round.check(&back) {
            Err(RoundError::Refuted(Refutation::UnknownReason { code, .. })) => {
                assert_eq!(code, old);
            }
            other => panic!("{other:?}"),
        }
        for code in RejectReason::KNOWN {
            assert_eq!(RejectReason::from_code(code.code()), code);
        }
    }

    #[test]
    fn an_update_larger_than_any_of_the_model_is_rejected_as_too_large() {
        let mut round = round();
        let big = {
            let mut b = Bundle::new();
            b.insert("fc.weight", vec![300_000], vec![0.5; 300_000])
                .unwrap();
            b.store(&round.repo).unwrap()
        };
        round.present[1].1.body.update = big;
        let manifest = round.manifest();
        let rejected = manifest.rejected.iter().find(|r| r.update == big);
        assert_eq!(
            rejected.map(|r| &r.reason),
            Some(&RejectReason::TooLarge),
            "{:?}",
            manifest.rejected
        );
    }

    /// A member cannot buy weight with its sample count: a manifest counting a claim past
    /// the task's bound (here the largest shard, 25 images) is refuted, naming it.
    #[test]
    fn a_claim_past_the_tasks_sample_bound_refutes_the_manifest() {
        let mut round = round();
        let manifest = round.manifest();
        round.check(&manifest).unwrap();
        round.terms = round.terms.clone().with_shards(25);
        match round.check(&manifest) {
            Err(RoundError::Refuted(Refutation::Claim {
                reason: ClaimError::Samples { claimed, bound },
                ..
            })) => {
                assert_eq!(bound, 25);
                assert!(claimed > 25, "{claimed}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// One update file, one author: a manifest listing a second announcement of an update
    /// (a member copying another's to collect its weight and credits) is refuted.
    #[test]
    fn a_manifest_listing_a_copied_update_is_refuted() {
        let mut round = round();
        let original = round.present[0].1.body.update;
        round.present[2].1.body.update = original;
        let manifest = round.manifest();
        match round.check(&manifest) {
            Err(RoundError::Refuted(Refutation::SharedUpdate(update))) => {
                assert_eq!(update, original)
            }
            other => panic!("{other:?}"),
        }
    }

    /// Nothing a signer may vary lies outside the checks: a manifest carrying metrics (which
    /// a re-signing signer could vary to grind a lower CID and win the fork choice) is
    /// refuted.
    #[test]
    fn a_manifest_carrying_unchecked_metrics_is_refuted() {
        let round = round();
        let mut manifest = round.manifest();
        manifest.metrics = Some(fl_core::records::Metrics {
            test_accuracy: 0.5,
            test_loss: 1.0,
        });
        assert!(matches!(
            round.check(&manifest),
            Err(RoundError::Refuted(Refutation::Metrics))
        ));
    }
}
