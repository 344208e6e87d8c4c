//! Parameters between burn modules and [`Bundle`]s with PyTorch's names and layouts.
//!
//! burn stores a linear layer's weight as `[in, out]`, PyTorch as `[out, in]`: linear weights
//! are transposed on the way in and out. Convolution weights share PyTorch's
//! `[out, in, kh, kw]` layout. Initial values follow PyTorch's defaults (every weight and bias
//! uniform in `±1/sqrt(fan_in)`), drawn from ChaCha8 so that a seed gives the same bytes on
//! every machine and every backend.

use burn::module::Param;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::ModelError;
use crate::tensors::{Bundle, TensorError};

/// ChaCha8 stream used for initial parameters (shuffling uses the streams after it).
pub(crate) const INIT_STREAM: u64 = 0;

/// One layer with parameters, as PyTorch names and shapes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    /// `nn.Conv2d(in, out, kernel)`: `weight` `[out, in, k, k]`, `bias` `[out]`.
    Conv2d {
        /// Module name (`conv1`).
        name: &'static str,
        /// Input channels.
        d_in: usize,
        /// Output channels.
        d_out: usize,
        /// Square kernel side.
        kernel: usize,
    },
    /// `nn.Linear(in, out)`: `weight` `[out, in]`, `bias` `[out]`.
    Linear {
        /// Module name (`fc1`).
        name: &'static str,
        /// Input features.
        d_in: usize,
        /// Output features.
        d_out: usize,
    },
}

impl Layer {
    /// Its tensors' names and PyTorch shapes: weight, then bias.
    pub(crate) fn tensors(&self) -> [(String, Vec<usize>); 2] {
        match *self {
            Layer::Conv2d {
                name,
                d_in,
                d_out,
                kernel,
            } => [
                (format!("{name}.weight"), vec![d_out, d_in, kernel, kernel]),
                (format!("{name}.bias"), vec![d_out]),
            ],
            Layer::Linear { name, d_in, d_out } => [
                (format!("{name}.weight"), vec![d_out, d_in]),
                (format!("{name}.bias"), vec![d_out]),
            ],
        }
    }

    /// Inputs feeding one output, which sets PyTorch's default initialisation bound.
    fn fan_in(&self) -> usize {
        match *self {
            Layer::Conv2d { d_in, kernel, .. } => d_in * kernel * kernel,
            Layer::Linear { d_in, .. } => d_in,
        }
    }
}

/// The layout of `layers`: every tensor with its shape, filled with zeros.
pub(crate) fn layout(layers: &[Layer]) -> Result<Bundle, ModelError> {
    let mut bundle = Bundle::new();
    for layer in layers {
        for (name, shape) in layer.tensors() {
            let len = shape.iter().product();
            bundle.insert(name, shape, vec![0.0; len])?;
        }
    }
    Ok(bundle)
}

/// PyTorch's default initialisation of `layers`, drawn from ChaCha8 seeded with `seed`.
pub(crate) fn init(layers: &[Layer], seed: u64) -> Result<Bundle, ModelError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(INIT_STREAM);
    let mut bundle = Bundle::new();
    for layer in layers {
        let bound = 1.0 / (layer.fan_in() as f32).sqrt();
        for (name, shape) in layer.tensors() {
            let len = shape.iter().product();
            let data = (0..len)
                .map(|_| bound * (2.0 * unit(&mut rng) - 1.0))
                .collect();
            bundle.insert(name, shape, data)?;
        }
    }
    Ok(bundle)
}

/// A uniform value in `[0, 1)` from the top 24 bits of one draw (independent of `rand`'s
/// sampling code, which may change between releases).
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// The values of a tensor, read back from its device.
pub(crate) fn values<const D: usize>(
    what: &str,
    tensor: Tensor<D>,
) -> Result<Vec<f32>, ModelError> {
    let read = |source: Box<dyn std::error::Error + Send + Sync>| ModelError::Read {
        what: what.to_string(),
        source,
    };
    let data = tensor.try_into_data().map_err(|e| read(Box::new(e)))?;
    data.try_into_vec::<f32>().map_err(|e| read(Box::new(e)))
}

/// The tensor `name` of a bundle as a parameter on `device`, after checking that its PyTorch
/// shape is `expected`; `transposed` turns a `[out, in]` matrix into burn's `[in, out]`.
fn param<const D: usize>(
    bundle: &Bundle,
    name: &str,
    expected: Vec<usize>,
    transposed: bool,
    device: &Device,
) -> Result<Param<Tensor<D>>, ModelError> {
    let t = bundle.get(name).ok_or_else(|| TensorError::Missing {
        name: name.to_string(),
    })?;
    if t.shape != expected {
        return Err(TensorError::Shape {
            name: name.to_string(),
            expected,
            actual: t.shape.clone(),
        }
        .into());
    }
    let data = match (transposed, t.shape.as_slice()) {
        (true, &[d_out, d_in]) => TensorData::new(transpose(&t.data, d_out, d_in), [d_in, d_out]),
        _ => TensorData::new(t.data.clone(), t.shape.clone()),
    };
    Ok(Param::from_tensor(Tensor::from_data(data, device)))
}

/// Puts a convolution's weight and bias into `bundle` as `{name}.weight`, `{name}.bias`.
pub(crate) fn put_conv(bundle: &mut Bundle, name: &str, conv: &Conv2d) -> Result<(), ModelError> {
    let weight_name = format!("{name}.weight");
    let shape = conv.weight.dims().to_vec();
    let weight = values(&weight_name, conv.weight.val())?;
    bundle.insert(weight_name, shape, weight)?;
    put_bias(bundle, name, conv.bias.as_ref())
}

/// Puts a linear layer's weight (transposed to PyTorch's `[out, in]`) and bias into `bundle`.
pub(crate) fn put_linear(
    bundle: &mut Bundle,
    name: &str,
    linear: &Linear,
) -> Result<(), ModelError> {
    let weight_name = format!("{name}.weight");
    let [d_in, d_out] = linear.weight.dims();
    let burn_layout = values(&weight_name, linear.weight.val())?;
    bundle.insert(
        weight_name,
        vec![d_out, d_in],
        transpose(&burn_layout, d_in, d_out),
    )?;
    put_bias(bundle, name, linear.bias.as_ref())
}

fn put_bias(
    bundle: &mut Bundle,
    name: &str,
    bias: Option<&Param<Tensor<1>>>,
) -> Result<(), ModelError> {
    if let Some(bias) = bias {
        let bias_name = format!("{name}.bias");
        let shape = bias.dims().to_vec();
        let values = values(&bias_name, bias.val())?;
        bundle.insert(bias_name, shape, values)?;
    }
    Ok(())
}

/// `conv` with its weight and bias taken from `bundle` (shapes checked against `conv`'s own).
pub(crate) fn load_conv(
    mut conv: Conv2d,
    bundle: &Bundle,
    name: &str,
    device: &Device,
) -> Result<Conv2d, ModelError> {
    let shape = conv.weight.lazy_shape().to_vec();
    let d_out = shape[0];
    conv.weight = param(bundle, &format!("{name}.weight"), shape, false, device)?;
    conv.bias = Some(param(
        bundle,
        &format!("{name}.bias"),
        vec![d_out],
        false,
        device,
    )?);
    Ok(conv)
}

/// `linear` with its weight (transposed from PyTorch's `[out, in]`) and bias taken from `bundle`
/// (shapes checked against `linear`'s own).
pub(crate) fn load_linear(
    mut linear: Linear,
    bundle: &Bundle,
    name: &str,
    device: &Device,
) -> Result<Linear, ModelError> {
    let [d_in, d_out] = linear.weight.lazy_shape().dims();
    linear.weight = param(
        bundle,
        &format!("{name}.weight"),
        vec![d_out, d_in],
        true,
        device,
    )?;
    linear.bias = Some(param(
        bundle,
        &format!("{name}.bias"),
        vec![d_out],
        false,
        device,
    )?);
    Ok(linear)
}

/// The transpose of a row-major `rows x cols` matrix.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_rows_and_columns() {
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }

    #[test]
    fn init_is_seeded_and_within_pytorch_bounds() {
        let layers = [Layer::Linear {
            name: "fc",
            d_in: 16,
            d_out: 4,
        }];
        let a = init(&layers, 7).unwrap();
        assert_eq!(a, init(&layers, 7).unwrap());
        assert_ne!(a, init(&layers, 8).unwrap());
        let w = a.get("fc.weight").unwrap();
        assert_eq!(w.shape, vec![4, 16]);
        assert!(w.data.iter().all(|v| v.abs() <= 0.25));
        assert!(
            w.data.iter().any(|v| v.abs() > 0.2),
            "values should fill the range"
        );
    }
}
