//! The wgpu (GPU) path gives the CPU path's results: logits on real CIFAR-10 images, and the
//! update of a few SGD steps. Runs on any Vulkan device, including Mesa's CPU one (lavapipe,
//! Debian's `mesa-vulkan-drivers`), which `.ci/run` installs:
//!
//! ```text
//! cargo test -p fl-core --features wgpu --test model wgpu
//! ```

use fl_core::model::{Architecture, Backend, Classifier, TrainConfig, train};

use super::parity::{max_abs_diff, sharpened, test_images};

const ARCH: Architecture = Architecture::FedAvgCnn;

#[test]
fn wgpu_logits_match_the_cpu_backend_on_real_images() {
    let model = sharpened(21);
    let images = test_images(16);
    let cpu = Classifier::new(ARCH, &model, &Backend::Flex.device())
        .unwrap()
        .logits(&images)
        .unwrap();
    let gpu = Classifier::new(ARCH, &model, &Backend::Wgpu.device())
        .unwrap()
        .logits(&images)
        .unwrap();
    let largest = cpu.values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&cpu.values, &gpu.values);
    eprintln!("wgpu vs flex logits: max |logit| {largest:.3}, max abs difference {diff:.3e}");
    assert!(diff < 1e-3 * largest.max(1.0), "logits differ by {diff}");
    assert_eq!(cpu.predicted(), gpu.predicted());
}

#[test]
fn wgpu_training_gives_the_cpu_update() {
    let global = ARCH.init(22).unwrap();
    let data = [test_images(16)];
    let config = TrainConfig {
        epochs: 1,
        batch_size: 8,
        learning_rate: 0.01,
        weight_decay: 5e-4,
        seed: 3,
        ..TrainConfig::default()
    };
    let cpu = train(ARCH, &global, &data, &config, &Backend::Flex.device()).unwrap();
    let gpu = train(ARCH, &global, &data, &config, &Backend::Wgpu.device()).unwrap();
    let (a, b) = (cpu.update.flatten(), gpu.update.flatten());
    let largest = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&a, &b);
    eprintln!(
        "wgpu vs flex update after 2 steps: max |update| {largest:.3e}, max abs difference {diff:.3e}"
    );
    assert!(diff < 1e-2 * largest, "updates differ by {diff}");
    assert!((cpu.epochs[0].loss - gpu.epochs[0].loss).abs() < 1e-3);
}

/// DP-SGD's per-example gradients (probes, unfolded inputs, batched matmuls) come out the
/// same on the GPU path: no CPU-only shortcut in the private step.
#[cfg(feature = "dp")]
#[test]
fn wgpu_per_example_gradients_and_clipping_match_the_cpu_backend() {
    use fl_core::model::dp_sgd::clipped_sum;
    use fl_core::model::per_example;

    let model = sharpened(23);
    let images = test_images(8);
    let cpu = per_example::gradients(ARCH, &model, &images, &Backend::Flex.device()).unwrap();
    let gpu = per_example::gradients(ARCH, &model, &images, &Backend::Wgpu.device()).unwrap();
    for (name, t) in cpu.iter() {
        let g = gpu.get(name).unwrap_or_else(|| panic!("no {name} on wgpu"));
        assert_eq!(g.shape, t.shape, "{name}");
        let largest = t.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&t.data, &g.data);
        eprintln!(
            "{name}: wgpu vs flex per-example gradients, max abs difference {diff:.3e} (max {largest:.3e})"
        );
        assert!(diff < 1e-3 * largest.max(1e-6), "{name}: differ by {diff}");
    }
    let cpu = clipped_sum(ARCH, &model, &images, 1.0, &Backend::Flex.device()).unwrap();
    let gpu = clipped_sum(ARCH, &model, &images, 1.0, &Backend::Wgpu.device()).unwrap();
    for (a, b) in cpu.norms.iter().zip(&gpu.norms) {
        assert!((a - b).abs() <= 1e-3 * a, "norms {a} and {b}");
    }
    let (a, b) = (cpu.sum.flatten(), gpu.sum.flatten());
    let largest = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&a, &b) < 1e-3 * largest, "clipped sums differ");
}
