//! DP-SGD: per-example gradients equal PyTorch's (`torch.func` vmap of grad) on real CIFAR-10
//! test images, clipped per-example norms stay at most C, a noiseless private step equals
//! PyTorch's clipped step, and the noise has the standard deviation the accountant assumes.

use fl_core::model::dp_sgd::{CLIP_SAFETY, DpSgd, clipped_sum};
use fl_core::model::{Architecture, Backend, DpSgdConfig, TrainConfig, Trainer, per_example};
use fl_core::tensors::Bundle;

use crate::parity::{
    TEST_BATCH, max_abs_diff, pytorch, save, sharpened, test_images, torch_python,
};

const ARCH: Architecture = Architecture::FedAvgCnn;

/// ‖a − b‖ / ‖b‖ in f64.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (diff / norm).sqrt()
}

/// Each example's gradient as one flat f64 vector, from a bundle of per-example tensors.
fn per_example_flat(grads: &Bundle, n: usize) -> Vec<Vec<f64>> {
    let mut rows = vec![Vec::new(); n];
    for (_, t) in grads.iter() {
        let each = t.data.len() / n;
        for (i, row) in rows.iter_mut().enumerate() {
            row.extend(
                t.data[i * each..(i + 1) * each]
                    .iter()
                    .map(|&v| f64::from(v)),
            );
        }
    }
    rows
}

#[test]
fn per_example_gradients_match_pytorch_on_32_real_images() {
    let Some(python) = torch_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = sharpened(21);
    let path = save(&model, dir.path(), "model.safetensors");
    let images = test_images(32);
    let ours = per_example::gradients(ARCH, &model, &images, &Backend::Flex.device()).unwrap();
    let out = dir.path().join("per_example.safetensors");
    pytorch(
        &python,
        &[
            "per-example",
            path.to_str().unwrap(),
            TEST_BATCH,
            "--n",
            "32",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let theirs = Bundle::from_safetensors(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(ours.len(), 10, "every parameter tensor");
    assert_eq!(theirs.len(), ours.len());
    for (name, t) in theirs.iter() {
        let mine = ours.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(mine.shape, t.shape, "{name}");
        // Example by example, so that one example's small gradient is not hidden by another's.
        let each = t.data.len() / 32;
        let worst = (0..32)
            .map(|i| {
                let r = i * each..(i + 1) * each;
                relative_error(&mine.data[r.clone()], &t.data[r])
            })
            .fold(0.0f64, f64::max);
        eprintln!(
            "{name} {:?}: worst per-example relative error {worst:.2e}, max abs difference {:.2e}",
            t.shape,
            max_abs_diff(&mine.data, &t.data)
        );
        assert!(worst < 1e-5, "{name}: relative error {worst}");
    }
}

#[test]
fn clipped_per_example_norms_are_at_most_the_clip_norm() {
    let model = sharpened(22);
    let images = test_images(32);
    let device = Backend::Flex.device();
    let grads = per_example::gradients(ARCH, &model, &images, &device).unwrap();
    let rows = per_example_flat(&grads, 32);
    let exact: Vec<f64> = rows
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    // A clip norm under most examples' norms, so that most are clipped and some are not.
    let mut sorted = exact.clone();
    sorted.sort_by(f64::total_cmp);
    let clip = sorted[8];
    let clipped = clipped_sum(ARCH, &model, &images, clip, &device).unwrap();
    let mut clipped_count = 0;
    for (i, &norm) in exact.iter().enumerate() {
        // Norms from the ghost and materialised rules equal the materialised gradients' norms.
        let ours = f64::from(clipped.norms[i]);
        assert!(
            (ours - norm).abs() <= 1e-5 * norm,
            "example {i}: norm {ours} against {norm}"
        );
        let after = f64::from(clipped.factors[i]) * norm;
        assert!(after <= clip, "example {i}: clipped norm {after} > {clip}");
        if clipped.factors[i] < 1.0 {
            clipped_count += 1;
            assert!(after > clip * CLIP_SAFETY * 0.9999, "clipped to about C");
        } else {
            assert!(norm < clip, "example {i} of norm {norm} was left unclipped");
        }
    }
    assert!((20..32).contains(&clipped_count), "{clipped_count} clipped");
    // The clipped sum is Σ fᵢ gᵢ, tensor by tensor.
    for (name, t) in clipped.sum.iter() {
        let per = grads.get(name).unwrap();
        let each = t.data.len();
        let expected: Vec<f32> = (0..each)
            .map(|j| {
                (0..32)
                    .map(|i| f64::from(clipped.factors[i]) * f64::from(per.data[i * each + j]))
                    .sum::<f64>() as f32
            })
            .collect();
        let err = relative_error(&t.data, &expected);
        assert!(err < 1e-5, "{name}: clipped sum off by {err}");
    }
}

#[test]
fn a_noiseless_private_step_on_the_whole_batch_matches_pytorch() {
    let Some(python) = torch_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let global = sharpened(23);
    let path = save(&global, dir.path(), "global.safetensors");
    // Batch 32 over 32 examples: q = 1, every step takes every example; z = 0: no noise.
    let config = TrainConfig {
        epochs: 3,
        batch_size: 32,
        learning_rate: 0.5,
        momentum: 0.9,
        weight_decay: 5e-3,
        dp_sgd: Some(DpSgdConfig {
            clip_norm: 1.0,
            noise_multiplier: 0.0,
            steps_per_epoch: None,
        }),
        ..TrainConfig::default()
    };
    let ours = fl_core::model::train(
        ARCH,
        &global,
        &[test_images(32)],
        &config,
        &Backend::Flex.device(),
    )
    .unwrap();
    let out = dir.path().join("stepped.safetensors");
    pytorch(
        &python,
        &[
            "dp-step",
            path.to_str().unwrap(),
            TEST_BATCH,
            "--n",
            "32",
            "--steps",
            "3",
            "--clip",
            "1.0",
            "--lr",
            "0.5",
            "--momentum",
            "0.9",
            "--weight-decay",
            "5e-3",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let theirs = Bundle::from_safetensors(&std::fs::read(&out).unwrap()).unwrap();
    let moved = max_abs_diff(&ours.model.flatten(), &global.flatten());
    let diff = max_abs_diff(&ours.model.flatten(), &theirs.flatten());
    eprintln!(
        "3 private steps: parameters moved up to {moved:.3e}; max abs difference from PyTorch {diff:.3e}"
    );
    assert!(moved > 1e-3, "training should move the parameters");
    assert!(diff < 1e-5, "parameters differ from PyTorch's by {diff}");
}

#[test]
fn the_noise_of_a_private_step_has_standard_deviation_z_c_over_the_expected_batch() {
    let global = ARCH.init(24).unwrap();
    let images = test_images(16);
    let device = Backend::Flex.device();
    let (clip, z) = (0.5, 2.0);
    // One step of lr 1 with no momentum: w' = w − (Σ fᵢ gᵢ + noise) / n.
    let config = TrainConfig {
        epochs: 1,
        batch_size: 16,
        learning_rate: 1.0,
        momentum: 0.0,
        dp_sgd: Some(DpSgdConfig {
            clip_norm: clip,
            noise_multiplier: z,
            steps_per_epoch: None,
        }),
        ..TrainConfig::default()
    };
    let trained = fl_core::model::train(
        ARCH,
        &global,
        std::slice::from_ref(&images),
        &config,
        &device,
    )
    .unwrap();
    let signal = clipped_sum(ARCH, &global, &images, clip, &device).unwrap();
    let n = 16.0;
    let noise: Vec<f64> = trained
        .update
        .flatten()
        .iter()
        .zip(signal.sum.flatten())
        .map(|(&u, s)| -f64::from(u) * n - f64::from(s))
        .collect();
    let mean = noise.iter().sum::<f64>() / noise.len() as f64;
    let sd = (noise.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / noise.len() as f64).sqrt();
    eprintln!(
        "noise over {} coordinates: mean {mean:.3e}, sd {sd:.5} (expected {})",
        noise.len(),
        z * clip
    );
    // 1.76 M draws: the sample sd is within 0.1% of the true one many times over; f32
    // rounding of the update adds far less.
    assert!((sd / (z * clip) - 1.0).abs() < 5e-3, "sd {sd}");
    assert!(mean.abs() < 5e-3, "mean {mean}");
}

#[test]
fn sampling_rate_expected_batch_and_epsilon_follow_opacus() {
    let config = DpSgdConfig {
        clip_norm: 1.0,
        noise_multiplier: 1.1,
        steps_per_epoch: None,
    };
    // 12,000 examples, batch 256: 47 steps an epoch, q = 1/47 (Opacus: 1 / len(data_loader)).
    let dp = DpSgd::new(config, 12_000, 256);
    assert_eq!(dp.steps_per_epoch, 47);
    assert!((dp.sampling_rate - 1.0 / 47.0).abs() < 1e-15);
    assert!((dp.expected_batch - 12_000.0 / 47.0).abs() < 1e-9);
    assert_eq!(dp.epsilon(0, 1e-5).unwrap(), 0.0);
    let eps = dp.epsilon(470, 1e-5).unwrap();
    assert!(eps > 0.0 && eps.is_finite());
    assert!(dp.epsilon(940, 1e-5).unwrap() > eps);
}

#[test]
fn a_trainer_with_dp_sgd_refuses_caller_made_batches() {
    let config = TrainConfig {
        batch_size: 4,
        dp_sgd: Some(DpSgdConfig {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            steps_per_epoch: None,
        }),
        ..TrainConfig::default()
    };
    let global = ARCH.init(1).unwrap();
    let mut trainer = Trainer::new(ARCH, &global, &config, 1, &Backend::Flex.device()).unwrap();
    let err = trainer.epoch([test_images(4)], |_| {}).unwrap_err();
    assert!(err.to_string().contains("Poisson"), "{err}");
}
