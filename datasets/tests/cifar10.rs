//! CIFAR-10 on the real images in ../shared/datasets/cifar10: readers, partitions,
//! shards through the content layer, and bad input.

use std::fs;
use std::path::{Path, PathBuf};

use datasets::cifar10::{self, CLASSES, Images, ReadError, parse_binary, parse_python};
use datasets::partition::{Partition, Scheme, partition};
use datasets::shard;
use fl_core::content::Repo;

fn shared_cifar() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/cifar10")
}

fn load() -> cifar10::Cifar10 {
    cifar10::load(&shared_cifar()).expect("../shared/datasets/cifar10 must sit beside the repo")
}

#[test]
fn real_subset_has_the_counts_and_first_labels_its_readme_states() {
    let data = load();
    assert_eq!(data.train.len(), 12_000);
    assert_eq!(data.test.len(), 1_133);
    assert_eq!(
        data.train.label_counts(),
        [1196, 1216, 1189, 1179, 1234, 1166, 1199, 1182, 1231, 1208]
    );
    assert_eq!(
        data.test.label_counts(),
        [120, 106, 116, 116, 103, 102, 118, 113, 124, 115]
    );
    // First ten labels of data_batch_1 and test_batch, as published.
    assert_eq!(&data.train.labels()[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    assert_eq!(&data.test.labels()[..10], &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    let names = fs::read_to_string(shared_cifar().join("batches.meta.txt")).unwrap();
    assert_eq!(names.split_whitespace().collect::<Vec<_>>(), CLASSES);
    // Every source file is checked against SHA256SUMS and recorded.
    assert_eq!(data.checksums.len(), 6);
}

#[test]
fn python_format_reads_the_same_images_as_the_binary_one() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test_batch_py10");
    let py = parse_python(&fixture, &fs::read(&fixture).unwrap()).unwrap();
    let test = load().test;
    assert_eq!(py, test.subset(&(0..10).collect::<Vec<_>>()));
}

/// Mean total-variation distance between each node's label distribution and the whole set's.
fn label_skew(labels: &[u8], split: &Partition) -> f64 {
    let mut global = [0f64; 10];
    for &l in labels {
        global[l as usize] += 1.0 / labels.len() as f64;
    }
    let counts = split.label_counts(labels);
    counts
        .iter()
        .map(|c| {
            let n: u64 = c.iter().sum();
            0.5 * (0..10)
                .map(|k| (c[k] as f64 / n as f64 - global[k]).abs())
                .sum::<f64>()
        })
        .sum::<f64>()
        / counts.len() as f64
}

#[test]
fn dirichlet_small_alpha_is_skewed_and_large_alpha_close_to_iid() {
    let labels = load().train.labels().to_vec();
    let skew = |scheme: &str| {
        let split = partition(&labels, 10, &scheme.parse::<Scheme>().unwrap(), 42, 10).unwrap();
        label_skew(&labels, &split)
    };
    let (d01, d1000, iid) = (skew("dirichlet:0.1"), skew("dirichlet:1000"), skew("iid"));
    eprintln!(
        "label skew (mean TV distance): dirichlet:0.1 {d01:.3}, dirichlet:1000 {d1000:.3}, iid {iid:.3}"
    );
    assert!(d01 > 0.5, "Dirichlet(0.1) should be visibly skewed: {d01}");
    assert!(
        d1000 < 0.05,
        "Dirichlet(1000) should be close to IID: {d1000}"
    );
    assert!(d01 > 10.0 * d1000);
}

fn publish_into(repo: &Repo, data: &cifar10::Cifar10, seed: u64) -> cid::Cid {
    let scheme: Scheme = "dirichlet:0.5".parse().unwrap();
    let split = partition(data.train.labels(), 8, &scheme, seed, 10).unwrap();
    shard::publish(repo, data, &split, &scheme.to_string(), seed).unwrap()
}

#[test]
fn same_seed_gives_the_same_manifest_cid() {
    let data = load();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ra, rb) = (Repo::open(a.path()).unwrap(), Repo::open(b.path()).unwrap());
    assert_eq!(publish_into(&ra, &data, 5), publish_into(&rb, &data, 5));
    assert_ne!(publish_into(&ra, &data, 5), publish_into(&ra, &data, 6));
}

#[test]
fn published_shards_fetched_by_manifest_cid_on_an_empty_store_are_identical() {
    let data = load();
    let dir = tempfile::tempdir().unwrap();
    let publisher = Repo::open(dir.path().join("publisher")).unwrap();
    let cid = publish_into(&publisher, &data, 11);
    // Move the whole DAG under the manifest to an empty store, as a CAR.
    let mut car = Vec::new();
    publisher.export_car(&[cid], &mut car).unwrap();
    let node = Repo::open(dir.path().join("node")).unwrap();
    node.import_car(&car[..]).unwrap();

    let manifest = shard::manifest(node.blocks(), &cid).unwrap();
    assert_eq!(manifest.shards.len(), 8);
    let scheme: Scheme = manifest.scheme.parse().unwrap();
    let split = partition(data.train.labels(), 8, &scheme, manifest.seed, 10).unwrap();
    for (i, idx) in split.clients.iter().enumerate() {
        let fetched = shard::fetch_shard(node.blocks(), &manifest, i).unwrap();
        assert_eq!(
            fetched.to_binary(),
            data.train.subset(idx).to_binary(),
            "shard {i}"
        );
    }
    assert_eq!(
        shard::fetch_test(node.blocks(), &manifest).unwrap(),
        data.test
    );
    assert!(matches!(
        shard::fetch_shard(node.blocks(), &manifest, 8),
        Err(shard::ShardError::NoShard { .. })
    ));
}

fn copy_dataset(to: &Path) {
    fs::create_dir_all(to).unwrap();
    for f in cifar10::TRAIN_FILES.iter().chain([&cifar10::TEST_FILE]) {
        fs::copy(shared_cifar().join(f), to.join(f)).unwrap();
    }
}

#[test]
fn bad_files_are_named_with_their_offset() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = fs::read(shared_cifar().join("data_batch_1.bin")).unwrap();
    let path = Path::new("data_batch_1.bin");

    let err = parse_binary(path, &bytes[..3073 * 5 + 100]).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Truncated {
                offset: 15365,
                have: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("data_batch_1.bin") && err.to_string().contains("15365"));

    let mut bad = bytes[..3073 * 3].to_vec();
    bad[3073 * 2] = 12;
    let err = parse_binary(path, &bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "data_batch_1.bin: label 12 at byte 6146 is not a class (0-9)"
    );

    let missing = cifar10::load(&dir.path().join("nowhere")).unwrap_err();
    assert!(matches!(missing, ReadError::MissingDir { .. }));
    assert!(missing.to_string().contains("nowhere") && missing.to_string().contains("FL_DATA"));

    // A copy whose file no longer matches SHA256SUMS.
    let copy = dir.path().join("copy");
    copy_dataset(&copy);
    fs::copy(shared_cifar().join("SHA256SUMS"), copy.join("SHA256SUMS")).unwrap();
    let mut tampered = fs::read(copy.join("data_batch_3.bin")).unwrap();
    tampered[1000] ^= 1;
    fs::write(copy.join("data_batch_3.bin"), tampered).unwrap();
    let err = cifar10::load(&copy).unwrap_err();
    assert!(matches!(err, ReadError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("data_batch_3.bin"));

    // A missing batch is named.
    fs::remove_file(copy.join("SHA256SUMS")).unwrap();
    fs::remove_file(copy.join("data_batch_4.bin")).unwrap();
    let err = cifar10::load(&copy).unwrap_err();
    assert!(err.to_string().contains("data_batch_4.bin"), "{err}");
}

#[test]
fn a_corrupt_python_batch_is_refused_with_its_name() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test_batch_py10");
    let bytes = fs::read(&fixture).unwrap();
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        let err = parse_python(Path::new("test_batch"), &bytes[..cut]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("test_batch: not a CIFAR-10 python batch"),
            "{err}"
        );
    }
}

#[test]
fn synthetic_images_are_balanced_and_deterministic() {
    let a = datasets::synthetic::synthetic_images(100, 1);
    assert_eq!(a, datasets::synthetic::synthetic_images(100, 1));
    assert_eq!(a.label_counts(), [10; 10]);
    let _: &Images = &a;
}
