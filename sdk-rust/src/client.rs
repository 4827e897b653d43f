//! The client, its builder, credentials, deadlines and retries.

use crate::backend::BackendClient;
use crate::batch::{DeliveredBatcher, ReadMarker};
use crate::subscribe::{SubscribeOptions, Subscription};
use crate::tls::ClientTls;
use crate::trace::{TraceContext, TraceSource};
use crate::types::*;
use crate::{Error, proto};
use std::collections::HashMap;
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
enum Auth {
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
pub struct Interceptor(Arc<InterceptFn>);

type InterceptFn =
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
        Client {
            channel,
            inner: Arc::new(Inner {
                endpoint: self.endpoint,
                auth: self.auth,
                timeout: self.timeout,
                retry: self.retry,
                trace: self.trace,
                interceptors: self.interceptors,
            }),
        }
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

#[derive(Debug)]
struct Inner {
    endpoint: String,
    auth: Auth,
    timeout: Duration,
    retry: RetryPolicy,
    trace: Option<TraceSource>,
    interceptors: Vec<Interceptor>,
}

/// A Receipts client. Cheap to clone: clones share one connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    inner: Arc<Inner>,
}

type UserStub = proto::receipt_service_client::ReceiptServiceClient<Channel>;

pub(crate) fn ids(v: &[Uuid]) -> Vec<String> {
    v.iter().map(Uuid::to_string).collect()
}

impl Client {
    /// A builder for the server at `endpoint`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// A request carrying credentials (and the call deadline if `deadline`).
    pub(crate) async fn request<T>(
        &self,
        msg: T,
        deadline: bool,
    ) -> Result<tonic::Request<T>, Error> {
        let mut req = tonic::Request::new(msg);
        if deadline {
            req.set_timeout(self.inner.timeout);
        }
        let md = req.metadata_mut();
        let value = |s: String| {
            s.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                .map_err(|_| Error::Config("credential is not a valid header value".into()))
        };
        match &self.inner.auth {
            Auth::None => {}
            Auth::Token { provider: p, .. } => {
                let token = p.token().await?;
                md.insert("authorization", value(format!("Bearer {token}"))?);
            }
            Auth::Dev { user, service } => {
                md.insert("x-receipts-user", value(user.to_string())?);
                if *service {
                    md.insert("x-receipts-role", value("service".into())?);
                }
            }
        }
        if let Some(cx) = self.inner.trace.as_ref().and_then(|t| (t.0)()) {
            cx.check().map_err(Error::Config)?;
            md.insert("traceparent", value(cx.traceparent)?);
            if let Some(state) = cx.tracestate {
                md.insert("tracestate", value(state)?);
            }
        }
        if self.inner.interceptors.is_empty() {
            return Ok(req);
        }
        let (md, ext, msg) = req.into_parts();
        let mut probe = tonic::Request::from_parts(md, ext, ());
        for i in &self.inner.interceptors {
            probe = (i.0)(probe).map_err(|s| self.error(s))?;
        }
        let (md, ext, ()) = probe.into_parts();
        Ok(tonic::Request::from_parts(md, ext, msg))
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Whether a new attempt may carry other credentials than the last
    /// one: only a token provider can hand out a fresh token.
    pub(crate) fn credentials_can_change(&self) -> bool {
        matches!(self.inner.auth, Auth::Token { fixed: false, .. })
    }

    /// The typed error for a failed call of this client.
    pub(crate) fn error(&self, status: tonic::Status) -> Error {
        Error::from_call(status, &self.inner.endpoint)
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry
    }

    /// Runs a unary call with credentials, deadline and retries.
    pub(crate) async fn unary<Req, Resp, F, Fut>(&self, msg: Req, call: F) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let policy = self.inner.retry;
        let mut attempt = 1;
        loop {
            let req = self.request(msg.clone(), true).await?;
            match call(self.channel.clone(), req).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => {
                    let err = self.error(status);
                    if !err.is_transient() || attempt >= policy.max_attempts {
                        return Err(err);
                    }
                    let wait = policy.backoff(attempt);
                    tracing::debug!(%err, attempt, ?wait, "transient failure; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Acknowledges that one of your devices has these messages (≤ 1000),
    /// named by id alone. Returns one result per distinct message, in order.
    /// All messages are checked first: an unknown one fails the call and
    /// records nothing. Prefer [`Client::mark_delivered_in`] when you know
    /// the conversation: the server then needs no lookup of each message's
    /// conversation.
    pub async fn mark_delivered(&self, message_ids: &[Uuid]) -> Result<Vec<Delivery>, Error> {
        let named: Vec<(Option<Uuid>, Uuid)> = message_ids.iter().map(|m| (None, *m)).collect();
        self.mark_delivered_named(&named).await
    }

    /// Acknowledges that one of your devices has these messages of
    /// `conversation_id` (≤ 1000). Returns one result per distinct message,
    /// in order. All messages are checked first: one that is not in the
    /// conversation is NOT_FOUND, and the call then records nothing.
    pub async fn mark_delivered_in(
        &self,
        conversation_id: Uuid,
        message_ids: &[Uuid],
    ) -> Result<Vec<Delivery>, Error> {
        let named: Vec<(Option<Uuid>, Uuid)> = message_ids
            .iter()
            .map(|m| (Some(conversation_id), *m))
            .collect();
        self.mark_delivered_named(&named).await
    }

    /// MarkDelivered of messages each named alone or with its conversation:
    /// those with a conversation go in `conversations` (grouped, first-seen
    /// order); results come back in the order of `named`.
    pub(crate) async fn mark_delivered_named(
        &self,
        named: &[(Option<Uuid>, Uuid)],
    ) -> Result<Vec<Delivery>, Error> {
        let mut req = proto::MarkDeliveredRequest::default();
        let mut group: HashMap<Uuid, usize> = HashMap::new();
        for (conversation, message) in named {
            match conversation {
                None => req.message_ids.push(message.to_string()),
                Some(c) => {
                    let i = *group.entry(*c).or_insert_with(|| {
                        req.conversations.push(proto::ConversationMessageIds {
                            conversation_id: c.to_string(),
                            message_ids: Vec::new(),
                        });
                        req.conversations.len() - 1
                    });
                    req.conversations[i].message_ids.push(message.to_string());
                }
            }
        }
        let resp = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).mark_delivered(r).await
            })
            .await?;
        let mut by_id: HashMap<Uuid, Delivery> = resp
            .results
            .into_iter()
            .map(|r| {
                let d = Delivery {
                    message_id: uuid("message_id", &r.message_id)?,
                    outcome: match proto::DeliveryOutcome::try_from(r.outcome) {
                        Ok(proto::DeliveryOutcome::Recorded) => DeliveryOutcome::Recorded,
                        Ok(proto::DeliveryOutcome::NotARecipient) => DeliveryOutcome::NotARecipient,
                        _ => DeliveryOutcome::AlreadyDelivered,
                    },
                    delivered_at: time(r.delivered_at_ms),
                };
                Ok((d.message_id, d))
            })
            .collect::<Result<_, Error>>()?;
        // One result per distinct message, in the caller's order.
        Ok(named.iter().filter_map(|(_, m)| by_id.remove(m)).collect())
    }

    /// Marks everything in `conversation_id` up to and including `message_id`
    /// read. Late or repeated calls are harmless no-ops.
    pub async fn mark_read_up_to(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
    ) -> Result<ReadPosition, Error> {
        let req = proto::MarkReadUpToRequest {
            conversation_id: conversation_id.to_string(),
            message_id: message_id.to_string(),
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).mark_read_up_to(r).await
            })
            .await?;
        Ok(ReadPosition {
            read_up_to_seq: r.read_up_to_seq.max(0) as u64,
            advanced: r.advanced,
            unread_count: r.unread_count.max(0) as u64,
            thread_root_message_id: optional_uuid(
                "thread_root_message_id",
                &r.thread_root_message_id,
            )?,
            conversation_unread_count: conversation_unread(
                r.unread_count,
                r.conversation_unread_count,
            ),
        })
    }

    /// The receipt state of messages of one conversation (≤ 100): ticks and
    /// counts ("15 of 20 read"), without per-recipient entries (see
    /// [`Client::get_receipts_with_recipients`]).
    pub async fn get_receipts(
        &self,
        conversation_id: Uuid,
        message_ids: &[Uuid],
    ) -> Result<Vec<MessageReceipts>, Error> {
        self.receipts(conversation_id, message_ids, false).await
    }

    /// Like [`Client::get_receipts`], with each recipient's state and times
    /// (as you may see them) in [`MessageReceipts::recipients`].
    pub async fn get_receipts_with_recipients(
        &self,
        conversation_id: Uuid,
        message_ids: &[Uuid],
    ) -> Result<Vec<MessageReceipts>, Error> {
        self.receipts(conversation_id, message_ids, true).await
    }

    async fn receipts(
        &self,
        conversation_id: Uuid,
        message_ids: &[Uuid],
        with_recipients: bool,
    ) -> Result<Vec<MessageReceipts>, Error> {
        let req = proto::GetReceiptsRequest {
            conversation_id: conversation_id.to_string(),
            message_ids: ids(message_ids),
            include_recipients: with_recipients,
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).get_receipts(r).await
            })
            .await?;
        r.messages
            .into_iter()
            .map(MessageReceipts::try_from)
            .collect()
    }

    /// One page of a message's recipients with their states ("read by",
    /// "delivered to"), as you may see them, in user-id order: `page_size`
    /// at most (0: 50; above 500: 500), after `page_token` (`None`: the first
    /// page; else the previous page's `next_page_token`, with the same
    /// message and filter). The order does not depend on anyone's state, so
    /// paging to the end lists every recipient the filter keeps once, even
    /// while others read. See [`Client::all_recipients`].
    pub async fn list_recipients(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
        filter: RecipientFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<RecipientPage, Error> {
        let req = proto::ListRecipientsRequest {
            conversation_id: conversation_id.to_string(),
            message_id: message_id.to_string(),
            filter: filter.wire() as i32,
            page_size: page_size.min(i32::MAX as u32) as i32,
            page_token: page_token.unwrap_or_default().to_string(),
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).list_recipients(r).await
            })
            .await?;
        RecipientPage::try_from(r)
    }

    /// Every recipient of a message the filter keeps: [`Client::list_recipients`]
    /// page after page (500 at a time) until the list ends. One call per 500
    /// members of the group; prefer pages for a list a user scrolls.
    pub async fn all_recipients(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
        filter: RecipientFilter,
    ) -> Result<Vec<RecipientReceipt>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .list_recipients(conversation_id, message_id, filter, 500, token.as_deref())
                .await?;
            out.extend(page.recipients);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// Unread badges for up to 500 conversations, one result each.
    pub async fn unread_counts(
        &self,
        conversation_ids: &[Uuid],
    ) -> Result<Vec<UnreadCount>, Error> {
        let req = proto::GetUnreadCountsRequest {
            conversation_ids: ids(conversation_ids),
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).get_unread_counts(r).await
            })
            .await?;
        r.conversations
            .into_iter()
            .map(|c| {
                Ok(UnreadCount {
                    conversation_id: uuid("conversation_id", &c.conversation_id)?,
                    outcome: outcome(c.outcome),
                    unread_count: c.unread_count.max(0) as u64,
                    read_up_to_seq: c.read_up_to_seq.max(0) as u64,
                    last_seq: c.last_seq.max(0) as u64,
                    main_unread_count: c.main_unread_count.max(0) as u64,
                    threads: c
                        .threads
                        .into_iter()
                        .map(|t| {
                            Ok(ThreadUnread {
                                thread_root_message_id: uuid(
                                    "thread_root_message_id",
                                    &t.thread_root_message_id,
                                )?,
                                unread_count: t.unread_count.max(0) as u64,
                                read_up_to_seq: t.read_up_to_seq.max(0) as u64,
                                last_seq: t.last_seq.max(0) as u64,
                            })
                        })
                        .collect::<Result<_, Error>>()?,
                })
            })
            .collect()
    }

    /// Marks up to 500 conversations read up to their latest message, in
    /// their main timeline and every thread.
    pub async fn mark_conversations_read(
        &self,
        conversation_ids: &[Uuid],
    ) -> Result<Vec<ConversationRead>, Error> {
        self.mark_read(proto::MarkConversationsReadRequest {
            conversation_ids: ids(conversation_ids),
            threads: Vec::new(),
        })
        .await
    }

    /// Marks up to 500 threads, each `(conversation, root message)`, read up
    /// to their latest message; one result each, with
    /// `thread_root_message_id` set.
    pub async fn mark_threads_read(
        &self,
        threads: &[(Uuid, Uuid)],
    ) -> Result<Vec<ConversationRead>, Error> {
        self.mark_read(proto::MarkConversationsReadRequest {
            conversation_ids: Vec::new(),
            threads: threads
                .iter()
                .map(|(c, root)| proto::ThreadRef {
                    conversation_id: c.to_string(),
                    thread_root_message_id: root.to_string(),
                })
                .collect(),
        })
        .await
    }

    async fn mark_read(
        &self,
        req: proto::MarkConversationsReadRequest,
    ) -> Result<Vec<ConversationRead>, Error> {
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).mark_conversations_read(r).await
            })
            .await?;
        r.results
            .into_iter()
            .map(|c| {
                Ok(ConversationRead {
                    conversation_id: uuid("conversation_id", &c.conversation_id)?,
                    outcome: outcome(c.outcome),
                    read_up_to_seq: c.read_up_to_seq.max(0) as u64,
                    advanced: c.advanced,
                    thread_root_message_id: optional_uuid(
                        "thread_root_message_id",
                        &c.thread_root_message_id,
                    )?,
                })
            })
            .collect()
    }

    /// Whether others see your reads.
    pub async fn read_receipts(&self) -> Result<ReadReceipts, Error> {
        let r = self
            .unary(proto::GetPrivacySettingsRequest {}, |ch, r| async move {
                UserStub::new(ch).get_privacy_settings(r).await
            })
            .await?;
        Ok(ReadReceipts::from_sending(
            r.settings.is_none_or(|s| s.send_read_receipts),
        ))
    }

    /// Shares your reads with others or keeps them private (effective at
    /// once; reads made while private stay hidden until you read further
    /// while sharing). Returns the setting now in force.
    pub async fn set_read_receipts(&self, setting: ReadReceipts) -> Result<ReadReceipts, Error> {
        let req = proto::UpdatePrivacySettingsRequest {
            settings: Some(proto::PrivacySettings {
                send_read_receipts: setting == ReadReceipts::Shared,
            }),
        };
        let r = self
            .unary(req, |ch, r| async move {
                UserStub::new(ch).update_privacy_settings(r).await
            })
            .await?;
        Ok(ReadReceipts::from_sending(
            r.settings.is_none_or(|s| s.send_read_receipts),
        ))
    }

    /// Subscribes to your receipts, from `cursor` (or from now). The stream
    /// reconnects by itself and resumes where it left off; see
    /// [`Subscription`].
    pub fn subscribe(&self, cursor: Option<Cursor>) -> Subscription {
        self.subscribe_with(cursor, SubscribeOptions::default())
    }

    /// [`Client::subscribe`] with options, e.g. to receive ranges:
    /// `client.subscribe_with(None, SubscribeOptions::default().accept_ranges(true))`.
    pub fn subscribe_with(
        &self,
        cursor: Option<Cursor>,
        options: SubscribeOptions,
    ) -> Subscription {
        Subscription::start(self.clone(), cursor, options)
    }

    /// A read marker that sends at most one MarkReadUpTo per conversation per
    /// second ([`ReadMarker::DEFAULT_INTERVAL`]; see [`ReadMarker`]).
    pub fn read_marker(&self) -> ReadMarker {
        self.read_marker_every(ReadMarker::DEFAULT_INTERVAL)
    }

    /// A read marker that sends at most one MarkReadUpTo per conversation per
    /// `interval`.
    pub fn read_marker_every(&self, interval: Duration) -> ReadMarker {
        ReadMarker::start(self.clone(), interval)
    }

    /// A batcher that groups MarkDelivered calls: a batch is sent when it has
    /// [`DeliveredBatcher::DEFAULT_MAX_BATCH`] messages or
    /// [`DeliveredBatcher::DEFAULT_MAX_DELAY`] after its first (see
    /// [`DeliveredBatcher`]).
    pub fn delivered_batcher(&self) -> DeliveredBatcher {
        self.delivered_batcher_with(
            DeliveredBatcher::DEFAULT_MAX_BATCH,
            DeliveredBatcher::DEFAULT_MAX_DELAY,
        )
    }

    /// A batcher that sends a batch when it has `max_batch` messages (at most
    /// 1000) or `max_delay` after its first.
    pub fn delivered_batcher_with(
        &self,
        max_batch: usize,
        max_delay: Duration,
    ) -> DeliveredBatcher {
        DeliveredBatcher::start(self.clone(), max_batch, max_delay)
    }

    /// The messaging backend's calls (need a `service` token).
    pub fn backend(&self) -> BackendClient {
        BackendClient::new(self.clone())
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
