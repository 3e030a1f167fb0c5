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
