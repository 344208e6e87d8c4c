//! One member's side of a secure round: keys, dealing, opening, masking and answering, each
//! a pure step over the public messages of the step before.

use std::collections::BTreeMap;

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::keys::{Advert, Secrets, adds, apply_mask, pair_seed};
use super::ring::words;
use super::shares::{self, Dealing, Held};
use super::unmask::{Reveal, Revealed, Survivors};
use super::{Digest, Params, SecAggError, Session, Slot, digest};

/// A member's masked update: alone, uniformly random in the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// The member.
    pub member: Slot,
    /// The members it agreed pairwise masks with (those whose dealing it opened, itself
    /// included), in increasing order.
    pub pairs: Vec<Slot>,
    /// Its quantised update plus its masks, in `Z/2^k`.
    #[serde(with = "words")]
    pub values: Vec<u32>,
}

/// Bytes a masked update file may have beyond its values: the member, its pairs, framing.
const FILE_OVERHEAD: usize = 64 + 2 * super::MAX_MEMBERS as usize;

impl MaskedInput {
    /// The masked update as its file's bytes (DAG-CBOR: member, pairs, values as one
    /// byte string of little-endian words).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SecAggError> {
        serde_ipld_dagcbor::to_vec(self).map_err(|e| SecAggError::Decode {
            what: "masked update",
            reason: e.to_string(),
        })
    }

    /// Reads a masked update file of an update of `len` values; refuses a larger file
    /// before decoding it.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Result<Self, SecAggError> {
        if bytes.len() > Self::max_file_len(len) {
            return Err(SecAggError::Decode {
                what: "masked update",
                reason: format!(
                    "{} bytes, more than a masked update of {len} values can have",
                    bytes.len()
                ),
            });
        }
        serde_ipld_dagcbor::from_slice(bytes).map_err(|e| SecAggError::Decode {
            what: "masked update",
            reason: e.to_string(),
        })
    }

    /// The largest file a masked update of `len` values can be.
    pub fn max_file_len(len: usize) -> usize {
        len.saturating_mul(4).saturating_add(FILE_OVERHEAD)
    }

    /// The digest that names this masked update in a survivor list.
    pub fn digest(&self, session: &Session) -> Digest {
        let pairs: Vec<u8> = self.pairs.iter().map(|s| s.0).collect();
        digest(
            "input",
            session,
            &[&[self.member.0], &pairs, &words::to_bytes(&self.values)],
        )
    }
}

/// One member of a secure round.
pub struct Member {
    params: Params,
    session: Session,
    slot: Slot,
    secrets: Secrets,
    /// Adverts accepted at dealing, in slot order.
    adverts: Vec<Advert>,
    /// Shares opened, by dealer.
    held: BTreeMap<Slot, Held>,
    /// The members masked against: the dealers whose shares opened.
    pairs: Vec<Slot>,
    /// The survivor list answered this round.
    answered: Option<Digest>,
}

impl Member {
    /// A member with fresh secrets, and the advert it publishes.
    pub fn new<R: CryptoRng + RngCore>(
        params: Params,
        session: Session,
        slot: Slot,
        rng: &mut R,
    ) -> Result<(Self, Advert), SecAggError> {
        params.check()?;
        params.slot(slot)?;
        let secrets = Secrets::generate(rng);
        let advert = secrets.advert(&session, slot);
        Ok((
            Self {
                params,
                session,
                slot,
                secrets,
                adverts: Vec::new(),
                held: BTreeMap::new(),
                pairs: Vec::new(),
                answered: None,
            },
            advert,
        ))
    }

    /// The member's slot.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The round's session.
    pub fn session(&self) -> Session {
        self.session
    }

    /// The digest of the survivor list this member answered this round, if any.
    pub fn answered(&self) -> Option<Digest> {
        self.answered
    }

    /// Deals shares to every member whose advert is usable; returns the dealing and why
    /// other adverts were left out.
    pub fn deal(&mut self, adverts: &[Advert]) -> Result<(Dealing, Vec<SecAggError>), SecAggError> {
        if !self.adverts.is_empty() {
            return Err(SecAggError::Order("this member has already dealt"));
        }
        let mine = self.secrets.advert(&self.session, self.slot);
        let mut accepted: BTreeMap<Slot, Advert> = BTreeMap::new();
        let mut faults = Vec::new();
        for advert in adverts {
            let member = match self.params.slot(advert.member) {
                Ok(member) => member,
                Err(e) => {
                    faults.push(e);
                    continue;
                }
            };
            if member == self.slot {
                if *advert != mine {
                    faults.push(SecAggError::Order(
                        "an advert under this member's slot is not its own",
                    ));
                }
                continue;
            }
            if accepted.contains_key(&member) {
                faults.push(SecAggError::Duplicate {
                    member,
                    what: "adverts",
                });
                continue;
            }
            // Both keys must agree a secret with ours.
            let usable = pair_seed(
                &self.session,
                &self.secrets.mask,
                self.slot,
                &advert.mask_key,
                member,
            )
            .and_then(|_| {
                super::keys::seal_key(
                    &self.session,
                    &self.secrets.cipher,
                    &advert.cipher_key,
                    member,
                    self.slot,
                    member,
                )
            });
            match usable {
                Ok(_) => {
                    accepted.insert(member, advert.clone());
                }
                Err(e) => faults.push(e),
            }
        }
        accepted.insert(self.slot, mine);
        if accepted.len() < usize::from(self.params.threshold) {
            return Err(SecAggError::TooFewMembers {
                step: "keys",
                present: accepted.len(),
                threshold: self.params.threshold,
            });
        }
        self.adverts = accepted.into_values().collect();
        let dealing = shares::deal(
            &self.params,
            &self.session,
            self.slot,
            &self.secrets,
            &self.adverts,
        )?;
        Ok((dealing, faults))
    }

    /// Opens this member's shares from every dealing; returns why some were left out. The
    /// dealers whose shares opened are the members this member masks against.
    pub fn open(&mut self, dealings: &[Dealing]) -> Result<Vec<SecAggError>, SecAggError> {
        if self.adverts.is_empty() {
            return Err(SecAggError::Order("a member opens shares after dealing"));
        }
        if !self.pairs.is_empty() {
            return Err(SecAggError::Order(
                "this member has already opened its shares",
            ));
        }
        let mut faults = Vec::new();
        for dealing in dealings {
            let opened = dealing.check(&self.params).and_then(|()| {
                let advert = self.advert(dealing.dealer).ok_or(SecAggError::Dealing {
                    dealer: dealing.dealer,
                    reason: "its keys were not accepted",
                })?;
                if self.held.contains_key(&dealing.dealer) {
                    return Err(SecAggError::Duplicate {
                        member: dealing.dealer,
                        what: "dealings",
                    });
                }
                self.open_one(dealing, advert)
            });
            match opened {
                Ok(held) => {
                    self.held.insert(dealing.dealer, held);
                }
                Err(e) => faults.push(e),
            }
        }
        if !self.held.contains_key(&self.slot) {
            return Err(SecAggError::Order("this member's own dealing is missing"));
        }
        if self.held.len() < usize::from(self.params.threshold) {
            return Err(SecAggError::TooFewMembers {
                step: "shares",
                present: self.held.len(),
                threshold: self.params.threshold,
            });
        }
        self.pairs = self.held.keys().copied().collect();
        Ok(faults)
    }

    /// Opens shares dealt to this member that came after it opened the others (with the
    /// keys of their dealers, also late if need be), so that it can answer for those
    /// dealers too; what it masks against does not change. Returns why some were left out.
    pub fn hold(&mut self, adverts: &[Advert], dealings: &[Dealing]) -> Vec<SecAggError> {
        if self.pairs.is_empty() {
            return vec![SecAggError::Order(
                "a member holds late shares after opening its own",
            )];
        }
        let mut faults = Vec::new();
        for dealing in dealings {
            if self.held.contains_key(&dealing.dealer) {
                continue;
            }
            let advert = self
                .advert(dealing.dealer)
                .or_else(|| adverts.iter().find(|a| a.member == dealing.dealer));
            let opened = match advert {
                Some(advert) => dealing
                    .check(&self.params)
                    .and_then(|()| self.open_one(dealing, advert)),
                None => Err(SecAggError::Dealing {
                    dealer: dealing.dealer,
                    reason: "no keys of its dealer",
                }),
            };
            match opened {
                Ok(held) => {
                    self.held.insert(dealing.dealer, held);
                }
                Err(e) => faults.push(e),
            }
        }
        faults
    }

    /// Quantises and masks an update.
    pub fn mask(&self, update: &[f32]) -> Result<MaskedInput, SecAggError> {
        if self.pairs.is_empty() {
            return Err(SecAggError::Order(
                "a member masks after opening its shares",
            ));
        }
        let ring_bits = self.params.ring_bits();
        let mut values = self.params.quantiser().encode(update)?;
        apply_mask(&mut values, &self.secrets.seed, ring_bits, true);
        for &other in self.pairs.iter().filter(|&&p| p != self.slot) {
            let advert = self.advert(other).ok_or(SecAggError::Order(
                "a member masks only against accepted members",
            ))?;
            let seed = pair_seed(
                &self.session,
                &self.secrets.mask,
                self.slot,
                &advert.mask_key,
                other,
            )?;
            apply_mask(&mut values, &seed, ring_bits, adds(self.slot, other));
        }
        Ok(MaskedInput {
            member: self.slot,
            pairs: self.pairs.clone(),
            values,
        })
    }

    /// Answers a survivor list: this member's shares of each survivor's seed and of each
    /// dropped member's mask key. One list a round: a second, different one is refused, so
    /// no member's two secrets are ever both revealed by this member.
    pub fn answer(&mut self, survivors: &Survivors) -> Result<Reveal, SecAggError> {
        if self.pairs.is_empty() {
            return Err(SecAggError::Order(
                "a member answers after opening its shares",
            ));
        }
        survivors.check(&self.params)?;
        let list = survivors.digest(&self.session);
        match self.answered {
            Some(answered) if answered != list => return Err(SecAggError::SecondSurvivorList),
            _ => self.answered = Some(list),
        }
        let reveal = |members: Vec<Slot>, kind| {
            members
                .into_iter()
                .filter_map(|dealer| {
                    self.held.get(&dealer).map(|held| Revealed {
                        dealer,
                        share: *held.get(kind),
                    })
                })
                .collect()
        };
        Ok(Reveal {
            responder: self.slot,
            survivors: list,
            seeds: reveal(survivors.members().collect(), super::Kind::Seed),
            mask_keys: reveal(survivors.dropped(), super::Kind::MaskKey),
        })
    }

    /// The seed of this member's pairwise mask with `other`: what this member can strip
    /// from `other`'s masked update, for audits of what one member learns.
    pub fn pair_seed(&self, other: Slot) -> Result<[u8; 32], SecAggError> {
        let advert = self.advert(other).ok_or(SecAggError::Order(
            "a pairwise mask exists only with an accepted member",
        ))?;
        pair_seed(
            &self.session,
            &self.secrets.mask,
            self.slot,
            &advert.mask_key,
            other,
        )
    }

    /// Opens this member's shares of a checked dealing whose dealer's keys are `advert`.
    fn open_one(&self, dealing: &Dealing, advert: &Advert) -> Result<Held, SecAggError> {
        shares::open(
            &self.session,
            self.slot,
            &self.secrets.cipher,
            dealing,
            advert,
        )
    }

    fn advert(&self, member: Slot) -> Option<&Advert> {
        self.adverts
            .binary_search_by_key(&member, |a| a.member)
            .ok()
            .map(|i| &self.adverts[i])
    }
}
