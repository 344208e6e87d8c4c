//! Models by name: each [`Architecture`] knows its parameter layout, its input and its
//! initialisation, and builds a [`Network`] from a [`Bundle`].

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::ModelError;
use super::batch::{CIFAR10_NORMALIZATION, Normalization};
use super::cnn::{FedAvgCnn, FedAvgCnnConfig};
use super::params::{self, Layer};
use super::per_example::Tape;
use crate::tensors::Bundle;

/// Metadata key naming a bundle's architecture (`"fedavg-cnn"`).
pub const META_ARCHITECTURE: &str = "architecture";
/// Metadata key of the per-channel input mean, a JSON array (`"[0.4914, 0.4822, 0.4465]"`).
pub const META_INPUT_MEAN: &str = "input_mean";
/// Metadata key of the per-channel input standard deviation, a JSON array.
pub const META_INPUT_STD: &str = "input_std";
/// Metadata key of the input shape of one example, a JSON array (`"[3, 32, 32]"`).
pub const META_INPUT_SHAPE: &str = "input_shape";

/// A model the federation can train, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// The reference CIFAR-10 CNN of the FedAvg paper (REFERENCE_CNN.md), 1,756,426 parameters.
    FedAvgCnn,
}

impl Architecture {
    /// Every architecture, for listings and error messages.
    pub const ALL: &'static [Architecture] = &[Architecture::FedAvgCnn];

    /// Its name in configuration, metadata and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::FedAvgCnn => "fedavg-cnn",
        }
    }

    /// Shape of one input example (channels, height, width).
    pub fn input_shape(self) -> [usize; 3] {
        match self {
            Architecture::FedAvgCnn => [3, 32, 32],
        }
    }

    /// Number of classes (width of the logits).
    pub fn num_classes(self) -> usize {
        match self {
            Architecture::FedAvgCnn => FedAvgCnnConfig::new().num_classes,
        }
    }

    /// The normalisation its inputs must have had.
    pub fn normalization(self) -> Normalization {
        match self {
            Architecture::FedAvgCnn => CIFAR10_NORMALIZATION,
        }
    }

    fn layers(self) -> Vec<Layer> {
        match self {
            Architecture::FedAvgCnn => FedAvgCnnConfig::new().layers(),
        }
    }

    /// Its parameters' PyTorch names and shapes, as a bundle of zeros with its metadata.
    pub fn layout(self) -> Result<Bundle, ModelError> {
        let mut bundle = params::layout(&self.layers())?;
        self.stamp(&mut bundle);
        Ok(bundle)
    }

    /// Number of parameters.
    pub fn num_params(self) -> usize {
        self.layers()
            .iter()
            .flat_map(|l| l.tensors())
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// Floating-point operations to train on one example: forward multiply-adds x 2, and
    /// the backward pass counted as twice the forward (the usual 3x rule). Credits use it.
    pub fn training_flops_per_sample(self) -> u64 {
        let forward_macs: u64 = match self {
            // conv1 at 32x32, conv2 at 16x16 (5x5 kernels), then the three linear layers.
            Architecture::FedAvgCnn => {
                32 * 32 * 64 * (3 * 25)
                    + 16 * 16 * 64 * (64 * 25)
                    + 4096 * 384
                    + 384 * 192
                    + 192 * 10
            }
        };
        3 * 2 * forward_macs
    }

    /// Initial parameters as PyTorch's defaults would draw them, from a portable seeded RNG:
    /// the same seed gives the same bytes everywhere.
    pub fn init(self, seed: u64) -> Result<Bundle, ModelError> {
        let mut bundle = params::init(&self.layers(), seed)?;
        self.stamp(&mut bundle);
        Ok(bundle)
    }

    /// Records the architecture and its input normalisation in `bundle`'s metadata.
    pub fn stamp(self, bundle: &mut Bundle) {
        let norm = self.normalization();
        bundle.set_metadata(META_ARCHITECTURE, self.name());
        bundle.set_metadata(META_INPUT_MEAN, json_array(&norm.mean));
        bundle.set_metadata(META_INPUT_STD, json_array(&norm.std));
        bundle.set_metadata(META_INPUT_SHAPE, format!("{:?}", self.input_shape()));
        // What `safetensors.torch.save_file` writes; some tools look for it.
        bundle.set_metadata("format", "pt");
    }

    /// The architecture a bundle's metadata names.
    pub fn of(bundle: &Bundle) -> Result<Architecture, ModelError> {
        bundle
            .metadata()
            .get(META_ARCHITECTURE)
            .ok_or(ModelError::NoArchitecture)?
            .parse()
    }

    /// Checks that `bundle` has exactly this architecture's tensor names and shapes.
    pub fn check(self, bundle: &Bundle) -> Result<(), ModelError> {
        self.layout()?
            .check_layout(bundle)
            .map_err(|source| ModelError::Layout {
                architecture: self,
                source,
            })
    }

    /// The network with `bundle`'s parameters on `device` (an autodiff device for training).
    pub fn build(self, bundle: &Bundle, device: &Device) -> Result<Network, ModelError> {
        self.check(bundle)?;
        let layout_error = |source| ModelError::Layout {
            architecture: self,
            source,
        };
        Ok(match self {
            Architecture::FedAvgCnn => {
                Network::FedAvgCnn(FedAvgCnnConfig::new().init_with(bundle, device).map_err(
                    |e| match e {
                        ModelError::Tensor(source) => layout_error(source),
                        other => other,
                    },
                )?)
            }
        })
    }
}

fn json_array(values: &[f32]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v}")).collect();
    format!("[{}]", items.join(", "))
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Architecture {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Architecture::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .ok_or_else(|| ModelError::UnknownArchitecture {
                name: s.to_string(),
            })
    }
}

/// A network of any [`Architecture`], as burn modules.
#[derive(Module, Debug)]
pub enum Network {
    /// [`Architecture::FedAvgCnn`].
    FedAvgCnn(FedAvgCnn),
}

impl Network {
    /// Its architecture.
    pub fn architecture(&self) -> Architecture {
        match self {
            Network::FedAvgCnn(_) => Architecture::FedAvgCnn,
        }
    }

    /// Logits `[batch, classes]` of normalised images `[batch, channels, height, width]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Network::FedAvgCnn(m) => m.forward(images),
        }
    }

    /// As [`Network::forward`], tracing every layer on `tape` for per-example gradients (an
    /// autodiff device; the parameters are held constant).
    pub fn forward_traced(&self, images: Tensor<4>, tape: &mut Tape) -> Tensor<2> {
        match self {
            Network::FedAvgCnn(m) => m.forward_traced(images, tape),
        }
    }

    /// The parameters with PyTorch names and layouts, and the architecture's metadata.
    pub fn to_bundle(&self) -> Result<Bundle, ModelError> {
        let mut bundle = match self {
            Network::FedAvgCnn(m) => m.to_bundle()?,
        };
        self.architecture().stamp(&mut bundle);
        Ok(bundle)
    }
}
