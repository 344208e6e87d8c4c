//! Secure aggregation's cost beside plain FedAvg over the same updates, in the same run:
//! one member's masking, the aggregator's unmasking (with no dropout and with the most the
//! threshold tolerates) and a checker's verification, against FedAvg's aggregation of the
//! float32 updates; and the bytes a member sends a round, against a float32 update file.
//!
//!     cargo bench -p benches --bench secagg
//!
//! Updates have the reference CNN's 1,756,426 parameters; the ring holds 20 bits a member.

use std::hint::black_box;
use std::sync::Arc;

use aggregator::{Contribution, FedAvg, ServerState, Strategy};
use criterion::Criterion;
use fl_core::content::Block;
use fl_core::records::{Keypair, SecureStep, Signed, Step};
use fl_core::secagg::{
    Advert, Collector, Dealing, MaskedInput, Member, Params, Public, Reveal, Session, Slot,
    Survivors, unmask, verify,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const PARAMS: usize = 1_756_426;
const MEMBERS: [u16; 2] = [8, 16];
const RANGE: f64 = 0.01;

fn group_name(n: u16) -> String {
    format!("secagg_{n}x{PARAMS}")
}

/// A round of `n` members through masking; `vanish` members send no masked update.
struct Round {
    params: Params,
    session: Session,
    members: Vec<Member>,
    adverts: Vec<Advert>,
    dealings: Vec<Dealing>,
    inputs: Vec<MaskedInput>,
    updates: Vec<Vec<f32>>,
}

fn round(n: u16, vanish: usize) -> Round {
    let params = Params::new(n, Params::default_threshold(n), RANGE, 20).expect("settings");
    let session = Session::new(b"bench", 1);
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(n));
    let (mut members, adverts): (Vec<Member>, Vec<Advert>) = (0..n)
        .map(|s| Member::new(params, session, Slot(s as u8), &mut rng).expect("member"))
        .unzip();
    let dealings: Vec<Dealing> = members
        .iter_mut()
        .map(|m| m.deal(&adverts).expect("dealing").0)
        .collect();
    for m in &mut members {
        m.open(&dealings).expect("shares");
    }
    let updates: Vec<Vec<f32>> = (0..u64::from(n))
        .map(|s| benches::pseudo_random(PARAMS, s + 1, RANGE as f32))
        .collect();
    let inputs = members
        .iter()
        .zip(&updates)
        .skip(vanish)
        .map(|(m, u)| m.mask(u).expect("masked"))
        .collect();
    Round {
        params,
        session,
        members,
        adverts,
        dealings,
        inputs,
        updates,
    }
}

impl Round {
    fn public(&self) -> Public<'_> {
        Public {
            params: &self.params,
            session: &self.session,
            adverts: &self.adverts,
            inputs: &self.inputs,
            len: PARAMS,
        }
    }

    fn survivors(&self) -> Survivors {
        let mut collector = Collector::default();
        for input in &self.inputs {
            collector
                .offer(&self.params, &self.session, input.clone(), PARAMS)
                .expect("valid input");
        }
        collector.survivors(&self.session, |_| true)
    }

    fn answers(&mut self, survivors: &Survivors, silent: usize) -> Vec<Reveal> {
        self.members
            .iter_mut()
            .skip(silent)
            .map(|m| m.answer(survivors).expect("answer"))
            .collect()
    }
}

fn signed_len(step: Step, key: &Keypair) -> usize {
    let record = SecureStep {
        task: *Block::hashed(0x71, b"task".to_vec()).cid(),
        round: 1,
        step,
    };
    Signed::sign(record, key)
        .and_then(|s| s.to_block())
        .map(|b| b.data().len())
        .expect("signed step")
}

fn bench(c: &mut Criterion) -> Vec<String> {
    let layout = benches::reference_layout();
    let key = Keypair::generate_ed25519();
    let mut bytes_report = Vec::new();
    for n in MEMBERS {
        let mut full = round(n, 0);
        let dropouts = usize::from(full.params.tolerated_dropouts());
        let mut dropped = round(n, dropouts);
        let all = full.survivors();
        let reveals = full.answers(&all, 0);
        let some = dropped.survivors();
        let dropped_reveals = dropped.answers(&some, dropouts);
        let model = *Block::hashed(0x55, b"model".to_vec()).cid();
        let global = layout
            .with_flat(&benches::pseudo_random(PARAMS, 0, 1.0))
            .expect("layout");
        let mut plain: Vec<Contribution> = full
            .updates
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let cid = *Block::hashed(0x55, format!("update {i}").into_bytes()).cid();
                let delta = Arc::new(layout.with_flat(u).expect("layout"));
                Contribution::new(format!("node-{i:03}"), cid, model, 100, delta)
            })
            .collect();
        plain.sort_by(|a, b| a.order_key().cmp(&b.order_key()));

        let mut group = c.benchmark_group(group_name(n));
        group.sample_size(10);
        group.bench_function("fedavg", |b| {
            b.iter(|| black_box(FedAvg.aggregate(&global, &plain, ServerState::empty())))
        });
        group.bench_function("mask_one_member", |b| {
            b.iter(|| black_box(full.members[0].mask(&full.updates[0]).expect("masked")))
        });
        group.bench_function("unmask", |b| {
            b.iter(|| black_box(unmask(&full.public(), &full.dealings, &all, &reveals)))
        });
        group.bench_function("unmask_most_dropouts", |b| {
            b.iter(|| {
                black_box(unmask(
                    &dropped.public(),
                    &dropped.dealings,
                    &some,
                    &dropped_reveals,
                ))
            })
        });
        let sum = unmask(
            &dropped.public(),
            &dropped.dealings,
            &some,
            &dropped_reveals,
        )
        .expect("unmasked")
        .sum;
        group.bench_function("verify_most_dropouts", |b| {
            b.iter(|| black_box(verify(&dropped.public(), &sum)))
        });
        group.finish();

        // Bytes one member sends a round (its own messages, each once).
        let update_file = layout
            .with_flat(&full.updates[0])
            .and_then(|b| b.to_safetensors())
            .expect("update")
            .len();
        let masked = full.inputs[0].to_bytes().expect("masked file").len();
        let keys = signed_len(Step::Keys(full.adverts[0].clone()), &key);
        let shares = signed_len(Step::Shares(full.dealings[0].clone()), &key);
        let answer = signed_len(Step::Answer(reveals[0].clone()), &key);
        let survivors = signed_len(Step::Survivors(all.clone()), &key);
        let total = masked + keys + shares + answer;
        bytes_report.push(format!(
            "  {n} members: float32 update file {update_file} B; secure: masked update {masked} B + keys {keys} B + shares {shares} B + answer {answer} B = {total} B, ratio {:.4} (the aggregator also sends a survivor list of {survivors} B)",
            total as f64 / update_file as f64
        ));
    }
    bytes_report
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let bytes = bench(&mut c);
    c.final_summary();
    println!(
        "\nSecure aggregation against FedAvg on the same updates (mean time, ratio to FedAvg):"
    );
    for n in MEMBERS {
        let group = group_name(n);
        let Some(fedavg) = benches::mean_ns(&group, "fedavg") else {
            continue;
        };
        println!("  {n} members: fedavg {:.1} ms", fedavg / 1e6);
        for f in [
            "mask_one_member",
            "unmask",
            "unmask_most_dropouts",
            "verify_most_dropouts",
        ] {
            if let Some(ns) = benches::mean_ns(&group, f) {
                println!("    {f:<22} {:>8.1} ms  ratio {:.2}", ns / 1e6, ns / fedavg);
            }
        }
    }
    println!("\nBytes a member sends a round:");
    for line in bytes {
        println!("{line}");
    }
}
