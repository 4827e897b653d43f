//! TLS on the client listener (gRPC and gRPC-web), with rustls.
//!
//! - `--tls-cert` / `--tls-key`: the server's certificate chain and private
//!   key (PEM). ALPN offers `h2` and `http/1.1`, so gRPC clients and
//!   browsers (gRPC-web over HTTP/1.1 or HTTP/2) share the port.
//! - `--tls-client-ca`: every connection must present a client certificate
//!   issued by one of these CAs (mutual TLS). It is meant for listeners that
//!   only services reach (a mesh, a private network); browsers do not carry
//!   client certificates, so a node that also serves browsers keeps this
//!   off. A certificate proves the connection's origin only: calls still
//!   carry their bearer token, which decides the caller and its role.
//! - Reload: the files are read again on SIGHUP and when any of them
//!   changes (checked every [`POLL`], following symlinks, so a Kubernetes
//!   secret update is seen). A reload that fails (a missing file, a key that
//!   does not match the certificate, a half-written file) keeps the
//!   configuration that was serving and is logged and counted; the next
//!   change or SIGHUP tries again. Connections already open keep the
//!   certificate they were made with.

use crate::metrics::Metrics;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// How often the files are checked for a change.
pub const POLL: Duration = Duration::from_secs(2);

/// Where the listener's TLS material is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CAs whose client certificates are accepted; `None`: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS material could not be used; `flag` names the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {reason}")]
pub struct TlsError {
    /// The flag whose file is at fault.
    pub flag: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

fn fail(flag: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        flag,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl TlsError {
    /// `flag`'s file `path` is at fault, for `reason`.
    pub fn new(flag: &'static str, path: &Path, reason: impl std::fmt::Display) -> Self {
        fail(flag, path, reason)
    }
}

/// Makes ring rustls' process-wide default provider, once (later calls do
/// nothing). The Scylla driver's rustls brings aws-lc-rs as well, and with
/// two providers compiled in rustls picks none by itself: a library that
/// builds its configuration with `ClientConfig::builder()` (redis, for
/// rediss://) would panic. Everything the server builds itself names ring.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM file (at least one).
pub fn certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(flag, path, pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(flag, path, pem_reason(e)))?;
    if certs.is_empty() {
        return Err(fail(flag, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| fail(flag, path, pem_reason(e)))
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "holds no PEM item of that kind".into(),
        e => format!("not valid PEM ({e:?})"),
    }
}

/// What a PEM file must hold.
#[derive(Clone, Copy, Debug)]
pub enum Pem {
    /// One or more certificates.
    Certificates,
    /// A private key.
    PrivateKey,
}

/// Reads a PEM file for a client of a backend (Redis, Scylla), after
/// checking that it holds what it must: its bytes, for clients that parse
/// PEM themselves.
pub fn read_pem(flag: &'static str, path: &Path, kind: Pem) -> Result<Vec<u8>, TlsError> {
    match kind {
        Pem::Certificates => {
            certs(flag, path)?;
        }
        Pem::PrivateKey => {
            private_key(flag, path)?;
        }
    }
    std::fs::read(path).map_err(|e| fail(flag, path, e))
}

/// Reads and checks the files: the chain parses, the key is one rustls can
/// sign with and belongs to the leaf certificate, the client CAs parse.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("--tls-cert", &files.cert)?;
    let key = private_key("--tls-key", &files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("--tls-cert", &files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certs("--tls-client-ca", path)? {
                roots
                    .add(ca)
                    .map_err(|e| fail("--tls-client-ca", path, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| fail("--tls-client-ca", path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        fail(
            "--tls-key",
            &files.key,
            format!("does not fit the certificate in --tls-cert: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What identifies one version of a file: a rewrite or a symlink swap
/// changes at least one of these.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

/// The listener's TLS configuration, replaced whole on reload.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Vec<Stamp>>,
    metrics: Arc<Metrics>,
}

impl Tls {
    /// Loads the files (failing as [`load`] does).
    pub fn new(files: TlsFiles, metrics: Arc<Metrics>) -> Result<Arc<Self>, TlsError> {
        let stamps = Self::stamps_of(&files);
        let config = load(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(config),
            stamps: Mutex::new(stamps),
            metrics,
        }))
    }

    fn stamps_of(files: &TlsFiles) -> Vec<Stamp> {
        let mut paths = vec![&files.cert, &files.key];
        paths.extend(&files.client_ca);
        paths.into_iter().map(|p| stamp(p)).collect()
    }

    /// An acceptor for a new connection, with the configuration in force.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner());
        tokio_rustls::TlsAcceptor::from(config.clone())
    }

    /// Reads the files again; on failure the configuration in force stays.
    pub fn reload(&self, why: &'static str) -> Result<(), TlsError> {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = Self::stamps_of(&self.files);
        match load(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                self.metrics.tls_reloaded("ok");
                tracing::info!(why, "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.tls_reloaded("error");
                tracing::warn!(
                    why,
                    "TLS reload failed; still serving the previous certificate: {e}"
                );
                Err(e)
            }
        }
    }

    /// Reloads if a file changed since the last load or attempt.
    pub fn reload_if_changed(&self) {
        let now = Self::stamps_of(&self.files);
        let changed = *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed {
            let _ = self.reload("file changed");
        }
    }

    /// Reloads on SIGHUP and on file changes, until dropped (abort the
    /// task).
    pub fn watch(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut every = tokio::time::interval(POLL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<Option<()>>();
                tokio::select! {
                    _ = every.tick() => self.reload_if_changed(),
                    Some(()) = hangup => { let _ = self.reload("SIGHUP"); }
                }
            }
        })
    }
}
