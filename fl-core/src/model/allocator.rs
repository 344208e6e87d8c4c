//! The allocator's settings for training. A training step frees and allocates tens of
//! megabytes (activations, im2col buffers, gradients); glibc's malloc maps buffers over its
//! mmap threshold afresh and unmaps them when freed, so every step paid page faults and TLB
//! shootdowns across the cores: a sixth of a CPU step of the reference CNN in a `perf`
//! profile of `fl baseline`, and about a fifth more images/s once they are kept.

/// Keeps freed memory in the process for reuse (glibc's mmap threshold at its maximum,
/// 32 MiB, and no trimming); a program that trains calls it once at its start. Does
/// nothing off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds; called before the
    // program's threads start allocating in earnest, as glibc advises.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
