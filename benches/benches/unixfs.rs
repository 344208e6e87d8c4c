//! UnixFS import throughput beside its physical limit, plain SHA-256 over the same bytes,
//! in the same run. Prints the ratio at the end.
//!
//!     cargo bench -p benches --bench unixfs

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use fl_core::content::unixfs::{self, ImportOptions};
use fl_core::content::{Blockstore, MemBlockstore};
use sha2::{Digest, Sha256};

const SIZE: usize = 64 * 1024 * 1024;
const GROUP: &str = "unixfs_import_64MiB";

fn data() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(SIZE);
    while out.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn bench(c: &mut Criterion) {
    let data = data();
    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);
    group.bench_function("sha256_plain", |b| {
        // The same work the leaves need: one digest per 256 KiB chunk.
        b.iter(|| {
            for chunk in data.chunks(unixfs::DEFAULT_CHUNK_SIZE) {
                black_box(Sha256::digest(chunk));
            }
        })
    });
    group.bench_function("import_v1", |b| {
        b.iter(|| {
            unixfs::import(&data[..], &ImportOptions::default(), |blk| {
                black_box(blk);
                Ok(())
            })
        })
    });
    group.bench_function("import_v1_into_memory_store", |b| {
        b.iter(|| {
            let store = MemBlockstore::default();
            unixfs::import(&data[..], &ImportOptions::default(), |blk| store.put(blk))
        })
    });
    group.bench_function("import_v0", |b| {
        b.iter(|| {
            unixfs::import(&data[..], &ImportOptions::kubo_v0(), |blk| {
                black_box(blk);
                Ok(())
            })
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    let Some(plain) = benches::mean_ns(GROUP, "sha256_plain") else {
        return;
    };
    let mb_s = |ns: f64| SIZE as f64 / 1e6 / (ns / 1e9);
    println!(
        "\nUnixFS import vs plain SHA-256 over the same {} MiB (MB/s, ratio to SHA-256):",
        SIZE >> 20
    );
    println!("  {:<30} {:>9.1} MB/s", "sha256_plain", mb_s(plain));
    for f in ["import_v1", "import_v1_into_memory_store", "import_v0"] {
        if let Some(ns) = benches::mean_ns(GROUP, f) {
            println!("  {f:<30} {:>9.1} MB/s  ratio {:.3}", mb_s(ns), plain / ns);
        }
    }
}
