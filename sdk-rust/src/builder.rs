//! How a [`Client`] is configured and connected: credentials, deadlines,
//! retries, TLS, trace context and interceptors.

use crate::Error;
use crate::client::{Client, Inner};
use crate::tls::ClientTls;
use crate::trace::{TraceContext, TraceSource};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

/// A source of bearer tokens, asked before every call and every
/// (re)connection of a subscription, so it can refresh tokens before they
/// expire. Implemented for `String` (a fixed token) and, through
/// [`token_fn`], for async closures.
pub trait TokenProvider: Send + Sync + 'static {
    /// The token to send now.
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, Error>> + Send + '_>>;
}

impl TokenProvider for String {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, Error>> + Send + '_>> {
        Box::pin(async move { Ok(self.clone()) })
    }
}

struct FnProvider<F>(F);

impl<F, Fut> TokenProvider for FnProvider<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, Error>> + Send + 'static,
{
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, Error>> + Send + '_>> {
        Box::pin((self.0)())
    }
}

/// A token provider from an async closure (e.g. one that refreshes a token
/// from your identity service when it nears expiry).
///
/// ```
/// use receipts_sdk::{token_fn, Client};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), receipts_sdk::Error> {
/// let client = Client::builder("http://127.0.0.1:50051")
///     .token_provider(token_fn(|| async { Ok("a-fresh-jwt".to_string()) }))
///     .connect_lazy()?;
/// # let _ = client; Ok(()) }
/// ```
pub fn token_fn<F, Fut>(f: F) -> impl TokenProvider
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, Error>> + Send + 'static,
{
    FnProvider(f)
}

#[derive(Clone)]
pub(crate) enum Auth {
    None,
    /// A token from a provider; `fixed` when it is one string that cannot
    /// change (so a refusal of it is final).
    Token {
        provider: Arc<dyn TokenProvider>,
        fixed: bool,
    },
    Dev {
        user: Uuid,
        service: bool,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token { .. } => f.write_str("Token(..)"),
            Auth::Dev { user, service } => write!(f, "Dev({user}, service: {service})"),
        }
    }
}

/// When and how often calls are retried. Only transient failures
/// (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, transport errors) are
/// retried; that is safe for every call of this API because receipt writes
/// are idempotent by design (marks only move state forward, registrations
/// with the same content are no-ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retries).
    pub max_attempts: u32,
    /// Backoff before the first retry.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before retry number `attempt` (1-based): exponential, capped,
    /// with jitter (between half and all of it), so many clients that failed
    /// together do not come back together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let capped = exp.min(self.max_backoff);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        capped.mul_f64(jitter)
    }
}

/// Configures and connects a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    auth: Auth,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    user_agent: Option<String>,
    trace: Option<TraceSource>,
    tls: Option<ClientTls>,
    interceptors: Vec<Interceptor>,
}

/// A function that sees, and may change or refuse, every request the client
/// sends: each unary attempt and each (re)connect of a subscription, after
/// the SDK added credentials and trace context. Returning a status fails the
/// call with it, before anything is sent. Made with
/// [`ClientBuilder::interceptor`].
#[derive(Clone)]
pub struct Interceptor(pub(crate) Arc<InterceptFn>);

pub(crate) type InterceptFn =
    dyn Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync;

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interceptor(..)")
    }
}

impl ClientBuilder {
    /// A builder for the server at `endpoint` (`http://host:port`, or
    /// `https://…` for TLS with the system's webpki roots).
    ///
    /// ```
    /// let builder = receipts_sdk::ClientBuilder::new("http://127.0.0.1:50051");
    /// # let _ = builder;
    /// ```
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            auth: Auth::None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            user_agent: None,
            trace: None,
            tls: None,
            interceptors: Vec::new(),
        }
    }

    /// TLS settings for an `https://` endpoint: a private CA, a client
    /// certificate (mutual TLS), the name to check (see [`ClientTls`]).
    /// Needs the `tls` feature (on by default) and an `https://` endpoint:
    /// with `http://`, connecting fails with [`Error::Config`] rather than
    /// send credentials in clear text.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Adds an interceptor (see [`Interceptor`]); interceptors run in the
    /// order they were added. The same signature as tonic's interceptors:
    ///
    /// ```
    /// let builder = receipts_sdk::Client::builder("http://127.0.0.1:50051").interceptor(|mut req| {
    ///     req.metadata_mut().insert("x-tenant", "blue".parse().unwrap());
    ///     Ok(req)
    /// });
    /// # let _ = builder;
    /// ```
    pub fn interceptor(
        mut self,
        f: impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.interceptors.push(Interceptor(Arc::new(f)));
        self
    }

    /// Authenticates with a fixed bearer token (a JWT).
    ///
    /// ```
    /// let builder = receipts_sdk::Client::builder("http://127.0.0.1:50051").token("eyJ…");
    /// # let _ = builder;
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token {
            provider: Arc::new(token.into()),
            fixed: true,
        };
        self
    }

    /// Authenticates with tokens from `provider`, asked before every call.
    ///
    /// ```
    /// use receipts_sdk::{token_fn, Client};
    /// let builder = Client::builder("http://127.0.0.1:50051")
    ///     .token_provider(token_fn(|| async { Ok("eyJ…".to_string()) }));
    /// # let _ = builder;
    /// ```
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.auth = Auth::Token {
            provider: Arc::new(provider),
            fixed: false,
        };
        self
    }

    /// DEVELOPMENT ONLY: act as `user` through the `x-receipts-user` header,
    /// which only a server started with `--dev-mode` on loopback accepts.
    ///
    /// ```
    /// let me = uuid::Uuid::now_v7();
    /// let builder = receipts_sdk::Client::builder("http://127.0.0.1:50051").dev_user(me);
    /// # let _ = builder;
    /// ```
    pub fn dev_user(mut self, user: Uuid) -> Self {
        self.auth = Auth::Dev {
            user,
            service: false,
        };
        self
    }

    /// DEVELOPMENT ONLY: act as the messaging backend (service role) through
    /// dev-mode headers.
    ///
    /// ```
    /// let builder = receipts_sdk::Client::builder("http://127.0.0.1:50051")
    ///     .dev_service(uuid::Uuid::now_v7());
    /// # let _ = builder;
    /// ```
    pub fn dev_service(mut self, id: Uuid) -> Self {
        self.auth = Auth::Dev {
            user: id,
            service: true,
        };
        self
    }

    /// The deadline of each unary call (default 10 s), sent to the server as
    /// `grpc-timeout`. Subscriptions have no deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = receipts_sdk::Client::builder("http://127.0.0.1:50051")
    ///     .timeout(Duration::from_secs(2));
    /// # let _ = builder;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take (default 5 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = receipts_sdk::Client::builder("http://127.0.0.1:50051")
    ///     .connect_timeout(Duration::from_secs(1));
    /// # let _ = builder;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The retry policy for transient failures (default: 4 attempts,
    /// exponential backoff from 100 ms to 5 s, with jitter).
    ///
    /// ```
    /// use receipts_sdk::RetryPolicy;
    /// let builder = receipts_sdk::Client::builder("http://127.0.0.1:50051")
    ///     .retry(RetryPolicy { max_attempts: 10, ..RetryPolicy::default() });
    /// # let _ = builder;
    /// ```
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The `user-agent` prefix to send (e.g. `my-app/1.2`).
    ///
    /// ```
    /// let builder = receipts_sdk::Client::builder("http://127.0.0.1:50051").user_agent("chat-api/3.1");
    /// # let _ = builder;
    /// ```
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    /// Sends W3C Trace Context with every call, so the service's spans join
    /// your trace. `current` is called before every call, retry and stream
    /// (re)connect; returning `None` sends nothing. A malformed `traceparent`
    /// fails the call with [`Error::Config`] before anything is sent.
    ///
    /// With OpenTelemetry, return the current context as the propagator
    /// writes it:
    ///
    /// ```ignore
    /// use opentelemetry::global;
    /// use tracing_opentelemetry::OpenTelemetrySpanExt;
    /// let builder = receipts_sdk::Client::builder(url).trace_context(|| {
    ///     let mut carrier = std::collections::HashMap::new();
    ///     let cx = tracing::Span::current().context();
    ///     global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    ///     Some(receipts_sdk::TraceContext {
    ///         traceparent: carrier.remove("traceparent")?,
    ///         tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    ///     })
    /// });
    /// ```
    ///
    /// ```
    /// use receipts_sdk::TraceContext;
    /// let builder = receipts_sdk::Client::builder("http://127.0.0.1:50051").trace_context(|| {
    ///     Some(TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
    /// });
    /// # let _ = builder;
    /// ```
    pub fn trace_context(
        mut self,
        current: impl Fn() -> Option<TraceContext> + Send + Sync + 'static,
    ) -> Self {
        self.trace = Some(TraceSource(Arc::new(current)));
        self
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(Error::Config(format!(
                "endpoint {:?} needs http:// or https:// (e.g. http://{})",
                self.endpoint, self.endpoint
            )));
        }
        let mut e = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::Config(format!("endpoint {:?}: {e}", self.endpoint)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let agent = match &self.user_agent {
            Some(a) => format!("{a} receipts-sdk-rust/{}", env!("CARGO_PKG_VERSION")),
            None => format!("receipts-sdk-rust/{}", env!("CARGO_PKG_VERSION")),
        };
        e = e
            .user_agent(agent)
            .map_err(|e| Error::Config(format!("user agent: {e}")))?;
        if self.tls.is_some() && !self.endpoint.starts_with("https://") {
            return Err(Error::Config(format!(
                "endpoint {:?}: TLS settings were given, so the endpoint must be https://",
                self.endpoint
            )));
        }
        if self.endpoint.starts_with("https://") {
            #[cfg(feature = "tls")]
            {
                e = e
                    .tls_config(self.tls.clone().unwrap_or_default().config())
                    .map_err(|e| Error::Config(format!("tls: {}", crate::error::causes(&e))))?;
            }
            #[cfg(not(feature = "tls"))]
            return Err(Error::Config(format!(
                "endpoint {:?}: https:// needs the `tls` feature of receipts-sdk",
                self.endpoint
            )));
        }
        Ok(e)
    }

    fn finish(self, channel: Channel) -> Client {
        Client::new(
            channel,
            Inner {
                endpoint: self.endpoint,
                auth: self.auth,
                timeout: self.timeout,
                retry: self.retry,
                trace: self.trace,
                interceptors: self.interceptors,
            },
        )
    }

    /// Connects now, failing if the server cannot be reached.
    pub async fn connect(self) -> Result<Client, Error> {
        let channel = self
            .endpoint()?
            .connect()
            .await
            .map_err(|e| Error::from_connect(e, &self.endpoint))?;
        Ok(self.finish(channel))
    }

    /// Returns at once and connects on first use (and reconnects after the
    /// connection drops). Must be called within a Tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let client = receipts_sdk::Client::builder("http://127.0.0.1:50051")
    ///     .dev_user(uuid::Uuid::now_v7())
    ///     .connect_lazy()
    ///     .expect("valid endpoint");
    /// # let _ = client; }
    /// ```
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let channel = self.endpoint()?.connect_lazy();
        Ok(self.finish(channel))
    }

    /// Uses `channel` instead of connecting: one your service mesh or
    /// platform built (its own connector, TLS, load balancing). The
    /// builder's endpoint then only names the server in errors, and its
    /// connect timeout, user agent and TLS settings are not used; credentials,
    /// deadlines, retries, trace context and interceptors are.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let client = receipts_sdk::Client::builder("http://127.0.0.1:50051")
    ///     .token("eyJ…")
    ///     .with_channel(channel);
    /// # let _ = client; }
    /// ```
    pub fn with_channel(self, channel: Channel) -> Client {
        self.finish(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            let full = p
                .initial_backoff
                .saturating_mul(2u32.saturating_pow(attempt - 1))
                .min(p.max_backoff);
            let b = p.backoff(attempt);
            assert!(
                b <= full && b >= full / 2,
                "attempt {attempt}: {b:?} vs {full:?}"
            );
        }
    }
}
