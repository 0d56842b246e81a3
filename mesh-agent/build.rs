//! Builds the kernel programs with the same recipe as `cargo xtask build-ebpf` and hands the object to the
//! agent to embed. Cargo reruns this whenever the
//! kernel sources change, so the embedded object is never stale; when the
//! build cannot run, the error names the command that fixes it.
use std::{
    env, fs,
    path::{Path, PathBuf},
};

#[path = "../xtask/src/ebpf_build.rs"]
mod ebpf_build;

fn main() {
    ebpf_object();
}

fn ebpf_object() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("mesh-ebpf.o");
    for dir in [
        "mesh-ebpf/src",
        "mesh-ebpf/Cargo.toml",
        "mesh-common/src",
        "xtask/src/ebpf_build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    // A prebuilt object (an image build stage) may stand in for the build.
    println!("cargo:rerun-if-env-changed=MESH_EBPF_OBJECT");
    if let Some(prebuilt) = env::var_os("MESH_EBPF_OBJECT") {
        embed(&PathBuf::from(prebuilt), &out, "MESH_EBPF_OBJECT=");
        return;
    }
    let status = ebpf_build::command(&workspace).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building the eBPF programs failed ({s}); {}",
            ebpf_build::FIX_HINT
        ),
        Err(e) => panic!(
            "could not run rustup to build the eBPF programs: {e}; {}",
            ebpf_build::FIX_HINT
        ),
    }
    let object = ebpf_build::object_path(&workspace);
    embed(&object, &out, "eBPF object ");
}

/// Writes the object the agent embeds: `from` without its DWARF. bpf-linker
/// derives the BTF that the kernel and aya need from the debug info, then
/// keeps the DWARF too, which no loader reads. It was 425 of the object's
/// 494 KB, and it sat in the agent's binary, where parsing the object at
/// start kept most of it resident.
fn embed(from: &Path, out: &Path, what: &str) {
    let elf = match fs::read(from) {
        Ok(elf) => elf,
        Err(e) => panic!("{what}{}: {e}; {}", from.display(), ebpf_build::FIX_HINT),
    };
    match without_dwarf(&elf) {
        Ok(stripped) => {
            if let Err(e) = fs::write(out, stripped) {
                panic!("writing {}: {e}", out.display());
            }
        }
        Err(e) => panic!(
            "{what}{}: not an ELF object this build can read: {e}",
            from.display()
        ),
    }
}

fn without_dwarf(elf: &[u8]) -> Result<Vec<u8>, object::build::Error> {
    let mut builder = object::build::elf::Builder::read(elf)?;
    for section in builder.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug") || name.starts_with(b".rel.debug") {
            section.delete = true;
        }
    }
    builder.delete_orphans();
    // bpf-linker names sections from `.strtab`, which the ELF writer does
    // not support; section names get a table of their own.
    if !builder
        .sections
        .iter()
        .any(|s| matches!(s.data, object::build::elf::SectionData::SectionString))
    {
        let names = builder.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = object::build::elf::SectionData::SectionString;
    }
    let mut stripped = Vec::new();
    builder.write(&mut stripped)?;
    Ok(stripped)
}
