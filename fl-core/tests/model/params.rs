//! The reference CNN's parameters: count, PyTorch names and layouts, round trips through
//! safetensors, and errors that name the tensor.

use fl_core::errors::chain;
use fl_core::model::{Architecture, Backend, Batch, Classifier, IMAGE_LEN, ModelError};
use fl_core::tensors::Bundle;

const ARCH: Architecture = Architecture::FedAvgCnn;

/// A few deterministic, roughly normalised images.
fn images(n: usize) -> Batch {
    let images = (0..n * IMAGE_LEN)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Batch::new(images, vec![0; n]).unwrap()
}

/// `bundle` without the tensor `name`.
fn without(bundle: &Bundle, name: &str) -> Bundle {
    let mut out = Bundle::new();
    for (n, t) in bundle.iter().filter(|(n, _)| *n != name) {
        out.insert(n, t.shape.clone(), t.data.clone()).unwrap();
    }
    out
}

#[test]
fn reference_cnn_has_1_756_426_parameters_with_pytorch_names_and_shapes() {
    assert_eq!(ARCH.num_params(), 1_756_426);
    let layout = ARCH.layout().unwrap();
    assert_eq!(layout.num_values(), 1_756_426);
    let shapes: Vec<(&str, Vec<usize>)> =
        layout.iter().map(|(n, t)| (n, t.shape.clone())).collect();
    assert_eq!(
        shapes,
        vec![
            ("conv1.bias", vec![64]),
            ("conv1.weight", vec![64, 3, 5, 5]),
            ("conv2.bias", vec![64]),
            ("conv2.weight", vec![64, 64, 5, 5]),
            ("fc1.bias", vec![384]),
            ("fc1.weight", vec![384, 4096]),
            ("fc2.bias", vec![192]),
            ("fc2.weight", vec![192, 384]),
            ("fc3.bias", vec![10]),
            ("fc3.weight", vec![10, 192]),
        ]
    );
}

#[test]
fn architecture_and_normalisation_are_recorded_in_the_metadata() {
    let bundle = ARCH.init(1).unwrap();
    let meta = bundle.metadata();
    assert_eq!(meta["architecture"], "fedavg-cnn");
    assert_eq!(meta["input_mean"], "[0.4914, 0.4822, 0.4465]");
    assert_eq!(meta["input_std"], "[0.247, 0.2435, 0.2616]");
    assert_eq!(meta["input_shape"], "[3, 32, 32]");
    assert_eq!(Architecture::of(&bundle).unwrap(), ARCH);
    assert_eq!("fedavg-cnn".parse::<Architecture>().unwrap(), ARCH);
    let err = "resnet-18".parse::<Architecture>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown architecture \"resnet-18\"; known: fedavg-cnn"
    );
    assert!(matches!(
        Architecture::of(&Bundle::new()),
        Err(ModelError::NoArchitecture)
    ));
}

#[test]
fn seeded_initialisation_is_reproducible_and_seed_dependent() {
    assert_eq!(ARCH.init(9).unwrap(), ARCH.init(9).unwrap());
    assert_ne!(
        ARCH.init(9).unwrap().flatten(),
        ARCH.init(10).unwrap().flatten()
    );
}

#[test]
fn model_to_bundle_to_safetensors_and_back_gives_identical_logits() {
    let device = Backend::Flex.device();
    let bundle = ARCH.init(3).unwrap();
    let first = Classifier::new(ARCH, &bundle, &device).unwrap();
    let batch = images(2);
    let logits = first.logits(&batch).unwrap();

    let saved = first.to_bundle().unwrap();
    assert_eq!(
        saved, bundle,
        "model -> bundle must give back the loaded values and metadata"
    );
    let bytes = saved.to_safetensors().unwrap();
    let loaded = Bundle::from_safetensors(&bytes).unwrap();
    let second = Classifier::new(Architecture::of(&loaded).unwrap(), &loaded, &device).unwrap();
    let again = second.logits(&batch).unwrap();
    assert_eq!(logits.values.len(), 20);
    assert_eq!(
        logits
            .values
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>(),
        again.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    let probabilities = second.probabilities(&batch).unwrap();
    for row in probabilities.rows() {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert_eq!(probabilities.predicted(), logits.predicted());
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let mut bundle = ARCH.init(0).unwrap();
    bundle
        .insert("fc1.weight", vec![384, 4095], vec![0.0; 384 * 4095])
        .unwrap();
    let err = Classifier::new(ARCH, &bundle, &Backend::Flex.device()).unwrap_err();
    assert_eq!(
        chain(&err),
        "parameters do not fit fedavg-cnn: tensor fc1.weight is [384, 4095], expected [384, 4096]"
    );
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let bundle = ARCH.init(0).unwrap();
    let err = ARCH.check(&without(&bundle, "fc2.bias")).unwrap_err();
    assert_eq!(
        chain(&err),
        "parameters do not fit fedavg-cnn: tensor fc2.bias is missing"
    );

    let mut extra = bundle.clone();
    extra.insert("fc4.weight", vec![1], vec![0.0]).unwrap();
    let err = ARCH.check(&extra).unwrap_err();
    assert_eq!(
        chain(&err),
        "parameters do not fit fedavg-cnn: tensor fc4.weight is not part of the model"
    );
}

#[test]
fn malformed_batches_are_refused_not_panicked_on() {
    let classifier =
        Classifier::new(ARCH, &ARCH.init(0).unwrap(), &Backend::Flex.device()).unwrap();
    let bad = Batch {
        images: vec![0.0; IMAGE_LEN + 1],
        labels: vec![0],
    };
    let err = classifier.logits(&bad).unwrap_err();
    assert!(
        err.to_string().contains("1 labels but 3073 image values"),
        "{err}"
    );
}
