//! The reference CNN: parameters and model files, parity with PyTorch, the CPU backend's max pooling and
//! convolution gradients, local training, and throughput. One test binary, so that burn is linked once.
#![cfg(feature = "train")]

mod conv_grad;
#[cfg(feature = "dp")]
mod dp_sgd;
mod max_pool;
mod params;
mod parity;
mod throughput;
mod training;
#[cfg(feature = "wgpu")]
mod wgpu;
