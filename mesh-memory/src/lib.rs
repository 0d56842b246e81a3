//! Giving a long-running process's unused memory back to the kernel, for
//! the node agent and the waypoint alike.
//!
//! - Freed heap: glibc keeps the holes that freed allocations leave inside
//!   its heap (the agent's BTF and ELF parsing at start, the buffers of a
//!   burst of connections the waypoint has since closed), so a process
//!   would carry several MiB it no longer uses. `malloc_trim` returns whole
//!   free pages in those holes as well as at the top of the heap.
//! - Startup code: the pages of the executable that only starting touched.

/// Returns the heap's free pages to the kernel (glibc only; elsewhere the
/// allocator is left to its own policy).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One mapping of `/proc/self/smaps`, as far as releasing it is concerned.
#[derive(Debug, PartialEq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    path: &'a str,
    rss_kib: u64,
    anonymous_kib: u64,
}

fn parse_header(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        perms,
        path: fields.next().unwrap_or("").trim(),
        rss_kib: 0,
        // Unknown until smaps says: never released unknown.
        anonymous_kib: u64::MAX,
    })
}

fn parse_smaps(smaps: &str) -> Vec<Mapping<'_>> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        // A mapping's header first: it holds colons too (the device).
        if let Some(m) = parse_header(line) {
            maps.push(m);
        } else if let Some((key, value)) = line.split_once(':') {
            let kib = || {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            };
            if let Some(m) = maps.last_mut() {
                match key {
                    "Rss" => m.rss_kib = kib().unwrap_or(0),
                    // Unknown means "maybe written": never released.
                    "Anonymous" => m.anonymous_kib = kib().unwrap_or(u64::MAX),
                    _ => {}
                }
            }
        }
    }
    maps
}

/// The mappings of `exe` whose resident pages are all the file's own: not
/// writable, private, and with no page the process has written (a RELRO
/// segment, relocated at load, has such pages and is kept). Dropping these
/// loses nothing: the next access maps the same page from the page cache.
fn releasable<'a>(maps: &'a [Mapping<'a>], exe: &str) -> impl Iterator<Item = &'a Mapping<'a>> {
    maps.iter().filter(move |m| {
        let path = m.path.strip_suffix(" (deleted)").unwrap_or(m.path);
        path == exe
            && m.perms.starts_with('r')
            && m.perms.as_bytes().get(1) == Some(&b'-')
            && m.perms.ends_with('p')
            && m.anonymous_kib == 0
            && m.rss_kib > 0
    })
}

/// Unmaps, from this process only, the pages of its own executable that
/// startup faulted in: loading the eBPF object, parsing the configuration,
/// the first TLS handshakes run once, and the kernel maps 64 KiB of the
/// binary around every page touched, so several MiB of code stay mapped
/// that an idle or busy process never runs again. Mapped executable pages are
/// the last the kernel reclaims; once unmapped they are ordinary page
/// cache, and the code that runs again maps them back with a minor fault.
/// Returns the KiB that were resident.
pub fn release_startup_code() -> std::io::Result<u64> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let maps = parse_smaps(&smaps);
    let mut released = 0;
    for m in releasable(&maps, exe) {
        // SAFETY: the range is a private, read-only mapping of the
        // executable with no anonymous (written) page, so MADV_DONTNEED
        // only drops page-table entries; the next access refills them
        // from the file with the same contents. Read-only mappings cannot
        // have been written since smaps was read.
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released += m.rss_kib;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5600aa000000-5600aa100000 r--p 00000000 08:01 42                         /opt/mesh agent
Size:               1024 kB
Rss:                 300 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
5600aa100000-5600aa600000 r-xp 00100000 08:01 42                         /opt/mesh agent
Size:               5120 kB
Rss:                4000 kB
Anonymous:             0 kB
5600aa600000-5600aa680000 r--p 00600000 08:01 42                         /opt/mesh agent
Rss:                 400 kB
Anonymous:           380 kB
5600aa680000-5600aa690000 rw-p 00680000 08:01 42                         /opt/mesh agent
Rss:                  64 kB
Anonymous:            64 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 7                          /usr/lib/libc.so.6
Rss:                1000 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r--s 00000000 00:10 9                          anon_inode:bpf-map
Rss:                 512 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                 104 kB
Anonymous:           104 kB
";

    #[test]
    fn only_the_executables_unwritten_read_only_mappings_are_released() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 7);
        assert_eq!(maps[1].path, "/opt/mesh agent");
        assert_eq!(maps[1].rss_kib, 4000);
        let picked: Vec<_> = releasable(&maps, "/opt/mesh agent")
            .map(|m| (m.start, m.perms))
            .collect();
        // .rodata and .text; not RELRO (relocated, so written), not .data,
        // not libc, the bpf map or the stack.
        assert_eq!(
            picked,
            vec![(0x5600aa000000, "r--p"), (0x5600aa100000, "r-xp")]
        );
    }

    #[test]
    fn a_mapping_with_an_unreadable_or_missing_anonymous_count_is_kept() {
        let smaps = "1000-2000 r-xp 00000000 08:01 42 /x\nRss: 4 kB\nAnonymous: ? kB\n";
        let maps = parse_smaps(smaps);
        assert_eq!(releasable(&maps, "/x").count(), 0);
        let smaps = "1000-2000 r-xp 00000000 08:01 42 /x\nRss: 4 kB\n";
        let maps = parse_smaps(smaps);
        assert_eq!(releasable(&maps, "/x").count(), 0);
    }

    /// On this very process: its code and constants leave the page tables
    /// and come back on use; the test goes on running.
    #[test]
    fn releasing_the_running_executable_keeps_it_running() {
        let released = release_startup_code().expect("release");
        assert!(released > 0, "the test binary had code resident");
        let sum: u64 = (1..=1000u64).map(|i| i * i).sum();
        assert_eq!(sum, 333_833_500);
        assert!(release_startup_code().is_ok());
    }
}
