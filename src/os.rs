//! Settings of the C library that Rust's standard library does not expose, for programs that
//! train or run models: the allocator's thresholds, and the signal for files grown past the
//! size limit. This module exists for its `unsafe`: both are C functions.
//!
//! ## The allocator
//! Every dfdx op allocates its output, and glibc serves allocations of 128 KiB and more with
//! fresh `mmap`s that it unmaps on free, so a training step maps, zero-faults and unmaps the same
//! activations again and again: measured on the GPT-style training step, 770,603 page faults in
//! 5 s, and 25% more CPU per token than with glibc told to keep freed memory (63,864 faults).
//! This module exists for its `unsafe`: `mallopt` is a C function.

/// Tells the C allocator to keep freed memory for reuse instead of returning it to the system:
/// glibc's `mallopt` with the mmap threshold at its largest (32 MiB on 64-bit) and the trim
/// threshold at 1 GiB. Call it once, first thing in
/// `main`; a no-op on platforms other than Linux with glibc. The process's resident memory then
/// stays at its peak instead of shrinking after large frees.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20; // glibc refuses more on 64-bit
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: `mallopt` only changes glibc's allocation thresholds; it is thread-safe and
        // takes plain integers. A refused setting (return 0) leaves the defaults, which is fine.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// Makes a write past the file-size limit (`ulimit -f`) fail with an error instead of killing
/// the process with SIGXFSZ: a checkpoint that cannot be written is then reported, and its
/// staging directory removed, like any failed write. Call it once, first thing in `main`; a
/// no-op on platforms other than Linux.
pub fn report_oversized_writes() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it is
        // async-signal-safe and has no other effect than making write(2) return EFBIG.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
    }
}
