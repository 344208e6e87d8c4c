//! FedAvg throughput beside its physical limit, a plain copy of the same update bytes, in
//! the same run. Prints GB/s of update data read and the ratio to memcpy at the end.
//!
//!     cargo bench -p benches --bench aggregate
//!
//! Updates have the reference CNN's 1,756,426 parameters (7.03 MB of f32), each in its own
//! buffer (703 MB for 100 updates): a pool of buffers reused across updates would let the
//! all-in-memory path, which reads every update's tile in turn, hit the cache for repeats.

use std::hint::black_box;
use std::sync::Arc;

use aggregator::{
    Aggregation, AggregatorConfig, Contribution, FedAvg, MeanRule, ServerState, Strategy,
    WeightedMean,
};
use criterion::{Criterion, Throughput};
use fl_core::content::Block;
use fl_core::tensors::Bundle;

const PARAMS: usize = 1_756_426;
const COUNTS: [usize; 2] = [10, 100];

fn group_name(n: usize) -> String {
    format!("fedavg_{n}x{PARAMS}")
}

fn bundle(layout: &Bundle, seed: u64) -> Bundle {
    layout
        .with_flat(&benches::pseudo_random(PARAMS, seed, 1e-2))
        .expect("PARAMS is the layout's size")
}

fn bench(c: &mut Criterion) {
    let layout = benches::reference_layout();
    let global = bundle(&layout, 0);
    assert_eq!(global.num_values(), PARAMS);
    let model = *Block::hashed(0x55, b"model".to_vec()).cid();
    let pool: Vec<Arc<Bundle>> = (1..=COUNTS[1] as u64)
        .map(|s| Arc::new(bundle(&layout, s)))
        .collect();
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    for n in COUNTS {
        let mut updates: Vec<Contribution> = (0..n)
            .map(|i| {
                let cid = *Block::hashed(0x55, format!("update {i}").into_bytes()).cid();
                let delta = Arc::clone(&pool[i]);
                Contribution::new(format!("node-{i:03}"), cid, model, 100 + i as u64, delta)
            })
            .collect();
        updates.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let mut group = c.benchmark_group(group_name(n));
        group.throughput(Throughput::Bytes((n * PARAMS * 4) as u64));
        group.sample_size(10);
        let mut buffer = vec![0f32; PARAMS];
        group.bench_function("memcpy", |b| {
            b.iter(|| {
                for u in &updates {
                    let mut at = 0;
                    for (_, t) in u.delta.iter() {
                        buffer[at..at + t.data.len()].copy_from_slice(&t.data);
                        at += t.data.len();
                    }
                    black_box(&mut buffer);
                }
            })
        });
        group.bench_function("fedavg", |b| {
            b.iter(|| black_box(FedAvg.aggregate(&global, &updates, ServerState::empty())))
        });
        group.bench_function("fedavg_1_thread", |b| {
            b.iter(|| {
                one_thread.install(|| {
                    black_box(FedAvg.aggregate(&global, &updates, ServerState::empty()))
                })
            })
        });
        group.bench_function("fedavg_streaming", |b| {
            b.iter(|| {
                let mut acc = WeightedMean::new(&global);
                for u in &updates {
                    acc.add(&u.sender, &u.cid, u.samples, 1.0, &u.delta)
                        .expect("valid update");
                }
                let mean = acc.finish().expect("updates");
                black_box(FedAvg.step(&global, &mean, ServerState::empty()))
            })
        });
        group.bench_function("fedavg_streaming_validated", |b| {
            let config = AggregatorConfig::default();
            b.iter(|| {
                let mut round = Aggregation::new(&config, &global, model).expect("config");
                for u in &updates {
                    round.offer(u.clone()).expect("in order");
                }
                black_box(round.finish(ServerState::empty()))
            })
        });
        group.finish();
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    let threads = rayon::current_num_threads();
    println!(
        "\nFedAvg vs memcpy over the same update bytes (GB/s of f32 update data read, ratio to memcpy; \
         {threads} rayon threads unless noted):"
    );
    for n in COUNTS {
        let group = group_name(n);
        let Some(copy) = benches::mean_ns(&group, "memcpy") else {
            continue;
        };
        let bytes = (n * PARAMS * 4) as f64;
        let gb_s = |ns: f64| bytes / ns;
        println!("  {n} updates ({:.0} MB):", bytes / 1e6);
        println!("    {:<28} {:>7.2} GB/s", "memcpy", gb_s(copy));
        for f in [
            "fedavg",
            "fedavg_1_thread",
            "fedavg_streaming",
            "fedavg_streaming_validated",
        ] {
            if let Some(ns) = benches::mean_ns(&group, f) {
                println!("    {f:<28} {:>7.2} GB/s  ratio {:.3}", gb_s(ns), copy / ns);
            }
        }
    }
}
