//! Per-example gradients for DP-SGD, from one forward and one backward pass over the batch:
//! each layer with parameters says how its examples' gradient norms and their clipped sum
//! follow from its input and the gradient of its output, as Opacus's grad samplers do.
//!
//! The forward pass runs with the parameters held constant and a zero *probe* added to each
//! layer's output (`y = f(x; w) + p`), so that one backward pass of the summed per-example
//! losses gives `∂L/∂p = ∂L/∂y`, the gradient of every example's own loss at that layer's
//! output, and computes no parameter gradient at all. Then, per layer:
//!
//! | layer | per-example squared norm | clipped sum `Σ cᵢ gᵢ` |
//! | --- | --- | --- |
//! | linear, `y = x W + b` | `‖xᵢ‖² ‖δᵢ‖² + ‖δᵢ‖²` (ghost norm: rank one, never materialised) | `xᵀ (c ⊙ δ)`, `Σ cᵢ δᵢ` |
//! | conv2d | `‖Uᵢ δᵢᵀ‖² + ‖Σₗ δᵢ‖²` from the unfolded input `Uᵢ`, materialised a few examples at a time (`d·p` values per example, fewer than ghost clipping's `2L²` here) | `Σ cᵢ (Uᵢ δᵢᵀ)` |
//!
//! This is book-keeping (Bu et al. 2023, <https://arxiv.org/abs/2210.00038>) with the mixed
//! ghost norm (Bu et al. 2022, <https://arxiv.org/abs/2205.10683>): the clipped gradient comes
//! from the same pass that gave the norms, without the second backward pass of ghost
//! clipping (Li et al. 2022). ReLU, pooling and flattening have no parameters and need no
//! rule: the backward pass carries their gradients to the probes.
//!
//! A new layer type takes part by implementing [`GradSampler`] (its forward with a probe)
//! and [`LayerTrace`] (its norms, clipped sums and, for tests, materialised gradients).

use burn::module::{Param, ParamId};
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::module::{conv2d, linear, unfold4d};
use burn::tensor::ops::{ConvOptions, PadMode, UnfoldOptions};
use burn::tensor::{Device, Gradients, Tensor};

use super::ModelError;
use super::batch::Batch;
use super::infer::{images_tensor, labels_tensor};
use super::zoo::Architecture;
use crate::tensors::Bundle;

/// Every example's gradient of its own cross-entropy loss, for every parameter of `model`
/// (an `architecture` bundle): one tensor per parameter with PyTorch's name and layout and a
/// leading example dimension, as `torch.func.vmap(torch.func.grad(loss))` gives them.
pub fn gradients(
    architecture: Architecture,
    model: &Bundle,
    batch: &Batch,
    device: &Device,
) -> Result<Bundle, PerExampleError> {
    batch
        .check_for(architecture.num_classes())
        .map_err(|e| PerExampleError::Model(e.into()))?;
    let n = batch.labels.len();
    if n == 0 {
        return Err(PerExampleError::NoExamples);
    }
    let device = device.clone().autodiff();
    let network = architecture.build(model, &device)?;
    let mut tape = Tape::default();
    let logits = network.forward_traced(
        images_tensor(architecture, batch.images.clone(), &device),
        &mut tape,
    );
    let targets = labels_tensor(&batch.labels, &device).reshape([n, 1]);
    let loss = log_softmax(logits, 1).gather(1, targets).sum().neg();
    let grads = loss.backward();
    tape.squared_norms(&grads)?;
    tape.per_example()
}

/// Why per-example gradients cannot be computed for a network.
#[derive(Debug, thiserror::Error)]
pub enum PerExampleError {
    /// The backward pass did not reach a layer's probe (it does not feed the loss).
    #[error("layer {layer}: the loss does not depend on its output")]
    Unreached {
        /// The layer's name (`conv1`).
        layer: &'static str,
    },
    /// A layer is configured in a way its rule does not cover.
    #[error("layer {layer}: per-example gradients are not implemented for {what}")]
    Unsupported {
        /// The layer's name.
        layer: &'static str,
        /// What it has.
        what: &'static str,
    },
    /// The batch is empty.
    #[error("no examples to take gradients of")]
    NoExamples,
    /// A tensor could not be read from the device, or the model or batch does not fit.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A layer with parameters whose forward pass can be traced for per-example gradients.
pub trait GradSampler<const I: usize, const O: usize> {
    /// The layer's output for `input` with its parameters held constant, plus a zero probe
    /// whose gradient the [`Tape`] reads after the backward pass.
    fn traced(&self, name: &'static str, input: Tensor<I>, tape: &mut Tape) -> Tensor<O>;
}

/// One traced layer after the backward pass: its per-example norms and clipped sums.
pub trait LayerTrace {
    /// The layer's name (`conv1`): its tensors are `{name}.weight` and `{name}.bias`.
    fn name(&self) -> &'static str;
    /// Reads the output gradient from `grads`; returns each example's squared gradient norm
    /// over all the layer's parameters, `[batch]`.
    fn squared_norms(&mut self, grads: &Gradients) -> Result<Tensor<1>, PerExampleError>;
    /// Registers `Σᵢ coefficients[i] · gᵢ` for each of the layer's parameters in `out`.
    fn clipped_sum(&mut self, coefficients: &Tensor<2>, out: &mut GradientsParams);
    /// Puts each example's gradient of each parameter into `out`, PyTorch names and layouts
    /// with a leading example dimension (`conv1.weight`: `[batch, out, in, kh, kw]`).
    fn per_example(&mut self, out: &mut Bundle) -> Result<(), PerExampleError>;
}

/// The traced layers of one forward pass, in forward order.
#[derive(Default)]
pub struct Tape {
    layers: Vec<Box<dyn LayerTrace>>,
}

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.layers.iter().map(|l| l.name()))
            .finish()
    }
}

impl Tape {
    /// Adds a traced layer.
    pub fn push(&mut self, layer: Box<dyn LayerTrace>) {
        self.layers.push(layer);
    }

    /// Each example's squared gradient norm over every traced parameter, `[batch]`.
    pub fn squared_norms(&mut self, grads: &Gradients) -> Result<Tensor<1>, PerExampleError> {
        let mut total: Option<Tensor<1>> = None;
        for layer in &mut self.layers {
            let norms = layer.squared_norms(grads)?;
            total = Some(match total {
                None => norms,
                Some(t) => t + norms,
            });
        }
        total.ok_or(PerExampleError::Unsupported {
            layer: "network",
            what: "a network without traced layers",
        })
    }

    /// `Σᵢ cᵢ gᵢ` for every traced parameter, keyed by parameter id as the optimizer wants.
    pub fn clipped_sum(&mut self, coefficients: &Tensor<1>) -> GradientsParams {
        let [batch] = coefficients.dims();
        let column = coefficients.clone().reshape([batch, 1]);
        let mut out = GradientsParams::new();
        for layer in &mut self.layers {
            layer.clipped_sum(&column, &mut out);
        }
        out
    }

    /// Every example's gradient of every traced parameter (see [`LayerTrace::per_example`]).
    pub fn per_example(&mut self) -> Result<Bundle, PerExampleError> {
        let mut all = Bundle::new();
        for layer in &mut self.layers {
            layer.per_example(&mut all)?;
        }
        Ok(all)
    }
}

/// A zero tensor of `shape` whose gradient is kept: added to a layer's output, its gradient
/// is the output's.
fn probe<const D: usize>(like: &Tensor<D>) -> Tensor<D> {
    Tensor::zeros(like.dims(), &like.device()).require_grad()
}

/// The parameter's value as a constant of the traced pass (no gradient is computed for it).
fn constant<const D: usize>(param: &Param<Tensor<D>>) -> Tensor<D> {
    param.val().detach()
}

fn output_grad<const D: usize>(
    name: &'static str,
    probe: &Tensor<D>,
    grads: &Gradients,
) -> Result<Tensor<D>, PerExampleError> {
    probe
        .grad(grads)
        .ok_or(PerExampleError::Unreached { layer: name })
}

/// Squared L2 norm of each row of `[batch, n]`, `[batch]`: a dot product per row, one pass.
fn row_squared_norms(x: Tensor<2>) -> Tensor<1> {
    let [batch, n] = x.dims();
    let rows = x.reshape([batch, 1, n]);
    rows.clone().matmul(rows.swap_dims(1, 2)).reshape([batch])
}

/// Reads `tensor` from its device into `out` as `name` with PyTorch's `shape`.
fn put<const D: usize>(
    out: &mut Bundle,
    name: String,
    shape: Vec<usize>,
    tensor: Tensor<D>,
) -> Result<(), PerExampleError> {
    let values = super::params::values(&name, tensor)?;
    out.insert(name, shape, values)
        .map_err(|e| PerExampleError::Model(e.into()))
}

impl GradSampler<2, 2> for Linear {
    fn traced(&self, name: &'static str, input: Tensor<2>, tape: &mut Tape) -> Tensor<2> {
        let output = linear(
            input.clone(),
            constant(&self.weight),
            self.bias.as_ref().map(constant),
        );
        let probe = probe(&output);
        tape.push(Box::new(LinearTrace {
            name,
            weight: self.weight.id,
            bias: self.bias.as_ref().map(|b| b.id),
            input: input.inner(),
            probe: probe.clone(),
            output_grad: None,
        }));
        output + probe
    }
}

/// A traced linear layer: its input `x` `[batch, in]` and, after backward, `δ` `[batch, out]`.
struct LinearTrace {
    name: &'static str,
    weight: ParamId,
    bias: Option<ParamId>,
    input: Tensor<2>,
    probe: Tensor<2>,
    output_grad: Option<Tensor<2>>,
}

impl LinearTrace {
    fn delta(&self) -> Result<Tensor<2>, PerExampleError> {
        self.output_grad
            .clone()
            .ok_or(PerExampleError::Unreached { layer: self.name })
    }
}

impl LayerTrace for LinearTrace {
    fn name(&self) -> &'static str {
        self.name
    }

    fn squared_norms(&mut self, grads: &Gradients) -> Result<Tensor<1>, PerExampleError> {
        let delta = output_grad(self.name, &self.probe, grads)?;
        self.output_grad = Some(delta.clone());
        // gᵢ = xᵢᵀ δᵢ is rank one: ‖gᵢ‖² = ‖xᵢ‖² ‖δᵢ‖².
        let delta_sq = row_squared_norms(delta);
        let mut norms = row_squared_norms(self.input.clone()) * delta_sq.clone();
        if self.bias.is_some() {
            norms = norms + delta_sq;
        }
        Ok(norms)
    }

    fn clipped_sum(&mut self, coefficients: &Tensor<2>, out: &mut GradientsParams) {
        let Some(delta) = self.output_grad.take() else {
            return;
        };
        let scaled = delta * coefficients.clone(); // [batch, out]
        let weight = self.input.clone().transpose().matmul(scaled.clone()); // [in, out]
        out.register(self.weight, weight);
        if let Some(bias) = self.bias {
            let [batch, d_out] = scaled.dims();
            let ones = Tensor::<2>::ones([1, batch], &scaled.device());
            out.register(bias, ones.matmul(scaled).reshape([d_out]));
        }
    }

    fn per_example(&mut self, out: &mut Bundle) -> Result<(), PerExampleError> {
        let delta = self.delta()?;
        let [batch, d_in] = self.input.dims();
        let [_, d_out] = delta.dims();
        // PyTorch's layout [out, in]: gᵢ[o, j] = δᵢ[o] xᵢ[j].
        let weight =
            delta.clone().reshape([batch, d_out, 1]) * self.input.clone().reshape([batch, 1, d_in]);
        put(
            out,
            format!("{}.weight", self.name),
            vec![batch, d_out, d_in],
            weight,
        )?;
        if self.bias.is_some() {
            put(
                out,
                format!("{}.bias", self.name),
                vec![batch, d_out],
                delta,
            )?;
        }
        Ok(())
    }
}

impl GradSampler<4, 4> for Conv2d {
    fn traced(&self, name: &'static str, input: Tensor<4>, tape: &mut Tape) -> Tensor<4> {
        let [_, _, height, width] = input.dims();
        let ((top, bottom), (left, right)) = padding_pairs(self, height, width);
        let options = ConvOptions::new_with_padding(
            self.stride,
            [(top, bottom), (left, right)],
            self.dilation,
            self.groups,
        );
        let output = conv2d(
            input.clone(),
            constant(&self.weight),
            self.bias.as_ref().map(constant),
            options,
        );
        let probe = probe(&output);
        // Padded explicitly here, unfolded example by example after the backward pass.
        let padded = input
            .inner()
            .pad([(top, bottom), (left, right)], PadMode::Constant(0.0));
        tape.push(Box::new(Conv2dTrace {
            name,
            weight: self.weight.id,
            weight_shape: self.weight.dims(),
            bias: self.bias.as_ref().map(|b| b.id),
            padded,
            unfold: UnfoldOptions::new(self.stride, [0, 0], self.dilation),
            kernel: self.kernel_size,
            grouped: self.groups != 1,
            probe: probe.clone(),
            per_example: Vec::new(),
        }));
        output + probe
    }
}

/// `((top, bottom), (left, right))` of `conv`'s padding for an input of `height x width`, as
/// burn's `Conv2d::forward` computes it (its own helper is private to burn-nn).
fn padding_pairs(conv: &Conv2d, height: usize, width: usize) -> ((usize, usize), (usize, usize)) {
    let same = |kernel: usize, stride: usize, size: usize| {
        let out = size.div_ceil(stride);
        let total = if out > 0 {
            ((out - 1) * stride + kernel).saturating_sub(size)
        } else {
            0
        };
        (total / 2, total - total / 2)
    };
    match conv.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Same => (
            same(conv.kernel_size[0], conv.stride[0], height),
            same(conv.kernel_size[1], conv.stride[1], width),
        ),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
    }
}

/// Most bytes of unfolded input made at once: examples are unfolded in groups this size or
/// smaller, so that each buffer comes from the allocator's reused memory rather than fresh
/// pages from the kernel (a 105 MB unfold of a whole batch of 256 spent most of its time in
/// page faults).
const UNFOLD_BYTES: usize = 8 << 20;

/// A traced convolution: its padded input and, after backward, each example's gradient.
struct Conv2dTrace {
    name: &'static str,
    weight: ParamId,
    weight_shape: [usize; 4],
    bias: Option<ParamId>,
    /// The input with the convolution's padding, `[batch, in, h, w]`.
    padded: Tensor<4>,
    unfold: UnfoldOptions,
    kernel: [usize; 2],
    /// Grouped convolutions are not supported.
    grouped: bool,
    probe: Tensor<4>,
    /// Per group of examples: weight gradients, transposed, `[group, in·kh·kw, out]`, and
    /// bias gradients `[group, out]`.
    per_example: Vec<(Tensor<3>, Tensor<2>)>,
}

impl Conv2dTrace {
    fn materialised(&self) -> Result<(Tensor<3>, Tensor<2>), PerExampleError> {
        if self.per_example.is_empty() {
            return Err(PerExampleError::Unreached { layer: self.name });
        }
        let (weights, biases): (Vec<_>, Vec<_>) = self.per_example.iter().cloned().unzip();
        Ok((Tensor::cat(weights, 0), Tensor::cat(biases, 0)))
    }
}

impl LayerTrace for Conv2dTrace {
    fn name(&self) -> &'static str {
        self.name
    }

    fn squared_norms(&mut self, grads: &Gradients) -> Result<Tensor<1>, PerExampleError> {
        if self.grouped {
            return Err(PerExampleError::Unsupported {
                layer: self.name,
                what: "grouped convolutions",
            });
        }
        let delta = output_grad(self.name, &self.probe, grads)?;
        let [batch, d_out, h, w] = delta.dims();
        let delta = delta.reshape([batch, d_out, h * w]);
        let [_, d_in, kh, kw] = self.weight_shape;
        let unfolded_bytes = d_in * kh * kw * h * w * std::mem::size_of::<f32>();
        let group = (UNFOLD_BYTES / unfolded_bytes.max(1)).clamp(1, batch.max(1));
        let mut norms = Vec::with_capacity(batch.div_ceil(group));
        self.per_example.clear();
        for start in (0..batch).step_by(group) {
            let end = (start + group).min(batch);
            let padded = self.padded.clone().slice(start..end);
            let delta = delta.clone().slice(start..end);
            // Uᵢ `[in·kh·kw, L]`, then gᵢᵀ = Uᵢ δᵢᵀ: `[in·kh·kw, L] x [L, out]` per example,
            // transposed so that the large unfolded input is read as it lies.
            let unfolded = unfold4d(padded, self.kernel, self.unfold.clone());
            let weight = unfolded.matmul(delta.clone().swap_dims(1, 2));
            let bias = delta.sum_dim(2).reshape([end - start, d_out]);
            let [n, fan_in, _] = weight.dims();
            let mut sq = row_squared_norms(weight.clone().reshape([n, fan_in * d_out]));
            if self.bias.is_some() {
                sq = sq + row_squared_norms(bias.clone());
            }
            norms.push(sq);
            self.per_example.push((weight, bias));
        }
        Ok(Tensor::cat(norms, 0))
    }

    fn clipped_sum(&mut self, coefficients: &Tensor<2>, out: &mut GradientsParams) {
        let groups = std::mem::take(&mut self.per_example);
        let mut weight_sum: Option<Tensor<2>> = None;
        let mut bias_sum: Option<Tensor<2>> = None;
        let mut start = 0;
        for (weight, bias) in groups {
            let [n, fan_in, d_out] = weight.dims();
            let row = coefficients.clone().slice(start..start + n).reshape([1, n]);
            start += n;
            // Σᵢ fᵢ gᵢᵀ in one pass over the group: `[1, n] x [n, in·kh·kw·out]`.
            let w = row.clone().matmul(weight.reshape([n, fan_in * d_out]));
            let b = row.matmul(bias);
            weight_sum = Some(weight_sum.map_or(w.clone(), |s| s + w));
            bias_sum = Some(bias_sum.map_or(b.clone(), |s| s + b));
        }
        let (Some(weight), Some(bias)) = (weight_sum, bias_sum) else {
            return;
        };
        let [d_out, d_in, kh, kw] = self.weight_shape;
        let weight = weight.reshape([d_in * kh * kw, d_out]).transpose();
        out.register(self.weight, weight.reshape(self.weight_shape));
        if let Some(id) = self.bias {
            out.register(id, bias.reshape([d_out]));
        }
    }

    fn per_example(&mut self, out: &mut Bundle) -> Result<(), PerExampleError> {
        let (weight, bias) = self.materialised()?;
        let weight = weight.swap_dims(1, 2);
        let [batch, d_out, _] = weight.dims();
        let [_, d_in, kh, kw] = self.weight_shape;
        let shape = vec![batch, d_out, d_in, kh, kw];
        put(out, format!("{}.weight", self.name), shape, weight)?;
        if self.bias.is_some() {
            put(out, format!("{}.bias", self.name), vec![batch, d_out], bias)?;
        }
        Ok(())
    }
}
