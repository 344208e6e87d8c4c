//! Partitions of a training set across nodes, deterministic for a seed, as the FL
//! literature makes them:
//!
//! - `iid`: shuffled, split into near-equal parts.
//! - `dirichlet:ALPHA`: label skew of NIID-Bench (Li et al. 2021): for every class, its
//!   samples are split by proportions drawn from Dir(ALPHA), nodes that already hold
//!   their share get none, and the draw is repeated until every node has the minimum.
//! - `shards:K`: the pathological split of McMahan et al. 2017: samples sorted by label,
//!   cut into N*K equal shards, K random shards per node.
//! - `quantity:ALPHA`: quantity skew of NIID-Bench: node sizes by Dir(ALPHA), labels IID.
//! - `draw:N`: each node (or client) draws N distinct images of the whole set on its own,
//!   so nodes overlap: the split for populations larger than the data (a scale test of ten
//!   million clients over 50,000 images), computed per client without dealing the others.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use crate::cifar10::NUM_CLASSES;

/// Most redraws of Dirichlet proportions before giving up on the minimum shard size.
const MAX_DRAWS: usize = 1000;

/// How samples are split across nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    /// Uniformly at random.
    Iid,
    /// Label skew by Dir(alpha): small alpha, few classes per node.
    Dirichlet {
        /// Concentration; 0.1 is very skewed, 1000 close to IID.
        alpha: f64,
    },
    /// K shards of label-sorted samples per node.
    Shards {
        /// Shards per node.
        per_node: usize,
    },
    /// Node sizes by Dir(alpha), labels IID.
    Quantity {
        /// Concentration of the sizes.
        alpha: f64,
    },
    /// Each node draws this many distinct images on its own; nodes overlap.
    Draw {
        /// Images per node.
        per_node: usize,
    },
}

impl Scheme {
    /// Whether each node's images are its own (every scheme but `draw`).
    pub fn is_disjoint(&self) -> bool {
        !matches!(self, Scheme::Draw { .. })
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Iid => write!(f, "iid"),
            Scheme::Dirichlet { alpha } => write!(f, "dirichlet:{alpha}"),
            Scheme::Shards { per_node } => write!(f, "shards:{per_node}"),
            Scheme::Quantity { alpha } => write!(f, "quantity:{alpha}"),
            Scheme::Draw { per_node } => write!(f, "draw:{per_node}"),
        }
    }
}

/// A scheme string that is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "{text:?} is not a partition scheme: use iid, dirichlet:ALPHA, shards:K, quantity:ALPHA or draw:N (ALPHA > 0, K and N >= 1)"
)]
pub struct SchemeError {
    text: String,
}

impl FromStr for Scheme {
    type Err = SchemeError;
    fn from_str(s: &str) -> Result<Self, SchemeError> {
        let err = || SchemeError { text: s.to_owned() };
        let alpha = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|a| a.is_finite() && *a > 0.0)
                .ok_or_else(err)
        };
        match s.split_once(':') {
            None if s == "iid" => Ok(Scheme::Iid),
            Some(("dirichlet", v)) => Ok(Scheme::Dirichlet { alpha: alpha(v)? }),
            Some(("quantity", v)) => Ok(Scheme::Quantity { alpha: alpha(v)? }),
            Some(("shards", v)) => {
                let k = v
                    .parse::<usize>()
                    .ok()
                    .filter(|k| *k >= 1)
                    .ok_or_else(err)?;
                Ok(Scheme::Shards { per_node: k })
            }
            Some(("draw", v)) => {
                let k = v
                    .parse::<usize>()
                    .ok()
                    .filter(|k| *k >= 1)
                    .ok_or_else(err)?;
                Ok(Scheme::Draw { per_node: k })
            }
            _ => Err(err()),
        }
    }
}

/// A partition that cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PartitionError {
    /// No nodes, or more nodes than samples.
    #[error("cannot split {samples} samples across {nodes} nodes")]
    Nodes {
        /// Samples available.
        samples: usize,
        /// Nodes asked for.
        nodes: usize,
    },
    /// The minimum shard size cannot be met.
    #[error(
        "no split of {samples} samples gives each of {nodes} nodes at least {min_size} (scheme {scheme}); lower --min-size or use fewer nodes"
    )]
    MinSize {
        /// Samples available.
        samples: usize,
        /// Nodes asked for.
        nodes: usize,
        /// The minimum asked for.
        min_size: usize,
        /// The scheme.
        scheme: String,
    },
    /// More shards than samples.
    #[error(
        "{shards} shards of label-sorted samples need at least as many samples, there are {samples}"
    )]
    Shards {
        /// Shards needed.
        shards: usize,
        /// Samples available.
        samples: usize,
    },
}

/// Which samples each node gets (indices into the training set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Node i's sample indices.
    pub clients: Vec<Vec<usize>>,
}

impl Partition {
    /// Per node, its samples per class.
    pub fn label_counts(&self, labels: &[u8]) -> Vec<[u64; NUM_CLASSES]> {
        self.clients
            .iter()
            .map(|idx| {
                let mut c = [0u64; NUM_CLASSES];
                for &i in idx {
                    c[labels[i] as usize] += 1;
                }
                c
            })
            .collect()
    }

    /// The split as JSON, `{"scheme", "seed", "images", "clients": [[index, ...], ...]}`
    /// (`images`: the training set's size), for another framework to train on exactly
    /// these shards (`experiments/pytorch/fedavg_cnn.py fedavg` reads it).
    pub fn index_lists_json(&self, scheme: &Scheme, seed: u64, images: usize) -> String {
        #[derive(serde::Serialize)]
        struct IndexLists<'a> {
            scheme: String,
            seed: u64,
            images: usize,
            clients: &'a [Vec<usize>],
        }
        let lists = IndexLists {
            scheme: scheme.to_string(),
            seed,
            images,
            clients: &self.clients,
        };
        // Strings and integers only: serialising cannot fail.
        serde_json::to_string(&lists).unwrap_or_default()
    }
}

/// Splits `labels.len()` samples across `nodes` by `scheme`, the same for the same
/// seed; every node gets at least `min_size` samples (NIID-Bench uses 10).
pub fn partition(
    labels: &[u8],
    nodes: usize,
    scheme: &Scheme,
    seed: u64,
    min_size: usize,
) -> Result<Partition, PartitionError> {
    let n = labels.len();
    if nodes == 0 || nodes > n {
        return Err(PartitionError::Nodes { samples: n, nodes });
    }
    let min_err = || PartitionError::MinSize {
        samples: n,
        nodes,
        min_size,
        scheme: scheme.to_string(),
    };
    if min_size.saturating_mul(nodes) > n {
        return Err(min_err());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let clients = match *scheme {
        Scheme::Iid => {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng);
            split_even(&idx, nodes)
        }
        Scheme::Dirichlet { alpha } => {
            dirichlet_label_skew(labels, nodes, alpha, min_size, &mut rng).ok_or_else(min_err)?
        }
        Scheme::Shards { per_node } => {
            let shards = nodes.saturating_mul(per_node);
            if shards > n {
                return Err(PartitionError::Shards { shards, samples: n });
            }
            let mut sorted: Vec<usize> = (0..n).collect();
            sorted.sort_by_key(|&i| labels[i]);
            let pieces = split_even(&sorted, shards);
            let mut order: Vec<usize> = (0..shards).collect();
            order.shuffle(&mut rng);
            let mut clients: Vec<Vec<usize>> = order
                .chunks(per_node)
                .map(|ids| {
                    ids.iter()
                        .flat_map(|&s| pieces[s].iter().copied())
                        .collect()
                })
                .collect();
            for c in &mut clients {
                c.shuffle(&mut rng);
            }
            clients
        }
        Scheme::Quantity { alpha } => {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng);
            let mut found = None;
            for _ in 0..MAX_DRAWS {
                let p = dirichlet(nodes, alpha, &mut rng);
                let cuts = cuts(&p, n);
                let parts = split_at(&idx, &cuts);
                if parts.iter().all(|c| c.len() >= min_size) {
                    found = Some(parts);
                    break;
                }
            }
            found.ok_or_else(min_err)?
        }
        Scheme::Draw { per_node } => {
            if per_node > n {
                return Err(min_err());
            }
            (0..nodes as u64)
                .map(|i| drawn(seed, i, per_node, n))
                .collect()
        }
    };
    let split = Partition { clients };
    if split.clients.iter().any(|c| c.len() < min_size) {
        return Err(min_err());
    }
    Ok(split)
}

/// The `count` images node (or client) `index` draws under `draw:count` with `seed`, of
/// `n`, in increasing order: one ChaCha stream per index, so any one is computed alone.
pub fn drawn(seed: u64, index: u64, count: usize, n: usize) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(index);
    fl_core::records::population::draw_distinct(&mut rng, count as u64, n as u64)
        .into_iter()
        .map(|c| c.0 as usize)
        .collect()
}

/// NIID-Bench's `noniid-labeldir` (Li et al. 2021, `partition_data`).
fn dirichlet_label_skew(
    labels: &[u8],
    nodes: usize,
    alpha: f64,
    min_size: usize,
    rng: &mut ChaCha8Rng,
) -> Option<Vec<Vec<usize>>> {
    let n = labels.len();
    let by_class: Vec<Vec<usize>> = (0..NUM_CLASSES as u8)
        .map(|k| (0..n).filter(|&i| labels[i] == k).collect())
        .collect();
    for _ in 0..MAX_DRAWS {
        let mut clients: Vec<Vec<usize>> = vec![Vec::new(); nodes];
        for class in &by_class {
            let mut idx = class.clone();
            idx.shuffle(rng);
            let mut p = dirichlet(nodes, alpha, rng);
            // Nodes that already hold their share get none of this class.
            for (pj, c) in p.iter_mut().zip(&clients) {
                if c.len() as f64 >= n as f64 / nodes as f64 {
                    *pj = 0.0;
                }
            }
            let sum: f64 = p.iter().sum();
            if sum > 0.0 {
                p.iter_mut().for_each(|x| *x /= sum);
            } else {
                p.iter_mut().for_each(|x| *x = 1.0 / nodes as f64);
            }
            for (c, part) in clients.iter_mut().zip(split_at(&idx, &cuts(&p, idx.len()))) {
                c.extend(part);
            }
        }
        if clients.iter().all(|c| c.len() >= min_size) {
            for c in &mut clients {
                c.shuffle(rng);
            }
            return Some(clients);
        }
    }
    None
}

/// A draw from the symmetric Dirichlet(alpha) over `k` outcomes, through Gamma(alpha, 1).
fn dirichlet(k: usize, alpha: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    // alpha was checked finite and positive when the scheme was parsed.
    let Ok(gamma) = Gamma::new(alpha, 1.0) else {
        return vec![1.0 / k as f64; k];
    };
    let draws: Vec<f64> = (0..k).map(|_| gamma.sample(rng)).collect();
    let sum: f64 = draws.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        draws.into_iter().map(|g| g / sum).collect()
    } else {
        // Every Gamma draw underflowed (tiny alpha): all mass on one outcome.
        let mut one = vec![0.0; k];
        one[rng.random_range(0..k)] = 1.0;
        one
    }
}

/// Cut points of `len` items by cumulative proportions (numpy's `(cumsum(p) * len).astype(int)[:-1]`).
fn cuts(p: &[f64], len: usize) -> Vec<usize> {
    let mut acc = 0.0;
    let mut out = Vec::with_capacity(p.len().saturating_sub(1));
    for x in &p[..p.len() - 1] {
        acc += x;
        out.push(((acc * len as f64) as usize).min(len));
    }
    out
}

fn split_at(idx: &[usize], cuts: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts {
        let c = c.max(start);
        out.push(idx[start..c].to_vec());
        start = c;
    }
    out.push(idx[start..].to_vec());
    out
}

/// `parts` near-equal runs of `idx` (sizes differ by at most one).
fn split_even(idx: &[usize], parts: usize) -> Vec<Vec<usize>> {
    let n = idx.len();
    (0..parts)
        .map(|i| idx[i * n / parts..(i + 1) * n / parts].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 7 + i / 13) % 10) as u8).collect()
    }

    #[test]
    fn schemes_parse_and_print_back() {
        for s in ["iid", "dirichlet:0.5", "shards:2", "quantity:1"] {
            assert_eq!(s.parse::<Scheme>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "dirichlet",
            "dirichlet:0",
            "dirichlet:-1",
            "dirichlet:nan",
            "shards:0",
            "zipf:1",
        ] {
            assert!(bad.parse::<Scheme>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_sample_lands_in_exactly_one_node() {
        let l = labels(5000);
        for scheme in [
            "iid",
            "dirichlet:0.1",
            "dirichlet:0.5",
            "shards:2",
            "quantity:0.5",
        ] {
            let p = partition(&l, 17, &scheme.parse().unwrap(), 3, 10).unwrap();
            let mut all: Vec<usize> = p.clients.concat();
            all.sort_unstable();
            assert_eq!(all, (0..5000).collect::<Vec<_>>(), "{scheme}");
            assert!(p.clients.iter().all(|c| c.len() >= 10), "{scheme}");
        }
    }

    #[test]
    fn same_seed_same_split_other_seed_other_split() {
        let l = labels(3000);
        let s: Scheme = "dirichlet:0.5".parse().unwrap();
        assert_eq!(
            partition(&l, 8, &s, 1, 10).unwrap(),
            partition(&l, 8, &s, 1, 10).unwrap()
        );
        assert_ne!(
            partition(&l, 8, &s, 1, 10).unwrap(),
            partition(&l, 8, &s, 2, 10).unwrap()
        );
    }

    #[test]
    fn impossible_requests_are_refused() {
        let l = labels(100);
        assert!(matches!(
            partition(&l, 0, &Scheme::Iid, 0, 0),
            Err(PartitionError::Nodes { .. })
        ));
        assert!(matches!(
            partition(&l, 101, &Scheme::Iid, 0, 0),
            Err(PartitionError::Nodes { .. })
        ));
        assert!(matches!(
            partition(&l, 20, &Scheme::Iid, 0, 10),
            Err(PartitionError::MinSize { .. })
        ));
        assert!(matches!(
            partition(&l, 60, &Scheme::Shards { per_node: 2 }, 0, 0),
            Err(PartitionError::Shards { .. })
        ));
    }

    #[test]
    fn pathological_shards_give_few_classes_per_node() {
        let l = labels(6000);
        let p = partition(&l, 30, &Scheme::Shards { per_node: 2 }, 9, 1).unwrap();
        for counts in p.label_counts(&l) {
            assert!(counts.iter().filter(|&&c| c > 0).count() <= 4, "{counts:?}");
        }
    }
}
