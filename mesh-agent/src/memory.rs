//! Giving freed heap memory back to the kernel. Loading the datapath parses
//! the kernel's BTF and the programs' ELF into many small allocations; once
//! they are freed, glibc keeps the holes they leave inside its heap, so the
//! agent would carry several MiB it no longer uses. `malloc_trim` returns
//! whole free pages in those holes as well as at the top of the heap.

/// Returns the heap's free pages to the kernel (glibc only; elsewhere the
/// allocator is left to its own policy).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
