//! A task's population of clients, apart from its peers: K registered clients (units of data
//! and training), M of them sampled each round, hosted by the task's members in turn. The
//! sample is a function of the task, the round and the round's model, so every node and
//! `fl verify` recompute who was due; nothing is stored per registered client.

use std::collections::{BTreeSet, HashSet};

use libp2p_identity::PeerId;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::content::Cid;

/// Most clients one round may sample: each is named in its host's announcement, which must
/// stay a small gossip message (about 9 bytes a client).
pub const MAX_PER_ROUND: u32 = 10_000;

/// Most clients a task may register (2⁴⁰: far past any deployment, and exact in an f64).
pub const MAX_CLIENTS: u64 = 1 << 40;

/// Domain of the sample's seed, so no other hash of the same inputs can collide with it.
const SAMPLE_DOMAIN: &[u8] = b"fl/sample/1:";

/// One registered client, by its number in `0..clients`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct ClientId(pub u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {}", self.0)
    }
}

/// The clients of a task and how many train each round (Flower's `fraction_fit` over
/// virtual clients). Client `c` is hosted by member `c mod n` of the task's `n` members and
/// trains on the images the partition gives it of the task's dataset, all its shards taken
/// in order as one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Population {
    /// Registered clients.
    pub clients: u64,
    /// Clients sampled each round, uniformly without replacement.
    pub per_round: u32,
    /// How the pool's images are dealt to clients (`iid`, `dirichlet:0.5`, `draw:120`: the
    /// dataset crate's partition schemes), seeded by the task's seed.
    pub partition: String,
}

/// A population that cannot be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PopulationError {
    /// No clients.
    #[error("a population needs at least one client, got {0}")]
    NoClients(u64),
    /// More clients than any task may register.
    #[error("{clients} clients is more than a task may register ({MAX_CLIENTS})")]
    TooManyClients {
        /// Clients asked for.
        clients: u64,
    },
    /// More sampled per round than are registered.
    #[error(
        "{per_round} clients a round is more than the {clients} registered: a round cannot sample more clients than there are"
    )]
    MoreSampledThanRegistered {
        /// Sampled per round.
        per_round: u32,
        /// Registered.
        clients: u64,
    },
    /// No client sampled per round.
    #[error("a round must sample at least one client")]
    NoneSampled,
    /// More sampled per round than one announcement may name.
    #[error("{0} clients a round is more than a round may sample ({MAX_PER_ROUND})")]
    TooManySampled(u32),
    /// A fraction that is no share of the population.
    #[error("a fraction of the clients must be in (0, 1], got {0}")]
    Fraction(f64),
}

impl Population {
    /// `clients` clients of which `fraction` (in (0, 1], rounded up, at least one) are
    /// sampled a round, Flower's `fraction_fit`.
    pub fn by_fraction(
        clients: u64,
        fraction: f64,
        partition: String,
    ) -> Result<Self, PopulationError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(PopulationError::Fraction(fraction));
        }
        let sampled = (clients as f64 * fraction).ceil().max(1.0);
        let per_round = if sampled > f64::from(MAX_PER_ROUND) {
            return Err(PopulationError::TooManySampled(u32::MAX));
        } else {
            sampled as u32
        };
        let population = Self {
            clients,
            per_round,
            partition,
        };
        population.validate()?;
        Ok(population)
    }

    /// Checks the counts (the partition is checked against the data by whoever holds it).
    pub fn validate(&self) -> Result<(), PopulationError> {
        if self.clients == 0 {
            return Err(PopulationError::NoClients(0));
        }
        if self.clients > MAX_CLIENTS {
            return Err(PopulationError::TooManyClients {
                clients: self.clients,
            });
        }
        if self.per_round == 0 {
            return Err(PopulationError::NoneSampled);
        }
        if self.per_round > MAX_PER_ROUND {
            return Err(PopulationError::TooManySampled(self.per_round));
        }
        if u64::from(self.per_round) > self.clients {
            return Err(PopulationError::MoreSampledThanRegistered {
                per_round: self.per_round,
                clients: self.clients,
            });
        }
        Ok(())
    }

    /// The clients round `round` samples when it starts from the model `base` in task
    /// `task`: `per_round` of them, uniformly without replacement, in increasing order.
    /// Work and memory grow with `per_round`, not with the registered count.
    pub fn sample(&self, task: &Cid, round: u32, base: &Cid) -> Sample {
        let mut hash = Sha256::new();
        hash.update(SAMPLE_DOMAIN);
        hash.update(task.to_bytes());
        hash.update(round.to_be_bytes());
        hash.update(base.to_bytes());
        let mut rng = ChaCha20Rng::from_seed(hash.finalize().into());
        let count = u64::from(self.per_round).min(self.clients);
        Sample(draw_distinct(&mut rng, count, self.clients))
    }

    /// The member that hosts `client`, of the task's `members` (client `c` is hosted by
    /// member `c mod n`); `None` when there are none.
    pub fn host<'a>(&self, client: ClientId, members: &'a [PeerId]) -> Option<&'a PeerId> {
        let n = members.len() as u64;
        if n == 0 {
            return None;
        }
        usize::try_from(client.0 % n)
            .ok()
            .and_then(|i| members.get(i))
    }

    /// Of `sample`, the clients `peer` hosts among `members`.
    pub fn hosted_by(&self, sample: &Sample, peer: &PeerId, members: &[PeerId]) -> Vec<ClientId> {
        sample
            .iter()
            .filter(|c| self.host(*c, members) == Some(peer))
            .collect()
    }

    /// The members that host at least one client of `sample`.
    pub fn hosts(&self, sample: &Sample, members: &[PeerId]) -> HashSet<PeerId> {
        sample
            .iter()
            .filter_map(|c| self.host(c, members).copied())
            .collect()
    }
}

/// The clients sampled for one round, in increasing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample(BTreeSet<ClientId>);

impl Sample {
    /// Whether `client` was sampled.
    pub fn contains(&self, client: ClientId) -> bool {
        self.0.contains(&client)
    }

    /// The sampled clients, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.0.iter().copied()
    }

    /// How many were sampled.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `count` distinct numbers of `0..n`, uniformly (Floyd's algorithm: `count` draws, memory
/// for `count` numbers, whatever `n`).
pub fn draw_distinct(rng: &mut impl RngCore, count: u64, n: u64) -> BTreeSet<ClientId> {
    let mut chosen = BTreeSet::new();
    let count = count.min(n);
    for j in n - count..n {
        let t = uniform_below(rng, j + 1);
        if !chosen.insert(ClientId(t)) {
            chosen.insert(ClientId(j));
        }
    }
    chosen
}

/// A uniform number in `0..n` (`n > 0`) by Lemire's multiply-and-reject, written out so the
/// sample does not depend on how a version of `rand` maps bits to ranges.
pub fn uniform_below(rng: &mut impl RngCore, n: u64) -> u64 {
    let n = n.max(1);
    let threshold = n.wrapping_neg() % n;
    loop {
        let wide = u128::from(rng.next_u64()) * u128::from(n);
        if (wide as u64) >= threshold {
            return (wide >> 64) as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(text: &[u8]) -> Cid {
        crate::content::Block::hashed(crate::content::RAW, text.to_vec())
            .cid()
            .to_owned()
    }

    fn population(clients: u64, per_round: u32) -> Population {
        Population {
            clients,
            per_round,
            partition: "iid".into(),
        }
    }

    #[test]
    fn a_round_samples_the_same_clients_wherever_it_is_recomputed_and_others_for_other_models() {
        let p = population(100, 10);
        let (task, model) = (cid(b"task"), cid(b"model"));
        let a = p.sample(&task, 3, &model);
        assert_eq!(a, p.sample(&task, 3, &model));
        assert_eq!(a.len(), 10);
        assert!(a.iter().all(|c| c.0 < 100));
        assert_ne!(a, p.sample(&task, 4, &model));
        assert_ne!(a, p.sample(&task, 3, &cid(b"another model")));
        assert_ne!(a, p.sample(&cid(b"another task"), 3, &model));
        // The whole population when every client is due.
        let all = population(7, 7).sample(&task, 1, &model);
        assert_eq!(
            all.iter().map(|c| c.0).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_client_is_sampled_at_the_rate_per_round_over_clients() {
        // 4,000 rounds of 10 of 50: each client expects 800 turns (sd about 27).
        let p = population(50, 10);
        let task = cid(b"task");
        let mut turns = [0u32; 50];
        for round in 1..=4000 {
            for c in p.sample(&task, round, &cid(&round.to_be_bytes())).iter() {
                turns[c.0 as usize] += 1;
            }
        }
        for (c, t) in turns.iter().enumerate() {
            assert!(
                (680..=920).contains(t),
                "client {c}: {t} turns of 800 expected"
            );
        }
    }

    #[test]
    fn ten_million_clients_cost_what_ten_sampled_cost() {
        let p = population(10_000_000, 10);
        let s = p.sample(&cid(b"task"), 1, &cid(b"model"));
        assert_eq!(s.len(), 10);
        assert!(s.iter().all(|c| c.0 < 10_000_000));
    }

    #[test]
    fn clients_are_hosted_by_the_members_in_turn() {
        let members: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let p = population(10, 10);
        let s = p.sample(&cid(b"t"), 1, &cid(b"m"));
        assert_eq!(p.host(ClientId(4), &members), Some(&members[1]));
        let hosted: Vec<u64> = p
            .hosted_by(&s, &members[2], &members)
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(hosted, vec![2, 5, 8]);
        assert_eq!(p.hosts(&s, &members).len(), 3);
        assert_eq!(p.host(ClientId(0), &[]), None);
    }

    #[test]
    fn counts_that_cannot_run_are_refused_each_with_its_reason() {
        use PopulationError::*;
        assert_eq!(
            population(100, 200).validate(),
            Err(MoreSampledThanRegistered {
                per_round: 200,
                clients: 100
            })
        );
        assert_eq!(population(0, 1).validate(), Err(NoClients(0)));
        assert_eq!(population(100, 0).validate(), Err(NoneSampled));
        assert_eq!(
            population(1 << 20, 20_000).validate(),
            Err(TooManySampled(20_000))
        );
        for f in [0.0, -0.1, 1.5, f64::NAN] {
            let err = Population::by_fraction(100, f, "iid".into()).unwrap_err();
            assert_eq!(
                err.to_string().split(", got").next(),
                Some("a fraction of the clients must be in (0, 1]")
            );
        }
        let p = Population::by_fraction(1000, 0.1, "iid".into()).unwrap();
        assert_eq!(p.per_round, 100);
        assert_eq!(
            Population::by_fraction(5, 0.01, "iid".into())
                .unwrap()
                .per_round,
            1
        );
    }

    #[test]
    fn uniform_draws_reject_the_biased_tail() {
        // n = 3 · 2⁶² : a quarter of the 64-bit words would bias a plain multiply.
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let n = 3u64 << 62;
        let mut low = 0;
        for _ in 0..3000 {
            let x = uniform_below(&mut rng, n);
            assert!(x < n);
            low += u32::from(x < n / 3);
        }
        assert!(
            (850..=1150).contains(&low),
            "{low} of 3,000 in the lowest third"
        );
    }
}
