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
