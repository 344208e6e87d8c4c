//! Records signed by a node's ed25519 key: the signature covers a domain string that names
//! the record's kind and the record's DAG-CBOR bytes, so a signature on one kind of record
//! can never pass for another.

use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::content::dagcbor::{self, DagCborError};
use crate::content::{Block, Cid};

/// A kind of record that can be signed.
pub trait Record: Serialize + DeserializeOwned {
    /// Prefix of the signed bytes, unique to the kind (`fl/manifest/1:`).
    const DOMAIN: &'static str;
}

/// Why a signed record is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum SignedError {
    /// The record could not be encoded or decoded.
    #[error(transparent)]
    DagCbor(#[from] DagCborError),
    /// The key could not sign (not an ed25519 or other signing key).
    #[error("signing: {0}")]
    Sign(String),
    /// The attached public key is not a key.
    #[error("the record's public key is malformed: {0}")]
    BadKey(String),
    /// The key does not belong to the claimed signer.
    #[error("the record claims signer {claimed} but carries the key of {actual}")]
    WrongKey {
        /// Who the record says signed it.
        claimed: PeerId,
        /// Whose key it carries.
        actual: PeerId,
    },
    /// The block is not the record's canonical DAG-CBOR encoding.
    #[error("record {0} is not in canonical DAG-CBOR (extra fields, or another encoding)")]
    NotCanonical(Cid),
    /// The signature does not verify.
    #[error("the signature of {signer} does not verify: the record was altered or forged")]
    BadSignature {
        /// The claimed signer.
        signer: PeerId,
    },
}

/// A record with its signer's id, public key and signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// What is signed.
    pub body: T,
    /// Who signed it.
    #[serde(with = "super::peer_bytes")]
    pub signer: PeerId,
    /// The signer's public key (libp2p protobuf encoding).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The signature over `DOMAIN` and the body's DAG-CBOR bytes.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl<T: Record> Signed<T> {
    /// Signs `body` with `key`.
    pub fn sign(body: T, key: &Keypair) -> Result<Self, SignedError> {
        let message = signed_bytes(&body)?;
        let signature = key
            .sign(&message)
            .map_err(|e| SignedError::Sign(e.to_string()))?;
        Ok(Signed {
            body,
            signer: key.public().to_peer_id(),
            key: key.public().encode_protobuf(),
            signature,
        })
    }

    /// Checks that the key is the signer's and the signature covers the body; returns the
    /// signer.
    pub fn verify(&self) -> Result<PeerId, SignedError> {
        let key = PublicKey::try_decode_protobuf(&self.key)
            .map_err(|e| SignedError::BadKey(e.to_string()))?;
        let actual = key.to_peer_id();
        if actual != self.signer {
            return Err(SignedError::WrongKey {
                claimed: self.signer,
                actual,
            });
        }
        if !key.verify(&signed_bytes(&self.body)?, &self.signature) {
            return Err(SignedError::BadSignature {
                signer: self.signer,
            });
        }
        Ok(self.signer)
    }

    /// The record as a DAG-CBOR block (its CID names it).
    pub fn to_block(&self) -> Result<Block, SignedError> {
        Ok(dagcbor::encode(self)?)
    }

    /// Decodes and verifies a signed record from its block, which must be the record's
    /// canonical encoding (padding or reordering would give one record many CIDs).
    pub fn from_block(block: &Block) -> Result<Self, SignedError> {
        let signed: Self = dagcbor::decode(block)?;
        if dagcbor::encode(&signed)?.cid() != block.cid() {
            return Err(SignedError::NotCanonical(*block.cid()));
        }
        signed.verify()?;
        Ok(signed)
    }

    /// Decodes and verifies a signed record from bytes that must hash to `cid`.
    pub fn from_bytes(cid: &Cid, bytes: &[u8]) -> Result<Self, SignedError> {
        let block = Block::new(*cid, bytes.to_vec()).map_err(|e| {
            SignedError::DagCbor(DagCborError::Decode {
                cid: *cid,
                reason: e.to_string(),
            })
        })?;
        Self::from_block(&block)
    }
}

fn signed_bytes<T: Record>(body: &T) -> Result<Vec<u8>, SignedError> {
    let block = dagcbor::encode(body)?;
    let mut message = T::DOMAIN.as_bytes().to_vec();
    message.extend_from_slice(block.data());
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::DAG_CBOR;
    use crate::records::Announcement;

    fn announcement() -> Announcement {
        let cid = |s: &[u8]| *Block::hashed(DAG_CBOR, s.to_vec()).cid();
        Announcement {
            task: cid(b"task"),
            round: 2,
            base: cid(b"model"),
            update: cid(b"update"),
            samples: 5000,
            epochs: 1,
            epsilon: None,
            clients: Vec::new(),
            steps: None,
            capacity: None,
        }
    }

    #[test]
    fn a_signed_record_round_trips_and_verifies() {
        let key = Keypair::generate_ed25519();
        let signed = Signed::sign(announcement(), &key).unwrap();
        let block = signed.to_block().unwrap();
        let back = Signed::<Announcement>::from_bytes(block.cid(), block.data()).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.verify().unwrap(), key.public().to_peer_id());
    }

    #[test]
    fn altered_impersonating_and_mislabelled_records_fail() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let signed = Signed::sign(announcement(), &key).unwrap();

        let mut altered = signed.clone();
        altered.body.samples = 50_000;
        assert!(matches!(
            altered.verify(),
            Err(SignedError::BadSignature { .. })
        ));

        let mut impersonating = Signed::sign(announcement(), &other).unwrap();
        impersonating.signer = key.public().to_peer_id();
        assert!(matches!(
            impersonating.verify(),
            Err(SignedError::WrongKey { .. })
        ));

        let mut garbage = signed.clone();
        garbage.key = vec![1, 2, 3];
        assert!(matches!(garbage.verify(), Err(SignedError::BadKey(_))));

        // The same record with a field added: another CID, the same signature.
        let mut map: ipld_core::ipld::Ipld =
            serde_ipld_dagcbor::from_slice(signed.to_block().unwrap().data()).unwrap();
        if let ipld_core::ipld::Ipld::Map(m) = &mut map {
            m.insert("padding".into(), ipld_core::ipld::Ipld::Integer(1));
        }
        let padded = Block::hashed(DAG_CBOR, serde_ipld_dagcbor::to_vec(&map).unwrap());
        assert!(matches!(
            Signed::<Announcement>::from_block(&padded),
            Err(SignedError::NotCanonical(_))
        ));

        // A block whose bytes do not hash to the CID given.
        let block = signed.to_block().unwrap();
        let wrong = *Block::hashed(DAG_CBOR, b"else".to_vec()).cid();
        assert!(Signed::<Announcement>::from_bytes(&wrong, block.data()).is_err());
    }
}
