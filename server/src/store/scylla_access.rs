//! How `receiptd` authenticates to Scylla (or Cassandra) and whether it
//! speaks TLS to it: `--scylla-username` / `--scylla-password`
//! (PasswordAuthenticator) and `--scylla-tls*` (client encryption, with an
//! optional client certificate for nodes with `require_client_auth`).
//!
//! TLS is rustls with ring, as everywhere else in the server. Trust is the
//! CAs of `--scylla-tls-ca`, or the system's roots. The driver connects to
//! each node by IP address (it learns the other nodes from `system.peers`),
//! so by default a node's certificate must carry its IP address; with
//! `--scylla-tls-name NAME` every node's certificate must instead be valid
//! for NAME (one name on every node's certificate, as many operators issue
//! them). The chain is checked either way.

use crate::config::ConfigError;
use crate::tls::{TlsError, certs, private_key};
use clap::Args;
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::PathBuf;
use std::sync::Arc;

/// Credentials and TLS for Scylla.
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct ScyllaAccess {
    /// Scylla (or Cassandra) user, for nodes with password authentication;
    /// needs --scylla-password.
    #[arg(long, env = "RECEIPTS_SCYLLA_USERNAME")]
    pub scylla_username: Option<String>,

    /// Password of --scylla-username.
    #[arg(long, env = "RECEIPTS_SCYLLA_PASSWORD", hide_env_values = true)]
    pub scylla_password: Option<String>,

    /// Speak TLS to Scylla, trusting the system's roots unless
    /// --scylla-tls-ca is given (any other --scylla-tls-* setting implies
    /// it).
    #[arg(long, env = "RECEIPTS_SCYLLA_TLS", default_value_t = false)]
    pub scylla_tls: bool,

    /// PEM CA certificates that Scylla nodes' certificates must be issued
    /// by (instead of the system's roots).
    #[arg(long, env = "RECEIPTS_SCYLLA_TLS_CA", value_name = "FILE")]
    pub scylla_tls_ca: Option<PathBuf>,

    /// PEM client certificate, for nodes that require one
    /// (`require_client_auth`); needs --scylla-tls-key.
    #[arg(long, env = "RECEIPTS_SCYLLA_TLS_CERT", value_name = "FILE")]
    pub scylla_tls_cert: Option<PathBuf>,

    /// PEM private key of --scylla-tls-cert.
    #[arg(long, env = "RECEIPTS_SCYLLA_TLS_KEY", value_name = "FILE")]
    pub scylla_tls_key: Option<PathBuf>,

    /// The name every node's certificate must be valid for (default: the
    /// node's IP address, which the driver connects by).
    #[arg(long, env = "RECEIPTS_SCYLLA_TLS_NAME", value_name = "NAME")]
    pub scylla_tls_name: Option<String>,
}

impl ScyllaAccess {
    /// Whether the driver speaks TLS.
    pub fn uses_tls(&self) -> bool {
        self.scylla_tls
            || self.scylla_tls_ca.is_some()
            || self.scylla_tls_cert.is_some()
            || self.scylla_tls_key.is_some()
            || self.scylla_tls_name.is_some()
    }

    /// The user and password, if any, after checking they come together.
    pub fn credentials(&self) -> Result<Option<(&str, &str)>, ConfigError> {
        match (&self.scylla_username, &self.scylla_password) {
            (Some(u), Some(p)) => Ok(Some((u, p))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError {
                key: "--scylla-password",
                reason: "is needed with --scylla-username".into(),
            }),
            (None, Some(_)) => Err(ConfigError {
                key: "--scylla-username",
                reason: "is needed with --scylla-password".into(),
            }),
        }
    }

    /// Checks everything the connection will use (files read and parsed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.credentials()?;
        self.client_config()?;
        Ok(())
    }

    /// The driver's TLS configuration, when TLS is on: the files are read
    /// now (so a rotated certificate is used from the next start).
    pub fn client_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, ConfigError> {
        if !self.uses_tls() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &self.scylla_tls_ca {
            Some(ca) => {
                for c in certs("--scylla-tls-ca", ca)? {
                    roots
                        .add(c)
                        .map_err(|e| TlsError::new("--scylla-tls-ca", ca, e))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(ConfigError {
                        key: "--scylla-tls-ca",
                        reason: "is needed: no system root certificates were found".into(),
                    });
                }
            }
        }
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| ConfigError {
                key: "--scylla-tls-ca",
                reason: e.to_string(),
            })?;
        let verifier: Arc<dyn ServerCertVerifier> = match &self.scylla_tls_name {
            None => chain,
            Some(name) => Arc::new(NamedNodes {
                name: ServerName::try_from(name.clone()).map_err(|e| ConfigError {
                    key: "--scylla-tls-name",
                    reason: format!("{name}: {e}"),
                })?,
                chain,
            }),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError {
                key: "--scylla-tls",
                reason: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.scylla_tls_cert, &self.scylla_tls_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(ConfigError {
                    key: "--scylla-tls-key",
                    reason: "is needed with --scylla-tls-cert".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    key: "--scylla-tls-cert",
                    reason: "is needed with --scylla-tls-key".into(),
                });
            }
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    certs("--scylla-tls-cert", cert)?,
                    private_key("--scylla-tls-key", key)?,
                )
                .map_err(|e| ConfigError {
                    key: "--scylla-tls-key",
                    reason: format!("does not fit --scylla-tls-cert: {e}"),
                })?,
        };
        Ok(Some(Arc::new(config)))
    }
}

/// Checks the chain as usual, for one configured name instead of the IP
/// address the driver connected to.
#[derive(Debug)]
struct NamedNodes {
    name: ServerName<'static>,
    chain: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NamedNodes {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _connected_to: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
