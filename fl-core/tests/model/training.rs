//! Local training of the reference CNN on CPU: it learns, it is reproducible, it stops on
//! divergence, and evaluation counts per class.
//!
//! Debug builds of burn run the CNN at a few images per second, so these tests train on a
//! handful of images.

use fl_core::model::{
    Architecture, Backend, Batch, Classifier, IMAGE_LEN, LrSchedule, TrainConfig, TrainError,
    train, train_carrying,
};
use fl_core::tensors::Bundle;

const ARCH: Architecture = Architecture::FedAvgCnn;

/// Synthetic images whose class is written in their pixels: class `c` is a bright stripe at
/// rows `8c..8c+8` of every channel on a noisy background.
fn synthetic(labels: &[u8], seed: u32) -> Batch {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let mut images = Vec::with_capacity(labels.len() * IMAGE_LEN);
    for &label in labels {
        for _channel in 0..3 {
            for row in 0..32 {
                for _col in 0..32 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let noise = (x % 1000) as f32 / 1000.0 - 0.5;
                    let stripe = if row / 8 == usize::from(label) {
                        2.0
                    } else {
                        -0.5
                    };
                    images.push(stripe + noise);
                }
            }
        }
    }
    Batch::new(images, labels.to_vec()).unwrap()
}

#[test]
fn training_on_a_synthetic_batch_set_reduces_the_loss() {
    let device = Backend::Flex.device();
    let global = ARCH.init(1).unwrap();
    let data = [synthetic(&[0, 1, 2, 3], 1), synthetic(&[3, 2, 1, 0], 2)];
    let before = Classifier::new(ARCH, &global, &device)
        .unwrap()
        .evaluate(&data, 0)
        .unwrap();
    let config = TrainConfig {
        epochs: 3,
        batch_size: 4,
        learning_rate: 0.02,
        schedule: LrSchedule::Cosine { min_lr: 0.005 },
        ..TrainConfig::default()
    };
    let out = train(ARCH, &global, &data, &config, &device).unwrap();
    let after = Classifier::new(ARCH, &out.model, &device)
        .unwrap()
        .evaluate(&data, 0)
        .unwrap();
    assert!(
        after.loss < 0.8 * before.loss,
        "loss went from {} to {}, epochs {:?}",
        before.loss,
        after.loss,
        out.epochs
    );
    assert_eq!(out.epochs.len(), 3);
    assert_eq!(out.samples, 8);
    assert_eq!(out.update.metadata()["samples"], "8");
    assert_eq!(out.update.metadata()["architecture"], "fedavg-cnn");
    assert!(
        out.epochs
            .iter()
            .all(|e| e.samples == 8 && e.images_per_sec > 0.0)
    );
    assert!((out.epochs[2].learning_rate - 0.005).abs() < 0.002);
    // update = local - global, exactly as Bundle::sub computes it
    let mut expected = out.model.sub(&global).unwrap();
    expected.set_metadata("samples", "8");
    assert_eq!(out.update, expected);
}

/// The safetensors bytes of a bundle's tensors alone.
fn tensor_bytes(bundle: &Bundle) -> Vec<u8> {
    let mut plain = Bundle::new();
    for (name, t) in bundle.iter() {
        plain.insert(name, t.shape.clone(), t.data.clone()).unwrap();
    }
    plain.to_safetensors().unwrap()
}

#[test]
fn same_seed_gives_identical_update_bytes_on_cpu() {
    let device = Backend::Flex.device();
    let global = ARCH.init(2).unwrap();
    let data = [synthetic(&[0, 1, 2, 3], 3)];
    let config = TrainConfig {
        batch_size: 2,
        weight_decay: 1e-3,
        proximal_mu: 0.01,
        seed: 7,
        ..TrainConfig::default()
    };
    let a = train(ARCH, &global, &data, &config, &device).unwrap();
    let b = train(ARCH, &global, &data, &config, &device).unwrap();
    assert_eq!(a.update.metadata(), b.update.metadata());
    // The tensors' bytes; the metadata is left out because safetensors writes it from a
    // HashMap, in an order that changes from call to call.
    assert!(
        tensor_bytes(&a.update) == tensor_bytes(&b.update),
        "two runs with seed 7 gave different updates"
    );
    let other_seed = TrainConfig { seed: 8, ..config };
    let c = train(ARCH, &global, &data, &other_seed, &device).unwrap();
    assert_ne!(
        a.update.flatten(),
        c.update.flatten(),
        "the seed must change the batch order"
    );
}

#[test]
fn carried_momentum_goes_on_as_if_training_had_not_stopped() {
    let device = Backend::Flex.device();
    let global = ARCH.init(3).unwrap();
    // One image, one image a step: the order of the steps cannot matter.
    let image = synthetic(&[2], 4);
    let config = TrainConfig {
        batch_size: 1,
        ..TrainConfig::default()
    };
    let whole = train(
        ARCH,
        &global,
        &[image.clone(), image.clone()],
        &config,
        &device,
    )
    .unwrap();
    let one = |from: &Bundle, carried| {
        train_carrying(
            ARCH,
            from,
            std::slice::from_ref(&image),
            &config,
            &device,
            carried,
            |_| true,
        )
        .unwrap()
    };
    let (first, momentum) = one(&global, None);
    let (carried, _) = one(&first.model, Some(momentum));
    let (fresh, _) = one(&first.model, None);
    let gap = |a: &Bundle| {
        a.flatten()
            .iter()
            .zip(whole.model.flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        gap(&carried.model) < 1e-6,
        "carried: {}",
        gap(&carried.model)
    );
    // Without it the second step is a tenth of the size: far off.
    assert!(gap(&fresh.model) > 1e-4, "fresh: {}", gap(&fresh.model));
}

#[test]
fn an_exploding_learning_rate_stops_training_with_an_error() {
    let global = ARCH.init(3).unwrap();
    let data = [synthetic(&[0, 1, 2, 3], 4)];
    let config = TrainConfig {
        batch_size: 2,
        learning_rate: 1e30,
        ..TrainConfig::default()
    };
    match train(ARCH, &global, &data, &config, &Backend::Flex.device()) {
        Err(TrainError::NonFinite {
            epoch: 0,
            step,
            loss,
        }) => {
            assert!(step >= 1 && !loss.is_finite(), "step {step}, loss {loss}")
        }
        other => panic!("expected a divergence error, got {other:?}"),
    }
}

#[test]
fn a_nan_weight_stops_training_at_the_first_step() {
    let mut global = ARCH.init(4).unwrap();
    let mut w = global.get("conv1.weight").unwrap().clone();
    w.data[0] = f32::NAN;
    global.insert("conv1.weight", w.shape, w.data).unwrap();
    let data = [synthetic(&[1, 2], 5)];
    let config = TrainConfig {
        batch_size: 2,
        ..TrainConfig::default()
    };
    let err = train(ARCH, &global, &data, &config, &Backend::Flex.device()).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                epoch: 0,
                step: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "training diverged: loss is NaN at epoch 0, step 0"
    );
}

#[test]
fn bad_inputs_are_refused_before_training() {
    let global = ARCH.init(0).unwrap();
    let device = Backend::Flex.device();
    let config = TrainConfig::default();
    assert!(matches!(
        train(ARCH, &global, &[], &config, &device),
        Err(TrainError::NoData)
    ));
    let bad_label = Batch::new(vec![0.0; IMAGE_LEN], vec![10]).unwrap();
    let err = train(ARCH, &global, &[bad_label], &config, &device).unwrap_err();
    assert_eq!(err.to_string(), "training batch 0 is malformed");
    let zero_epochs = TrainConfig {
        epochs: 0,
        ..TrainConfig::default()
    };
    let err = train(ARCH, &global, &[synthetic(&[0], 1)], &zero_epochs, &device).unwrap_err();
    assert_eq!(
        err.to_string(),
        "training setting epochs must be at least 1"
    );
}

#[test]
fn evaluation_counts_every_image_in_its_class() {
    let classifier =
        Classifier::new(ARCH, &ARCH.init(5).unwrap(), &Backend::Flex.device()).unwrap();
    let data = [synthetic(&[0, 1, 1], 6), synthetic(&[9, 9], 7)];
    let whole = classifier.evaluate(&data, 0).unwrap();
    let in_twos = classifier.evaluate(&data, 2).unwrap();
    assert_eq!(whole.samples, 5);
    let totals: Vec<usize> = whole.per_class.iter().map(|c| c.total).collect();
    assert_eq!(totals, vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
    let correct: usize = whole.per_class.iter().map(|c| c.correct).sum();
    assert_eq!(whole.accuracy, correct as f64 / 5.0);
    assert_eq!(whole.per_class[2].accuracy(), None);
    assert_eq!(whole.per_class, in_twos.per_class);
    assert!(
        (whole.loss - in_twos.loss).abs() < 1e-5,
        "{} vs {}",
        whole.loss,
        in_twos.loss
    );
    assert!(whole.loss.is_finite() && whole.loss > 0.0);
}

#[test]
fn a_run_its_callback_stops_counts_the_images_it_trained_on() {
    let device = Backend::Flex.device();
    let global = ARCH.init(3).unwrap();
    let data = [synthetic(&[0, 1, 2, 3, 4, 5], 9)];
    let config = TrainConfig {
        batch_size: 2,
        ..TrainConfig::default()
    };
    let mut steps = 0;
    let (stopped, _) = train_carrying(ARCH, &global, &data, &config, &device, None, |_| {
        steps += 1;
        steps < 2
    })
    .unwrap();
    assert_eq!(steps, 2, "no step after the one that said stop");
    assert_eq!(stopped.samples, 4);
    assert_eq!(stopped.update.metadata()["samples"], "4");
    let whole = train(ARCH, &global, &data, &config, &device).unwrap();
    assert_eq!(whole.samples, 6);
    assert_ne!(stopped.update.flatten(), whole.update.flatten());
}
