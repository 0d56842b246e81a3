//! `hboneprobe`: connects to an agent's HBONE port as the tests tell it to —
//! with a good certificate, another CA's, an expired one or none; sending a
//! CONNECT, another method, or garbage — and prints what happened as JSON.
use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, SanType,
};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
struct Cli {
    /// The destination pod's address and HBONE port.
    #[arg(long)]
    to: SocketAddr,
    /// The mesh root (PEM), to sign the probe's own certificate.
    #[arg(long)]
    root_cert: std::path::PathBuf,
    #[arg(long)]
    root_key: std::path::PathBuf,
    /// The SPIFFE ID in the probe's certificate.
    #[arg(long, default_value = "spiffe://cluster.local/ns/default/sa/probe")]
    identity: String,
    /// Certificate: mesh (signed by the mesh root), other-ca, expired, none.
    #[arg(long, default_value = "mesh")]
    cert: String,
    #[arg(long, default_value = "CONNECT")]
    method: String,
    /// The CONNECT target (ip:port).
    #[arg(long)]
    authority: Option<String>,
    /// Send bytes that are not TLS and report what came back.
    #[arg(long)]
    garbage: bool,
}

/// The probe checks nothing about the server: it is here to test the server.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn leaf(
    cli: &Cli,
) -> anyhow::Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let issuer_key;
    let issuer = match cli.cert.as_str() {
        "none" => return Ok(None),
        "other-ca" => {
            issuer_key = KeyPair::generate()?;
            let mut p = CertificateParams::default();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            Issuer::new(p, &issuer_key)
        }
        "mesh" | "expired" => {
            issuer_key = KeyPair::from_pem(&std::fs::read_to_string(&cli.root_key)?)?;
            Issuer::from_ca_cert_pem(&std::fs::read_to_string(&cli.root_cert)?, &issuer_key)?
        }
        other => anyhow::bail!("--cert {other}: use mesh, other-ca, expired or none"),
    };
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(cli.identity.clone().try_into()?)];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    if cli.cert == "expired" {
        p.not_before = now - time::Duration::hours(2);
        p.not_after = now - time::Duration::hours(1);
    } else {
        p.not_before = now - time::Duration::minutes(1);
        p.not_after = now + time::Duration::hours(1);
    }
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Some((
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )))
}

async fn probe(cli: Cli) -> serde_json::Value {
    let mut tcp = match tokio::net::TcpStream::connect(cli.to).await {
        Ok(t) => t,
        Err(e) => return json!({"stage": "tcp", "error": e.to_string()}),
    };
    if cli.garbage {
        let _ = tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage")
            .await;
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
        )
        .await;
        return json!({"stage": "garbage", "read": format!("{n:?}")});
    }
    let cert = match leaf(&cli) {
        Ok(c) => c,
        Err(e) => return json!({"stage": "cert", "error": e.to_string()}),
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny));
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::IpAddress(cli.to.ip().into());
    let tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(t) => t,
        Err(e) => return json!({"stage": "tls", "error": e.to_string()}),
    };
    let (sender, conn) = match h2::client::Builder::new().handshake::<_, Bytes>(tls).await {
        Ok(x) => x,
        Err(e) => return json!({"stage": "h2", "error": e.to_string()}),
    };
    tokio::spawn(conn);
    let authority = cli.authority.clone().unwrap_or_else(|| cli.to.to_string());
    let method: http::Method = cli.method.parse().unwrap();
    let uri = if method == http::Method::CONNECT {
        authority.clone()
    } else {
        format!("https://{authority}/")
    };
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .unwrap();
    let mut sender = match sender.ready().await {
        Ok(s) => s,
        Err(e) => return json!({"stage": "h2", "error": e.to_string()}),
    };
    let response = match sender.send_request(request, true) {
        Ok((r, _)) => r.await,
        Err(e) => return json!({"stage": "request", "error": e.to_string()}),
    };
    match response {
        Ok(r) => json!({"stage": "response", "status": r.status().as_u16()}),
        Err(e) => json!({"stage": "response", "error": e.to_string()}),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    println!("{}", probe(cli).await);
}
