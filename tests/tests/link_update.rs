//! A new agent and the programs it finds attached: the same programs stay
//! (same program ids), other programs are replaced by its own in place
//! (BPF_LINK_UPDATE) while pods connect, refusing nothing.
//!
//! An agent built from other kernel code is stood in for by programs
//! this test loads and puts behind the pinned links itself: "let it
//! through" programs, which leave traffic flowing outside the mesh's
//! capture, as an older agent's programs might.
use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use mesh_testbed::{
    Cluster, ClusterSpec,
    handover::{all_reached, reached},
    sys,
};
use serde_json::Value;

/// Node 1 is handed over; it runs the server `b` and a same-node client `c`.
const DEST: usize = 1;

// From the kernel's uapi/linux/bpf.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_SK_LOOKUP: u32 = 36;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is the `union bpf_attr` member for `cmd`, zeroed past
    // the fields set, and its size is passed along.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the commands used here return a new descriptor (or 0, for
    // BPF_LINK_UPDATE, which the caller does not keep).
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `r0 = 1; exit`: SK_PASS for sk_lookup (the usual socket lookup), allow
/// for connect4 (no redirect).
fn stand_in(prog_type: u32, attach: u32) -> OwnedFd {
    let insn = |code: u8, imm: i32| {
        let mut b = [0u8; 8];
        b[0] = code;
        b[4..].copy_from_slice(&imm.to_ne_bytes());
        b
    };
    let insns = [insn(0xb7, 1), insn(0x95, 0)];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"stand_in");
    let mut attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: attach,
        ..ProgLoad::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).expect("loading a stand-in program")
}

/// Puts `prog` behind the link pinned at `path`, whatever it ran.
fn swap_in(path: &Path, prog: &OwnedFd) {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut get = ObjGet {
        pathname: name.as_ptr() as u64,
        ..ObjGet::default()
    };
    let link = bpf(BPF_OBJ_GET, &mut get).expect("opening the pinned link");
    let mut update = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        ..LinkUpdate::default()
    };
    let done = bpf(BPF_LINK_UPDATE, &mut update).expect("BPF_LINK_UPDATE");
    // Not a descriptor: BPF_LINK_UPDATE returns 0.
    std::mem::forget(done);
}

fn bpftool(args: &[&str]) -> Value {
    let out = sys::run(Command::new("bpftool").arg("-j").args(args)).unwrap();
    serde_json::from_str(&out).unwrap()
}

/// The id and tag of the program a pinned link runs, as bpftool reads them.
fn linked(path: &Path) -> (u64, String) {
    let link = bpftool(&["link", "show", "pinned", path.to_str().unwrap()]);
    let id = link["prog_id"].as_u64().unwrap();
    let prog = bpftool(&["prog", "show", "id", &id.to_string()]);
    (id, prog["tag"].as_str().unwrap().to_owned())
}

/// The tag of a program this test holds, from its descriptor's fdinfo.
fn tag_of(prog: &OwnedFd) -> String {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", prog.as_raw_fd())).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("prog_tag:"))
        .expect("prog_tag in fdinfo")
        .trim()
        .to_owned()
}

/// Every pinned link of a node with the program it runs: the cgroup
/// programs and each pod's sk_lookup.
fn links(pins: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(pins.join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    all.extend(sys::pod_links(pins));
    all.into_iter().map(|p| (p.clone(), linked(&p))).collect()
}

fn replaced_lines(c: &Cluster, n: usize) -> Vec<Value> {
    c.agent_log(n)
        .into_iter()
        .filter(|l| l["message"] == "program replaced")
        .collect()
}

#[test]
fn a_new_agent_with_the_same_programs_leaves_the_attached_ones() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b"]]).handover(Duration::from_secs(5));
    let mut c = Cluster::start(spec).unwrap();
    let pins = c.nodes[DEST].pin_dir.clone();
    let before = links(&pins);
    // connect4, connect6, sock_ops and b's sk_lookup.
    assert_eq!(before.len(), 4, "{before:?}");

    let _old = c.hand_over(DEST).unwrap();
    assert_eq!(links(&pins), before, "the same programs, by id");
    assert!(replaced_lines(&c, DEST).is_empty());
}

#[test]
fn a_new_agent_replaces_other_programs_in_place_refusing_nothing() {
    mesh_testbed::require_root!();
    let spec = ClusterSpec::new(&[&["a"], &["b", "c"]]).handover(Duration::from_secs(10));
    let mut c = Cluster::start(spec).unwrap();
    let _ident = c.serve("b", "8081", "ident").unwrap();
    let to = format!("{}:8081", c.pod("b").ip);
    let pins = c.nodes[DEST].pin_dir.clone();
    let connect4 = pins.join("links").join("mesh_connect4");
    let inbound = sys::pod_links(&pins)
        .into_iter()
        .next()
        .expect("b's sk_lookup link");
    let (_, agents_connect4) = linked(&connect4);
    let (_, agents_inbound) = linked(&inbound);

    // As if an agent with other programs had attached them.
    let other_connect4 = stand_in(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT);
    let other_inbound = stand_in(BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP);
    swap_in(&connect4, &other_connect4);
    swap_in(&inbound, &other_inbound);
    let (other_connect4_tag, other_inbound_tag) = (tag_of(&other_connect4), tag_of(&other_inbound));
    assert_eq!(linked(&connect4).1, other_connect4_tag);
    assert_ne!(other_connect4_tag, agents_connect4);
    drop((other_connect4, other_inbound));
    // Still served: the stand-ins let everything through.
    let v = c
        .client(
            "c",
            &["ident", "--to", &to, "--timeout-s", "5"],
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(reached(&v, "b"), "{v}");

    let count = 40;
    let every = Duration::from_millis(100);
    let cross = c.steady_idents("a", &to, count, every);
    let same = c.steady_idents("c", &to, count, every);
    std::thread::sleep(Duration::from_millis(1000));
    let _old = c.hand_over(DEST).unwrap();

    all_reached(cross, "b", count);
    all_reached(same, "b", count);
    assert_eq!(linked(&connect4).1, agents_connect4);
    assert_eq!(linked(&inbound).1, agents_inbound);
    let lines = replaced_lines(&c, DEST);
    for (program, old, new) in [
        ("mesh_connect4", &other_connect4_tag, &agents_connect4),
        ("mesh_inbound", &other_inbound_tag, &agents_inbound),
    ] {
        assert!(
            lines.iter().any(|l| l["program"] == program
                && l["old_tag"] == old.as_str()
                && l["new_tag"] == new.as_str()),
            "{program}: {lines:?}"
        );
    }
    // The others ran this agent's programs already.
    assert_eq!(lines.len(), 2, "{lines:?}");
}
