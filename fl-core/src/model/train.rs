//! Local training: E epochs of SGD over a node's own batches, starting from the round's
//! global model, giving the trained model and the update (local - global).
//!
//! SGD follows PyTorch's `torch.optim.SGD`: weight decay is added to the gradient, momentum
//! has no dampening (`v = m v + g`, `w -= lr v`; burn's own default dampening is 0.1).
//! FedProx adds `mu (w - w_global)` to each gradient, the gradient of `mu/2 ||w - w_global||^2`;
//! the reported loss is the cross-entropy alone. Examples are shuffled every epoch from the
//! seed (ChaCha8, one stream per epoch); initial models come from
//! [`Architecture::init`](super::Architecture::init). On one machine and CPU backend the same
//! inputs and seed give bit-identical updates (see [`super`] on determinism).
//!
//! A non-finite loss or parameter ends training with [`TrainError::NonFinite`]: nothing
//! trained is returned, so the caller keeps its last good model, the global one it passed in.

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::ModelError;
use super::batch::{Batch, BatchError, IMAGE_LEN};
use super::config::TrainConfig;
use super::eval::argmax;
use super::infer::{images_tensor, labels_tensor};
use super::params::{INIT_STREAM, values};
use super::zoo::{Architecture, Network};
use crate::tensors::{Bundle, TensorError};

/// Metadata key of an update's number of training examples (FedAvg's weight).
pub const META_SAMPLES: &str = "samples";

/// What one epoch of local training measured.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    /// Epoch number, from 0.
    pub epoch: usize,
    /// Mean cross-entropy of the epoch's steps, weighted by images (while the model moved).
    pub loss: f64,
    /// Fraction of the epoch's images classified correctly when their step saw them.
    pub accuracy: f64,
    /// Images seen.
    pub samples: usize,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
    /// `samples / seconds`.
    pub images_per_sec: f64,
    /// Learning rate of the epoch's last step.
    pub learning_rate: f64,
}

/// The result of a local training run.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The trained parameters, with the architecture's metadata.
    pub model: Bundle,
    /// `model - global`, tensor by tensor, with [`META_SAMPLES`] set.
    pub update: Bundle,
    /// One entry per epoch.
    pub epochs: Vec<EpochMetrics>,
    /// Training examples (the update's FedAvg weight).
    pub samples: usize,
}

/// Why local training stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting cannot train.
    #[error("training setting {field} {reason}")]
    Config {
        /// The field, as in the configuration file.
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// There are no examples.
    #[error("no training examples")]
    NoData,
    /// A batch is malformed.
    #[error("training batch {index} is malformed")]
    Batch {
        /// Position of the batch in the input.
        index: usize,
        /// What is wrong.
        #[source]
        source: BatchError,
    },
    /// The loss diverged; nothing trained is returned.
    #[error("training diverged: loss is {loss} at epoch {epoch}, step {step}")]
    NonFinite {
        /// Epoch, from 0.
        epoch: usize,
        /// Step within the epoch, from 0.
        step: usize,
        /// The loss value (NaN or infinite).
        loss: f32,
    },
    /// The trained parameters hold NaN or infinity.
    #[error("training diverged: tensor {name} has a non-finite value")]
    NonFiniteParameter {
        /// The tensor.
        name: String,
    },
    /// The global model does not fit, or a tensor could not be read from the device.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Trains `global` (an `architecture` bundle) on `data` with `config` on `device` (autodiff is
/// added here). Returns the trained model, the update and per-epoch metrics.
pub fn train(
    architecture: Architecture,
    global: &Bundle,
    data: &[Batch],
    config: &TrainConfig,
    device: &Device,
) -> Result<TrainOutcome, TrainError> {
    config.validate()?;
    let classes = architecture.num_classes();
    for (index, batch) in data.iter().enumerate() {
        batch
            .check_for(classes)
            .map_err(|source| TrainError::Batch { index, source })?;
    }
    let examples = Examples::new(data);
    if examples.len() == 0 {
        return Err(TrainError::NoData);
    }

    let device = device.clone().autodiff();
    let mut network = architecture.build(global, &device)?;
    let anchor = (config.proximal_mu > 0.0).then(|| Anchor::of(&network));
    let mut optimizer = SgdConfig::new()
        .with_momentum((config.momentum > 0.0).then_some(MomentumConfig {
            momentum: config.momentum,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay((config.weight_decay > 0.0).then_some(WeightDecayConfig {
            penalty: config.weight_decay as f32,
        }))
        .init();

    let steps_per_epoch = examples.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let mut epochs = Vec::with_capacity(config.epochs);
    for epoch in 0..config.epochs {
        let started = Instant::now();
        let order = shuffled(examples.len(), config.seed, epoch);
        let (mut loss_sum, mut correct, mut lr) = (0.0f64, 0usize, config.learning_rate);
        for (step, chunk) in order.chunks(config.batch_size).enumerate() {
            let Batch { images, labels } = examples.gather(chunk);
            let n = labels.len();
            let logits = network.forward(images_tensor(architecture, images, &device));
            let targets = labels_tensor(&labels, &device).reshape([n, 1]);
            let loss = log_softmax(logits.clone(), 1)
                .gather(1, targets)
                .mean()
                .neg();

            let loss_value = values("training loss", loss.clone().detach())?
                .first()
                .copied()
                .unwrap_or(f32::NAN);
            if !loss_value.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch,
                    step,
                    loss: loss_value,
                });
            }
            let logits = values("logits", logits.detach())?;
            correct += logits
                .chunks_exact(classes)
                .zip(&labels)
                .filter(|(row, label)| argmax(row) == usize::from(**label))
                .count();
            loss_sum += f64::from(loss_value) * n as f64;

            let mut grads = GradientsParams::from_grads(loss.backward(), &network);
            if let Some(anchor) = &anchor {
                anchor.pull(&network, &mut grads, config.proximal_mu);
            }
            lr = config.schedule.rate(
                config.learning_rate,
                epoch,
                epoch * steps_per_epoch + step,
                total_steps,
            );
            network = optimizer.step(lr, network, grads);
        }
        let seconds = started.elapsed().as_secs_f64();
        let metrics = EpochMetrics {
            epoch,
            loss: loss_sum / examples.len() as f64,
            accuracy: correct as f64 / examples.len() as f64,
            samples: examples.len(),
            seconds,
            images_per_sec: examples.len() as f64 / seconds.max(f64::MIN_POSITIVE),
            learning_rate: lr,
        };
        tracing::debug!(
            architecture = %architecture,
            epoch,
            loss = metrics.loss,
            accuracy = metrics.accuracy,
            images_per_sec = metrics.images_per_sec,
            "local epoch done"
        );
        epochs.push(metrics);
    }

    let model = network.to_bundle()?;
    if let Some((name, _)) = model
        .iter()
        .find(|(_, t)| t.data.iter().any(|v| !v.is_finite()))
    {
        return Err(TrainError::NonFiniteParameter {
            name: name.to_string(),
        });
    }
    let mut update = model
        .sub(global)
        .map_err(|source: TensorError| ModelError::Layout {
            architecture,
            source,
        })?;
    update.set_metadata(META_SAMPLES, examples.len().to_string());
    Ok(TrainOutcome {
        model,
        update,
        epochs,
        samples: examples.len(),
    })
}

/// A permutation of `0..n` for `epoch`, from ChaCha8 seeded with `seed` (stream `epoch + 1`).
fn shuffled(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(INIT_STREAM + 1 + epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    // Fisher-Yates with a multiply-shift bound, independent of `rand`'s own shuffle.
    for i in (1..n).rev() {
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// All examples of the input batches, addressed by one index.
struct Examples<'a> {
    batches: &'a [Batch],
    /// `(batch, position)` of each example.
    index: Vec<(usize, usize)>,
}

impl<'a> Examples<'a> {
    fn new(batches: &'a [Batch]) -> Self {
        let index = batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.len()).map(move |i| (b, i)))
            .collect();
        Examples { batches, index }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// The examples at `positions`, in that order.
    fn gather(&self, positions: &[usize]) -> Batch {
        let mut images = Vec::with_capacity(positions.len() * IMAGE_LEN);
        let mut labels = Vec::with_capacity(positions.len());
        for &p in positions {
            let (b, i) = self.index[p];
            images.extend_from_slice(self.batches[b].image(i));
            labels.push(self.batches[b].labels[i]);
        }
        Batch { images, labels }
    }
}

/// The global parameters FedProx pulls towards, flattened, in the network's visiting order.
struct Anchor {
    params: Vec<Tensor<1>>,
}

impl Anchor {
    fn of(network: &Network) -> Self {
        struct Collect(Vec<Tensor<1>>);
        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let value = param.val().inner();
                let len = value.shape().num_elements();
                self.0.push(value.reshape([len]));
            }
        }
        let mut collect = Collect(Vec::new());
        network.visit(&mut collect);
        Anchor { params: collect.0 }
    }

    /// Adds `mu (w - w_global)` to every parameter's gradient.
    fn pull(&self, network: &Network, grads: &mut GradientsParams, mu: f64) {
        struct Pull<'a> {
            anchor: &'a [Tensor<1>],
            grads: &'a mut GradientsParams,
            mu: f64,
            next: usize,
        }
        impl ModuleVisitor for Pull<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let Some(global) = self.anchor.get(self.next) else {
                    return;
                };
                self.next += 1;
                if let Some(grad) = self.grads.remove::<D>(param.id) {
                    let value = param.val().inner();
                    let global = global.clone().reshape(value.dims());
                    self.grads
                        .register(param.id, grad + (value - global).mul_scalar(self.mu));
                }
            }
        }
        network.visit(&mut Pull {
            anchor: &self.params,
            grads,
            mu,
            next: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_fixed_by_seed_and_epoch() {
        let a = shuffled(100, 1, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, shuffled(100, 1, 0));
        assert_ne!(a, shuffled(100, 1, 1));
        assert_ne!(a, shuffled(100, 2, 0));
    }
}
