//! Where a run's scratch repos live: in memory (`/dev/shm`) when what they will hold fits
//! with room to spare, else the system's temporary directory. Every block a node stores is
//! a file; on a disk each one is an inode to allocate and pages to write back, which cost
//! a tenth of the main job's round time (docs/decisions.md, "A run's repos in memory").

use std::path::{Path, PathBuf};

use datasets::cifar10::{Cifar10, RECORD_BYTES};
use fl_core::model::Architecture;

use crate::Plan;

/// The memory-backed directory tried first.
const SHM: &str = "/dev/shm";

/// A fresh scratch directory for the repos of `plan` on `data`, named `prefix...`; in memory
/// where the run fits (and `TMPDIR` does not name a place), removed when dropped. What a
/// killed run of this process's pid namespace left in memory under the same prefix goes
/// first.
pub fn scratch_dir(
    plan: &Plan,
    data: &Cifar10,
    prefix: &str,
) -> std::io::Result<tempfile::TempDir> {
    let place = in_memory(footprint(plan, data.train.len(), data.test.len()));
    match (place, pid_namespace()) {
        (Some(dir), Some(namespace)) => {
            remove_leftovers(&dir, prefix, namespace);
            tempfile::Builder::new()
                .prefix(&format!("{prefix}{namespace}-{}-", std::process::id()))
                .tempdir_in(dir)
        }
        _ => tempfile::Builder::new().prefix(prefix).tempdir(),
    }
}

/// Removes the directories `prefix<namespace>-<pid>-...` in `dir` whose process, in this
/// process's pid `namespace`, is gone: a run killed before it could remove its own would
/// otherwise hold memory until the machine restarts. Those of other namespaces (containers
/// sharing `/dev/shm`) are left alone: their pids mean nothing here.
fn remove_leftovers(dir: &Path, prefix: &str, namespace: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((ns, pid)) = name.to_str().and_then(|n| owner(n, prefix)) else {
            continue;
        };
        if ns == namespace && !Path::new("/proc").join(pid.to_string()).exists() {
            tracing::info!(dir = %entry.path().display(), "removing a killed run's scratch");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid namespace and process that made the scratch directory `name`
/// (`prefix<namespace>-<pid>-...`).
fn owner(name: &str, prefix: &str) -> Option<(u64, u32)> {
    let mut parts = name.strip_prefix(prefix)?.splitn(3, '-');
    let namespace = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((namespace, pid))
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid` reads `pid:[N]`).
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Bytes the run's repos may reach, generously: per node and kept round (and the one the
/// oldest started from) a model, a server state, a secure record and every node's update
/// (an aggregator or checker holds them all); the `train` images once a node besides the
/// published copy (a population's nodes each hold the whole pool), the `test` ones once a
/// node.
fn footprint(plan: &Plan, train: usize, test: usize) -> u64 {
    let model = Architecture::FedAvgCnn.num_params() as u64 * 4;
    let rounds = u64::from(plan.keep_rounds.map_or(plan.rounds, |k| k.get())) + 1;
    let nodes = plan.nodes as u64;
    let per_node = model.saturating_mul(rounds).saturating_mul(3 + nodes);
    let images = |n: usize| n as u64 * RECORD_BYTES as u64;
    nodes.saturating_mul(per_node) + (nodes + 1) * images(train) + nodes * images(test)
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
    let mut available = mem_available(&meminfo)?;
    // tmpfs pages count against this process's cgroup, whose limit may be lower.
    let cgroup = |f: &str| std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(f)).ok();
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current"))
        && let (Ok(max), Ok(current)) = (max.trim().parse::<u64>(), current.trim().parse::<u64>())
    {
        available = available.min(max.saturating_sub(current));
    }
    fits(bytes, free, available).then(|| shm.to_owned())
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
    fn a_scratch_directory_names_the_namespace_and_process_that_made_it() {
        let name = "fl-simulate-4026531836-4242-Xy3k";
        assert_eq!(owner(name, "fl-simulate-"), Some((4026531836, 4242)));
        assert_eq!(owner("fl-simulate-4242-Xy3k", "fl-simulate-"), None);
        assert_eq!(owner("fl-simulate-Xy3k", "fl-simulate-"), None);
        assert_eq!(owner("fl-experiment-1-4242-Xy3k", "fl-simulate-"), None);
        assert_eq!(owner("fl-simulate-1-42x-Xy3k", "fl-simulate-"), None);
        assert!(pid_namespace().is_some(), "Linux names the pid namespace");
    }

    #[test]
    fn only_a_gone_process_of_this_namespace_loses_its_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let ns = pid_namespace().unwrap();
        let mine = dir
            .path()
            .join(format!("fl-t-{ns}-{}-a", std::process::id()));
        // Above any pid Linux hands out (pid_max is at most 2^22).
        let gone = dir.path().join(format!("fl-t-{ns}-4294967295-b"));
        let other_prefix = dir.path().join(format!("fl-u-{ns}-4294967295-c"));
        let other_namespace = dir.path().join(format!("fl-t-{}-4294967295-d", ns + 1));
        for d in [&mine, &gone, &other_prefix, &other_namespace] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("block"), b"x").unwrap();
        }
        remove_leftovers(dir.path(), "fl-t-", ns);
        assert!(mine.exists() && other_prefix.exists() && other_namespace.exists());
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
    fn the_main_jobs_eight_nodes_need_a_few_gigabytes_and_sixty_four_many_more() {
        let eight = footprint(&Plan::new(8, 94), 12_000, 2_000);
        assert!((2 << 30..4 << 30).contains(&eight), "{eight}");
        let mut kept = Plan::new(8, 94);
        kept.keep_rounds = None;
        assert!(
            footprint(&kept, 12_000, 2_000) > 10 * eight,
            "every round kept"
        );
        assert!(footprint(&Plan::new(64, 94), 12_000, 2_000) > 100 << 30);
    }
}
