//! Writing and reading one update of the reference CNN (1,756,426 parameters) as float32
//! and as int8 safetensors, beside the limit measured in the same run: a plain copy of the
//! update's float32 bytes. Prints ms per update, bytes, and each time over the copy's.
//!
//!     cargo bench -p benches --bench update_encoding

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use fl_core::tensors::{Bundle, Encoding};

const PARAMS: usize = 1_756_426;
const GROUP: &str = "update_encoding_1756426";
const FUNCTIONS: [&str; 5] = [
    "copy_f32_bytes",
    "encode_f32",
    "encode_int8",
    "decode_f32",
    "decode_int8",
];

fn update() -> Bundle {
    benches::reference_layout()
        .with_flat(&benches::pseudo_random(PARAMS, 3, 0.016))
        .expect("PARAMS is the layout's size")
}

fn bench(c: &mut Criterion, update: &Bundle) {
    let f32_file = update.encode(Encoding::F32).expect("encodes");
    let int8_file = update.encode(Encoding::Int8).expect("encodes");
    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Elements(PARAMS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("copy_f32_bytes", |b| b.iter(|| black_box(f32_file.clone())));
    group.bench_function("encode_f32", |b| b.iter(|| update.encode(Encoding::F32)));
    group.bench_function("encode_int8", |b| b.iter(|| update.encode(Encoding::Int8)));
    group.bench_function("decode_f32", |b| {
        b.iter(|| Bundle::from_safetensors(black_box(&f32_file)))
    });
    group.bench_function("decode_int8", |b| {
        b.iter(|| Bundle::from_safetensors(black_box(&int8_file)))
    });
    group.finish();
}

fn main() {
    let update = update();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &update);
    c.final_summary();
    let size = |e| update.encode(e).map_or(0, |f| f.len());
    println!(
        "\nOne update of {PARAMS} values: float32 file {} bytes, int8 file {} bytes ({:.2}x smaller)",
        size(Encoding::F32),
        size(Encoding::Int8),
        size(Encoding::F32) as f64 / size(Encoding::Int8).max(1) as f64
    );
    let Some(copy) = benches::mean_ns(GROUP, "copy_f32_bytes") else {
        return;
    };
    for f in FUNCTIONS {
        if let Some(ns) = benches::mean_ns(GROUP, f) {
            println!(
                "  {f:<16} {:>7.2} ms  {:>6.1}x the copy",
                ns / 1e6,
                ns / copy
            );
        }
    }
}
