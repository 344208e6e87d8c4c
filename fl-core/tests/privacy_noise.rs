//! Clipping and Gaussian noise as a node applies them (feature `dp`): norms after clipping,
//! the noise's statistics at the reference CNN's size, refusals of bad configs and updates.
#![cfg(feature = "dp")]

/// Inside a module named for the feature so that `cargo test privacy` selects these tests.
mod privacy_noise {
    use fl_core::privacy::clip::{self, ClipError};
    use fl_core::privacy::{GaussianNoise, NoiseConfig, NoiseError, privatize, privatize_flat};
    use fl_core::tensors::Bundle;
    use proptest::prelude::*;

    /// Parameters of the reference CIFAR-10 CNN.
    const REFERENCE_CNN_PARAMETERS: usize = 1_756_426;

    /// Mean and standard deviation of `after - before`, in f64.
    fn noise_stats(before: &[f32], after: &[f32]) -> (f64, f64) {
        let n = before.len() as f64;
        let diffs = || {
            before
                .iter()
                .zip(after)
                .map(|(b, a)| f64::from(*a) - f64::from(*b))
        };
        let mean = diffs().sum::<f64>() / n;
        let var = diffs().map(|d| (d - mean) * (d - mean)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    /// An update of the reference size with norm well above 1, deterministic.
    fn reference_update() -> Vec<f32> {
        (0..REFERENCE_CNN_PARAMETERS)
            .map(|i| ((i as f32) * 0.618).sin() * 0.01)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn clipping_never_leaves_the_norm_above_c(
            values in prop::collection::vec(-1e4f32..1e4, 0..300),
            clip_norm in 1e-3f64..1e3,
        ) {
            let mut clipped = values.clone();
            let c = clip::clip_flat(&mut clipped, clip_norm).unwrap();
            let after = clip::l2_norm(&clipped);
            prop_assert!(after <= clip_norm, "norm {} > C {}", after, clip_norm);
            prop_assert_eq!(c.norm, clip::l2_norm(&values));
            if c.norm > clip_norm {
                prop_assert!(after >= clip_norm * (1.0 - 1e-6), "clipped too far: {}", after);
            }
        }

        #[test]
        fn updates_already_within_c_are_unchanged(
            values in prop::collection::vec(-1.0f32..1.0, 0..300),
            slack in 1.0f64..10.0,
        ) {
            let norm = clip::l2_norm(&values);
            let clip_norm = (norm * slack).max(1e-3);
            let mut clipped = values.clone();
            let c = clip::clip_flat(&mut clipped, clip_norm).unwrap();
            prop_assert_eq!(clipped, values);
            prop_assert_eq!(c.scale, 1.0);
        }
    }

    #[test]
    fn noise_std_is_z_times_c_over_the_reference_cnn_size() {
        let config = NoiseConfig::new(0.7, 1.1);
        let mut update = reference_update();
        let (clipped, _) = {
            let mut c = update.clone();
            let r = clip::clip_flat(&mut c, config.clip_norm).unwrap();
            (c, r)
        };
        let report = privatize_flat(&mut update, &config).unwrap();
        assert!(report.clip.was_clipped());
        let (mean, std) = noise_stats(&clipped, &update);
        let want = 0.7 * 1.1;
        assert!((std / want - 1.0).abs() < 0.01, "std {std}, want {want}");
        // The mean's standard error is want/1325; 5e-3·want is over six of them.
        assert!(mean.abs() < 5e-3 * want, "mean {mean}");
        assert!((report.noise_std_dev / want - 1.0).abs() < 1e-12);
        assert!(clip::l2_norm(&clipped) <= config.clip_norm);
    }

    #[test]
    fn distributed_noise_std_is_z_c_over_sqrt_n() {
        let config = NoiseConfig::new(1.0, 1.2).distributed(8);
        let mut update = vec![0.0f32; REFERENCE_CNN_PARAMETERS];
        let report = privatize_flat(&mut update, &config).unwrap();
        let (mean, std) = noise_stats(&vec![0.0; REFERENCE_CNN_PARAMETERS], &update);
        let want = 1.2 / 8f64.sqrt();
        assert!((std / want - 1.0).abs() < 0.01, "std {std}, want {want}");
        assert!(mean.abs() < 5e-3 * want, "mean {mean}");
        assert!((config.node_std_dev() / want - 1.0).abs() < 1e-15);
        assert!((config.total_std_dev() - 1.2).abs() < 1e-15);
        assert!(report.granularity > 0.0 && report.granularity < want * 1e-12);
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let cases = [
            (NoiseConfig::new(0.0, 1.0), "clip_norm"),
            (NoiseConfig::new(-1.0, 1.0), "clip_norm"),
            (NoiseConfig::new(f64::NAN, 1.0), "clip_norm"),
            (NoiseConfig::new(f64::INFINITY, 1.0), "clip_norm"),
            (NoiseConfig::new(1.0, -0.5), "noise_multiplier"),
            (NoiseConfig::new(1.0, f64::NAN), "noise_multiplier"),
            (NoiseConfig::new(1.0, f64::INFINITY), "noise_multiplier"),
            (NoiseConfig::new(1.0, 1e-13), "noise_multiplier"),
            (NoiseConfig::new(1e300, 1e10), "noise_multiplier"),
            (NoiseConfig::new(1.0, 1.0).distributed(0), "nodes"),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(err, NoiseError::Config { field: f, .. } if f == field),
                "{config:?}: {err}"
            );
            assert!(err.to_string().contains(field), "{err}");
            // Privatising with it is refused the same way, before the update is touched.
            let mut update = vec![5.0f32; 4];
            assert!(matches!(
                privatize_flat(&mut update, &config),
                Err(NoiseError::Config { .. })
            ));
            assert_eq!(update, vec![5.0; 4]);
        }
        assert_eq!(
            NoiseConfig::new(1.0, 1.0)
                .distributed(0)
                .validate()
                .unwrap_err()
                .to_string(),
            "noise config: nodes = 0: must be at least 1, or absent"
        );
        NoiseConfig::default().validate().unwrap();
        NoiseConfig::new(1.0, 0.0).validate().unwrap();
        NoiseConfig::new(1.0, 1.0)
            .distributed(1)
            .validate()
            .unwrap();
    }

    #[test]
    fn nan_updates_are_refused_naming_the_tensor() {
        let mut bundle = Bundle::new();
        bundle
            .insert("conv1.weight", vec![2, 2], vec![0.1; 4])
            .unwrap();
        bundle
            .insert("fc2.bias", vec![3], vec![0.0, 0.2, f32::NAN])
            .unwrap();
        let err = privatize(&bundle, &NoiseConfig::default()).unwrap_err();
        assert!(
            matches!(&err, NoiseError::Clip(ClipError::NonFiniteTensor { tensor, index: 2, .. }) if tensor == "fc2.bias"),
            "{err}"
        );
        assert!(err.to_string().contains("fc2.bias"), "{err}");

        let mut flat = vec![0.5f32, f32::NEG_INFINITY];
        let err = privatize_flat(&mut flat, &NoiseConfig::default()).unwrap_err();
        assert!(
            matches!(err, NoiseError::Clip(ClipError::NonFinite { index: 1, .. })),
            "{err}"
        );
        let err = GaussianNoise::new(1.0)
            .unwrap()
            .add_to(&mut [0.0, f32::NAN])
            .unwrap_err();
        assert!(
            matches!(err, NoiseError::NonFinite { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn privatized_bundle_keeps_names_shapes_and_metadata() {
        let mut bundle = Bundle::new();
        bundle
            .insert("conv1.weight", vec![4, 8], vec![0.5; 32])
            .unwrap();
        bundle.insert("fc.bias", vec![10], vec![-0.25; 10]).unwrap();
        bundle.set_metadata("round", "3");
        let config = NoiseConfig::new(1.0, 0.5);
        let (out, report) = privatize(&bundle, &config).unwrap();
        bundle.check_layout(&out).unwrap();
        assert_eq!(out.metadata(), bundle.metadata());
        assert!(report.clip.was_clipped());
        assert!((report.clip.norm - clip::l2_norm(&bundle.flatten())).abs() < 1e-12);
        assert_ne!(out.flatten(), bundle.flatten());
    }

    #[test]
    fn zero_noise_multiplier_only_clips() {
        let mut update = vec![3.0f32, 4.0];
        let report = privatize_flat(&mut update, &NoiseConfig::new(1.0, 0.0)).unwrap();
        assert_eq!(report.noise_std_dev, 0.0);
        assert!((f64::from(update[0]) - 0.6).abs() < 1e-6);
        assert!((f64::from(update[1]) - 0.8).abs() < 1e-6);
    }

    #[test]
    fn opendp_make_gaussian_and_our_sampler_agree() {
        // opendp's own path is ~15 µs per value in release (more here), so a small sample:
        // the standard error of a standard deviation from 4,000 values is 1.1%.
        let noise = GaussianNoise::new(0.3).unwrap();
        let base: Vec<f32> = (0..4_000).map(|i| (i as f32 * 0.01).cos() * 0.1).collect();
        let mut ours = base.clone();
        noise.add_to(&mut ours).unwrap();
        let mut theirs = base.clone();
        noise.add_to_with_make_gaussian(&mut theirs).unwrap();
        let (m1, s1) = noise_stats(&base, &ours);
        let (m2, s2) = noise_stats(&base, &theirs);
        for (m, s) in [(m1, s1), (m2, s2)] {
            assert!((s / 0.3 - 1.0).abs() < 0.06, "std {s}");
            assert!(m.abs() < 0.3 * 0.08, "mean {m}");
        }
        let g = noise.granularity();
        assert!(theirs.iter().zip(&base).all(|(t, b)| t != b));
        assert!(g > 0.0);
    }
}
