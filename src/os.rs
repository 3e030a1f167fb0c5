//! What the server asks of the operating system.
//!
//! Every connection is a file descriptor, so at start the soft open-files limit is
//! raised to the hard limit (the seed's `limits.conf` advice, done by the process
//! itself). And after many connections close, freed heap pages are handed back,
//! so the resident size falls again once a crowd of subscribers has left.
#![allow(unsafe_code)]

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.
#[cfg(unix)]
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives on our stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
    Ok(lim.rlim_cur as u64)
}

/// Without rlimits, report no limit.
#[cfg(not(unix))]
pub fn raise_nofile() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// File descriptors kept free of connections for the listener, logs and the like.
pub const RESERVED_FDS: u64 = 64;

/// The connection limit that fits under an open-files limit.
pub fn connections_for(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX)
}

/// The memory this process may use: the machine's, or its cgroup's limit if
/// that is lower. `None` when neither can be read.
pub fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let total = meminfo.as_deref().and_then(|m| {
        let kib = m.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
        kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
    });
    let total = total.map(|kib| kib * 1024);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// Allocations from which glibc maps memory of their own (its default
/// threshold; it raises it for sizes that come and go).
pub const OWN_MAPPING_FROM: usize = 128 * 1024;

/// What an allocation of `len` bytes takes: whole pages once it has its own
/// mapping, else the allocator's header and 16-byte rounding.
pub fn allocated(len: usize) -> usize {
    if len >= OWN_MAPPING_FROM {
        (len + 16).next_multiple_of(4096)
    } else {
        (len + 8).next_multiple_of(16)
    }
}

/// Has every reactor thread allocate from glibc's one main heap, rather
/// than from an arena of its own: a message is often made on one reactor and
/// freed on another, and per-thread arenas then keep holes the resident size
/// never gives back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    // SAFETY: mallopt only sets a glibc tunable; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Other allocators keep their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

/// Hands free heap pages back to the kernel (glibc keeps them otherwise).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
