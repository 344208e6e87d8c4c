//! Models, local training, evaluation and inference (cargo feature `train`).
//!
//! Models and updates leave this module as [`Bundle`]s with PyTorch's names and layouts, so a
//! saved file loads in PyTorch with `safetensors.torch.load_file` and
//! `load_state_dict(strict=True)`; burn types stay inside. Library code takes a burn
//! [`Device`] picked at run time, most simply through [`Backend`].
//!
//! | file | what |
//! | --- | --- |
//! | [`zoo`] | [`Architecture`] by name (`"fedavg-cnn"`): layout, input, seeded initialisation; [`Network`] |
//! | [`cnn`] | the reference CNN of REFERENCE_CNN.md, [`FedAvgCnn`] |
//! | `params` | burn modules to and from bundles (linear weights transposed) |
//! | [`batch`] | [`Batch`]: normalised NCHW images and labels; CIFAR-10 records |
//! | [`config`] | [`TrainConfig`] (serde, for `fl.toml`) and [`LrSchedule`] |
//! | [`train`](mod@train) | [`train()`](fn@train): SGD with momentum, weight decay, schedules, FedProx |
//! | [`per_example`] | per-example gradient norms and clipped sums from one backward pass ([`per_example::GradSampler`]) |
//! | `dp_sgd` | DP-SGD steps: Poisson sampling, per-example clipping, noise (feature `dp`) |
//! | [`eval`] | [`Evaluation`]: loss, accuracy, per-class accuracy |
//! | [`infer`] | [`Classifier`]: logits and probabilities |
//! | [`device`] | [`Backend`]: `flex` (default), `ndarray` (feature `ndarray`), `wgpu` (feature `wgpu`) |
//!
//! Determinism: initial values come from ChaCha8 ([`Architecture::init`]), shuffles too, and
//! nothing in the reference CNN draws burn's own random numbers, so on one machine and one
//! CPU backend the same inputs and seed give bit-identical updates. Other CPUs may differ in
//! the last bits (burn's matrix kernels are picked at run time by CPU features).
//!
//! CPU training throughput of the reference CNN: see [`Backend`] (flex is the default
//! because it is by far the faster one).
//!
//! ```
//! use fl_core::model::{Architecture, Backend, Batch, Classifier, IMAGE_LEN, TrainConfig, train};
//!
//! let arch: Architecture = "fedavg-cnn".parse()?;
//! let global = arch.init(42)?;
//! assert_eq!(global.num_values(), 1_756_426);
//! let data = [Batch::new(vec![0.1; 2 * IMAGE_LEN], vec![3, 5])?];
//! let config = TrainConfig { batch_size: 2, ..TrainConfig::default() };
//! let trained = train(arch, &global, &data, &config, &Backend::default().device())?;
//! assert_eq!(trained.update.num_values(), 1_756_426);
//! let classifier = Classifier::new(arch, &trained.model, &Backend::default().device())?;
//! assert_eq!(classifier.probabilities(&data[0])?.row(0).len(), 10);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod allocator;
pub mod batch;
pub mod cnn;
pub mod config;
pub mod device;
#[cfg(feature = "dp")]
pub mod dp_sgd;
pub mod eval;
pub mod infer;
mod params;
pub mod per_example;
pub mod train;
pub mod zoo;

pub use batch::{Batch, BatchError, CIFAR10_NORMALIZATION, IMAGE_LEN, Normalization};
pub use burn::tensor::Device;
pub use cnn::{FedAvgCnn, FedAvgCnnConfig};
pub use config::{BadSchedule, DpSgdConfig, LrSchedule, TrainConfig};
pub use device::{Backend, UnknownBackend};
pub use eval::{ClassCount, Evaluation};
pub use infer::{ClassScores, Classifier};
pub use train::{
    EpochMetrics, Momentum, StepProgress, TrainError, TrainOutcome, Trainer, train, train_carrying,
};
pub use zoo::{Architecture, Network};

#[cfg(doc)]
use crate::tensors::Bundle;
use crate::tensors::TensorError;

/// Why a model cannot be built, read or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No architecture has this name.
    #[error("unknown architecture {name:?}; known: {}", Architecture::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "))]
    UnknownArchitecture {
        /// The name given.
        name: String,
    },
    /// A bundle's metadata does not name its architecture.
    #[error("model names no architecture (metadata key `architecture`)")]
    NoArchitecture,
    /// A bundle's tensors do not match the architecture's layout.
    #[error("parameters do not fit {architecture}")]
    Layout {
        /// The architecture expected.
        architecture: Architecture,
        /// The tensor that does not fit, and how.
        #[source]
        source: TensorError,
    },
    /// A bundle could not be assembled.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// A batch is malformed.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A tensor could not be read back from its device.
    #[error("reading {what} from the device")]
    Read {
        /// The tensor.
        what: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
