//! Helpers shared by the integration tests.

#[allow(dead_code)] // only the multi-host tests make namespaces
pub mod lan;
#[allow(dead_code)] // only the tests of whole federations run `fl simulate`
pub mod simulate;

/// `len` pseudo-random bytes (xorshift), the same for the same seed.
#[allow(dead_code)] // not every test binary makes files
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A node setup for tests: TCP on 127.0.0.1 only, no mDNS, no bootstrap peers.
#[allow(dead_code)] // not every test binary starts nodes in-process
pub fn loopback() -> fl_node::net::NodeConfig {
    fl_node::net::NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        ..fl_node::net::NodeConfig::default()
    }
}

/// A task record for tests of gossip and rounds: open to anyone, own data, three rounds of
/// FedAvg starting from `model`.
#[allow(dead_code)] // not every test binary makes tasks
pub fn open_task(name: &str, model: cid::Cid) -> fl_core::records::Task {
    use fl_core::records::{DataSource, RoundSchedule, Task, TrainParams, task::TASK_FORMAT};
    Task {
        format: TASK_FORMAT.into(),
        name: name.into(),
        architecture: "fedavg-cnn".into(),
        initial_model: model,
        data: DataSource::OwnData,
        train: TrainParams {
            epochs: 1,
            batch_size: 32,
            learning_rate: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
            proximal_mu: 0.0,
            schedule: RoundSchedule::Constant,
            steps: None,
            load: fl_core::records::Load::Equal,
        },
        rounds: 3,
        min_participants: 1,
        round_deadline_ms: 1000,
        grace_ms: 1000,
        dp: None,
        rule: "fedavg".into(),
        members: None,
        flops_per_sample: 1,
        seed: 0,
        update_encoding: fl_core::tensors::Encoding::F32,
        max_samples: None,
        evaluate_every: None,
        secure: None,
        population: None,
    }
}
