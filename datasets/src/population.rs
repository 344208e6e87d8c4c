//! What each client of a population trains on: index lists into the pool (a dataset's
//! shards, in order, as one training set), from the partition scheme, the task's seed and
//! the client's number, the same on every node. A disjoint scheme deals the pool once (at
//! least one image a client); `draw:N` computes a client's images when it is asked for, so
//! registered clients cost no memory.

use fl_core::records::ClientId;

use crate::partition::{Partition, PartitionError, Scheme, drawn, partition};

/// The clients of a population over a pool of images.
#[derive(Debug, Clone)]
pub struct Clients {
    count: u64,
    scheme: Scheme,
    seed: u64,
    pool: usize,
    /// Each client's images, for the schemes that deal the pool out.
    dealt: Option<Partition>,
}

/// A population the pool cannot give its clients.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClientsError {
    /// A disjoint scheme with more clients than images.
    #[error(
        "{clients} clients cannot each be dealt one of the {images} training images by {scheme}: use draw:N (each client draws N images of its own, clients overlapping) or at most {images} clients"
    )]
    MoreClientsThanImages {
        /// Registered clients.
        clients: u64,
        /// Images in the pool.
        images: usize,
        /// The scheme.
        scheme: String,
    },
    /// `draw:N` with more images a client than the pool holds.
    #[error("draw:{per_client} asks each client for more images than the pool's {images}")]
    DrawTooMany {
        /// Images a client.
        per_client: usize,
        /// Images in the pool.
        images: usize,
    },
    /// The scheme found no deal that gives every client an image.
    #[error(
        "no deal of the {images} training images by {scheme} gives each of {clients} clients one: use fewer clients, a larger alpha, or draw:N"
    )]
    CannotDeal {
        /// Registered clients.
        clients: u64,
        /// Images in the pool.
        images: usize,
        /// The scheme.
        scheme: String,
    },
    /// The scheme cannot deal the pool to this many clients.
    #[error(transparent)]
    Partition(#[from] PartitionError),
}

impl Clients {
    /// `count` clients over the pool whose labels are `labels`, dealt by `scheme` with
    /// `seed`.
    pub fn new(
        labels: &[u8],
        count: u64,
        scheme: &Scheme,
        seed: u64,
    ) -> Result<Self, ClientsError> {
        let images = labels.len();
        let dealt = match *scheme {
            Scheme::Draw { per_node } if per_node > images => {
                return Err(ClientsError::DrawTooMany {
                    per_client: per_node,
                    images,
                });
            }
            Scheme::Draw { .. } => None,
            _ => {
                let nodes = usize::try_from(count)
                    .ok()
                    .filter(|&c| c <= images)
                    .ok_or_else(|| ClientsError::MoreClientsThanImages {
                        clients: count,
                        images,
                        scheme: scheme.to_string(),
                    })?;
                let dealt = partition(labels, nodes, scheme, seed, 1).map_err(|e| match e {
                    PartitionError::MinSize { .. } => ClientsError::CannotDeal {
                        clients: count,
                        images,
                        scheme: scheme.to_string(),
                    },
                    other => ClientsError::Partition(other),
                })?;
                // Every partition deals each of its nodes a list; one that did not would
                // leave clients with nothing.
                if dealt.clients.len() != nodes {
                    return Err(ClientsError::CannotDeal {
                        clients: count,
                        images,
                        scheme: scheme.to_string(),
                    });
                }
                Some(dealt)
            }
        };
        Ok(Self {
            count,
            scheme: *scheme,
            seed,
            pool: images,
            dealt,
        })
    }

    /// Registered clients.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The pool's images (indices) `client` trains on; `None` for a client not registered.
    pub fn images(&self, client: ClientId) -> Option<Vec<usize>> {
        if client.0 >= self.count {
            return None;
        }
        match (&self.dealt, self.scheme) {
            (Some(split), _) => {
                let i = usize::try_from(client.0).ok()?;
                split.clients.get(i).cloned()
            }
            (None, Scheme::Draw { per_node }) => {
                Some(drawn(self.seed, client.0, per_node, self.pool))
            }
            (None, _) => None,
        }
    }

    /// How many images `client` holds (its FedAvg weight); `None` for one not registered.
    pub fn samples(&self, client: ClientId) -> Option<u64> {
        if client.0 >= self.count {
            return None;
        }
        match (&self.dealt, self.scheme) {
            (Some(split), _) => {
                let i = usize::try_from(client.0).ok()?;
                split.clients.get(i).map(|c| c.len() as u64)
            }
            (None, Scheme::Draw { per_node }) => Some(per_node as u64),
            (None, _) => None,
        }
    }

    /// The dealt split, for schemes that deal the pool out (to export the clients' index
    /// lists, so another framework trains on exactly these clients).
    pub fn split(&self) -> Option<&Partition> {
        self.dealt.as_ref()
    }

    /// Bytes this holds per registered client (the dealt index lists; none for `draw`).
    pub fn bytes_per_client(&self) -> f64 {
        let held: usize = self.dealt.as_ref().map_or(0, |s| {
            s.clients
                .iter()
                .map(|c| c.capacity() * size_of::<usize>() + size_of::<Vec<usize>>())
                .sum()
        });
        held as f64 / self.count.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 10) as u8).collect()
    }

    #[test]
    fn dealt_clients_partition_the_pool_and_drawn_ones_are_computed_alone() {
        let pool = labels(1000);
        let dealt = Clients::new(&pool, 100, &"dirichlet:0.5".parse().unwrap(), 3).unwrap();
        let mut seen = vec![false; 1000];
        for c in 0..100 {
            let images = dealt.images(ClientId(c)).unwrap();
            assert!(!images.is_empty());
            assert_eq!(dealt.samples(ClientId(c)), Some(images.len() as u64));
            for i in images {
                assert!(
                    !std::mem::replace(&mut seen[i], true),
                    "image {i} dealt twice"
                );
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(dealt.images(ClientId(100)), None);

        let drawn = Clients::new(&pool, 10_000_000, &"draw:20".parse().unwrap(), 3).unwrap();
        let a = drawn.images(ClientId(9_999_999)).unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.windows(2).all(|w| w[0] < w[1] && w[1] < 1000));
        assert_eq!(a, drawn.images(ClientId(9_999_999)).unwrap());
        assert_ne!(a, drawn.images(ClientId(9_999_998)).unwrap());
        assert_eq!(drawn.samples(ClientId(5)), Some(20));
        assert_eq!(drawn.bytes_per_client(), 0.0);
        assert_eq!(drawn.images(ClientId(10_000_000)), None);
    }

    #[test]
    fn a_population_the_pool_cannot_give_one_image_each_is_refused_with_the_way_out() {
        let pool = labels(50);
        let err = Clients::new(&pool, 51, &"iid".parse().unwrap(), 0).unwrap_err();
        assert_eq!(
            err,
            ClientsError::MoreClientsThanImages {
                clients: 51,
                images: 50,
                scheme: "iid".into()
            }
        );
        assert!(err.to_string().contains("use draw:N"), "{err}");
        let err = Clients::new(&pool, 5, &"draw:51".parse().unwrap(), 0).unwrap_err();
        assert!(matches!(err, ClientsError::DrawTooMany { .. }), "{err}");
        assert!(Clients::new(&pool, 50, &"iid".parse().unwrap(), 0).is_ok());
        // 45 clients of 50 images with two classes each (alpha 0.01): no deal gives each one.
        let two: Vec<u8> = (0..50).map(|i| (i % 2) as u8).collect();
        let err = Clients::new(&two, 45, &"dirichlet:0.01".parse().unwrap(), 0).unwrap_err();
        assert!(
            matches!(err, ClientsError::CannotDeal { clients: 45, .. }),
            "{err}"
        );
    }
}
