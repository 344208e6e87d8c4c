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

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::ModelError;
use super::batch::{Batch, BatchError, IMAGE_LEN};
use super::config::TrainConfig;
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
        /// Step within the epoch, from 0, at which the divergence was read (the loss is read
        /// at step 0 and then every [`LOSS_READ_EVERY`] steps).
        step: usize,
        /// The summed loss since the previous read (NaN or infinite).
        loss: f32,
    },
    /// The trained parameters hold NaN or infinity.
    #[error("training diverged: tensor {name} has a non-finite value")]
    NonFiniteParameter {
        /// The tensor.
        name: String,
    },
    /// An earlier epoch failed; its parameters are lost.
    #[error("the trainer stopped on an earlier error; start again from the last good model")]
    Stopped,
    /// The global model does not fit, or a tensor could not be read from the device.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A DP-SGD step failed.
    #[cfg(feature = "dp")]
    #[error("DP-SGD step")]
    Private(#[source] super::dp_sgd::DpSgdError),
    /// DP-SGD was asked for in a build without differential privacy.
    #[error("DP-SGD needs fl-core's `dp` feature")]
    NoPrivacy,
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
    train_carrying(architecture, global, data, config, device, None, |_| true)
        .map(|(outcome, _)| outcome)
}

/// As [`train`], but starting with the momentum `carried` from this node's previous run (on
/// the same `device`), and handing back the momentum this run ends with, for the next one.
///
/// Rounds of a few local steps that each start with no momentum take those steps at a
/// fraction of their size (4 steps at momentum 0.9: a quarter); carrying it over makes
/// each round go on with the node's own optimizer, as local SGD with momentum does (Lin
/// et al., 2020, "Don't use large mini-batches, use local SGD"). `on_step` is called after
/// every step and says whether to go on: a run it stops counts the images it trained on
/// as its samples. (DP-SGD takes all its steps: its accounting counts them.)
pub fn train_carrying(
    architecture: Architecture,
    global: &Bundle,
    data: &[Batch],
    config: &TrainConfig,
    device: &Device,
    carried: Option<Momentum>,
    mut on_step: impl FnMut(StepProgress) -> bool,
) -> Result<(TrainOutcome, Momentum), TrainError> {
    config.validate()?;
    let examples = Examples::checked(data, architecture.num_classes())?;
    let mut trainer = Trainer::new(
        architecture,
        global,
        config,
        examples.len().div_ceil(config.batch_size),
        device,
    )?;
    if let Some(momentum) = carried {
        trainer.optimizer = momentum.0;
    }
    let mut epochs = Vec::with_capacity(config.epochs);
    let more = std::cell::Cell::new(true);
    for epoch in 0..config.epochs {
        #[cfg(feature = "dp")]
        if config.dp_sgd.is_some() {
            epochs.push(trainer.private_epoch(data, None, |p| {
                on_step(p);
            })?);
            continue;
        }
        if !more.get() {
            break;
        }
        let order = shuffled(examples.len(), config.seed, epoch);
        let batches = order
            .chunks(config.batch_size)
            .take_while(|_| more.get())
            .map(|chunk| examples.gather(chunk));
        epochs.push(trainer.epoch(batches, |p| more.set(on_step(p)))?);
    }
    let samples = match more.get() {
        true => examples.len(),
        false => epochs.iter().map(|e| e.samples).sum(),
    };
    let model = trainer.model()?;
    let mut update = model
        .sub(global)
        .map_err(|source: TensorError| ModelError::Layout {
            architecture,
            source,
        })?;
    update.set_metadata(META_SAMPLES, samples.to_string());
    let outcome = TrainOutcome {
        model,
        update,
        epochs,
        samples,
    };
    Ok((outcome, Momentum(trainer.optimizer)))
}

/// The SGD momentum one node's training ends with, to start its next run from.
pub struct Momentum(ModuleOptimizer);

impl std::fmt::Debug for Momentum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Momentum").finish_non_exhaustive()
    }
}

/// Steps between two reads of the loss from the device: each read waits for the device to
/// finish, so a GPU is kept busy by reading rarely. Divergence is noticed at the next read.
pub const LOSS_READ_EVERY: usize = 8;

/// Where an epoch stands, after each step, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    /// Epoch, from 0.
    pub epoch: usize,
    /// Steps done in this epoch.
    pub steps: usize,
    /// Images seen in this epoch.
    pub images: usize,
}

/// Training that goes on epoch by epoch over batches the caller supplies (a fresh augmented,
/// shuffled stream each epoch, say), keeping the optimizer's momentum between epochs.
///
/// After an error the trainer's parameters are not to be used: keep the last good
/// [`Trainer::model`] instead.
pub struct Trainer {
    architecture: Architecture,
    /// None after an error.
    network: Option<Network>,
    optimizer: ModuleOptimizer,
    anchor: Option<Anchor>,
    config: TrainConfig,
    device: Device,
    steps_per_epoch: usize,
    epochs_done: usize,
    /// DP-SGD's next noise, drawn while a step computes; kept from one epoch to the next so
    /// that an epoch's first step does not wait for its noise either.
    #[cfg(feature = "dp")]
    noise: Option<super::dp_sgd::NoiseAhead>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("architecture", &self.architecture)
            .field("config", &self.config)
            .field("steps_per_epoch", &self.steps_per_epoch)
            .field("epochs_done", &self.epochs_done)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Starts from `global` on `device` (autodiff is added here). `steps_per_epoch` is what the
    /// learning-rate schedule counts with; epochs may take fewer or more steps.
    pub fn new(
        architecture: Architecture,
        global: &Bundle,
        config: &TrainConfig,
        steps_per_epoch: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if cfg!(not(feature = "dp")) && config.dp_sgd.is_some() {
            return Err(TrainError::NoPrivacy);
        }
        let device = device.clone().autodiff();
        // Parameters numbered the same in every network of the architecture, so that
        // carried momentum finds its parameters.
        let network = architecture.build(global, &device)?.map(&mut Numbered(0));
        let anchor = (config.proximal_mu > 0.0).then(|| Anchor::of(&network));
        let optimizer = SgdConfig::new()
            .with_momentum((config.momentum > 0.0).then_some(MomentumConfig {
                momentum: config.momentum,
                dampening: 0.0,
                nesterov: false,
            }))
            .with_weight_decay((config.weight_decay > 0.0).then_some(WeightDecayConfig {
                penalty: config.weight_decay as f32,
            }))
            .init();
        Ok(Trainer {
            architecture,
            network: Some(network),
            optimizer,
            anchor,
            config: config.clone(),
            device,
            steps_per_epoch: steps_per_epoch.max(1),
            epochs_done: 0,
            #[cfg(feature = "dp")]
            noise: None,
        })
    }

    /// Epochs trained so far.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// Runs one epoch over `batches`, calling `on_step` after every step.
    ///
    /// A DP-SGD trainer refuses: its batches are drawn by Poisson sampling, in
    /// [`Trainer::private_epoch`].
    pub fn epoch<I>(
        &mut self,
        batches: I,
        on_step: impl FnMut(StepProgress),
    ) -> Result<EpochMetrics, TrainError>
    where
        I: IntoIterator<Item = Batch>,
    {
        if self.config.dp_sgd.is_some() {
            return Err(TrainError::Config {
                field: "dp_sgd",
                reason: "draws its own batches by Poisson sampling: train with Trainer::private_epoch",
            });
        }
        self.run_epoch(
            batches.into_iter().map(Ok),
            on_step,
            |trainer, network, batch| Ok(trainer.sgd_gradients(network, batch)),
        )
    }

    /// Runs `steps` DP-SGD steps over `data` (all of this node's examples, normalised, no
    /// augmentation; `None`: one epoch, `⌈n / batch_size⌉` steps), each on a fresh
    /// Poisson-sampled batch, calling `on_step` after every step. Needs `config.dp_sgd`.
    #[cfg(feature = "dp")]
    pub fn private_epoch(
        &mut self,
        data: &[Batch],
        steps: Option<usize>,
        on_step: impl FnMut(StepProgress),
    ) -> Result<EpochMetrics, TrainError> {
        let Some(config) = self.config.dp_sgd else {
            return Err(TrainError::Config {
                field: "dp_sgd",
                reason: "must be set for a private epoch",
            });
        };
        let examples = Examples::checked(data, self.architecture.num_classes())?;
        let private = super::dp_sgd::DpSgd::new(config, examples.len(), self.config.batch_size);
        let mut sampler = super::dp_sgd::PoissonSampler::new(private.sampling_rate)
            .map_err(|e| TrainError::Private(e.into()))?;
        let steps = steps.unwrap_or(private.steps_per_epoch);
        let batches = (0..steps).map(|_| {
            let taken = sampler
                .sample(examples.len())
                .map_err(|e| TrainError::Private(e.into()))?;
            Ok(examples.gather(&taken))
        });
        // The next step's noise is drawn while this step computes: it does not depend on the data.
        let mut noise = match self.noise.take() {
            Some(noise) => noise,
            None => private.noise_ahead(self.architecture.num_params())?,
        };
        let metrics = self.run_epoch(batches, on_step, |trainer, network, batch| {
            private.gradients(
                trainer.architecture,
                network,
                batch,
                &trainer.device,
                &mut noise,
            )
        })?;
        self.noise = Some(noise);
        Ok(metrics)
    }

    /// The gradient of the batch's mean cross-entropy, with its summed loss and hits.
    fn sgd_gradients(&self, network: &Network, batch: Batch) -> StepGradients {
        let Batch {
            images: pixels,
            labels,
        } = batch;
        let n = labels.len();
        let logits = network.forward(images_tensor(self.architecture, pixels, &self.device));
        let targets = labels_tensor(&labels, &self.device).reshape([n, 1]);
        let loss = log_softmax(logits.clone(), 1)
            .gather(1, targets.clone())
            .mean()
            .neg();
        let hits = logits.detach().argmax(1).equal(targets).float().sum();
        let weighted = loss.clone().detach().mul_scalar(n as f32);
        let grads = GradientsParams::from_grads(loss.backward(), network);
        (grads, Some((weighted, hits)))
    }

    /// The epoch loop shared by plain and private training: `gradients` turns a batch into the
    /// gradient the optimizer takes (and the batch's summed loss and hits, on the device).
    fn run_epoch<I>(
        &mut self,
        batches: I,
        mut on_step: impl FnMut(StepProgress),
        mut gradients: impl FnMut(&Self, &Network, Batch) -> Result<StepGradients, TrainError>,
    ) -> Result<EpochMetrics, TrainError>
    where
        I: Iterator<Item = Result<Batch, TrainError>>,
    {
        let mut network = self.network.take().ok_or(TrainError::Stopped)?;
        let started = Instant::now();
        let epoch = self.epochs_done;
        let classes = self.architecture.num_classes();
        let total_steps = self.steps_per_epoch * self.config.epochs.max(epoch + 1);
        let mut lr = self.config.learning_rate;
        let (mut loss_sum, mut correct, mut images) = (0.0f64, 0usize, 0usize);
        // Sums since the last read, kept on the device.
        let mut pending: Option<(Tensor<1>, Tensor<1>)> = None;
        let mut step = 0;
        for (index, batch) in batches.enumerate() {
            let batch = batch?;
            batch
                .check_for(classes)
                .map_err(|source| TrainError::Batch { index, source })?;
            let n = batch.labels.len();
            // An empty batch is a step only for DP-SGD (noise alone); plain SGD skips it.
            if n == 0 && self.config.dp_sgd.is_none() {
                continue;
            }
            let (mut grads, sums) = gradients(self, &network, batch)?;
            if let Some((weighted, hits)) = sums {
                pending = Some(match pending {
                    None => (weighted, hits),
                    Some((l, c)) => (l + weighted, c + hits),
                });
            }
            if let Some(anchor) = &self.anchor {
                anchor.pull(&network, &mut grads, self.config.proximal_mu);
            }
            lr = self.config.schedule.rate(
                self.config.learning_rate,
                epoch,
                epoch * self.steps_per_epoch + step,
                total_steps,
            );
            network = self.optimizer.step(lr, network, grads);
            images += n;

            if step % LOSS_READ_EVERY == 0 {
                let (l, c) = read_sums(pending.take(), epoch, step)?;
                loss_sum += l;
                correct += c;
            }
            step += 1;
            on_step(StepProgress {
                epoch,
                steps: step,
                images,
            });
        }
        if step == 0 {
            return Err(TrainError::NoData);
        }
        let (l, c) = read_sums(pending.take(), epoch, step - 1)?;
        loss_sum += l;
        correct += c;
        self.network = Some(network);
        self.epochs_done += 1;

        let seconds = started.elapsed().as_secs_f64();
        let metrics = EpochMetrics {
            epoch,
            loss: loss_sum / images.max(1) as f64,
            accuracy: correct as f64 / images.max(1) as f64,
            samples: images,
            seconds,
            images_per_sec: images as f64 / seconds.max(f64::MIN_POSITIVE),
            learning_rate: lr,
        };
        tracing::debug!(
            architecture = %self.architecture,
            epoch,
            loss = metrics.loss,
            accuracy = metrics.accuracy,
            images_per_sec = metrics.images_per_sec,
            "local epoch done"
        );
        Ok(metrics)
    }

    /// The current parameters, with the architecture's metadata; refuses non-finite ones.
    pub fn model(&self) -> Result<Bundle, TrainError> {
        let model = self
            .network
            .as_ref()
            .ok_or(TrainError::Stopped)?
            .to_bundle()?;
        if let Some((name, _)) = model
            .iter()
            .find(|(_, t)| t.data.iter().any(|v| !v.is_finite()))
        {
            return Err(TrainError::NonFiniteParameter {
                name: name.to_string(),
            });
        }
        Ok(model)
    }
}

/// A step's gradient, with the batch's summed loss and hits on the device (`None`: empty batch).
type StepGradients = (GradientsParams, Option<(Tensor<1>, Tensor<1>)>);

/// Reads the loss and hit sums kept on the device; a non-finite loss is divergence.
fn read_sums(
    pending: Option<(Tensor<1>, Tensor<1>)>,
    epoch: usize,
    step: usize,
) -> Result<(f64, usize), TrainError> {
    let Some((loss, hits)) = pending else {
        return Ok((0.0, 0));
    };
    let loss = values("training loss", loss)?
        .first()
        .copied()
        .unwrap_or(f32::NAN);
    if !loss.is_finite() {
        return Err(TrainError::NonFinite { epoch, step, loss });
    }
    let hits = values("training hits", hits)?
        .first()
        .copied()
        .unwrap_or(0.0);
    Ok((f64::from(loss), hits as usize))
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
pub(crate) struct Examples<'a> {
    batches: &'a [Batch],
    /// `(batch, position)` of each example.
    index: Vec<(usize, usize)>,
}

impl<'a> Examples<'a> {
    /// The examples of `batches`, each batch checked for a model of `classes` classes; at
    /// least one.
    fn checked(batches: &'a [Batch], classes: usize) -> Result<Self, TrainError> {
        for (index, batch) in batches.iter().enumerate() {
            batch
                .check_for(classes)
                .map_err(|source| TrainError::Batch { index, source })?;
        }
        let examples = Examples::new(batches);
        if examples.len() == 0 {
            return Err(TrainError::NoData);
        }
        Ok(examples)
    }

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

/// Gives a network's parameters the ids 0, 1, 2, ... in visiting order.
struct Numbered(u64);

impl ModuleMapper for Numbered {
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.id = ParamId::from(self.0);
        self.0 += 1;
        param
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
