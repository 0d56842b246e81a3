//! Generates the tonic client and server of Istio's certificate service.
fn main() {
    istio_ca_service();
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
