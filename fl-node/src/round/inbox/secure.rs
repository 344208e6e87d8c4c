//! A secure round's steps as they arrive over gossip: the first of each kind from each
//! member kept, a second, different one refused (an equivocation), for the rounds in flight
//! only.

use std::collections::BTreeMap;

use fl_core::records::{PeerId, SecureStep, Signed, Step};
use fl_core::secagg::{Dealing, Reveal, Slot, Survivors};

use super::FileError;

/// Rounds past the last one closed whose steps are kept: the round in flight and the next
/// (a fast member may start it first). Steps for later rounds are dropped unblamed.
pub const SECURE_ROUNDS_AHEAD: u32 = 2;

/// Most survivor lists kept for one round, one a signer (an aggregator makes one; those
/// ranked after it make theirs only if it vanished).
pub const MAX_SURVIVOR_LISTS_PER_ROUND: usize = 16;

/// The steps of one secure round, by member.
#[derive(Debug, Clone, Default)]
pub struct RoundSteps {
    /// Each member's signed keys.
    pub keys: BTreeMap<Slot, Signed<SecureStep>>,
    /// Each member's dealing.
    pub dealings: BTreeMap<Slot, Dealing>,
    /// Each member's answer.
    pub answers: BTreeMap<Slot, Reveal>,
    /// Survivor lists and their signers, in the order they arrived.
    pub lists: Vec<(PeerId, Survivors)>,
}

impl RoundSteps {
    /// The members' adverts, from their signed keys.
    pub fn adverts(&self) -> Vec<fl_core::secagg::Advert> {
        self.keys
            .values()
            .filter_map(|s| match &s.body.step {
                Step::Keys(advert) => Some(advert.clone()),
                _ => None,
            })
            .collect()
    }
}

/// The steps of the rounds in flight.
#[derive(Default)]
pub(super) struct SecureSteps {
    rounds: BTreeMap<u32, RoundSteps>,
}

impl SecureSteps {
    /// Keeps a step checked against the round's members (its slot is its signer's);
    /// returns whether it is new. `closed_through` is the last round decided here.
    pub(super) fn admit(
        &mut self,
        closed_through: u32,
        signed: Signed<SecureStep>,
    ) -> Result<bool, FileError> {
        let round = signed.body.round;
        if round <= closed_through || round > closed_through + SECURE_ROUNDS_AHEAD {
            return Err(FileError::SecureWindow { round });
        }
        let author = signed.signer;
        let steps = self.rounds.entry(round).or_default();
        let second = |kind| FileError::SecondStep {
            author,
            round,
            kind,
        };
        match &signed.body.step {
            Step::Keys(advert) => match steps.keys.get(&advert.member) {
                Some(kept) if kept.body == signed.body => Ok(false),
                Some(_) => Err(second("keys")),
                None => {
                    steps.keys.insert(advert.member, signed);
                    Ok(true)
                }
            },
            Step::Shares(dealing) => match steps.dealings.get(&dealing.dealer) {
                Some(kept) if kept == dealing => Ok(false),
                Some(_) => Err(second("dealing")),
                None => {
                    steps.dealings.insert(dealing.dealer, dealing.clone());
                    Ok(true)
                }
            },
            Step::Answer(reveal) => match steps.answers.get(&reveal.responder) {
                Some(kept) if kept == reveal => Ok(false),
                Some(_) => Err(second("answer")),
                None => {
                    steps.answers.insert(reveal.responder, reveal.clone());
                    Ok(true)
                }
            },
            Step::Survivors(list) => match steps.lists.iter().find(|(s, _)| *s == author) {
                Some((_, kept)) if kept == list => Ok(false),
                Some(_) => Err(second("survivor list")),
                None if steps.lists.len() >= MAX_SURVIVOR_LISTS_PER_ROUND => Err(FileError::Full {
                    what: format!("round {round}'s survivor lists"),
                    limit: MAX_SURVIVOR_LISTS_PER_ROUND,
                }),
                None => {
                    steps.lists.push((author, list.clone()));
                    Ok(true)
                }
            },
        }
    }

    /// The steps of `round` so far.
    pub(super) fn round(&self, round: u32) -> RoundSteps {
        self.rounds.get(&round).cloned().unwrap_or_default()
    }

    /// Drops the steps of rounds up to `round`.
    pub(super) fn close_through(&mut self, round: u32) {
        self.rounds = self.rounds.split_off(&(round + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fl_core::content::Block;
    use fl_core::records::Keypair;
    use fl_core::secagg::{Member, Params, Session};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn a_second_different_step_of_one_kind_is_an_equivocation_and_far_rounds_are_dropped() {
        let key = Keypair::generate_ed25519();
        let task = *Block::hashed(0x71, b"task".to_vec()).cid();
        let params = Params::new(3, 2, 1.0, 8).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let keys = |round: u32, rng: &mut StdRng| {
            let (_, advert) = Member::new(params, Session::new(b"t", round), Slot(0), rng).unwrap();
            Signed::sign(
                SecureStep {
                    task,
                    round,
                    step: Step::Keys(advert),
                },
                &key,
            )
            .unwrap()
        };
        let mut steps = SecureSteps::default();
        let first = keys(3, &mut rng);
        assert!(steps.admit(2, first.clone()).unwrap());
        assert!(!steps.admit(2, first).unwrap(), "the same step again");
        assert!(matches!(
            steps.admit(2, keys(3, &mut rng)),
            Err(FileError::SecondStep { kind: "keys", .. })
        ));
        assert!(matches!(
            steps.admit(2, keys(5, &mut rng)),
            Err(FileError::SecureWindow { round: 5 })
        ));
        assert!(matches!(
            steps.admit(2, keys(2, &mut rng)),
            Err(FileError::SecureWindow { round: 2 })
        ));
        assert_eq!(steps.round(3).keys.len(), 1);
        steps.close_through(3);
        assert!(steps.round(3).keys.is_empty());
    }
}
