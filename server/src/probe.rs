//! `receiptd health`: asks a running `receiptd` whether it is serving, over
//! the same gRPC health protocol (`grpc.health.v1`) that load balancers and
//! Kubernetes use, and exits 0 only for `SERVING`.
//!
//! It exists for images without a shell or a probe binary (the container
//! image is `FROM scratch`): the image's `HEALTHCHECK` and a Kubernetes
//! `exec` probe run it with the container's own environment, so by default
//! it asks the address the server listens on (`--listen`, with an
//! unspecified address such as `0.0.0.0` replaced by loopback) and speaks
//! TLS when the server has `--tls-cert`.
//!
//! TLS trust: with `--ca`, the server's certificate must be issued by one of
//! those CAs for the endpoint's host name. Without it, the probe trusts
//! exactly the certificate the server is configured with (the leaf of
//! `--tls-cert`, read from the same file): a probe of the local process needs
//! no CA, and a certificate rotated by a reload is read again by the next
//! probe. A server with `--tls-client-ca` wants a client certificate: give
//! one with `--client-cert` / `--client-key`.

use crate::config::ServeArgs;
use crate::tls::{TlsError, certs, private_key};
use clap::Args;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// `receiptd health` arguments.
#[derive(Clone, Debug, Args)]
pub struct HealthArgs {
    /// Server to ask, `host:port` (default: this configuration's `--listen`,
    /// on loopback when it is an unspecified address).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// Service to ask about: `receipts.v1.ReceiptService`, or the empty
    /// string for the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this long (connecting and answering), in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Speak TLS even when this configuration has no `--tls-cert` (to probe
    /// another server); implied by `--ca`.
    #[arg(long)]
    pub tls: bool,
    /// PEM CA certificates the server's certificate must be issued by
    /// (default: trust exactly this configuration's `--tls-cert`).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for a server with `--tls-client-ca`.
    #[arg(long, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
}

/// Why a probe did not find the server serving.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe itself is misconfigured (exit 64).
    #[error(transparent)]
    Config(#[from] TlsError),
    /// The probe's own settings make no sense (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The server could not be asked, or is not serving (exit 1).
    #[error("{0}")]
    Unhealthy(String),
}

/// Asks the server and returns `Ok` when it answers `SERVING`.
pub async fn check(args: &HealthArgs, serve: &ServeArgs) -> Result<(), ProbeError> {
    let addr = match &args.addr {
        Some(a) => a.clone(),
        None => local(serve.listen).to_string(),
    };
    let host = host_of(&addr)?;
    let tls = tls_config(args, serve, &host)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let ask = async {
        let channel = connect(&addr, host, tls).await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|s| {
                ProbeError::Unhealthy(format!(
                    "{addr}: health check failed: {:?}: {}",
                    s.code(),
                    s.message()
                ))
            })?;
        match ServingStatus::try_from(answer.into_inner().status) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(ProbeError::Unhealthy(format!(
                "{addr}: {}",
                other.as_str_name()
            ))),
            Err(e) => Err(ProbeError::Unhealthy(format!("{addr}: {e}"))),
        }
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Unhealthy(format!(
            "{addr}: no answer within {} ms",
            args.timeout_ms
        ))),
    }
}

/// The address to reach a server listening on `listen` from the same host.
fn local(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

fn host_of(addr: &str) -> Result<String, ProbeError> {
    let bad = || ProbeError::Usage(format!("--addr {addr}: expected host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host.to_string())
}

fn tls_config(
    args: &HealthArgs,
    serve: &ServeArgs,
    host: &str,
) -> Result<Option<(rustls::ClientConfig, ServerName<'static>)>, ProbeError> {
    if !(args.tls || args.ca.is_some() || serve.tls_cert.is_some()) {
        if args.client_cert.is_some() {
            return Err(ProbeError::Usage(
                "--client-cert needs TLS (--tls, --ca, or a configured --tls-cert)".into(),
            ));
        }
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Usage(e.to_string()))?;
    let builder = match (&args.ca, &serve.tls_cert) {
        (Some(ca), _) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("--ca", ca)? {
                roots.add(c).map_err(|e| TlsError::new("--ca", ca, e))?;
            }
            builder.with_root_certificates(roots)
        }
        (None, Some(cert)) => {
            let leaf = certs("--tls-cert", cert)?.swap_remove(0);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { leaf, provider }))
        }
        (None, None) => {
            return Err(ProbeError::Usage(
                "--tls needs --ca (no --tls-cert is configured to trust)".into(),
            ));
        }
    };
    let mut config = match (&args.client_cert, &args.client_key) {
        (Some(_), None) | (None, Some(_)) => {
            return Err(ProbeError::Usage(
                "--client-cert and --client-key go together".into(),
            ));
        }
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                certs("--client-cert", cert)?,
                private_key("--client-key", key)?,
            )
            .map_err(|e| {
                TlsError::new(
                    "--client-key",
                    key,
                    format!("does not fit --client-cert: {e}"),
                )
            })?,
        (None, None) => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| ProbeError::Usage(format!("--addr: host {host}: {e}")))?;
    Ok(Some((config, name)))
}

/// Over TLS or not, one HTTP/2 connection to `addr`.
async fn connect(
    addr: &str,
    host: String,
    tls: Option<(rustls::ClientConfig, ServerName<'static>)>,
) -> Result<tonic::transport::Channel, ProbeError> {
    let target = addr.to_string();
    let tls = tls.map(|(config, name)| (tokio_rustls::TlsConnector::from(Arc::new(config)), name));
    let connector = tower::service_fn(move |_: http::Uri| {
        let (target, tls) = (target.clone(), tls.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&target)
                .await
                .map_err(|e| format!("connect {target}: {e}"))?;
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS handshake with {target}: {e}"))?,
                ),
            };
            Ok::<_, String>(hyper_util::rt::TokioIo::new(io))
        }
    });
    let uri = format!(
        "http://{}",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        }
    );
    tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| ProbeError::Usage(format!("--addr {addr}: {e}")))?
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = s.to_string();
                source = s.source();
            }
            ProbeError::Unhealthy(reason)
        })
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Trusts one certificate, byte for byte, and checks that the server holds
/// its key.
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate is not the one in --tls-cert".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_probed_on_loopback() {
        assert_eq!(
            local("0.0.0.0:50051".parse().unwrap()),
            "127.0.0.1:50051".parse().unwrap()
        );
        assert_eq!(local("[::]:7".parse().unwrap()), "[::1]:7".parse().unwrap());
        assert_eq!(
            local("10.1.2.3:9".parse().unwrap()),
            "10.1.2.3:9".parse().unwrap()
        );
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(host_of("localhost:50051").unwrap(), "localhost");
        assert_eq!(host_of("[::1]:50051").unwrap(), "::1");
        for bad in ["localhost", ":50051", "h:x", "h:70000"] {
            assert!(matches!(host_of(bad), Err(ProbeError::Usage(_))), "{bad}");
        }
    }
}
