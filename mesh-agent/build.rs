//! Generates the CA's gRPC service code, and builds the kernel programs with
//! the same recipe as `cargo xtask build-ebpf` and hands the object to the
//! agent to embed. Cargo reruns this whenever the
//! kernel sources change, so the embedded object is never stale; when the
//! build cannot run, the error names the command that fixes it.
use std::{env, fs, path::PathBuf};

#[path = "../xtask/src/ebpf_build.rs"]
mod ebpf_build;

fn main() {
    istio_ca_service();
    ebpf_object();
}

/// Istio's certificate service (istio.v1.auth.IstioCertificateService),
/// generated from a description in Rust rather than a .proto file, so the
/// build needs no protoc. The messages live in `src/ca/proto.rs`.
fn istio_ca_service() {
    let method = tonic_build::manual::Method::builder()
        .name("create_certificate")
        .route_name("CreateCertificate")
        .input_type("crate::ca::proto::IstioCertificateRequest")
        .output_type("crate::ca::proto::IstioCertificateResponse")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("IstioCertificateService")
        .package("istio.v1.auth")
        .method(method)
        .build();
    tonic_build::manual::Builder::new()
        .build_transport(false)
        .compile(&[service]);
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
        if let Err(e) = fs::copy(&prebuilt, &out) {
            panic!(
                "MESH_EBPF_OBJECT={}: {e}",
                PathBuf::from(prebuilt).display()
            );
        }
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
    if let Err(e) = fs::copy(&object, &out) {
        panic!(
            "eBPF object {} missing after build: {e}; {}",
            object.display(),
            ebpf_build::FIX_HINT
        );
    }
}
