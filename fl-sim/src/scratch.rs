//! Where a run's scratch repos live: in memory (`/dev/shm`) when what they will hold fits
//! with room to spare, else the system's temporary directory. Every block a node stores is
//! a file; on a disk each one is an inode to allocate and pages to write back, which cost
//! a tenth of the main job's round time (docs/decisions.md, "A run's repos in memory").

use std::path::{Path, PathBuf};

use datasets::cifar10::Cifar10;
use fl_core::model::Architecture;

use crate::Plan;

/// The memory-backed directory tried first.
const SHM: &str = "/dev/shm";
/// Bytes of one CIFAR-10 image as stored (label and pixels).
const IMAGE_BYTES: u64 = 3073;

/// A fresh scratch directory for the repos of `plan` on `data`, named `prefix...`; in memory
/// where the run fits (and `TMPDIR` does not name a place), removed when dropped. What a
/// killed run left in memory under the same prefix goes first.
pub fn scratch_dir(
    plan: &Plan,
    data: &Cifar10,
    prefix: &str,
) -> std::io::Result<tempfile::TempDir> {
    match in_memory(footprint(plan, data.train.len(), data.test.len())) {
        Some(dir) => {
            remove_leftovers(&dir, prefix);
            tempfile::Builder::new()
                .prefix(&format!("{prefix}{}-", std::process::id()))
                .tempdir_in(dir)
        }
        None => tempfile::Builder::new().prefix(prefix).tempdir(),
    }
}

/// Removes the directories `prefix<pid>-...` in `dir` whose process is gone: a run killed
/// before it could remove its own would otherwise hold memory until the machine restarts.
fn remove_leftovers(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| owner(n, prefix)) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            tracing::info!(dir = %entry.path().display(), "removing a killed run's scratch");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The process that made the scratch directory `name` (`prefix<pid>-...`).
fn owner(name: &str, prefix: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(prefix)?.split_once('-')?;
    pid.parse().ok()
}

/// Bytes the run's repos may reach, generously: per node its kept rounds' models (each with
/// the model it started from), its own updates and, as an aggregator or checker, everyone
/// else's; the `train` images twice (published, then fetched) and the `test` ones once a
/// node.
fn footprint(plan: &Plan, train: usize, test: usize) -> u64 {
    let model = Architecture::FedAvgCnn.num_params() as u64 * 4;
    let rounds = u64::from(plan.keep_rounds.map_or(plan.rounds, |k| k.get()));
    let nodes = plan.nodes as u64;
    let per_node = model * (rounds + 1) + model * rounds * 3;
    let images = |n: usize| n as u64 * IMAGE_BYTES;
    nodes * per_node + 2 * images(train) + nodes * images(test)
}

/// `/dev/shm`, where `bytes` fit in half of its free space and a quarter of the memory
/// still available; `None` elsewhere, or when `TMPDIR` says where scratch goes.
fn in_memory(bytes: u64) -> Option<PathBuf> {
    if std::env::var_os("TMPDIR").is_some() {
        return None;
    }
    let shm = Path::new(SHM);
    let stat = rustix::fs::statvfs(shm).ok()?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    fits(bytes, free, mem_available(&meminfo)?).then(|| shm.to_owned())
}

/// Whether `bytes` fit in half of `free` and a quarter of `available` memory.
fn fits(bytes: u64, free: u64, available: u64) -> bool {
    bytes <= free / 2 && bytes <= available / 4
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_available_is_read_in_bytes_and_anything_else_is_no_answer() {
        let text = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(mem_available(text), Some(22_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
        assert_eq!(mem_available("MemAvailable: 5 MB\n"), None);
    }

    #[test]
    fn a_scratch_directory_names_the_process_that_made_it() {
        assert_eq!(owner("fl-simulate-4242-Xy3k", "fl-simulate-"), Some(4242));
        assert_eq!(
            owner("fl-simulate-Xy3k", "fl-simulate-"),
            None,
            "made before pids"
        );
        assert_eq!(owner("fl-experiment-4242-Xy3k", "fl-simulate-"), None);
        assert_eq!(owner("fl-simulate-42x-Xy3k", "fl-simulate-"), None);
    }

    #[test]
    fn only_a_gone_process_loses_its_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join(format!("fl-t-{}-a", std::process::id()));
        // Above any pid Linux hands out (pid_max is at most 2^22).
        let gone = dir.path().join("fl-t-4294967295-b");
        let other = dir.path().join("fl-u-4294967295-c");
        for d in [&mine, &gone, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("block"), b"x").unwrap();
        }
        remove_leftovers(dir.path(), "fl-t-");
        assert!(mine.exists() && other.exists());
        assert!(!gone.exists());
    }

    #[test]
    fn a_run_goes_to_memory_only_with_room_to_spare() {
        let gib = 1u64 << 30;
        assert!(fits(gib, 12 * gib, 22 * gib));
        assert!(
            !fits(gib, gib, 22 * gib),
            "a small /dev/shm (a container's 64 MiB)"
        );
        assert!(
            !fits(6 * gib, 12 * gib, 22 * gib),
            "more than a quarter of memory"
        );
    }

    #[test]
    fn the_main_jobs_eight_nodes_need_about_a_gigabyte_and_a_population_many() {
        let eight = footprint(&Plan::new(8, 94), 12_000, 2_000);
        assert!((500 << 20..2 << 30).contains(&eight), "{eight}");
        let mut kept = Plan::new(8, 94);
        kept.keep_rounds = None;
        assert!(
            footprint(&kept, 12_000, 2_000) > 10 * eight,
            "every round kept"
        );
        assert!(footprint(&Plan::new(64, 94), 12_000, 2_000) > 6 << 30);
    }
}
