//! DP-SGD (Abadi et al. 2016, <https://arxiv.org/abs/1607.00133>): the gradient of one
//! private step, as Opacus computes it.
//!
//! 1. The batch is Poisson-sampled: every example independently with probability `q`
//!    ([`PoissonSampler`], secure randomness; [`super::Trainer::private_epoch`] draws it).
//! 2. Each example's gradient of its own loss is clipped to L2 norm `C` over all parameters:
//!    `gᵢ · min(1, C / (‖gᵢ‖ + 10⁻⁶))` ([`per_example`](super::per_example): one forward and one
//!    backward pass, no per-example gradient of the linear layers is ever materialised).
//! 3. Gaussian noise `N(0, (z·C)²)` is added to every coordinate of their sum, from the
//!    project's discrete Gaussian on opendp's secure randomness ([`GaussianNoise`]).
//! 4. The sum is divided by the *expected* batch size `q·n`, not the drawn one (which would
//!    depend on the data), and handed to the optimizer: momentum and weight decay act on the
//!    noised gradient, after the noise, as with Opacus's `DPOptimizer` around `torch.optim.SGD`.
//!
//! One step is then the subsampled Gaussian mechanism with sampling rate `q` and noise
//! multiplier `z` on every example's contribution; the [accountant](crate::privacy::accountant)
//! composes it over every step (see [`DpSgd::epsilon`]).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

use super::batch::Batch;
use super::infer::{images_tensor, labels_tensor};
use super::params::values;
use super::per_example::{PerExampleError, Tape};
use super::train::TrainError;
use super::zoo::{Architecture, Network};
use crate::privacy::accountant::{self, AccountantError};
use crate::privacy::noise::{DrawnNoise, GaussianNoise, NoiseError};
use crate::privacy::sampling::SamplingError;
use crate::tensors::Bundle;

pub use super::config::DpSgdConfig;
pub use crate::privacy::sampling::PoissonSampler;

/// Opacus's stabiliser in the clipping factor `C / (‖gᵢ‖ + 10⁻⁶)`.
pub const NORM_EPSILON: f64 = 1e-6;

/// Clipping aims this fraction under `C`: per-example norms are summed in `f32` on the
/// device, and a relative error of 2⁻¹⁰ is far beyond what sums of 10⁵ squares can reach,
/// so a clipped gradient's true norm never exceeds `C`.
pub const CLIP_SAFETY: f64 = 1.0 - 1.0 / 1024.0;

/// Why a private step failed.
#[derive(Debug, thiserror::Error)]
pub enum DpSgdError {
    /// Per-example gradients could not be computed.
    #[error("per-example gradients")]
    PerExample(#[from] PerExampleError),
    /// The noise could not be drawn.
    #[error("adding noise to the clipped gradient sum")]
    Noise(#[from] NoiseError),
    /// The batch could not be drawn.
    #[error("Poisson sampling")]
    Sampling(#[from] SamplingError),
    /// The accountant refused the settings.
    #[error("privacy accounting")]
    Accountant(#[from] AccountantError),
    /// A clipped gradient holds NaN or infinity: the loss diverged.
    #[error("training diverged: the clipped gradient sum of a step holds {value}")]
    NonFinite {
        /// The first non-finite value.
        value: f32,
    },
}

/// The settings of one DP-SGD run over `examples` examples, resolved: sampling rate, steps
/// per epoch, expected batch and noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgd {
    /// The configuration it was made from.
    pub config: DpSgdConfig,
    /// Examples the node trains on, `n`.
    pub examples: usize,
    /// Steps in one epoch: `config.steps_per_epoch`, by default `⌈n / batch⌉` (Opacus:
    /// `len(data_loader)`).
    pub steps_per_epoch: usize,
    /// The sampling rate `q = 1 / ⌈n / batch⌉`, so `⌈n / batch⌉` steps see `n` examples on average.
    pub sampling_rate: f64,
    /// The expected batch size `q·n` the noised sum is divided by.
    pub expected_batch: f64,
}

impl DpSgd {
    /// The run over `examples` examples with expected batch `batch_size`.
    pub fn new(config: DpSgdConfig, examples: usize, batch_size: usize) -> Self {
        let passes = examples.div_ceil(batch_size.max(1)).max(1);
        let sampling_rate = accountant::dp_sgd_sampling_rate(examples as u64, batch_size as u64);
        DpSgd {
            config,
            examples,
            steps_per_epoch: config.steps_per_epoch.unwrap_or(passes),
            sampling_rate,
            expected_batch: sampling_rate * examples as f64,
        }
    }

    /// ε after `steps` steps at `delta`: the Poisson-subsampled Gaussian composed over every
    /// step ([`accountant::dp_sgd_epsilon`]).
    pub fn epsilon(&self, steps: u64, delta: f64) -> Result<f64, AccountantError> {
        accountant::dp_sgd_epsilon(
            self.sampling_rate,
            self.config.noise_multiplier,
            steps,
            delta,
        )
    }

    /// The gradient of one private step on `batch` (already sampled): clipped per-example
    /// gradients summed, noised, divided by the expected batch. Also returns the batch's
    /// summed loss and correct predictions, on the device (`None` for an empty batch).
    pub(crate) fn gradients(
        &self,
        architecture: Architecture,
        network: &Network,
        batch: Batch,
        device: &Device,
        noise: &mut NoiseAhead,
    ) -> Result<(GradientsParams, Option<(Tensor<1>, Tensor<1>)>), TrainError> {
        let (mut sum, metrics) = if batch.labels.is_empty() {
            (GradientsParams::new(), None)
        } else {
            let clipped = clip(architecture, network, batch, self.config.clip_norm, device)?;
            (clipped.sum, Some((clipped.loss, clipped.hits)))
        };
        self.noise(network, &mut sum, noise.next()?)?;
        Ok((sum, metrics))
    }

    /// The noise of this run's steps, for a network of `parameters` values, drawn a step ahead.
    pub(crate) fn noise_ahead(&self, parameters: usize) -> Result<NoiseAhead, TrainError> {
        let noise = GaussianNoise::new(self.config.noise_multiplier * self.config.clip_norm)
            .map_err(DpSgdError::from)?
            // One thread: the step's own computation has the others.
            .with_threads(1);
        Ok(NoiseAhead::start(noise, parameters))
    }

    /// Adds `noise`, `N(0, (z·C)²)` per coordinate, to the clipped sum (zeros for parameters an
    /// empty batch left out) and divides by the expected batch.
    fn noise(
        &self,
        network: &Network,
        sum: &mut GradientsParams,
        noise: DrawnNoise,
    ) -> Result<(), TrainError> {
        let mut gather = Gather {
            sum,
            flat: Vec::new(),
            shapes: Vec::new(),
            error: None,
        };
        network.visit(&mut gather);
        if let Some(e) = gather.error {
            return Err(e.into());
        }
        let Gather {
            sum,
            mut flat,
            shapes,
            ..
        } = gather;
        if let Some(&value) = flat.iter().find(|v| !v.is_finite()) {
            return Err(DpSgdError::NonFinite { value }.into());
        }
        noise.add_to(&mut flat).map_err(DpSgdError::from)?;
        let scale = (1.0 / self.expected_batch) as f32;
        flat.iter_mut().for_each(|v| *v *= scale);
        network.visit(&mut Scatter {
            sum,
            flat: &flat,
            shapes: &shapes,
            next: 0,
            at: 0,
        });
        Ok(())
    }
}

/// The next step's noise, drawn on its own thread while the current step computes (the
/// noise does not depend on the data); the thread is joined when the noise is taken or the
/// run ends.
pub(crate) struct NoiseAhead {
    noise: GaussianNoise,
    len: usize,
    drawing: Option<std::thread::JoinHandle<Result<DrawnNoise, NoiseError>>>,
}

impl NoiseAhead {
    fn start(noise: GaussianNoise, len: usize) -> Self {
        let mut ahead = NoiseAhead {
            noise,
            len,
            drawing: None,
        };
        ahead.draw();
        ahead
    }

    fn draw(&mut self) {
        let (noise, len) = (self.noise, self.len);
        self.drawing = Some(std::thread::spawn(move || noise.draw(len)));
    }

    /// The noise drawn for this step; the next step's starts drawing.
    fn next(&mut self) -> Result<DrawnNoise, DpSgdError> {
        let drawn = match self.drawing.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
            None => self.noise.draw(self.len)?,
        };
        self.draw();
        Ok(drawn)
    }
}

impl Drop for NoiseAhead {
    fn drop(&mut self) {
        if let Some(handle) = self.drawing.take() {
            // The unused draw is zeroed as it drops.
            let _ = handle.join();
        }
    }
}

/// One batch's clipped gradients, before noise.
struct Clip {
    /// `Σᵢ fᵢ gᵢ`, by parameter id.
    sum: GradientsParams,
    /// `‖gᵢ‖`, `[batch]`.
    norms: Tensor<1>,
    /// `fᵢ = min(1, C' / (‖gᵢ‖ + 10⁻⁶))` with `C' = C·CLIP_SAFETY`, `[batch]`.
    factors: Tensor<1>,
    /// The summed loss, `[1]`.
    loss: Tensor<1>,
    /// Correct predictions, `[1]`.
    hits: Tensor<1>,
}

/// Clips each example's gradient of `network` (on an autodiff device) on a non-empty batch.
fn clip(
    architecture: Architecture,
    network: &Network,
    batch: Batch,
    clip_norm: f64,
    device: &Device,
) -> Result<Clip, TrainError> {
    let Batch { images, labels } = batch;
    let n = labels.len();
    let mut tape = Tape::default();
    let logits = network.forward_traced(images_tensor(architecture, images, device), &mut tape);
    let targets = labels_tensor(&labels, device).reshape([n, 1]);
    // The sum of per-example losses: its gradient at each probe is every example's own.
    let loss = log_softmax(logits.clone(), 1)
        .gather(1, targets.clone())
        .sum()
        .neg();
    let hits = logits.detach().argmax(1).equal(targets).float().sum();
    let grads = loss.backward();
    let norms = tape.squared_norms(&grads).map_err(DpSgdError::from)?.sqrt();
    let factors = norms
        .clone()
        .add_scalar(NORM_EPSILON)
        .recip()
        .mul_scalar(clip_norm * CLIP_SAFETY)
        .clamp_max(1.0);
    Ok(Clip {
        sum: tape.clipped_sum(&factors),
        norms,
        factors,
        loss: loss.detach().inner(),
        hits: hits.inner(),
    })
}

/// One batch's per-example gradients clipped to `C` and summed, without noise: what a DP-SGD
/// step adds its noise to. For tests and for inspecting a clip norm.
#[derive(Debug, Clone)]
pub struct ClippedSum {
    /// `Σᵢ fᵢ gᵢ` with PyTorch's names and layouts.
    pub sum: Bundle,
    /// Each example's gradient norm `‖gᵢ‖` before clipping.
    pub norms: Vec<f32>,
    /// Each example's clipping factor `fᵢ` (its clipped gradient is `fᵢ gᵢ`, of norm at most `C`).
    pub factors: Vec<f32>,
}

/// Clips every example's gradient of `model` (an `architecture` bundle) on `batch` to
/// `clip_norm` and sums them, as a DP-SGD step does before its noise.
pub fn clipped_sum(
    architecture: Architecture,
    model: &Bundle,
    batch: &Batch,
    clip_norm: f64,
    device: &Device,
) -> Result<ClippedSum, TrainError> {
    if batch.labels.is_empty() {
        return Err(TrainError::NoData);
    }
    batch
        .check_for(architecture.num_classes())
        .map_err(|source| TrainError::Batch { index: 0, source })?;
    let device = device.clone().autodiff();
    let network = architecture.build(model, &device)?;
    let mut clip = clip(architecture, &network, batch.clone(), clip_norm, &device)?;
    let norms = values("per-example norms", clip.norms)?;
    let factors = values("clipping factors", clip.factors)?;
    let summed = network.map(&mut Replace {
        grads: &mut clip.sum,
    });
    Ok(ClippedSum {
        sum: summed.to_bundle()?,
        norms,
        factors,
    })
}

/// Puts each parameter's gradient in place of its value.
struct Replace<'a> {
    grads: &'a mut GradientsParams,
}

impl ModuleMapper for Replace<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.grads.remove::<D>(param.id) {
            Some(grad) => Param::from_tensor(grad),
            None => param,
        }
    }
}

/// Reads every parameter's clipped sum into one flat vector, in visiting order.
struct Gather<'a> {
    sum: &'a mut GradientsParams,
    flat: Vec<f32>,
    shapes: Vec<Vec<usize>>,
    error: Option<super::ModelError>,
}

impl ModuleVisitor for Gather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let dims = param.dims();
        let len = dims.iter().product::<usize>();
        match self.sum.remove::<D>(param.id) {
            Some(grad) => match values("clipped gradient", grad) {
                Ok(v) => self.flat.extend_from_slice(&v),
                Err(e) => {
                    self.error.get_or_insert(e);
                    self.flat.resize(self.flat.len() + len, 0.0);
                }
            },
            None => self.flat.resize(self.flat.len() + len, 0.0),
        }
        self.shapes.push(dims.to_vec());
    }
}

/// Registers the noised gradient back, parameter by parameter.
struct Scatter<'a> {
    sum: &'a mut GradientsParams,
    flat: &'a [f32],
    shapes: &'a [Vec<usize>],
    next: usize,
    at: usize,
}

impl ModuleVisitor for Scatter<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(shape) = self.shapes.get(self.next) else {
            return;
        };
        self.next += 1;
        let len = shape.iter().product::<usize>();
        let Some(values) = self.flat.get(self.at..self.at + len) else {
            return;
        };
        self.at += len;
        let device = param.val().inner().device();
        let grad = Tensor::<D>::from_data(TensorData::new(values.to_vec(), shape.clone()), &device);
        self.sum.register(param.id, grad);
    }
}

impl From<DpSgdError> for TrainError {
    fn from(e: DpSgdError) -> Self {
        TrainError::Private(e)
    }
}
