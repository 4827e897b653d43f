//! TLS for `https://` endpoints (the default `tls` feature).

/// How the client checks the server, and which certificate it shows.
///
/// Without it, an `https://` endpoint is checked against the public web
/// roots (webpki-roots). With [`ClientTls::ca_certificate`], only the given
/// CAs are trusted (a private PKI, a mesh's CA); with
/// [`ClientTls::identity`], the client presents a certificate to a server
/// started with `--tls-client-ca` (mutual TLS).
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use receipts_sdk::{Client, ClientTls};
/// let tls = ClientTls::new()
///     .ca_certificate(std::fs::read("ca.pem")?)
///     .identity(std::fs::read("client.pem")?, std::fs::read("client.key")?);
/// let client = Client::builder("https://receipts.internal:50051")
///     .tls(tls)
///     .token("eyJ…")
///     .connect()
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct ClientTls {
    pub(crate) ca: Vec<Vec<u8>>,
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is never printed.
        f.debug_struct("ClientTls")
            .field("custom_cas", &self.ca.len())
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// The defaults: public web roots, no client certificate, the domain
    /// from the endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificates in `pem` (may be called more than once);
    /// the public web roots are then no longer trusted.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca.push(pem.into());
        self
    }

    /// Presents this certificate chain and private key (PEM) to the server.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Checks the server's certificate against this name instead of the
    /// endpoint's host (e.g. when connecting by IP address).
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    #[cfg(feature = "tls")]
    pub(crate) fn config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut c = ClientTlsConfig::new();
        if self.ca.is_empty() {
            c = c.with_webpki_roots();
        }
        for ca in &self.ca {
            c = c.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}
