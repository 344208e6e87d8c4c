//! This process's memory: its peak, and how much the allocator keeps back.

/// Arenas glibc's malloc keeps in a process of nodes, unless `MALLOC_ARENA_MAX` says
/// otherwise. Its default, eight a core, gives each thread of the runtime's blocking pool
/// (records filed, Bitswap blocks read and written) an arena of its own that keeps what it
/// freed: a federation of seven nodes peaked at 1.8 GB with it and 1.1 GB with two.
pub const MALLOC_ARENAS: i32 = 2;

/// Holds glibc's malloc to [`MALLOC_ARENAS`] arenas; call first thing in `main`, before
/// any thread starts. Where `MALLOC_ARENA_MAX` is set, glibc already follows it; other C
/// libraries are left alone.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt changes a setting of the allocator, which takes its own lock; it
        // reads no memory of ours.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// Peak resident memory of this process (VmHWM), bytes; 0 where unknown.
pub fn peak_memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
