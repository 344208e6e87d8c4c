//! What an announcement may claim, decided alike by every node and by `fl verify` from the
//! task and the announcement alone: a sample count within the task's bound and, in a task
//! with a population, only clients of the round's sample that its author hosts, with the
//! samples the partition gives them. Pure: the inbox refuses such an announcement (and its
//! sender is blamed), and a manifest that counts one is refuted.

use fl_core::records::{Announcement, ClientId, PeerId};

use super::Terms;

/// What is wrong with an announcement's claims.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClaimError {
    /// A sample count out of the task's bounds.
    #[error("it claims {claimed} samples, outside 1..={bound}")]
    Samples {
        /// What it claims.
        claimed: u64,
        /// The most the task allows.
        bound: u64,
    },
    /// The task samples clients each round and the announcement names none.
    #[error("the task samples its clients each round and it names none")]
    NoClients,
    /// It names clients in a task that has no population.
    #[error("it names clients, and the task has no population")]
    NoPopulation,
    /// The task names no members to host its clients (a task record that validation
    /// refuses; never from a valid task).
    #[error("the task names no members to host its clients")]
    NoMembers,
    /// It names more clients than a round samples.
    #[error("it names {named} clients, more than a round samples ({most})")]
    TooManyClients {
        /// Clients named.
        named: usize,
        /// The most a round samples.
        most: usize,
    },
    /// Its clients are not in increasing order (one named twice, or out of order).
    #[error("it names {0} out of order or twice")]
    Unordered(ClientId),
    /// A client not in the round's sample.
    #[error("{client} is not in round {round}'s sample")]
    NotSampled {
        /// The client.
        client: ClientId,
        /// The round.
        round: u32,
    },
    /// A client another member hosts.
    #[error("{client} is hosted by {host}, not by the announcement's author")]
    NotHosted {
        /// The client.
        client: ClientId,
        /// Its host.
        host: PeerId,
    },
    /// Its samples are not the sum of its clients'.
    #[error("it claims {claimed} samples, its clients hold {hold}")]
    ClientSamples {
        /// What it claims.
        claimed: u64,
        /// What the partition gives its clients.
        hold: u64,
    },
}

/// Checks what `announcement`, signed by `author`, claims under `terms`.
pub fn check(
    terms: &Terms,
    author: &PeerId,
    announcement: &Announcement,
) -> Result<(), ClaimError> {
    let a = announcement;
    if a.samples == 0 || a.samples > terms.max_samples {
        return Err(ClaimError::Samples {
            claimed: a.samples,
            bound: terms.max_samples,
        });
    }
    let Some(population) = &terms.task.population else {
        return match a.clients.is_empty() {
            true => Ok(()),
            false => Err(ClaimError::NoPopulation),
        };
    };
    if a.clients.is_empty() {
        return Err(ClaimError::NoClients);
    }
    if a.clients.len() > population.most_sampled() {
        return Err(ClaimError::TooManyClients {
            named: a.clients.len(),
            most: population.most_sampled(),
        });
    }
    if let Some(w) = a.clients.windows(2).find(|w| w[0] >= w[1]) {
        return Err(ClaimError::Unordered(w[1]));
    }
    // The cheap checks first: whose clients they are, before the round's sample is drawn.
    let members = terms.task.members.as_deref().unwrap_or_default();
    for &client in &a.clients {
        match population.host(client, members) {
            Some(host) if host == author => {}
            Some(host) => {
                return Err(ClaimError::NotHosted {
                    client,
                    host: *host,
                });
            }
            None => return Err(ClaimError::NoMembers),
        }
    }
    let Some(sample) = terms.sample(a.round) else {
        return Err(ClaimError::NoPopulation);
    };
    let mut hold = 0u64;
    for &client in &a.clients {
        if !sample.contains(client) {
            return Err(ClaimError::NotSampled {
                client,
                round: a.round,
            });
        }
        if let Some(clients) = &terms.clients {
            hold = hold.saturating_add(clients.samples(client).unwrap_or(0));
        }
    }
    // Under client-level DP every client weighs one, whatever its data.
    if terms.task.dp.is_some() {
        hold = a.clients.len() as u64;
    }
    if (terms.clients.is_some() || terms.task.dp.is_some()) && hold != a.samples {
        return Err(ClaimError::ClientSamples {
            claimed: a.samples,
            hold,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cid::Cid;
    use fl_core::records::{
        DataSource, DpLevel, DpParams, Neighbours, Population, RoundSchedule, Sampling, Task,
        TrainParams,
    };
    use fl_core::tensors::Encoding;

    use super::*;

    /// A task of three members and, when `population`, 30 clients of which 6 a round, dealt
    /// a pool of 300 images IID (10 each).
    fn terms(population: bool) -> (Terms, Vec<PeerId>) {
        terms_of(population, |_| {})
    }

    fn terms_of(population: bool, change: impl FnOnce(&mut Task)) -> (Terms, Vec<PeerId>) {
        let members: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let task = Task {
            format: fl_core::records::task::TASK_FORMAT.into(),
            name: "claims".into(),
            architecture: "fedavg-cnn".into(),
            initial_model: Cid::default(),
            data: DataSource::Shards {
                manifest: Cid::default(),
            },
            train: TrainParams {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.01,
                momentum: 0.9,
                weight_decay: 0.0,
                proximal_mu: 0.0,
                schedule: RoundSchedule::Constant,
                steps: None,
                load: fl_core::records::Load::Equal,
            },
            rounds: 3,
            min_participants: 1,
            round_deadline_ms: 1000,
            grace_ms: 1000,
            dp: None,
            rule: "fedavg".into(),
            members: Some(members.clone()),
            flops_per_sample: 1,
            seed: 7,
            update_encoding: Encoding::F32,
            max_samples: None,
            evaluate_every: None,
            secure: None,
            population: population.then(|| Population {
                clients: 30,
                per_round: 6,
                partition: "iid".into(),
                sampling: Sampling::Fixed,
            }),
        };
        let mut task = task;
        change(&mut task);
        let labels: Vec<u8> = (0..300).map(|i| (i % 10) as u8).collect();
        let terms = Terms::new(Cid::default(), task)
            .and_then(|t| t.with_pool(&labels))
            .expect("terms");
        // As nodes bound them: by the largest shard without a population, by the deal with.
        let terms = if population {
            terms
        } else {
            terms.with_shards(300)
        };
        (terms, members)
    }

    /// Round `round`'s sample (started from the default CID), a member hosting some of it,
    /// and the numbers of the sampled clients that member hosts.
    fn sampled_host<'a>(
        terms: &Terms,
        members: &'a [PeerId],
        round: u32,
    ) -> (
        std::sync::Arc<fl_core::records::Sample>,
        &'a PeerId,
        Vec<u64>,
    ) {
        let population = terms.task.population.clone().expect("a population");
        let sample = terms.sample(round).expect("a sample");
        let (host, mine) = members
            .iter()
            .map(|m| (m, population.hosted_by(&sample, m, members)))
            .find(|(_, mine)| !mine.is_empty())
            .expect("some member hosts a sampled client");
        (sample, host, mine.iter().map(|c| c.0).collect())
    }

    fn announcement(round: u32, clients: &[u64], samples: u64) -> Announcement {
        Announcement {
            task: Cid::default(),
            round,
            base: Cid::default(),
            update: Cid::default(),
            samples,
            epochs: 1,
            epsilon: None,
            clients: clients.iter().map(|&c| ClientId(c)).collect(),
            steps: None,
            capacity: None,
        }
    }

    #[test]
    fn a_task_without_a_population_bounds_samples_and_takes_no_clients() {
        let (terms, members) = terms(false);
        let author = &members[0];
        assert_eq!(check(&terms, author, &announcement(1, &[], 300)), Ok(()));
        assert_eq!(
            check(&terms, author, &announcement(1, &[], 301)),
            Err(ClaimError::Samples {
                claimed: 301,
                bound: 300
            })
        );
        assert_eq!(
            check(&terms, author, &announcement(1, &[], 0)),
            Err(ClaimError::Samples {
                claimed: 0,
                bound: 300
            })
        );
        assert_eq!(
            check(&terms, author, &announcement(1, &[0], 10)),
            Err(ClaimError::NoPopulation)
        );
    }

    #[test]
    fn a_population_takes_only_sampled_clients_from_their_host_with_their_samples() {
        let (terms, members) = terms(true);
        let (sample, host, ids) = sampled_host(&terms, &members, 2);
        let held = 10 * ids.len() as u64;
        assert_eq!(check(&terms, host, &announcement(2, &ids, held)), Ok(()));
        assert_eq!(
            check(&terms, host, &announcement(2, &ids, held + 1)),
            Err(ClaimError::ClientSamples {
                claimed: held + 1,
                hold: held
            })
        );
        assert_eq!(
            check(&terms, host, &announcement(2, &[], 10)),
            Err(ClaimError::NoClients)
        );
        // A client of its own that the round did not sample.
        let index = members.iter().position(|m| m == host).expect("a member") as u64;
        let unsampled = (0..10)
            .map(|k| index + 3 * k)
            .find(|c| !sample.contains(ClientId(*c)))
            .expect("not every client is sampled");
        assert_eq!(
            check(&terms, host, &announcement(2, &[unsampled], 10)),
            Err(ClaimError::NotSampled {
                client: ClientId(unsampled),
                round: 2
            })
        );
        // Another member's sampled client.
        let other = members.iter().find(|m| *m != host).expect("another member");
        assert_eq!(
            check(&terms, other, &announcement(2, &ids[..1], 10)),
            Err(ClaimError::NotHosted {
                client: ClientId(ids[0]),
                host: *host
            })
        );
        let all: Vec<u64> = sample.iter().map(|c| c.0).collect();
        assert!(matches!(
            check(&terms, host, &announcement(2, &[all[0], all[0]], 20)),
            Err(ClaimError::Unordered(_))
        ));
        let too_many: Vec<u64> = (0..7).collect();
        assert_eq!(
            check(&terms, host, &announcement(2, &too_many, 70)),
            Err(ClaimError::TooManyClients { named: 7, most: 6 })
        );
    }

    /// DP-FedAvg over a population weighs every client one, whatever its data: a host's
    /// announcement claims its clients' count, not their images.
    #[test]
    fn under_client_level_dp_every_client_weighs_one() {
        let (terms, members) = terms_of(true, |t| {
            t.dp = Some(DpParams {
                clip_norm: 1.0,
                noise_multiplier: 1.0,
                delta: 1e-5,
                level: Some(DpLevel::Client),
                neighbours: Some(Neighbours::AddRemove),
                epsilon_budget: None,
            });
            if let Some(p) = t.population.as_mut() {
                p.sampling = Sampling::Poisson;
                p.per_round = 20;
            }
        });
        let (_, host, ids) = sampled_host(&terms, &members, 3);
        let count = ids.len() as u64;
        assert_eq!(check(&terms, host, &announcement(3, &ids, count)), Ok(()));
        assert_eq!(
            check(&terms, host, &announcement(3, &ids, 10 * count)),
            Err(ClaimError::ClientSamples {
                claimed: 10 * count,
                hold: count
            })
        );
    }
}
