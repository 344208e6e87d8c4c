//! The reference CNN of the FedAvg paper's CIFAR-10 experiments (REFERENCE_CNN.md), without
//! local response normalisation and without the 24x24 crop.
//!
//! | layer | output |
//! | --- | --- |
//! | `conv1` 5x5, 3 -> 64, padding 2, ReLU | 64 x 32 x 32 |
//! | max pool 3x3, stride 2, padding 1 | 64 x 16 x 16 |
//! | `conv2` 5x5, 64 -> 64, padding 2, ReLU | 64 x 16 x 16 |
//! | max pool 3x3, stride 2, padding 1 | 64 x 8 x 8 |
//! | flatten (C, H, W), `fc1` 4096 -> 384, ReLU | 384 |
//! | `fc2` 384 -> 192, ReLU | 192 |
//! | `fc3` 192 -> classes (logits) | 10 |
//!
//! Padded max pooling ignores the padding (PyTorch pads with -inf): burn's flex and ndarray
//! kernels do the same, and since every pool follows a ReLU the two readings could not differ
//! here anyway. Flattening a contiguous NCHW tensor gives PyTorch's (C, H, W) order.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

use super::ModelError;
use super::params::{self, Layer};
use super::per_example::{GradSampler, Tape};
use crate::tensors::Bundle;

/// Hyper-parameters of [`FedAvgCnn`].
#[derive(Config, Debug)]
pub struct FedAvgCnnConfig {
    /// Classes, the width of the logits.
    #[config(default = 10)]
    pub num_classes: usize,
}

/// The reference CNN: two 5x5 convolutions with max pooling, then three linear layers.
#[derive(Module, Debug)]
pub struct FedAvgCnn {
    conv1: Conv2d,
    pool1: MaxPool2d,
    conv2: Conv2d,
    pool2: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    activation: Relu,
}

impl FedAvgCnnConfig {
    /// The layers with parameters, in forward order, as PyTorch names and shapes them.
    pub(crate) fn layers(&self) -> Vec<Layer> {
        vec![
            Layer::Conv2d {
                name: "conv1",
                d_in: 3,
                d_out: 64,
                kernel: 5,
            },
            Layer::Conv2d {
                name: "conv2",
                d_in: 64,
                d_out: 64,
                kernel: 5,
            },
            Layer::Linear {
                name: "fc1",
                d_in: 64 * 8 * 8,
                d_out: 384,
            },
            Layer::Linear {
                name: "fc2",
                d_in: 384,
                d_out: 192,
            },
            Layer::Linear {
                name: "fc3",
                d_in: 192,
                d_out: self.num_classes,
            },
        ]
    }

    /// A model initialised by burn (PyTorch's distributions, burn's random numbers); use
    /// [`Architecture::init`](super::Architecture::init) for a seeded, portable start.
    pub fn init(&self, device: &Device) -> FedAvgCnn {
        self.skeleton(
            Initializer::KaimingUniform {
                gain: 1.0 / 3f64.sqrt(),
                fan_out_only: false,
            },
            device,
        )
    }

    /// The model with the parameters of `bundle` (PyTorch names and layouts).
    pub fn init_with(&self, bundle: &Bundle, device: &Device) -> Result<FedAvgCnn, ModelError> {
        // Zeros are lazy: the skeleton's own tensors are never materialised.
        let m = self.skeleton(Initializer::Zeros, device);
        Ok(FedAvgCnn {
            conv1: params::load_conv(m.conv1, bundle, "conv1", device)?,
            conv2: params::load_conv(m.conv2, bundle, "conv2", device)?,
            fc1: params::load_linear(m.fc1, bundle, "fc1", device)?,
            fc2: params::load_linear(m.fc2, bundle, "fc2", device)?,
            fc3: params::load_linear(m.fc3, bundle, "fc3", device)?,
            ..m
        })
    }

    fn skeleton(&self, initializer: Initializer, device: &Device) -> FedAvgCnn {
        let conv = |channels: [usize; 2]| {
            Conv2dConfig::new(channels, [5, 5])
                .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                .with_initializer(initializer.clone())
                .init(device)
        };
        let pool = || {
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init()
        };
        let linear = |d_in, d_out| {
            LinearConfig::new(d_in, d_out)
                .with_initializer(initializer.clone())
                .init(device)
        };
        FedAvgCnn {
            conv1: conv([3, 64]),
            pool1: pool(),
            conv2: conv([64, 64]),
            pool2: pool(),
            fc1: linear(64 * 8 * 8, 384),
            fc2: linear(384, 192),
            fc3: linear(192, self.num_classes),
            activation: Relu::new(),
        }
    }
}

impl FedAvgCnn {
    /// Logits `[batch, classes]` of normalised images `[batch, 3, 32, 32]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.activation.forward(self.conv1.forward(images)); // [b, 64, 32, 32]
        let x = self.pool1.forward(x); // [b, 64, 16, 16]
        let x = self.activation.forward(self.conv2.forward(x)); // [b, 64, 16, 16]
        let x = self.pool2.forward(x); // [b, 64, 8, 8]
        let x: Tensor<2> = x.flatten(1, 3); // [b, 4096], (C, H, W) order
        let x = self.activation.forward(self.fc1.forward(x)); // [b, 384]
        let x = self.activation.forward(self.fc2.forward(x)); // [b, 192]
        self.fc3.forward(x) // [b, classes]
    }

    /// As [`FedAvgCnn::forward`] on an autodiff device, with the parameters held constant and
    /// every layer traced on `tape` for per-example gradients.
    pub fn forward_traced(&self, images: Tensor<4>, tape: &mut Tape) -> Tensor<2> {
        let x = self.conv1.traced("conv1", images, tape);
        let x = self.pool1.forward(self.activation.forward(x));
        let x = self.conv2.traced("conv2", x, tape);
        let x = self.pool2.forward(self.activation.forward(x));
        let x: Tensor<2> = x.flatten(1, 3);
        let x = self.activation.forward(self.fc1.traced("fc1", x, tape));
        let x = self.activation.forward(self.fc2.traced("fc2", x, tape));
        self.fc3.traced("fc3", x, tape)
    }

    /// The parameters with PyTorch names and layouts (linear weights `[out, in]`).
    pub fn to_bundle(&self) -> Result<Bundle, ModelError> {
        let mut bundle = Bundle::new();
        params::put_conv(&mut bundle, "conv1", &self.conv1)?;
        params::put_conv(&mut bundle, "conv2", &self.conv2)?;
        params::put_linear(&mut bundle, "fc1", &self.fc1)?;
        params::put_linear(&mut bundle, "fc2", &self.fc2)?;
        params::put_linear(&mut bundle, "fc3", &self.fc3)?;
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;
    use crate::model::Backend;

    /// PyTorch pads max pooling with -inf: an all-negative input must pool to itself.
    #[test]
    fn padded_max_pool_ignores_the_padding_like_pytorch() {
        let cpu = [
            Backend::Flex,
            #[cfg(feature = "ndarray")]
            Backend::NdArray,
        ];
        for backend in cpu {
            let device = backend.device();
            let pool = FedAvgCnnConfig::new()
                .skeleton(Initializer::Zeros, &device)
                .pool1;
            let input =
                Tensor::<4>::from_data(TensorData::new(vec![-5.0f32; 16], [1, 1, 4, 4]), &device);
            let out = params::values("pooled", pool.forward(input)).unwrap();
            assert_eq!(out, vec![-5.0; 4], "{backend}");
        }
    }

    /// Flattening NCHW must give PyTorch's (C, H, W) order, which fc1's layout assumes.
    #[test]
    fn flatten_keeps_channel_row_column_order() {
        let device = Backend::Flex.device();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..16).map(|v| v as f32).collect(), [2, 2, 2, 2]),
            &device,
        );
        let flat: Tensor<2> = x.flatten(1, 3);
        assert_eq!(flat.dims(), [2, 8]);
        assert_eq!(
            params::values("flat", flat).unwrap(),
            (0..16).map(|v| v as f32).collect::<Vec<_>>()
        );
    }
}
