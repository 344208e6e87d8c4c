//! A member's keys for one round, the secrets two members agree, and the masks expanded from
//! them.
//!
//! - Key agreement is X25519 (`x25519-dalek`); an agreement with a low-order public key,
//!   whose result an attacker knows, is refused.
//! - Agreed secrets go through HKDF-SHA-256 with the round's [`Session`] as salt and the two
//!   slots in the info, so a key is never reused across rounds, pairs or purposes.
//! - Masks are the ChaCha20 stream (`rand_chacha`'s `ChaCha20Rng`, a portable, specified
//!   stream) of a 32-byte seed, each 32-bit word cut to the ring's `k` bits: uniform in
//!   `Z/2^k`.

use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use super::ring::modulus_mask;
use super::{Digest, SecAggError, Session, Slot, digest};

/// A member's public keys for a round and its commitment to its self-mask seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// The member.
    pub member: Slot,
    /// X25519 key that seals shares dealt to this member.
    #[serde(with = "serde_bytes")]
    pub cipher_key: [u8; 32],
    /// X25519 key that agrees this member's pairwise masks.
    #[serde(with = "serde_bytes")]
    pub mask_key: [u8; 32],
    /// Commitment to the self-mask seed ([`seed_commitment`]).
    #[serde(with = "serde_bytes")]
    pub seed_commitment: Digest,
}

/// A member's secrets for a round: never leave it except as Shamir shares.
pub(crate) struct Secrets {
    pub(crate) cipher: StaticSecret,
    pub(crate) mask: StaticSecret,
    pub(crate) seed: [u8; 32],
}

impl Secrets {
    /// Fresh secrets from a cryptographic RNG.
    pub(crate) fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        let cipher = StaticSecret::from(bytes);
        rng.fill_bytes(&mut bytes);
        let mask = StaticSecret::from(bytes);
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        bytes.fill(0);
        Self { cipher, mask, seed }
    }

    /// The public advert of these secrets.
    pub(crate) fn advert(&self, session: &Session, member: Slot) -> Advert {
        Advert {
            member,
            cipher_key: PublicKey::from(&self.cipher).to_bytes(),
            mask_key: PublicKey::from(&self.mask).to_bytes(),
            seed_commitment: seed_commitment(session, member, &self.seed),
        }
    }
}

/// The commitment to a self-mask seed: binding, and hiding since the seed is 256 random bits.
pub fn seed_commitment(session: &Session, member: Slot, seed: &[u8; 32]) -> Digest {
    digest("seed", session, &[&[member.0], seed])
}

/// Whether a revealed mask key is the one behind an advert's public mask key.
pub fn mask_key_matches(secret: &[u8; 32], advert: &Advert) -> bool {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes() == advert.mask_key
}

/// X25519 then HKDF, refusing a non-contributory agreement.
fn agree(
    session: &Session,
    secret: &StaticSecret,
    theirs: &[u8; 32],
    them: Slot,
    info: &[u8],
) -> Result<[u8; 32], SecAggError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*theirs));
    if !shared.was_contributory() {
        return Err(SecAggError::LowOrderKey { member: them });
    }
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&session.0), shared.as_bytes())
        .expand(info, &mut out)
        .map_err(|_| SecAggError::Order("HKDF cannot give 32 bytes"))?;
    Ok(out)
}

/// The seed of the pairwise mask of `me` and `them`: the same at both ends.
pub(crate) fn pair_seed(
    session: &Session,
    mask: &StaticSecret,
    me: Slot,
    their_mask_key: &[u8; 32],
    them: Slot,
) -> Result<[u8; 32], SecAggError> {
    let (lo, hi) = if me < them { (me, them) } else { (them, me) };
    agree(
        session,
        mask,
        their_mask_key,
        them,
        &[b"fl-secagg/pair".as_slice(), &[lo.0, hi.0]].concat(),
    )
}

/// The key that seals `dealer`'s shares for `holder`: the same at both ends.
pub(crate) fn seal_key(
    session: &Session,
    cipher: &StaticSecret,
    their_cipher_key: &[u8; 32],
    them: Slot,
    dealer: Slot,
    holder: Slot,
) -> Result<[u8; 32], SecAggError> {
    agree(
        session,
        cipher,
        their_cipher_key,
        them,
        &[b"fl-secagg/seal".as_slice(), &[dealer.0, holder.0]].concat(),
    )
}

/// Whether a pairwise mask is added (`me` before `them`) or subtracted at `me`'s end.
pub fn adds(me: Slot, them: Slot) -> bool {
    me < them
}

/// Adds (or subtracts) the mask expanded from `seed` to a ring vector.
pub fn apply_mask(values: &mut [u32], seed: &[u8; 32], ring_bits: u32, add: bool) {
    let mask = modulus_mask(ring_bits);
    let mut stream = ChaCha20Rng::from_seed(*seed);
    let mut bytes = [0u8; 4 * 1024];
    for chunk in values.chunks_mut(bytes.len() / 4) {
        let bytes = &mut bytes[..4 * chunk.len()];
        stream.fill_bytes(bytes);
        let words = bytes
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        if add {
            for (v, w) in chunk.iter_mut().zip(words) {
                *v = v.wrapping_add(w) & mask;
            }
        } else {
            for (v, w) in chunk.iter_mut().zip(words) {
                *v = v.wrapping_sub(w) & mask;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_agree_the_same_pair_seed_and_no_other_pair_does() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let session = Session::new(b"task", 1);
        let a = Secrets::generate(&mut rng);
        let b = Secrets::generate(&mut rng);
        let c = Secrets::generate(&mut rng);
        let (sa, sb, sc) = (Slot(0), Slot(1), Slot(2));
        let ab = pair_seed(&session, &a.mask, sa, &b.advert(&session, sb).mask_key, sb).unwrap();
        let ba = pair_seed(&session, &b.mask, sb, &a.advert(&session, sa).mask_key, sa).unwrap();
        let ac = pair_seed(&session, &a.mask, sa, &c.advert(&session, sc).mask_key, sc).unwrap();
        assert_eq!(ab, ba);
        assert_ne!(ab, ac);
        // Another round, another seed.
        let other = Session::new(b"task", 2);
        let ab2 = pair_seed(&other, &a.mask, sa, &b.advert(&other, sb).mask_key, sb).unwrap();
        assert_ne!(ab, ab2);
        // Masks added at one end and subtracted at the other cancel.
        let mut v = vec![5u32; 1000];
        apply_mask(&mut v, &ab, 20, adds(sa, sb));
        assert!(v.iter().all(|x| *x < 1 << 20));
        assert_ne!(v, vec![5u32; 1000]);
        apply_mask(&mut v, &ba, 20, adds(sb, sa));
        assert_eq!(v, vec![5u32; 1000]);
    }

    #[test]
    fn a_low_order_public_key_is_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let session = Session::new(b"task", 1);
        let a = Secrets::generate(&mut rng);
        // The identity point and a point of order 8 give an all-zero shared secret.
        for bad in [[0u8; 32], {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        }] {
            assert_eq!(
                pair_seed(&session, &a.mask, Slot(0), &bad, Slot(4)),
                Err(SecAggError::LowOrderKey { member: Slot(4) })
            );
        }
    }

    #[test]
    fn a_revealed_mask_key_is_checked_against_the_advert() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let session = Session::new(b"task", 1);
        let a = Secrets::generate(&mut rng);
        let advert = a.advert(&session, Slot(0));
        assert!(mask_key_matches(&a.mask.to_bytes(), &advert));
        assert!(!mask_key_matches(&a.cipher.to_bytes(), &advert));
        assert_eq!(
            advert.seed_commitment,
            seed_commitment(&session, Slot(0), &a.seed)
        );
        assert_ne!(
            advert.seed_commitment,
            seed_commitment(&session, Slot(1), &a.seed)
        );
    }
}
