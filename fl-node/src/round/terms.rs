//! A task record as the round code uses it: decoded and validated once, its aggregation rule
//! and architecture parsed into types, so no later step parses a string or meets a setting
//! it cannot run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use aggregator::{Rule, RuleError, Strategy};
use cid::Cid;
use datasets::partition::{Scheme, SchemeError};
use datasets::population::{Clients, ClientsError};
use fl_core::content::Block;
use fl_core::model::{Architecture, ModelError};
use fl_core::records::task::TaskError;
use fl_core::records::{PeerId, Sample, SecureMembers, Task};
use fl_core::secagg::Params;

/// A task every node of it agreed to by its CID, checked once.
#[derive(Debug, Clone)]
pub struct Terms {
    /// The task record's CID.
    pub cid: Cid,
    /// The record as published (its `rule` string is what manifests repeat, byte for byte).
    pub task: Arc<Task>,
    /// Its aggregation rule.
    pub rule: Rule,
    /// Its model architecture.
    pub architecture: Architecture,
    /// The most examples one update may claim: what bounds a member's FedAvg weight and
    /// credits ([`Terms::sample_bound`]).
    pub max_samples: u64,
    /// How its population's clients are dealt the data, where it has one.
    pub scheme: Option<Scheme>,
    /// Its population's clients, once the data is read ([`Terms::with_pool`]): what each
    /// trains on and the samples it may claim.
    pub clients: Option<Arc<Clients>>,
    /// The last few rounds' samples, by round: every announcement and look at a round asks
    /// for its sample, which costs draws for every client sampled.
    samples: Arc<Mutex<Vec<KeptSample>>>,
    /// Under secure aggregation: the protocol's settings and the members in slot order.
    pub secure: Option<Arc<Secure>>,
}

/// A secure task's protocol settings and its members by slot.
#[derive(Debug)]
pub struct Secure {
    /// The protocol's settings.
    pub params: Params,
    /// The members, in slot order.
    pub members: SecureMembers,
}

/// A round's sample, by its round.
type KeptSample = (u32, Arc<Sample>);

/// Samples [`Terms`] keeps (the rounds in flight and a few behind).
const SAMPLES_KEPT: usize = 8;

/// Largest sample count an announcement may claim in any task (more than any single node
/// holds), where nothing tighter is known.
pub const MAX_SAMPLES: u64 = 1 << 32;

/// Why a task record cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum TermsError {
    /// The block is not the record its CID names, or not a task record.
    #[error("the task record {cid}")]
    Record {
        /// The record.
        cid: Cid,
        /// Why.
        #[source]
        source: TaskError,
    },
    /// The block's bytes do not hash to its CID.
    #[error("the task record {cid}")]
    Block {
        /// The record.
        cid: Cid,
        /// Why.
        #[source]
        source: fl_core::content::BlockError,
    },
    /// Its aggregation rule does not parse or cannot run.
    #[error("the task's rule {rule:?}")]
    Rule {
        /// The rule as written.
        rule: String,
        /// Why.
        #[source]
        source: RuleError,
    },
    /// Its architecture is unknown here.
    #[error("the task's architecture")]
    Architecture(#[source] ModelError),
    /// Client-level DP over a population with a rule that is not a weighted mean.
    #[error(
        "the task's rule {rule:?}: client-level DP over a population divides the clipped sum by the expected count, which needs a rule built on a weighted mean (fedavg, fedavgm, fedadam, fedyogi, norm-bound)"
    )]
    DpRule {
        /// The rule as written.
        rule: String,
    },
    /// Secure aggregation with a rule that needs individual updates or their norms.
    #[error(
        "the task's rule {rule:?}: a secure round reveals only the sum of the updates, so its rule must be a mean with a server step and no clipping (fedavg, fedavgm, fedadam, fedyogi)"
    )]
    SecureRule {
        /// The rule as written.
        rule: String,
    },
    /// Its population's partition does not parse.
    #[error("the task's population")]
    Partition(#[source] SchemeError),
    /// Its population cannot be dealt the task's data.
    #[error("the task's population")]
    Clients(#[source] ClientsError),
}

impl Terms {
    /// The terms of the task record `cid` whose bytes are `bytes`.
    pub fn decode(cid: Cid, bytes: Vec<u8>) -> Result<Self, TermsError> {
        let block = Block::new(cid, bytes).map_err(|source| TermsError::Block { cid, source })?;
        let task = Task::from_block(&block).map_err(|source| TermsError::Record { cid, source })?;
        Self::new(cid, task)
    }

    /// The terms of `task`, published as `cid`: refused unless every setting can run.
    pub fn new(cid: Cid, task: Task) -> Result<Self, TermsError> {
        task.validate()
            .map_err(|source| TermsError::Record { cid, source })?;
        let rule: Rule = task.rule.parse().map_err(|source| TermsError::Rule {
            rule: task.rule.clone(),
            source,
        })?;
        let architecture = task
            .architecture
            .parse()
            .map_err(TermsError::Architecture)?;
        if task.population.is_some() && task.dp.is_some() && rule.as_mean_rule().is_none() {
            return Err(TermsError::DpRule {
                rule: task.rule.clone(),
            });
        }
        let secure = match &task.secure {
            Some(settings) => {
                if rule.as_mean_rule().is_none_or(|r| r.clip().is_some()) {
                    return Err(TermsError::SecureRule {
                        rule: task.rule.clone(),
                    });
                }
                let members = SecureMembers::new(task.members.clone().unwrap_or_default())
                    .and_then(|m| Ok((settings.params(m.len())?, m)))
                    .map_err(|e| TermsError::Record {
                        cid,
                        source: TaskError::Secure(e),
                    })?;
                Some(Arc::new(Secure {
                    params: members.0,
                    members: members.1,
                }))
            }
            None => None,
        };
        let max_samples = Self::sample_bound(&task, None);
        let scheme = task
            .population
            .as_ref()
            .map(|p| p.partition.parse::<Scheme>())
            .transpose()
            .map_err(TermsError::Partition)?;
        Ok(Self {
            cid,
            task: Arc::new(task),
            rule,
            architecture,
            max_samples,
            scheme,
            clients: None,
            samples: Arc::default(),
            secure,
        })
    }

    /// The terms with the task's population dealt the pool whose labels are `labels` (all
    /// the dataset's shards, in order): refused when the pool cannot give every client
    /// its images. Without a population, the terms as they are.
    pub fn with_pool(mut self, labels: &[u8]) -> Result<Self, TermsError> {
        let (Some(population), Some(scheme)) = (&self.task.population, &self.scheme) else {
            return Ok(self);
        };
        let clients = Clients::new(labels, population.clients, scheme, self.task.seed)
            .map_err(TermsError::Clients)?;
        self.clients = Some(Arc::new(clients));
        Ok(self)
    }

    /// In a task with a population, the members hosting a client of round `round`'s
    /// sample: the round's announcers, if all are honest and alive.
    pub fn hosts(&self, round: u32) -> Option<HashSet<PeerId>> {
        let population = self.task.population.as_ref()?;
        let members = self.task.members.as_deref().unwrap_or_default();
        let sample = self.sample(round)?;
        Some(population.hosts(&sample, members))
    }

    /// In a task with a population, the clients sampled for `round`
    /// ([`Population::sample`](fl_core::records::Population::sample)), kept for the next
    /// asks.
    pub fn sample(&self, round: u32) -> Option<Arc<Sample>> {
        let population = self.task.population.as_ref()?;
        let key = round;
        let mut kept = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, sample)) = kept.iter().find(|(k, _)| *k == key) {
            return Some(sample.clone());
        }
        let sample = Arc::new(population.sample(&self.cid, round));
        if kept.len() >= SAMPLES_KEPT {
            kept.remove(0);
        }
        kept.push((key, sample.clone()));
        Some(sample)
    }

    /// Fewest updates round `round` may close with: the task's minimum, or in a
    /// population, fewer when the round's sample has fewer hosts.
    pub fn min_updates(&self, round: u32) -> u32 {
        let min = self.task.min_participants;
        match self.hosts(round) {
            Some(hosts) => min
                .min(u32::try_from(hosts.len()).unwrap_or(u32::MAX))
                .max(1),
            None => min,
        }
    }

    /// The terms with the bound that the task's published data sets: no update may claim
    /// more examples than the largest of its shards (`largest_shard`).
    pub fn with_shards(mut self, largest_shard: u64) -> Self {
        self.max_samples = Self::sample_bound(&self.task, Some(largest_shard));
        self
    }

    /// The largest L2 norm an honest update of a model of `values` values can have, where
    /// the task bounds it: at the client level, an update clipped to C plus Gaussian noise
    /// of zC per value has norm at most `C + zC (1.05 sqrt(values) + 10)`. The noise's norm
    /// exceeds `zC (sqrt(values) + t)` with probability below `exp(-t^2 / 2)` (1e-22 at
    /// t = 10: never, for an honest node), and 5% of `sqrt(values)` covers int8's rounding
    /// (half a step of max/127 per value, about 2% of the noise's norm). Without client-level
    /// DP, no bound: a robust rule is what limits an update then.
    pub fn update_norm_bound(&self, values: usize) -> Option<f64> {
        let dp = self
            .task
            .dp
            .as_ref()
            .filter(|dp| dp.level() == fl_core::records::DpLevel::Client)?;
        let (c, z) = (dp.clip_norm, dp.noise_multiplier);
        Some(c + z * c * (1.05 * (values as f64).sqrt() + 10.0))
    }

    /// The most examples an honest update of `task` can claim. A node claims the examples it
    /// trained on: with local steps in place of epochs (no DP-SGD), `steps` batches; else its
    /// whole data, at most the largest shard of published data or the task's own
    /// `max_samples` where members bring their own; never more than [`MAX_SAMPLES`].
    pub fn sample_bound(task: &Task, largest_shard: Option<u64>) -> u64 {
        let sample_level = task
            .dp
            .as_ref()
            .is_some_and(|dp| dp.level() == fl_core::records::DpLevel::Sample);
        let by_steps = match task.train.steps {
            Some(steps) if !sample_level => {
                u64::from(steps).saturating_mul(u64::from(task.train.batch_size))
            }
            _ => MAX_SAMPLES,
        };
        [
            Some(by_steps),
            largest_shard,
            task.max_samples,
            Some(MAX_SAMPLES),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(MAX_SAMPLES)
    }
}

#[cfg(test)]
mod tests {
    use fl_core::records::{DataSource, DpLevel, DpParams, Neighbours, RoundSchedule, TrainParams};
    use fl_core::tensors::Encoding;

    use super::*;

    fn task(steps: Option<u32>, data: DataSource, max_samples: Option<u64>) -> Task {
        Task {
            format: fl_core::records::task::TASK_FORMAT.into(),
            name: "bounds".into(),
            architecture: "fedavg-cnn".into(),
            initial_model: Cid::default(),
            data,
            train: TrainParams {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.05,
                momentum: 0.9,
                weight_decay: 0.0,
                proximal_mu: 0.0,
                schedule: RoundSchedule::Constant,
                steps,
                load: fl_core::records::Load::Equal,
            },
            rounds: 3,
            min_participants: 1,
            round_deadline_ms: 1000,
            grace_ms: 1000,
            dp: None,
            rule: "fedavg".into(),
            members: None,
            flops_per_sample: 1,
            seed: 0,
            update_encoding: Encoding::F32,
            max_samples,
            population: None,
            evaluate_every: None,
            secure: None,
        }
    }

    /// What an honest node can claim, by mode: the steps it takes, its shard, or the task's
    /// own bound; DP-SGD trains on all its examples even in steps mode.
    #[test]
    fn the_sample_bound_is_what_an_honest_node_can_claim() {
        let shards = DataSource::Shards {
            manifest: Cid::default(),
        };
        assert_eq!(
            Terms::sample_bound(&task(Some(5), shards.clone(), None), Some(1500)),
            160
        );
        assert_eq!(
            Terms::sample_bound(&task(None, shards.clone(), None), Some(1500)),
            1500
        );
        assert_eq!(
            Terms::sample_bound(&task(None, shards.clone(), None), None),
            MAX_SAMPLES
        );
        let own = task(None, DataSource::OwnData, Some(2000));
        assert_eq!(Terms::sample_bound(&own, None), 2000);
        let mut private = task(Some(5), shards, None);
        private.dp = Some(DpParams {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            delta: 1e-5,
            level: Some(DpLevel::Sample),
            neighbours: Some(Neighbours::AddRemove),
            epsilon_budget: None,
        });
        assert_eq!(Terms::sample_bound(&private, Some(1500)), 1500);
        let mut zero = task(None, DataSource::OwnData, Some(0));
        assert!(Terms::new(Cid::default(), zero.clone()).is_err());
        zero.max_samples = None;
        assert_eq!(
            Terms::new(Cid::default(), zero).unwrap().max_samples,
            MAX_SAMPLES
        );
    }

    /// Client level: an honest update (clipped, noised, in float32 or int8) is within the
    /// norm bound; the same update scaled by two is not. Sample level or no DP: no bound.
    #[test]
    fn honest_client_level_updates_are_within_the_norm_bound_and_scaled_ones_are_not() {
        let values = 40_000;
        let mut t = task(None, DataSource::OwnData, None);
        t.dp = Some(DpParams {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            delta: 1e-5,
            level: Some(DpLevel::Client),
            neighbours: Some(Neighbours::AddRemove),
            epsilon_budget: None,
        });
        let terms = Terms::new(Cid::default(), t.clone()).unwrap();
        let bound = terms.update_norm_bound(values).unwrap();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let mut update = fl_core::tensors::Bundle::new();
        let raw: Vec<f32> = (0..values)
            .map(|i| ((i * 7919) % 13) as f32 - 6.0)
            .collect();
        update.insert("w", vec![values], raw).unwrap();
        for _ in 0..5 {
            let noise = fl_core::privacy::NoiseConfig::new(1.0, 1.0);
            let (private, _) = fl_core::privacy::privatize(&update, &noise).unwrap();
            let flat = private.flatten();
            let q = fl_core::tensors::quantise(&flat).unwrap();
            let int8 = fl_core::tensors::dequantise(&q.values, q.scale);
            for honest in [&flat, &int8] {
                assert!(norm(honest) <= bound, "{} > {bound}", norm(honest));
                let scaled: Vec<f32> = honest.iter().map(|x| 2.0 * x).collect();
                assert!(norm(&scaled) > bound);
            }
        }
        t.dp.as_mut().unwrap().level = Some(DpLevel::Sample);
        assert_eq!(
            Terms::new(Cid::default(), t)
                .unwrap()
                .update_norm_bound(values),
            None
        );
    }
}
