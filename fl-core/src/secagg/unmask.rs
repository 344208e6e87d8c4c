//! The aggregator's side: collecting masked updates, naming the survivors, recovering the
//! secrets the members reveal, and the sum; and the check anyone can run on that sum.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;

use super::keys::{Advert, adds, apply_mask, mask_key_matches, pair_seed, seed_commitment};
use super::member::MaskedInput;
use super::ring::{self, words};
use super::shares::{Dealing, recover};
use super::{Digest, Kind, Params, SecAggError, Session, Slot, digest};

/// The members whose masked updates a round sums, and the members they masked against.
///
/// Members may have masked against different sets (each against the dealings that reached
/// it in time). Every two survivors must have masked against each other: their pairwise
/// masks then cancel, every other mask a survivor added is with a member outside the list
/// (whose mask key is recovered), and each survivor's update stays hidden under its masks
/// with all the others. [`survivors_among`] picks such a list from the masked updates
/// considered, by a fixed rule anyone can rerun.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survivors {
    /// Every member some survivor masked against, the survivors included, in increasing
    /// order: those not summed are the dropped members.
    pub pairs: Vec<Slot>,
    /// Each survivor and the digest of the masked update summed, in increasing order.
    pub inputs: Vec<Survivor>,
    /// The masked updates the list was chosen from, in increasing order: the survivors and
    /// those left out by the rule.
    pub considered: Vec<Survivor>,
}

/// A survivor and the masked update of it that is summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survivor {
    /// The member.
    pub member: Slot,
    /// [`MaskedInput::digest`] of its masked update.
    #[serde(with = "serde_bytes")]
    pub input: Digest,
}

impl Survivors {
    /// Checks the list's shape and that it has at least the threshold of survivors.
    pub fn check(&self, params: &Params) -> Result<(), SecAggError> {
        let malformed = |reason| SecAggError::Survivors { reason };
        for slot in self
            .pairs
            .iter()
            .chain(self.inputs.iter().map(|s| &s.member))
        {
            params.slot(*slot)?;
        }
        if self.pairs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(malformed("members masked against not in increasing order"));
        }
        if self.inputs.windows(2).any(|w| w[0].member >= w[1].member) {
            return Err(malformed("survivors not in increasing order"));
        }
        if self.considered.len() > usize::from(params.members)
            || self
                .considered
                .windows(2)
                .any(|w| w[0].member >= w[1].member)
        {
            return Err(malformed(
                "masked updates considered not in increasing order",
            ));
        }
        if self.inputs.iter().any(|s| !self.considered.contains(s)) {
            return Err(malformed("a survivor that was not considered"));
        }
        if self
            .inputs
            .iter()
            .any(|s| self.pairs.binary_search(&s.member).is_err())
        {
            return Err(malformed("a survivor that did not deal"));
        }
        if self.inputs.len() < usize::from(params.threshold) {
            return Err(SecAggError::TooFewSurvivors {
                survivors: self.inputs.len(),
                threshold: params.threshold,
            });
        }
        Ok(())
    }

    /// The survivors.
    pub fn members(&self) -> impl Iterator<Item = Slot> + '_ {
        self.inputs.iter().map(|s| s.member)
    }

    /// The members masked against but not summed: their mask keys are recovered.
    pub fn dropped(&self) -> Vec<Slot> {
        let survivors: BTreeSet<Slot> = self.members().collect();
        self.pairs
            .iter()
            .copied()
            .filter(|p| !survivors.contains(p))
            .collect()
    }

    /// The digest a member's answer names.
    pub fn digest(&self, session: &Session) -> Digest {
        let pairs: Vec<u8> = self.pairs.iter().map(|s| s.0).collect();
        let list = |of: &[Survivor]| -> Vec<u8> {
            of.iter()
                .flat_map(|s| std::iter::once(s.member.0).chain(s.input))
                .collect()
        };
        digest(
            "survivors",
            session,
            &[&pairs, &list(&self.inputs), &list(&self.considered)],
        )
    }
}

/// A share, or a recovered secret, of one member's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revealed {
    /// Whose secret it is.
    pub dealer: Slot,
    /// The share or secret.
    #[serde(with = "serde_bytes")]
    pub share: [u8; 32],
}

/// A member's answer to a survivor list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reveal {
    /// Who answers.
    pub responder: Slot,
    /// The digest of the survivor list answered.
    #[serde(with = "serde_bytes")]
    pub survivors: Digest,
    /// Its shares of the survivors' seeds.
    pub seeds: Vec<Revealed>,
    /// Its shares of the dropped members' mask keys.
    pub mask_keys: Vec<Revealed>,
}

/// The published result of a secure round: the sum and everything needed to check it
/// against the public masked updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureSum {
    /// The survivor list the sum is over.
    pub survivors: Survivors,
    /// Each survivor's self-mask seed, in survivor order.
    pub seeds: Vec<Revealed>,
    /// Each dropped member's mask key, in increasing order.
    pub mask_keys: Vec<Revealed>,
    /// The sum of the survivors' quantised updates, in `Z/2^k`.
    #[serde(with = "words")]
    pub values: Vec<u32>,
}

/// What unmasking gives: the sum, and the members whose answers were refused.
#[derive(Debug, Clone)]
pub struct Unmasked {
    /// The sum to publish.
    pub sum: SecureSum,
    /// Each refused share or answer, naming the member at fault.
    pub faults: Vec<SecAggError>,
}

/// Checks a masked update's shape: its member and pairs are of the round (pairs in
/// increasing order), its values of the update's length and within the ring.
pub fn check_input(params: &Params, input: &MaskedInput, len: usize) -> Result<(), SecAggError> {
    let member = params.slot(input.member)?;
    if input.pairs.len() > usize::from(params.members)
        || input.pairs.windows(2).any(|w| w[0] >= w[1])
        || input.pairs.binary_search(&member).is_err()
    {
        return Err(SecAggError::Survivors {
            reason: "a masked update's members masked against are not in order, or lack its own",
        });
    }
    for slot in &input.pairs {
        params.slot(*slot)?;
    }
    ring::check(member, &input.values, len, params.ring_bits())
}

/// Gathers masked updates as they arrive, spotting a member that sends two.
#[derive(Debug, Clone, Default)]
pub struct Collector {
    inputs: BTreeMap<Slot, MaskedInput>,
    equivocators: BTreeSet<Slot>,
}

impl Collector {
    /// Takes a masked update: a second, different one from the same member is an
    /// equivocation, and that member is left out of the sum whichever came first.
    pub fn offer(
        &mut self,
        params: &Params,
        session: &Session,
        input: MaskedInput,
        len: usize,
    ) -> Result<(), SecAggError> {
        check_input(params, &input, len)?;
        let member = input.member;
        if let Some(first) = self.inputs.get(&member) {
            let (first, second) = (first.digest(session), input.digest(session));
            if first == second {
                return Ok(());
            }
            self.equivocators.insert(member);
            return Err(SecAggError::Equivocation {
                member,
                first,
                second,
            });
        }
        self.inputs.insert(member, input);
        Ok(())
    }

    /// The survivor list ([`survivors_among`]) over the masked updates that `admit`
    /// takes, equivocators left out.
    pub fn survivors(&self, session: &Session, admit: impl Fn(&MaskedInput) -> bool) -> Survivors {
        let considered: Vec<&MaskedInput> = self
            .inputs
            .values()
            .filter(|i| !self.equivocators.contains(&i.member) && admit(i))
            .collect();
        survivors_among(session, &considered)
    }
}

/// Whether two masked updates' members masked against each other, both ways.
fn joined(u: &MaskedInput, v: &MaskedInput) -> bool {
    u.pairs.binary_search(&v.member).is_ok() && v.pairs.binary_search(&u.member).is_ok()
}

/// The survivor list over `considered` masked updates (one a member, in any order): all of
/// them less the fewest, by a fixed rule, that leave every two survivors masked against
/// each other. While some are not, the one missing the most others (the higher slot on a
/// tie) is left out.
pub fn survivors_among(session: &Session, considered: &[&MaskedInput]) -> Survivors {
    let mut kept: Vec<&MaskedInput> = considered.to_vec();
    kept.sort_by_key(|i| i.member);
    loop {
        let worst = kept
            .iter()
            .map(|u| {
                let missing = kept
                    .iter()
                    .filter(|v| v.member != u.member && !joined(u, v))
                    .count();
                (missing, u.member)
            })
            .filter(|(missing, _)| *missing > 0)
            .max();
        match worst {
            Some((_, member)) => kept.retain(|i| i.member != member),
            None => break,
        }
    }
    let pairs: BTreeSet<Slot> = kept.iter().flat_map(|i| i.pairs.iter().copied()).collect();
    let named = |i: &&MaskedInput| Survivor {
        member: i.member,
        input: i.digest(session),
    };
    let mut considered: Vec<Survivor> = considered.iter().map(named).collect();
    considered.sort_by_key(|s| s.member);
    Survivors {
        pairs: pairs.into_iter().collect(),
        inputs: kept.iter().map(named).collect(),
        considered,
    }
}

/// The round's public material a sum is computed and checked from.
#[derive(Debug, Clone, Copy)]
pub struct Public<'a> {
    /// The round's settings.
    pub params: &'a Params,
    /// The round's session.
    pub session: &'a Session,
    /// Every member's advert.
    pub adverts: &'a [Advert],
    /// Masked updates, at least those of the survivors.
    pub inputs: &'a [MaskedInput],
    /// Length of an update.
    pub len: usize,
}

impl Public<'_> {
    fn advert(&self, member: Slot) -> Result<&Advert, SecAggError> {
        let mut found = self.adverts.iter().filter(|a| a.member == member);
        match (found.next(), found.next()) {
            (Some(advert), None) => Ok(advert),
            (None, _) => Err(SecAggError::Survivors {
                reason: "a member without an advert",
            }),
            (Some(_), Some(_)) => Err(SecAggError::Duplicate {
                member,
                what: "adverts",
            }),
        }
    }

    /// The survivors' masked updates, each checked against its digest in the list.
    fn survivor_inputs(&self, survivors: &Survivors) -> Result<Vec<&MaskedInput>, SecAggError> {
        survivors.check(self.params)?;
        survivors
            .inputs
            .iter()
            .map(|s| {
                let input = self
                    .inputs
                    .iter()
                    .find(|i| i.member == s.member && i.digest(self.session) == s.input)
                    .ok_or(SecAggError::Survivors {
                        reason: "a survivor's masked update is missing",
                    })?;
                if input
                    .pairs
                    .iter()
                    .any(|p| survivors.pairs.binary_search(p).is_err())
                {
                    return Err(SecAggError::Survivors {
                        reason: "a survivor masked against a member the list does not name",
                    });
                }
                ring::check(s.member, &input.values, self.len, self.params.ring_bits())?;
                Ok(input)
            })
            .collect::<Result<Vec<_>, SecAggError>>()
            .and_then(|inputs| {
                let named: BTreeSet<Slot> = inputs
                    .iter()
                    .flat_map(|i| i.pairs.iter().copied())
                    .collect();
                if named.len() != survivors.pairs.len() {
                    return Err(SecAggError::Survivors {
                        reason: "the list names members no survivor masked against",
                    });
                }
                for u in &inputs {
                    for v in &inputs {
                        if u.member != v.member && !joined(u, v) {
                            return Err(SecAggError::Survivors {
                                reason: "two survivors did not both mask against each other",
                            });
                        }
                    }
                }
                Ok(inputs)
            })
    }

    /// The sum of the survivors' masked updates less every mask that does not cancel.
    fn sum(
        &self,
        survivors: &Survivors,
        seeds: &[Revealed],
        mask_keys: &[Revealed],
    ) -> Result<Vec<u32>, SecAggError> {
        let ring_bits = self.params.ring_bits();
        let inputs = self.survivor_inputs(survivors)?;
        let mut sum = vec![0u32; self.len];
        for input in &inputs {
            ring::add_assign(&mut sum, &input.values, ring_bits);
        }
        for seed in seeds {
            apply_mask(&mut sum, &seed.share, ring_bits, false);
        }
        for dropped in mask_keys {
            let secret = StaticSecret::from(dropped.share);
            for input in &inputs {
                if input.pairs.binary_search(&dropped.dealer).is_err() {
                    continue;
                }
                let survivor = input.member;
                let advert = self.advert(survivor)?;
                let seed = pair_seed(
                    self.session,
                    &secret,
                    dropped.dealer,
                    &advert.mask_key,
                    survivor,
                )?;
                // The survivor added it if it comes first; take it back out.
                apply_mask(&mut sum, &seed, ring_bits, !adds(survivor, dropped.dealer));
            }
        }
        Ok(sum)
    }

    /// Checks revealed secrets against the adverts: exactly the survivors' seeds and the
    /// dropped members' mask keys, in order.
    fn check_secrets(
        &self,
        survivors: &Survivors,
        seeds: &[Revealed],
        mask_keys: &[Revealed],
    ) -> Result<(), SecAggError> {
        for (kind, expected, revealed) in [
            (Kind::Seed, survivors.members().collect::<Vec<_>>(), seeds),
            (Kind::MaskKey, survivors.dropped(), mask_keys),
        ] {
            for (i, member) in expected.iter().enumerate() {
                let secret = revealed.get(i).filter(|r| r.dealer == *member).ok_or(
                    SecAggError::Secrets {
                        member: *member,
                        kind,
                        problem: "missing",
                    },
                )?;
                let advert = self.advert(*member)?;
                let matches = match kind {
                    Kind::Seed => {
                        seed_commitment(self.session, *member, &secret.share)
                            == advert.seed_commitment
                    }
                    Kind::MaskKey => mask_key_matches(&secret.share, advert),
                };
                if !matches {
                    return Err(SecAggError::Inconsistent {
                        dealer: *member,
                        kind,
                    });
                }
            }
            if let Some(extra) = revealed.get(expected.len()) {
                return Err(SecAggError::Secrets {
                    member: extra.dealer,
                    kind,
                    problem: "not expected",
                });
            }
        }
        Ok(())
    }
}

/// A holder's share of a secret.
type HolderShare = (Slot, [u8; 32]);

/// Recovers the secrets a survivor list needs from the members' answers, checking each
/// share against its dealer's commitment, and sums.
pub fn unmask(
    public: &Public<'_>,
    dealings: &[Dealing],
    survivors: &Survivors,
    reveals: &[Reveal],
) -> Result<Unmasked, SecAggError> {
    let params = public.params;
    survivors.check(params)?;
    let list = survivors.digest(public.session);
    let mut faults = Vec::new();
    let mut dealt: BTreeMap<Slot, &Dealing> = BTreeMap::new();
    for dealing in dealings {
        dealing.check(params)?;
        if dealt.insert(dealing.dealer, dealing).is_some() {
            return Err(SecAggError::Duplicate {
                member: dealing.dealer,
                what: "dealings",
            });
        }
    }
    // Valid shares by (kind, dealer).
    let mut valid: BTreeMap<(Kind, Slot), Vec<HolderShare>> = BTreeMap::new();
    let mut answered = BTreeSet::new();
    let wanted: BTreeSet<(Kind, Slot)> = survivors
        .members()
        .map(|m| (Kind::Seed, m))
        .chain(survivors.dropped().into_iter().map(|m| (Kind::MaskKey, m)))
        .collect();
    for reveal in reveals {
        let responder = match params.slot(reveal.responder) {
            Ok(r) => r,
            Err(e) => {
                faults.push(e);
                continue;
            }
        };
        if reveal.survivors != list {
            faults.push(SecAggError::SecondSurvivorList);
            continue;
        }
        if !answered.insert(responder) {
            faults.push(SecAggError::Duplicate {
                member: responder,
                what: "answers",
            });
            continue;
        }
        for (kind, shares) in [
            (Kind::Seed, &reveal.seeds),
            (Kind::MaskKey, &reveal.mask_keys),
        ] {
            for revealed in shares.iter().take(usize::from(params.members)) {
                if !wanted.contains(&(kind, revealed.dealer)) {
                    continue;
                }
                let matches = dealt
                    .get(&revealed.dealer)
                    .is_some_and(|d| d.matches(public.session, responder, kind, &revealed.share));
                let entry = valid.entry((kind, revealed.dealer)).or_default();
                if !matches {
                    faults.push(SecAggError::ShareMismatch {
                        dealer: revealed.dealer,
                        holder: responder,
                        kind,
                    });
                } else if !entry.iter().any(|(h, _)| *h == responder) {
                    entry.push((responder, revealed.share));
                }
            }
        }
    }
    let mut recovered = |kind: Kind, members: Vec<Slot>| -> Result<Vec<Revealed>, SecAggError> {
        members
            .into_iter()
            .map(|dealer| {
                let shares = valid.remove(&(kind, dealer)).unwrap_or_default();
                let share = recover(dealer, kind, params.threshold, &shares)?;
                Ok(Revealed { dealer, share })
            })
            .collect()
    };
    let seeds = recovered(Kind::Seed, survivors.members().collect())?;
    let mask_keys = recovered(Kind::MaskKey, survivors.dropped())?;
    public.check_secrets(survivors, &seeds, &mask_keys)?;
    let values = public.sum(survivors, &seeds, &mask_keys)?;
    Ok(Unmasked {
        sum: SecureSum {
            survivors: survivors.clone(),
            seeds,
            mask_keys,
            values,
        },
        faults,
    })
}

/// Checks a published sum from public material alone: the revealed secrets against the
/// members' adverts, then the sum recomputed from the masked updates.
pub fn verify(public: &Public<'_>, sum: &SecureSum) -> Result<(), SecAggError> {
    public.check_secrets(&sum.survivors, &sum.seeds, &sum.mask_keys)?;
    let recomputed = public.sum(&sum.survivors, &sum.seeds, &sum.mask_keys)?;
    if sum.values.len() != recomputed.len() {
        return Err(SecAggError::SumLength {
            expected: recomputed.len(),
            got: sum.values.len(),
        });
    }
    match sum.values.iter().zip(&recomputed).position(|(a, b)| a != b) {
        Some(index) => Err(SecAggError::SumMismatch {
            index,
            published: sum.values[index],
            recomputed: recomputed[index],
        }),
        None => Ok(()),
    }
}
