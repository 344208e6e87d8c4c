//! Shamir shares of a member's mask key and self-mask seed, sealed to each holder, with a
//! public commitment to every share.
//!
//! Sharing is byte-wise over GF(256) (`blahaj`, a maintained fork of `sharks`), the share of
//! holder `h` being the polynomial at `x = h + 1`. Each holder's pair of shares is sealed
//! with ChaCha20-Poly1305 under a key agreed between dealer and holder ([`keys`](super::keys)),
//! so a dealing can be published whole. Beside each sealed pair the dealer publishes a hash
//! commitment to each share: when a share is revealed at unmasking, anyone can tell a holder
//! that reveals a wrong share; a dealer that committed to shares not on one polynomial is
//! caught when they recover a secret other than the one it advertised.

use blahaj::{Share, Sharks};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

use super::keys::{Advert, Secrets, seal_key};
use super::{Digest, Params, SecAggError, Session, Slot, digest};

/// Bytes of a sealed pair of shares: two 32-byte shares and the 16-byte tag.
pub const SEALED_LEN: usize = 32 + 32 + 16;

/// Which of a member's two secrets a share is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The X25519 key of its pairwise masks: recovered when the member drops out.
    MaskKey,
    /// The seed of its self-mask: recovered when the member survives.
    Seed,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::MaskKey => "mask key",
            Kind::Seed => "seed",
        })
    }
}

/// One holder's sealed shares and the dealer's commitments to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The holder.
    pub holder: Slot,
    /// The holder's mask-key share then seed share, sealed ([`SEALED_LEN`] bytes).
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// Commitment to the mask-key share.
    #[serde(with = "serde_bytes")]
    pub mask_key_commitment: Digest,
    /// Commitment to the seed share.
    #[serde(with = "serde_bytes")]
    pub seed_commitment: Digest,
}

impl Sealed {
    /// The commitment to the share of one kind.
    pub fn commitment(&self, kind: Kind) -> &Digest {
        match kind {
            Kind::MaskKey => &self.mask_key_commitment,
            Kind::Seed => &self.seed_commitment,
        }
    }
}

/// A member's shares for every other member, sealed, in holder order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dealing {
    /// The dealer.
    pub dealer: Slot,
    /// One entry a holder, in increasing holder order.
    pub sealed: Vec<Sealed>,
}

impl Dealing {
    /// Checks the shape: holders of the round, increasing, each sealed pair of the right size.
    pub fn check(&self, params: &Params) -> Result<(), SecAggError> {
        let dealer = params.slot(self.dealer)?;
        let malformed = |reason| SecAggError::Dealing { dealer, reason };
        if self.sealed.len() > usize::from(params.members) {
            return Err(malformed("more holders than members"));
        }
        if self.sealed.len() < usize::from(params.threshold) {
            return Err(malformed(
                "fewer holders than the threshold: its secrets could never be recovered",
            ));
        }
        for pair in self.sealed.windows(2) {
            if pair[0].holder >= pair[1].holder {
                return Err(malformed("holders not in increasing order"));
            }
        }
        for sealed in &self.sealed {
            params.slot(sealed.holder)?;
            if sealed.ciphertext.len() != SEALED_LEN {
                return Err(malformed("a sealed pair of shares of the wrong size"));
            }
        }
        Ok(())
    }

    /// The entry of one holder.
    pub fn for_holder(&self, holder: Slot) -> Option<&Sealed> {
        self.sealed
            .binary_search_by_key(&holder, |s| s.holder)
            .ok()
            .map(|i| &self.sealed[i])
    }

    /// Whether a revealed share matches the dealer's commitment for that holder.
    pub fn matches(&self, session: &Session, holder: Slot, kind: Kind, share: &[u8; 32]) -> bool {
        self.for_holder(holder).is_some_and(|sealed| {
            *sealed.commitment(kind) == share_commitment(session, self.dealer, holder, kind, share)
        })
    }
}

/// A holder's opened shares of one dealer's secrets.
#[derive(Clone)]
pub(crate) struct Held {
    pub(crate) mask_key: [u8; 32],
    pub(crate) seed: [u8; 32],
}

impl Held {
    pub(crate) fn get(&self, kind: Kind) -> &[u8; 32] {
        match kind {
            Kind::MaskKey => &self.mask_key,
            Kind::Seed => &self.seed,
        }
    }
}

/// The commitment to one share.
pub fn share_commitment(
    session: &Session,
    dealer: Slot,
    holder: Slot,
    kind: Kind,
    share: &[u8; 32],
) -> Digest {
    let kind = match kind {
        Kind::MaskKey => 0u8,
        Kind::Seed => 1,
    };
    digest("share", session, &[&[dealer.0, holder.0, kind], share])
}

fn nonce() -> Nonce {
    Nonce::default()
}

/// Shares of a 32-byte secret for holders `slot + 1`, `threshold` needed.
fn split(threshold: u16, secret: &[u8; 32], holders: &[Slot]) -> Vec<[u8; 32]> {
    // Threshold and slots are at most 255 (Params::check).
    let shares: Vec<Share> = Sharks(threshold as u8).dealer(secret).take(255).collect();
    holders
        .iter()
        .map(|h| {
            let bytes = Vec::from(&shares[usize::from(h.0)]);
            let mut y = [0u8; 32];
            y.copy_from_slice(&bytes[1..]);
            y
        })
        .collect()
}

/// Recovers a secret from the shares of at least `threshold` distinct holders.
pub(crate) fn recover(
    dealer: Slot,
    kind: Kind,
    threshold: u16,
    shares: &[(Slot, [u8; 32])],
) -> Result<[u8; 32], SecAggError> {
    let too_few = SecAggError::TooFewShares {
        dealer,
        kind,
        valid: shares.len(),
        threshold,
    };
    if shares.len() < usize::from(threshold) || threshold == 0 {
        return Err(too_few);
    }
    let parsed: Vec<Share> = shares
        .iter()
        .map(|(holder, y)| {
            let mut bytes = Vec::with_capacity(33);
            bytes.push(holder.0.wrapping_add(1));
            bytes.extend_from_slice(y);
            Share::try_from(bytes.as_slice())
        })
        .collect::<Result<_, _>>()
        .map_err(|_| too_few.clone())?;
    // Exactly `threshold` shares: more add work, not certainty (the result is checked
    // against the dealer's commitment by the caller).
    let secret = Sharks(threshold as u8)
        .recover(&parsed[..usize::from(threshold)])
        .map_err(|_| too_few)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&secret);
    Ok(out)
}

/// Splits a dealer's secrets among the members that advertised keys and seals each pair.
pub(crate) fn deal(
    params: &Params,
    session: &Session,
    dealer: Slot,
    secrets: &Secrets,
    adverts: &[Advert],
) -> Result<Dealing, SecAggError> {
    let holders: Vec<Slot> = adverts.iter().map(|a| a.member).collect();
    let mask_key = split(params.threshold, &secrets.mask.to_bytes(), &holders);
    let seed = split(params.threshold, &secrets.seed, &holders);
    let sealed = adverts
        .iter()
        .zip(mask_key.iter().zip(&seed))
        .map(|(advert, (mask_key, seed))| {
            let holder = advert.member;
            let key = seal_key(
                session,
                &secrets.cipher,
                &advert.cipher_key,
                holder,
                dealer,
                holder,
            )?;
            let plaintext = [mask_key.as_slice(), seed.as_slice()].concat();
            let ciphertext = ChaCha20Poly1305::new(Key::from_slice(&key))
                .encrypt(
                    &nonce(),
                    Payload {
                        msg: &plaintext,
                        aad: &session.0,
                    },
                )
                .map_err(|_| SecAggError::Sealed { dealer, holder })?;
            Ok(Sealed {
                holder,
                ciphertext,
                mask_key_commitment: share_commitment(
                    session,
                    dealer,
                    holder,
                    Kind::MaskKey,
                    mask_key,
                ),
                seed_commitment: share_commitment(session, dealer, holder, Kind::Seed, seed),
            })
        })
        .collect::<Result<_, SecAggError>>()?;
    Ok(Dealing { dealer, sealed })
}

/// Opens the holder's pair of a checked dealing and checks it against the commitments.
pub(crate) fn open(
    session: &Session,
    holder: Slot,
    cipher: &x25519_dalek::StaticSecret,
    dealing: &Dealing,
    dealer_advert: &Advert,
) -> Result<Held, SecAggError> {
    let dealer = dealing.dealer;
    let sealed = dealing.for_holder(holder).ok_or(SecAggError::Dealing {
        dealer,
        reason: "no shares for this holder",
    })?;
    let key = seal_key(
        session,
        cipher,
        &dealer_advert.cipher_key,
        dealer,
        dealer,
        holder,
    )?;
    let plaintext = ChaCha20Poly1305::new(Key::from_slice(&key))
        .decrypt(
            &nonce(),
            Payload {
                msg: &sealed.ciphertext,
                aad: &session.0,
            },
        )
        .map_err(|_| SecAggError::Sealed { dealer, holder })?;
    let mut held = Held {
        mask_key: [0u8; 32],
        seed: [0u8; 32],
    };
    if plaintext.len() != 64 {
        return Err(SecAggError::Sealed { dealer, holder });
    }
    held.mask_key.copy_from_slice(&plaintext[..32]);
    held.seed.copy_from_slice(&plaintext[32..]);
    for kind in [Kind::MaskKey, Kind::Seed] {
        if !dealing.matches(session, holder, kind, held.get(kind)) {
            return Err(SecAggError::ShareMismatch {
                dealer,
                holder,
                kind,
            });
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_shares_recover_the_secret_and_fewer_do_not() {
        let secret = [7u8; 32];
        let holders: Vec<Slot> = (0..10).map(Slot).collect();
        let shares = split(7, &secret, &holders);
        let pairs: Vec<(Slot, [u8; 32])> = holders.iter().copied().zip(shares).collect();
        assert_eq!(
            recover(Slot(0), Kind::Seed, 7, &pairs[3..]).unwrap(),
            secret
        );
        assert_eq!(
            recover(Slot(0), Kind::Seed, 7, &pairs[..7]).unwrap(),
            secret
        );
        assert!(matches!(
            recover(Slot(0), Kind::Seed, 7, &pairs[..6]),
            Err(SecAggError::TooFewShares { valid: 6, .. })
        ));
        // Six shares and a made-up seventh give some other secret.
        let mut forged = pairs[..7].to_vec();
        forged[6].1[0] ^= 1;
        assert_ne!(recover(Slot(0), Kind::Seed, 7, &forged).unwrap(), secret);
    }
}
