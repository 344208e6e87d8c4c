//! Where tensors live: a burn [`Device`] picked at run time by [`Backend`] name.
//!
//! Training throughput of the reference CNN, batch 64, SGD with momentum, loss read back
//! every step, release build, on the 2-core x86_64 build machine (AVX-512, shared with other
//! builds, hence the spread), measured with `fl-core/tests/model/throughput.rs` and
//! `experiments/pytorch/bench_train.py`:
//!
//! | backend | images/s |
//! | --- | --- |
//! | burn `flex` | 290 (195 to 295 over six runs) |
//! | burn `ndarray` | 8.5 |
//! | PyTorch 2.15 CPU (2 threads), for comparison | 610 (560 to 630 over five runs) |
//!
//! `ndarray` is built only with the `ndarray` feature. burn's `x86-v4` feature (AVX-512
//! matrix kernels) made no measurable difference.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// The burn backends this build can train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// burn's `flex` CPU backend (pure Rust, SIMD, rayon). The default: the faster CPU
    /// backend, about 290 training images/s for the reference CNN at batch 64.
    #[default]
    Flex,
    /// burn's `ndarray` CPU backend (deprecated by burn in favour of `flex`): about 8.5
    /// training images/s for the reference CNN at batch 64, over 20 times slower than `flex`
    /// (feature `ndarray`).
    #[cfg(feature = "ndarray")]
    NdArray,
    /// burn's `wgpu` backend (Vulkan, Metal or DX12), on the best adapter found.
    #[cfg(feature = "wgpu")]
    Wgpu,
}

impl Backend {
    /// Every backend in this build.
    pub const ALL: &'static [Backend] = &[
        Backend::Flex,
        #[cfg(feature = "ndarray")]
        Backend::NdArray,
        #[cfg(feature = "wgpu")]
        Backend::Wgpu,
    ];

    /// Its name in configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            #[cfg(feature = "ndarray")]
            Backend::NdArray => "ndarray",
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => "wgpu",
        }
    }

    /// Its default device (without autodiff; the trainer adds it).
    pub fn device(self) -> Device {
        match self {
            Backend::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)] // still measured and offered; burn keeps it for now
            Backend::NdArray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        }
    }
}

/// A backend name this build does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown backend {name:?}; this build has {}", Backend::ALL.iter().map(|b| b.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownBackend {
    /// The name given.
    pub name: String,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::ALL
            .iter()
            .copied()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownBackend {
                name: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>().unwrap(), *b);
        }
        let err = "cuda".parse::<Backend>().unwrap_err().to_string();
        assert!(
            err.starts_with("unknown backend \"cuda\"; this build has flex"),
            "{err}"
        );
    }
}
