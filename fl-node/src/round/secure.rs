//! A secure round's aggregation as a function of published bytes: the masked updates its
//! announcements name and its secure record (the sum, the secrets that unmask it, and the
//! members' signed keys). The aggregator runs it on the record it made; every checker and
//! `fl verify` run it again on the record the manifest names. No individual update is read.

use cid::Cid;
use fl_core::content::Repo;
use fl_core::content::unixfs::ImportOptions;
use fl_core::records::{
    Contribution, Manifest, RejectReason, Rejected, SecureRecord, SecureStep, Signed, Step,
};
use std::collections::BTreeSet;

use fl_core::secagg::{self, Advert, MaskedInput, Public, SecAggError, Slot, Survivors};
use fl_core::tensors::read_at_most;

use super::compute::{Aggregated, RoundBase, round_privacy, sample_epsilon, store_model};
use super::inbox::SignedAnnouncement;
use super::terms::Secure;
use super::{Refutation, RoundError, Terms};

/// Room a secure record has beyond its sum's values: the survivor list, the revealed
/// secrets and up to 255 members' signed keys.
pub const RECORD_ROOM: u64 = 1 << 20;

/// The largest secure record of a model of `values` values.
pub fn record_limit(values: usize) -> u64 {
    (values as u64)
        .saturating_mul(4)
        .saturating_add(RECORD_ROOM)
}

/// The task's secure settings, or why a secure round cannot run under it.
fn settings(terms: &Terms) -> Result<&Secure, RoundError> {
    terms
        .secure
        .as_deref()
        .ok_or(RoundError::Refuted(Refutation::SecureRecord {
            named: true,
        }))
}

/// Stores a secure record as a pinned file (DAG-CBOR bytes); returns its CID.
pub fn store_record(repo: &Repo, record: &SecureRecord) -> Result<Cid, RoundError> {
    let bytes = record
        .to_bytes()
        .map_err(|e| RoundError::Refuted(Refutation::SecureSum(e)))?;
    Ok(repo.add(&bytes[..], &ImportOptions::default())?.root)
}

/// Reads the secure record `cid`, none past the size a record of this model can have.
pub fn load_record(repo: &Repo, cid: &Cid, values: usize) -> Result<SecureRecord, RoundError> {
    let bytes =
        read_at_most(repo, cid, record_limit(values)).map_err(|source| RoundError::Load {
            what: "secure record",
            cid: *cid,
            source,
        })?;
    SecureRecord::from_bytes(&bytes).map_err(|e| RoundError::Refuted(Refutation::SecureSum(e)))
}

/// An announcement and the masked update it names, read and checked.
pub type Masked = (SignedAnnouncement, MaskedInput);

/// The masked update of each announcement, read from `repo` and checked to be its
/// author's, of the model's size and within the ring; the others rejected.
pub fn masked_inputs(
    repo: &Repo,
    terms: &Terms,
    base: &RoundBase,
    announced: &[SignedAnnouncement],
) -> Result<(Vec<Masked>, Vec<Rejected>), RoundError> {
    let secure = settings(terms)?;
    let len = base.model.num_values();
    let mut inputs = Vec::with_capacity(announced.len());
    let mut rejected = Vec::new();
    for entry in announced {
        let (cid, a) = entry;
        let reject = |reason| Rejected {
            peer: a.signer,
            announcement: *cid,
            update: a.body.update,
            reason,
        };
        let bytes = match read_at_most(repo, &a.body.update, MaskedInput::max_file_len(len) as u64)
        {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::info!(update = %a.body.update, author = %a.signer, "masked update unreadable: {e}");
                rejected.push(reject(match e {
                    fl_core::tensors::StoredError::TooLarge { .. } => RejectReason::TooLarge,
                    _ => RejectReason::Unreadable,
                }));
                continue;
            }
        };
        let read = MaskedInput::from_bytes(&bytes, len).and_then(|input| {
            let slot = secure.members.slot(&a.signer);
            if slot != Some(input.member) {
                return Err(SecAggError::Survivors {
                    reason: "a masked update under another member's slot",
                });
            }
            secagg::unmask::check_input(&secure.params, &input, len)?;
            Ok(input)
        });
        match read {
            Ok(input) => inputs.push((entry.clone(), input)),
            Err(e) => {
                tracing::info!(update = %a.body.update, author = %a.signer, "masked update refused: {e}");
                rejected.push(reject(RejectReason::Unmasked));
            }
        }
    }
    Ok((inputs, rejected))
}

/// The survivor list of a round's masked updates ([`secagg::survivors_among`]) over those
/// whose members masked only against members in `known` (whose keys the list's maker has).
pub fn survivors_of(
    terms: &Terms,
    round: u32,
    inputs: &[Masked],
    known: &BTreeSet<Slot>,
) -> Result<Survivors, RoundError> {
    settings(terms)?;
    let session = SecureStep::session(&terms.cid, round);
    let considered: Vec<&MaskedInput> = inputs
        .iter()
        .map(|(_, i)| i)
        .filter(|i| i.pairs.iter().all(|p| known.contains(p)))
        .collect();
    Ok(secagg::survivors_among(&session, &considered))
}

/// The members' adverts from their signed keys, each checked against its signer's slot.
pub fn adverts(
    terms: &Terms,
    round: u32,
    keys: &[Signed<SecureStep>],
) -> Result<Vec<Advert>, RoundError> {
    let secure = settings(terms)?;
    if keys.len() > secure.members.len() {
        return Err(Refutation::SecureSum(SecAggError::Survivors {
            reason: "more keys than members",
        })
        .into());
    }
    keys.iter()
        .map(|signed| {
            let signer = signed.verify()?;
            signed
                .body
                .check(&signer, &terms.cid, round, &secure.members, &secure.params)
                .map_err(|e| {
                    Refutation::SecureSum(match e {
                        fl_core::records::SecureStepError::Protocol(e) => e,
                        _ => SecAggError::Survivors {
                            reason: "keys signed by someone other than their member",
                        },
                    })
                })?;
            match &signed.body.step {
                Step::Keys(advert) => Ok(advert.clone()),
                _ => Err(Refutation::SecureSum(SecAggError::Survivors {
                    reason: "a step other than keys among the keys",
                })
                .into()),
            }
        })
        .collect()
}

/// Aggregates a secure round: checks `record` against the masked updates of `present`
/// (its survivor list must be the one they give, and its sum must be theirs), steps the
/// task's mean rule with the mean it unmasks, and stores the new model, server state and
/// record in `repo`. `unavailable` are announcements whose updates could not be fetched.
pub fn aggregate_secure(
    repo: &Repo,
    terms: &Terms,
    base: &RoundBase,
    present: &[SignedAnnouncement],
    unavailable: &[SignedAnnouncement],
    record: &SecureRecord,
) -> Result<Aggregated, RoundError> {
    let secure = settings(terms)?;
    let task = &terms.task;
    let round = base.round;
    let len = base.model.num_values();
    let session = SecureStep::session(&terms.cid, round);
    let adverts = adverts(terms, round, &record.keys)?;
    let known: BTreeSet<Slot> = adverts.iter().map(|a| a.member).collect();
    let (inputs, mut rejected) = masked_inputs(repo, terms, base, present)?;
    let list = &record.sum.survivors;
    let refuted =
        |reason| RoundError::from(Refutation::SecureSum(SecAggError::Survivors { reason }));
    // The masked updates the list was chosen from must be the ones announced; those it did
    // not consider (announced after it was made) are left out.
    let (considered, late): (Vec<Masked>, Vec<Masked>) = inputs
        .into_iter()
        .partition(|(_, i)| list.considered.iter().any(|s| s.member == i.member));
    if considered.len() != list.considered.len() {
        return Err(refuted(
            "a masked update it considered is not among the announcements",
        ));
    }
    if considered
        .iter()
        .any(|(_, i)| !i.pairs.iter().all(|p| known.contains(p)))
    {
        return Err(refuted(
            "a masked update it considered names a member without keys in it",
        ));
    }
    let expected = survivors_of(terms, round, &considered, &known)?;
    if expected != *list {
        return Err(refuted("not the survivor list its masked updates give"));
    }
    let summed: Vec<&Masked> = considered
        .iter()
        .filter(|(_, i)| list.inputs.iter().any(|s| s.member == i.member))
        .collect();
    for ((cid, a), input) in considered.iter().chain(&late) {
        if !summed.iter().any(|(_, i)| i.member == input.member) {
            rejected.push(Rejected {
                peer: a.signer,
                announcement: *cid,
                update: a.body.update,
                reason: RejectReason::Unmasked,
            });
        }
    }
    let masked: Vec<MaskedInput> = summed.iter().map(|(_, i)| i.clone()).collect();
    let public = Public {
        params: &secure.params,
        session: &session,
        adverts: &adverts,
        inputs: &masked,
        len,
    };
    secagg::verify(&public, &record.sum).map_err(Refutation::SecureSum)?;
    let count = summed.len();
    let needed = terms.min_updates(round) as usize;
    if count < needed {
        return Err(RoundError::TooFew {
            usable: count,
            needed,
        });
    }
    let mean = secure.params.quantiser().mean(&record.sum.values, count);
    let rule = aggregator::Strategy::as_mean_rule(&terms.rule).ok_or(RoundError::Refuted(
        Refutation::SecureSum(SecAggError::Survivors {
            reason: "the task's rule is not a mean",
        }),
    ))?;
    let (model, state) = rule
        .step(&base.model, &mean, base.state.clone())
        .map_err(RoundError::Aggregate)?;
    let (model_cid, server_state) = store_model(repo, &model, &state)?;
    let secure_cid = store_record(repo, record)?;
    let contributions: Vec<Contribution> = summed
        .iter()
        .map(|((cid, a), _)| Contribution {
            peer: a.signer,
            announcement: *cid,
            update: a.body.update,
            samples: a.body.samples,
            weight: 1.0 / count as f64,
            credits: task.credits(a.body.samples),
            epsilon: sample_epsilon(task, a.body.samples, round),
        })
        .collect();
    rejected.extend(unavailable.iter().map(|(cid, a)| Rejected {
        peer: a.signer,
        announcement: *cid,
        update: a.body.update,
        reason: RejectReason::Unavailable,
    }));
    let (epsilon, delta) = round_privacy(task, round, &contributions);
    Ok(Aggregated {
        manifest: Manifest {
            task: terms.cid,
            round,
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
            secure: Some(secure_cid),
        },
        model,
        state,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aggregator::ServerState;
    use fl_core::content::dagcbor;
    use fl_core::records::{Announcement, Keypair, SecureAggregation, Task};
    use fl_core::secagg::{Dealing, Member, Reveal, unmask};
    use fl_core::tensors::Bundle;
    use rand::SeedableRng;

    use super::*;
    use crate::round::compute::tests::one_round_task;
    use crate::round::verify::recompute;

    /// A secure round of four members on a model of three values, run through every step
    /// of the protocol; its announcements, and the record its aggregator would publish.
    struct Round {
        _dir: tempfile::TempDir,
        repo: Repo,
        terms: Terms,
        base: RoundBase,
        announced: Vec<SignedAnnouncement>,
        record: SecureRecord,
        updates: Vec<[f32; 3]>,
    }

    fn round() -> Round {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path().join("repo")).unwrap();
        let mut model = Bundle::new();
        model
            .insert("fc.weight", vec![3], vec![1.0, -1.0, 0.5])
            .unwrap();
        let model_cid = model.store(&repo).unwrap();
        let keys: Vec<Keypair> = (1..=4u8)
            .map(|i| Keypair::ed25519_from_bytes([i; 32]).unwrap())
            .collect();
        let task = Task {
            name: "secure".into(),
            members: Some(keys.iter().map(|k| k.public().to_peer_id()).collect()),
            secure: Some(SecureAggregation {
                threshold: 3,
                range: 1.0,
                bits: 16,
            }),
            ..one_round_task(model_cid)
        };
        let task_cid = *dagcbor::encode(&task).unwrap().cid();
        let terms = Terms::new(task_cid, task).unwrap();
        let secure = terms.secure.clone().unwrap();
        let session = SecureStep::session(&task_cid, 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut members = Vec::new();
        let mut signed_keys = Vec::new();
        for key in &keys {
            let slot = secure.members.slot(&key.public().to_peer_id()).unwrap();
            let (member, advert) = Member::new(secure.params, session, slot, &mut rng).unwrap();
            let step = SecureStep {
                task: task_cid,
                round: 1,
                step: Step::Keys(advert),
            };
            signed_keys.push((slot, Signed::sign(step, key).unwrap()));
            members.push((key, member));
        }
        signed_keys.sort_by_key(|(slot, _)| *slot);
        let keys_steps: Vec<Signed<SecureStep>> = signed_keys.into_iter().map(|(_, s)| s).collect();
        let adverts = adverts(&terms, 1, &keys_steps).unwrap();
        let dealings: Vec<Dealing> = members
            .iter_mut()
            .map(|(_, m)| m.deal(&adverts).unwrap().0)
            .collect();
        let updates = vec![
            [0.1, -0.2, 0.3],
            [0.0, 0.4, -0.1],
            [-0.3, 0.1, 0.2],
            [0.2, 0.2, 0.2],
        ];
        let mut announced = Vec::new();
        for ((key, member), update) in members.iter_mut().zip(&updates) {
            member.open(&dealings).unwrap();
            let masked = member.mask(update).unwrap();
            let cid = repo
                .add(&masked.to_bytes().unwrap()[..], &ImportOptions::default())
                .unwrap()
                .root;
            let body = Announcement {
                task: task_cid,
                round: 1,
                base: model_cid,
                update: cid,
                samples: 10,
                epochs: 1,
                epsilon: None,
                clients: Vec::new(),
                steps: None,
                capacity: None,
            };
            let signed = Signed::sign(body, key).unwrap();
            announced.push((*signed.to_block().unwrap().cid(), signed));
        }
        let base = RoundBase {
            round: 1,
            prev: None,
            model: Arc::new(model),
            model_cid,
            state: ServerState::empty(),
        };
        let (inputs, rejected) = masked_inputs(&repo, &terms, &base, &announced).unwrap();
        assert!(rejected.is_empty());
        let known = adverts.iter().map(|a| a.member).collect();
        let list = survivors_of(&terms, 1, &inputs, &known).unwrap();
        let answers: Vec<Reveal> = members
            .iter_mut()
            .map(|(_, m)| m.answer(&list).unwrap())
            .collect();
        let masked: Vec<MaskedInput> = inputs.into_iter().map(|(_, i)| i).collect();
        let public = Public {
            params: &secure.params,
            session: &session,
            adverts: &adverts,
            inputs: &masked,
            len: 3,
        };
        let sum = unmask(&public, &dealings, &list, &answers).unwrap().sum;
        Round {
            _dir: dir,
            repo,
            terms,
            base,
            announced,
            record: SecureRecord {
                sum,
                keys: keys_steps,
            },
            updates,
        }
    }

    #[test]
    fn a_secure_round_steps_the_model_by_the_unmasked_mean_and_a_checker_agrees() {
        let r = round();
        let aggregated =
            aggregate_secure(&r.repo, &r.terms, &r.base, &r.announced, &[], &r.record).unwrap();
        let m = &aggregated.manifest;
        assert_eq!(m.contributions.len(), 4);
        assert!(m.contributions.iter().all(|c| c.weight == 0.25));
        assert!(m.secure.is_some());
        let bound = r.terms.secure.as_ref().unwrap().params.quantiser().bound();
        let start = [1.0f32, -1.0, 0.5];
        for (i, got) in aggregated.model.flatten().iter().enumerate() {
            let mean = r.updates.iter().map(|u| f64::from(u[i])).sum::<f64>() / 4.0;
            let want = f64::from(start[i]) + mean;
            assert!(
                (f64::from(*got) - want).abs() <= bound + 1e-6,
                "value {i}: {got} against {want}"
            );
        }
        // What a checker and `fl verify` run, from the same public bytes.
        recompute(&r.repo, &r.terms, &r.base, m, &r.announced).unwrap();
    }

    #[test]
    fn a_secure_record_whose_sum_is_one_unit_off_is_refused() {
        let r = round();
        let mut off = r.record.clone();
        off.sum.values[1] = off.sum.values[1].wrapping_add(1) & ((1 << 18) - 1);
        match aggregate_secure(&r.repo, &r.terms, &r.base, &r.announced, &[], &off) {
            Err(RoundError::Refuted(Refutation::SecureSum(SecAggError::SumMismatch {
                index: 1,
                ..
            }))) => {}
            other => panic!("expected a refutation, got {other:?}"),
        }
        // A record that leaves a member's masked update out of a consistent list.
        let mut short = r.record.clone();
        short.sum.survivors.inputs.pop();
        assert!(matches!(
            aggregate_secure(&r.repo, &r.terms, &r.base, &r.announced, &[], &short),
            Err(RoundError::Refuted(Refutation::SecureSum(
                SecAggError::Survivors { .. }
            )))
        ));
        // A manifest of a secure round recomputed against another record is refuted.
        let honest =
            aggregate_secure(&r.repo, &r.terms, &r.base, &r.announced, &[], &r.record).unwrap();
        let other = store_record(&r.repo, &off).unwrap();
        let forged = Manifest {
            secure: Some(other),
            ..honest.manifest
        };
        assert!(matches!(
            recompute(&r.repo, &r.terms, &r.base, &forged, &r.announced),
            Err(RoundError::Refuted(Refutation::SecureSum(
                SecAggError::SumMismatch { .. }
            )))
        ));
    }
}
