//! A task's population of clients, apart from its peers: K registered clients (units of data
//! and training), M of them sampled each round, hosted by the task's members in turn. The
//! sample is a function of the task and the round alone, so every node and `fl verify`
//! recompute who was due, and no member can steer it (a seed that any update or manifest
//! fed could be ground by trying variants of it); nothing is stored per registered client.

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

/// Most clients a Poisson-sampled round may expect: the count exceeds [`MAX_PER_ROUND`]
/// (where the draw stops) with probability below 10⁻³⁰⁰.
pub const MAX_POISSON_MEAN: u32 = MAX_PER_ROUND / 4;

/// Fewest clients a Poisson-sampled round may expect: it samples none (and cannot close)
/// with probability about e^-per_round, 2·10⁻⁹ here; DP-FedAvg needs many a round anyway.
pub const MIN_POISSON_MEAN: u32 = 20;

/// Domain of the sample's seed, so no other hash of the same inputs can collide with it.
const SAMPLE_DOMAIN: &[u8] = b"fl/sample/2:";

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
    /// Clients sampled each round: exactly this many, or this many on average (Poisson).
    pub per_round: u32,
    /// How the pool's images are dealt to clients (`iid`, `dirichlet:0.5`, `draw:120`: the
    /// dataset crate's partition schemes), seeded by the task's seed.
    pub partition: String,
    /// How a round's clients are drawn (records without it: exactly `per_round`).
    #[serde(default, skip_serializing_if = "Sampling::is_fixed")]
    pub sampling: Sampling,
}

/// How a round's clients are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Exactly `per_round` clients, uniformly without replacement (Flower's `fraction_fit`).
    #[default]
    Fixed,
    /// Each client on its own with probability `per_round / clients` (at most
    /// [`MAX_PER_ROUND`] a round): the sampling DP-FedAvg's accountant assumes (McMahan et al.
    /// 2018), for client-level DP.
    Poisson,
}

impl Sampling {
    /// Whether it is [`Sampling::Fixed`].
    pub fn is_fixed(&self) -> bool {
        *self == Sampling::Fixed
    }
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
    /// Poisson sampling with an expected count too near the most a round may name.
    #[error(
        "{0} clients a round on average is more than Poisson sampling allows ({MAX_POISSON_MEAN}: a round may name at most {MAX_PER_ROUND})"
    )]
    PoissonTooMany(u32),
    /// Poisson sampling with so few clients expected that a round may sample none.
    #[error(
        "{0} clients a round on average is too few for Poisson sampling (at least {MIN_POISSON_MEAN}: a round samples none with probability e^-{0})"
    )]
    PoissonTooFew(u32),
    /// More sampled per round than one announcement may name.
    #[error("{0} clients a round is more than a round may sample ({MAX_PER_ROUND})")]
    TooManySampled(u32),
    /// A fraction of the clients that is more than a round may sample.
    #[error("{fraction} of {clients} clients is more than a round may sample ({MAX_PER_ROUND})")]
    TooManyByFraction {
        /// Registered clients.
        clients: u64,
        /// The fraction asked for.
        fraction: f64,
    },
    /// A fraction that is no share of the population.
    #[error("a fraction of the clients must be in (0, 1], got {0}")]
    Fraction(f64),
}

impl Population {
    /// `clients` clients of which `fraction` (in (0, 1]) are sampled a round, rounded down
    /// and at least one, as Flower's `fraction_fit` (`int(clients * fraction)`).
    pub fn by_fraction(
        clients: u64,
        fraction: f64,
        partition: String,
    ) -> Result<Self, PopulationError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(PopulationError::Fraction(fraction));
        }
        let sampled = (clients as f64 * fraction).floor().max(1.0);
        if sampled > f64::from(MAX_PER_ROUND) {
            return Err(PopulationError::TooManyByFraction { clients, fraction });
        }
        let per_round = sampled as u32;
        let population = Self {
            clients,
            per_round,
            partition,
            sampling: Sampling::Fixed,
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
        if self.sampling == Sampling::Poisson && self.per_round > MAX_POISSON_MEAN {
            return Err(PopulationError::PoissonTooMany(self.per_round));
        }
        if self.sampling == Sampling::Poisson && self.per_round < MIN_POISSON_MEAN {
            return Err(PopulationError::PoissonTooFew(self.per_round));
        }
        if u64::from(self.per_round) > self.clients {
            return Err(PopulationError::MoreSampledThanRegistered {
                per_round: self.per_round,
                clients: self.clients,
            });
        }
        Ok(())
    }

    /// The clients round `round` of task `task` samples, in increasing order: `per_round`
    /// of them uniformly without replacement, or each with probability `per_round /
    /// clients` (Poisson). Work and memory grow with `per_round`, not with the registered
    /// count.
    pub fn sample(&self, task: &Cid, round: u32) -> Sample {
        let mut hash = Sha256::new();
        hash.update(SAMPLE_DOMAIN);
        hash.update(task.to_bytes());
        hash.update(round.to_be_bytes());
        let mut rng = ChaCha20Rng::from_seed(hash.finalize().into());
        match self.sampling {
            Sampling::Fixed => {
                let count = u64::from(self.per_round).min(self.clients);
                Sample(draw_distinct(&mut rng, count, self.clients))
            }
            Sampling::Poisson => Sample(draw_poisson(&mut rng, self.rate(), self.clients)),
        }
    }

    /// The chance that a given client is sampled in a round: `per_round / clients`.
    pub fn rate(&self) -> f64 {
        (f64::from(self.per_round) / self.clients.max(1) as f64).min(1.0)
    }

    /// Most clients one round may name: `per_round`, or with Poisson sampling
    /// [`MAX_PER_ROUND`].
    pub fn most_sampled(&self) -> usize {
        match self.sampling {
            Sampling::Fixed => self.per_round as usize,
            Sampling::Poisson => MAX_PER_ROUND as usize,
        }
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

/// Each number of `0..n` on its own with probability `q` (stopping at [`MAX_PER_ROUND`]),
/// in work proportional to how many are drawn: the gaps between drawn numbers are
/// geometric, `floor(ln U / ln(1 - q))`, computed with `libm` so that every platform draws
/// the same numbers.
pub fn draw_poisson(rng: &mut impl RngCore, q: f64, n: u64) -> BTreeSet<ClientId> {
    let mut chosen = BTreeSet::new();
    if q.is_nan() || q <= 0.0 {
        return chosen;
    }
    if q >= 1.0 {
        chosen.extend((0..n.min(u64::from(MAX_PER_ROUND))).map(ClientId));
        return chosen;
    }
    let log_miss = libm::log1p(-q);
    let mut at = 0u64;
    while chosen.len() < MAX_PER_ROUND as usize {
        // U in (0, 1]: 53 random bits, plus one so that ln U is finite.
        let u = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let gap = (libm::log(u) / log_miss).floor();
        // NaN (no draw reaches it) or past the last client: done.
        if gap.is_nan() || gap >= (n - at) as f64 {
            break;
        }
        at += gap as u64;
        chosen.insert(ClientId(at));
        at += 1;
        if at >= n {
            break;
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

    const PINNED_FIXED: [u64; 5] = [44, 66, 89, 328, 823];
    const PINNED_POISSON: [u64; 16] = [
        153, 287, 343, 353, 473, 487, 508, 524, 559, 579, 652, 670, 699, 806, 816, 968,
    ];

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
            sampling: Sampling::Fixed,
        }
    }

    #[test]
    fn a_round_samples_the_same_clients_wherever_it_is_recomputed_and_others_in_other_rounds() {
        let p = population(100, 10);
        let task = cid(b"task");
        let a = p.sample(&task, 3);
        assert_eq!(a, p.sample(&task, 3));
        assert_eq!(a.len(), 10);
        assert!(a.iter().all(|c| c.0 < 100));
        assert_ne!(a, p.sample(&task, 4));
        assert_ne!(a, p.sample(&cid(b"another task"), 3));
        // The whole population when every client is due.
        let all = population(7, 7).sample(&task, 1);
        assert_eq!(
            all.iter().map(|c| c.0).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
    }

    /// The sample of a known task and round, pinned: a change of ChaCha20, of the uniform
    /// draw or of `libm` that moved it would refute every manifest made before.
    #[test]
    fn the_sample_of_a_known_round_is_pinned() {
        let task = cid(b"pinned task");
        let fixed: Vec<u64> = population(1000, 5)
            .sample(&task, 7)
            .iter()
            .map(|c| c.0)
            .collect();
        let poisson = Population {
            sampling: Sampling::Poisson,
            ..population(1000, 20)
        };
        let drawn: Vec<u64> = poisson.sample(&task, 7).iter().map(|c| c.0).collect();
        assert_eq!(fixed, PINNED_FIXED, "fixed");
        assert_eq!(drawn, PINNED_POISSON, "poisson");
    }

    #[test]
    fn every_client_is_sampled_at_the_rate_per_round_over_clients() {
        // 4,000 rounds of 10 of 50: each client expects 800 turns (sd about 27).
        let p = population(50, 10);
        let task = cid(b"task");
        let mut turns = [0u32; 50];
        for round in 1..=4000 {
            for c in p.sample(&task, round).iter() {
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
        let s = p.sample(&cid(b"task"), 1);
        assert_eq!(s.len(), 10);
        assert!(s.iter().all(|c| c.0 < 10_000_000));
    }

    #[test]
    fn clients_are_hosted_by_the_members_in_turn() {
        let members: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let p = population(10, 10);
        let s = p.sample(&cid(b"t"), 1);
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
        // As Flower: int(30 * 0.1) = 3 (not the 4 that 3.0000000000000004 rounds up to).
        assert_eq!(
            Population::by_fraction(30, 0.1, "iid".into())
                .unwrap()
                .per_round,
            3
        );
        assert_eq!(
            Population::by_fraction(5, 0.01, "iid".into())
                .unwrap()
                .per_round,
            1
        );
    }

    #[test]
    fn poisson_sampling_takes_each_client_at_its_rate_whatever_the_population() {
        // 1,000 clients at q = 0.1 over 2,000 rounds: each expects 200 turns (sd about 13),
        // and a round's count is Binomial(1000, 0.1): mean 100, sd 9.5.
        let p = Population {
            sampling: Sampling::Poisson,
            ..population(1000, 100)
        };
        let task = cid(b"task");
        let mut turns = vec![0u32; 1000];
        let mut counts = Vec::new();
        for round in 1..=2000u32 {
            let s = p.sample(&task, round);
            counts.push(s.len());
            for c in s.iter() {
                turns[c.0 as usize] += 1;
            }
        }
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        assert!(
            (mean - 100.0).abs() < 1.5,
            "{mean} clients a round on average"
        );
        assert!(counts.iter().any(|&c| c != 100), "the count varies");
        for (c, t) in turns.iter().enumerate() {
            assert!(
                (140..=260).contains(t),
                "client {c}: {t} turns of 200 expected"
            );
        }
        // Ten million registered: about twenty a round, drawn in work for about twenty.
        let big = Population {
            sampling: Sampling::Poisson,
            ..population(10_000_000, 20)
        };
        let total: usize = (1..=200u32).map(|r| big.sample(&task, r).len()).sum();
        assert!((3600..=4400).contains(&total), "{total} in 200 rounds");
        assert_eq!(big.sample(&task, 7), big.sample(&task, 7));
        let err = Population {
            sampling: Sampling::Poisson,
            ..population(1_000_000, 5000)
        }
        .validate();
        assert_eq!(err, Err(PopulationError::PoissonTooMany(5000)));
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
