//! Cross-cutting behaviour as tower layers, composed in [`crate::run`]:
//!
//! - [`ObserveLayer`]: a tracing span per call (joined to the caller's trace
//!   through W3C `traceparent`) and the RPC metrics by method and status.
//! - [`CallerErrorsLayer`]: a request the caller got wrong (bytes that do
//!   not decode, a broken frame, an oversized message) is answered as the
//!   caller's error, on every service, not as INTERNAL.
//! - [`ProtectLayer`]: load shedding past a concurrency limit and the
//!   server's deadline.
//!
//! All sit inside the gRPC-web translation, so browser calls are observed
//! and protected exactly like native gRPC calls.

use crate::auth::{AuthOutcome, Authenticator};
use crate::conn::{ConnInfo, ConnState};
use crate::metrics::{MethodLabels, Metrics, RpcLabels};
use http::{HeaderMap, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::Code;
use tonic::body::Body;
use tracing::Instrument;

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

// ----- which call is this --------------------------------------------------

/// Every service this server exposes, with its methods and whether a method
/// streams its response (a streaming call's duration is its lifetime, so it
/// is kept out of the latency histogram). A unit test checks this table
/// against the proto, so a new method cannot be missed.
const SERVICES: &[(&str, &[(&str, bool)])] = &[
    (
        "receipts.v1.ReceiptService",
        &[
            ("MarkDelivered", false),
            ("MarkReadUpTo", false),
            ("GetReceipts", false),
            ("SubscribeReceipts", true),
            ("GetUnreadCounts", false),
            ("MarkConversationsRead", false),
            ("GetPrivacySettings", false),
            ("UpdatePrivacySettings", false),
        ],
    ),
    (
        "receipts.v1.ReceiptBackendService",
        &[
            ("CreateConversation", false),
            ("AddMembers", false),
            ("RemoveMembers", false),
            ("RegisterMessages", false),
        ],
    ),
    (
        "grpc.health.v1.Health",
        &[("Check", false), ("Watch", true)],
    ),
    (
        "grpc.reflection.v1.ServerReflection",
        &[("ServerReflectionInfo", true)],
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        &[("ServerReflectionInfo", true)],
    ),
];

/// A call's service and method as static labels (`other` for paths no
/// service serves, which keeps label cardinality bounded), and whether it
/// streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Method {
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
    pub(crate) streaming: bool,
}

impl Method {
    pub(crate) fn of(path: &str) -> Self {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        for (s, methods) in SERVICES {
            if *s != service {
                continue;
            }
            for (m, streaming) in *methods {
                if *m == method {
                    return Self {
                        service: s,
                        method: m,
                        streaming: *streaming,
                    };
                }
            }
        }
        Self {
            service: "other",
            method: "other",
            streaming: false,
        }
    }

    fn receipts(&self) -> bool {
        self.service.starts_with("receipts.")
    }
}

/// The canonical name of a status code, as gRPC's docs spell it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_code(headers: &HeaderMap) -> Option<Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(v))
}

// ----- connection: which connection a call is on ---------------------------

/// Marks each call in flight on its connection (for the idle timeout, see
/// [`crate::conn`]) for as long as its response body lives, and exposes the
/// peer address the way tonic's own TCP listener does.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionLayer;

impl<S> tower::Layer<S> for ConnectionLayer {
    type Service = Connection<S>;
    fn layer(&self, inner: S) -> Connection<S> {
        Connection { inner }
    }
}

/// See [`ConnectionLayer`].
#[derive(Clone, Debug)]
pub struct Connection<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Connection<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let guard = req.extensions().get::<ConnInfo>().cloned().map(|c| {
            req.extensions_mut().insert(c.tcp.clone());
            c.state.call_started()
        });
        let fut = inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let Some(guard) = guard else {
                return Ok(resp);
            };
            let (parts, body) = resp.into_parts();
            let body = Body::new(GuardedBody {
                inner: body,
                _guard: guard,
            });
            Ok(Response::from_parts(parts, body))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted on its connection.
    struct GuardedBody<B> {
        #[pin]
        inner: B,
        _guard: crate::conn::CallGuard,
    }
}

impl<B: http_body::Body> http_body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ----- observe: spans and RPC metrics ---------------------------------------

/// The caller's trace context from W3C `traceparent` / `tracestate`.
fn parent_context(headers: &HeaderMap) -> opentelemetry::Context {
    struct Extractor<'a>(&'a HeaderMap);
    impl opentelemetry::propagation::Extractor for Extractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extractor(headers)))
}

/// A span and metrics for every call.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// One call being observed: finished exactly once, with its final status.
struct CallRecord {
    metrics: Arc<Metrics>,
    method: Method,
    started: Instant,
    span: tracing::Span,
}

impl CallRecord {
    fn finish(self, code: Code) {
        let name = code_name(code);
        self.span.record("rpc.grpc.status_code", code as i32);
        if code != Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        let m = self.method;
        self.metrics
            .rpcs
            .get_or_create(&RpcLabels {
                grpc_service: m.service,
                grpc_method: m.method,
                grpc_code: name,
            })
            .inc();
        if !m.streaming {
            self.metrics
                .rpc_seconds
                .get_or_create(&MethodLabels {
                    grpc_service: m.service,
                    grpc_method: m.method,
                })
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl<S> tower::Service<Request<Body>> for Observe<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let method = Method::of(req.uri().path());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{}/{}", method.service, method.method),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = method.service,
            rpc.method = method.method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        // Without an OpenTelemetry layer installed there is nothing to join.
        let _ = span.set_parent(parent_context(req.headers()));
        let call = CallRecord {
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
            span: span.clone(),
        };
        // The clone that was driven to readiness serves this call.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let fut = inner.call(req).instrument(span);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(r) => r,
                Err(e) => {
                    call.finish(Code::Unknown);
                    return Err(e);
                }
            };
            let (parts, body) = resp.into_parts();
            // Trailers-only (most errors): the status is in the headers.
            if let Some(code) = status_code(&parts.headers) {
                call.finish(code);
                return Ok(Response::from_parts(parts, body));
            }
            let body = Body::new(ObservedBody {
                inner: body,
                call: Some(call),
            });
            Ok(Response::from_parts(parts, body))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that finishes its call's record when the trailers
    /// pass (or CANCELLED if the client goes away first).
    struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<CallRecord>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.finish(Code::Cancelled);
            }
        }
    }
}

impl<B: http_body::Body> http_body::Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code)
                    && let Some(call) = this.call.take()
                {
                    call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                // A gRPC body that ends without a status was cut short.
                if let Some(call) = this.call.take() {
                    call.finish(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ----- caller errors: undecodable and oversized requests -------------------

/// tonic answers a request it cannot read with INTERNAL (and an oversized
/// one with OUT_OF_RANGE) before any handler runs. Those are the caller's
/// errors: DESIGN.md §6 wants INVALID_ARGUMENT naming what could not be
/// decoded (INTERNAL would trip our own "server errors" alert) and
/// RESOURCE_EXHAUSTED for every size limit. This layer re-codes exactly
/// those statuses, in a trailers-only response (unary calls and the request
/// of a server stream) or in the trailers of a streaming response.
///
/// On a server every such status describes the request: the response is
/// ours. Our own handlers never produce these texts. That gRPC's guide asks
/// INTERNAL for a compressed flag without `grpc-encoding` is a deliberate
/// exception: it is a malformed frame the caller sent. The texts are tonic's
/// and tonic-web's; tests/tests/errors.rs sends each kind of raw bytes, so an
/// upgrade that changes them fails a test instead of slipping through.
///
/// Server reflection is the one service that reads a stream of requests,
/// and tonic-reflection ends its stream with OK when a request does not
/// decode. Its request frames are checked here as they pass (size, then
/// protobuf), and the stream's final status becomes the caller's error.
#[derive(Clone, Debug)]
pub struct CallerErrorsLayer {
    metrics: Arc<Metrics>,
    max_message_bytes: usize,
}

impl CallerErrorsLayer {
    /// Counts oversized requests in `metrics` (`message_too_large`);
    /// `max_message_bytes` bounds each message of a request stream.
    pub fn new(metrics: Arc<Metrics>, max_message_bytes: usize) -> Self {
        Self {
            metrics,
            max_message_bytes,
        }
    }
}

impl<S> tower::Layer<S> for CallerErrorsLayer {
    type Service = CallerErrors<S>;
    fn layer(&self, inner: S) -> CallerErrors<S> {
        CallerErrors {
            inner,
            metrics: self.metrics.clone(),
            max_message_bytes: self.max_message_bytes,
        }
    }
}

/// See [`CallerErrorsLayer`].
#[derive(Clone, Debug)]
pub struct CallerErrors<S> {
    inner: S,
    metrics: Arc<Metrics>,
    max_message_bytes: usize,
}

/// Checks one request message of a stream; `Err` says why it does not
/// decode.
type DecodeCheck = fn(&[u8]) -> Result<(), String>;

/// The request-stream methods whose messages are checked as they pass.
fn request_stream_check(path: &str) -> Option<DecodeCheck> {
    use prost::Message as _;
    match path {
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" => Some(|b| {
            tonic_reflection::pb::v1::ServerReflectionRequest::decode(b)
                .map(drop)
                .map_err(|e| e.to_string())
        }),
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" => Some(|b| {
            tonic_reflection::pb::v1alpha::ServerReflectionRequest::decode(b)
                .map(drop)
                .map_err(|e| e.to_string())
        }),
        _ => None,
    }
}

/// What a checked request stream found wrong, for the response's trailers.
type Verdict = Arc<std::sync::Mutex<Option<tonic::Status>>>;

pin_project_lite::pin_project! {
    /// A request body whose gRPC frames are checked as they pass: a message
    /// over the size limit or one that does not decode ends the body with
    /// the caller's status, which is also kept for the response.
    struct CheckedRequest<B> {
        #[pin]
        inner: B,
        pending: bytes::BytesMut,
        max: usize,
        check: DecodeCheck,
        verdict: Verdict,
    }
}

impl CheckedRequest<Body> {
    /// The first problem in the complete frames buffered so far.
    fn inspect(
        pending: &mut bytes::BytesMut,
        max: usize,
        check: DecodeCheck,
    ) -> Option<tonic::Status> {
        use bytes::Buf;
        while pending.len() >= 5 {
            let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if len > max {
                return Some(tonic::Status::resource_exhausted(format!(
                    "request message too large: found {len} bytes, the limit is: {max} bytes (--max-message-bytes)"
                )));
            }
            if pending.len() < 5 + len {
                break;
            }
            // A compressed message is left to tonic, which knows the codec.
            if pending[0] == 0
                && let Err(e) = check(&pending[5..5 + len])
            {
                let d = e
                    .strip_prefix("failed to decode Protobuf message: ")
                    .unwrap_or(&e);
                return Some(tonic::Status::invalid_argument(format!(
                    "request message could not be decoded as protobuf: {d}"
                )));
            }
            pending.advance(5 + len);
        }
        None
    }
}

impl http_body::Body for CheckedRequest<Body> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(status) = this.verdict.lock().ok().and_then(|v| v.clone()) {
            return Poll::Ready(Some(Err(status)));
        }
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.pending.extend_from_slice(data);
            if let Some(status) = Self::inspect(this.pending, *this.max, *this.check) {
                if let Ok(mut v) = this.verdict.lock() {
                    *v = Some(status.clone());
                }
                return Poll::Ready(Some(Err(status)));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The caller's status for a status tonic produced while reading the
/// request, or `None` when `status` is not one of those.
pub(crate) fn caller_status(status: &tonic::Status) -> Option<tonic::Status> {
    let message = status.message();
    match status.code() {
        Code::OutOfRange => {
            let detail = message.strip_prefix("Error, decoded message length too large: ")?;
            Some(tonic::Status::resource_exhausted(format!(
                "request message too large: {detail} (--max-message-bytes)"
            )))
        }
        Code::Internal => {
            let reason =
                if let Some(d) = message.strip_prefix("failed to decode Protobuf message: ") {
                    format!("request message could not be decoded as protobuf: {d}")
                } else if message == "Unexpected EOF decoding stream." {
                    "request body ended inside a gRPC frame (truncated message)".to_string()
                } else if message == "Missing request message." {
                    "request body carries no message".to_string()
                } else if message.starts_with("protocol error: received message with") {
                    let d = message.trim_end_matches(", while sending request");
                    format!("malformed gRPC frame: {d}")
                } else if let Some(d) = message.strip_prefix("Error decompressing: ") {
                    let d = d.trim_end_matches(", while sending request");
                    format!("request message could not be decompressed: {d}")
                } else if let Some(d) = message.strip_prefix("tonic-web: ") {
                    format!("malformed gRPC-web request: {d}")
                } else if let Some(d) = message.strip_prefix("Invalid header bit ") {
                    format!("malformed gRPC-web frame: invalid header bit {d}")
                } else {
                    return None;
                };
            Some(tonic::Status::invalid_argument(reason))
        }
        _ => None,
    }
}

impl<S> tower::Service<Request<Body>> for CallerErrors<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let metrics = self.metrics.clone();
        let verdict = Verdict::default();
        let req = match request_stream_check(req.uri().path()) {
            Some(check) => req.map(|body| {
                Body::new(CheckedRequest {
                    inner: body,
                    pending: bytes::BytesMut::new(),
                    max: self.max_message_bytes,
                    check,
                    verdict: verdict.clone(),
                })
            }),
            None => req,
        };
        let fut = inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // Trailers-only: the status is in the headers.
            if status_code(resp.headers()).is_some() {
                if let Some(caller) = tonic::Status::from_header_map(resp.headers())
                    .as_ref()
                    .and_then(caller_status)
                {
                    if caller.code() == Code::ResourceExhausted {
                        metrics.reject("message_too_large");
                    }
                    return Ok(caller.into_http());
                }
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            let body = Body::new(CallerErrorsBody {
                inner: body,
                metrics,
                verdict,
            });
            Ok(Response::from_parts(parts, body))
        })
    }
}

pin_project_lite::pin_project! {
    /// A streaming response body whose trailers are re-coded like a
    /// trailers-only response.
    struct CallerErrorsBody<B> {
        #[pin]
        inner: B,
        metrics: Arc<Metrics>,
        verdict: Verdict,
    }
}

impl<B: http_body::Body> http_body::Body for CallerErrorsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                let mut trailers = frame.into_trailers().unwrap_or_else(|_| unreachable!());
                let status = tonic::Status::from_header_map(&trailers);
                // A request stream found wrong wins over how the handler
                // chose to end (tonic-reflection ends with OK).
                let found = this.verdict.lock().ok().and_then(|v| v.clone());
                if let Some(caller) = found.or_else(|| status.as_ref().and_then(caller_status)) {
                    if caller.code() == Code::ResourceExhausted {
                        this.metrics.reject("message_too_large");
                    }
                    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
                        trailers.remove(name);
                    }
                    if caller.add_header(&mut trailers).is_err() {
                        tracing::debug!("could not re-code a request error in trailers");
                    }
                }
                Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ----- protect: shedding, deadlines ---------------------------

/// Protection for the receipts services (health and reflection stay
/// answerable under overload, so probes see the truth).
///
/// Identity is decided from the headers before anything is queued: a call
/// without valid credentials never takes a slot or reaches a handler. It is
/// answered UNAUTHENTICATED at once on HTTP/2; on HTTP/1.1 (gRPC-web) only
/// after its body was read and dropped (bounded by `--max-message-bytes` and
/// `--header-timeout-ms`), because answering a client that is still sending
/// closes the connection under it and it would see a broken pipe instead.
#[derive(Clone, Debug)]
pub struct ProtectLayer {
    permits: Arc<Semaphore>,
    limits: ProtectLimits,
    auth: Authenticator,
    metrics: Arc<Metrics>,
}

/// The bounds [`ProtectLayer`] enforces.
#[derive(Clone, Copy, Debug)]
pub struct ProtectLimits {
    /// Receipts calls in flight on the node (`--max-concurrent-requests`).
    pub max_concurrent: usize,
    /// Of those, the most one connection may hold
    /// (`--max-calls-per-connection`).
    pub max_per_connection: usize,
    /// The server's deadline for unary calls (`--request-timeout-ms`).
    pub timeout: Duration,
    /// How long an unauthenticated HTTP/1.1 body is read before the answer
    /// (`--header-timeout-ms`).
    pub unauthenticated_body_timeout: Duration,
    /// Most bytes of an unauthenticated body read (`--max-message-bytes`).
    pub max_message_bytes: usize,
}

impl ProtectLayer {
    /// At most `limits.max_concurrent` receipts calls in flight (more are
    /// shed at once with UNAVAILABLE), at most `limits.max_per_connection`
    /// of them from one connection; unary calls end with DEADLINE_EXCEEDED
    /// after `limits.timeout` or the caller's shorter `grpc-timeout`.
    pub fn new(limits: ProtectLimits, auth: Authenticator, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            limits,
            auth,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for ProtectLayer {
    type Service = Protect<S>;
    fn layer(&self, inner: S) -> Protect<S> {
        Protect {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ProtectLayer`].
#[derive(Clone, Debug)]
pub struct Protect<S> {
    inner: S,
    layer: ProtectLayer,
}

/// One of a connection's share of slots, given back when dropped.
struct ConnectionSlot(Arc<ConnState>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads and drops a request body, up to `max` bytes and `timeout`.
async fn drain(mut body: Body, max: usize, timeout: Duration) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(timeout, async move {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > max {
                break;
            }
        }
    })
    .await;
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, at most 8 digits).
pub(crate) fn grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S> tower::Service<Request<Body>> for Protect<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let method = Method::of(req.uri().path());
        if !method.receipts() {
            return Box::pin(inner.call(req));
        }
        let layer = self.layer.clone();
        let limits = layer.limits;
        let conn = req.extensions().get::<ConnInfo>().cloned();
        // Who is calling, from the headers alone: a caller without valid
        // credentials is answered without a slot or a handler.
        let metadata = tonic::metadata::MetadataMap::from_headers(req.headers().clone());
        let peer = conn.as_ref().and_then(|c| c.tcp.remote_addr);
        let identity = match layer.auth.identify(&metadata, peer) {
            Ok(identity) => identity,
            Err(e) => {
                let status = e.into_status();
                if req.version() == http::Version::HTTP_2 {
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
                let body = req.into_body();
                return Box::pin(async move {
                    drain(
                        body,
                        limits.max_message_bytes.saturating_add(5),
                        limits.unauthenticated_body_timeout,
                    )
                    .await;
                    Ok(status.into_http())
                });
            }
        };
        req.extensions_mut().insert(AuthOutcome(Ok(identity)));
        // One connection holds at most its share of the node's slots, so it
        // cannot starve the others.
        let slot = match &conn {
            Some(c) => {
                let held = c.state.slots.fetch_add(1, Ordering::AcqRel);
                let slot = ConnectionSlot(c.state.clone());
                if held >= limits.max_per_connection {
                    drop(slot);
                    layer.metrics.reject("connection_share");
                    let status = tonic::Status::unavailable(format!(
                        "this connection has {} calls in flight (--max-calls-per-connection); retry with backoff",
                        limits.max_per_connection
                    ));
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
                Some(slot)
            }
            None => None,
        };
        // Shed at once rather than queue: a queue only adds latency to
        // calls whose clients will time out anyway.
        let Ok(permit) = layer.permits.clone().try_acquire_owned() else {
            layer.metrics.reject("overloaded");
            let status = tonic::Status::unavailable(format!(
                "server overloaded: {} calls in flight (--max-concurrent-requests); retry with backoff",
                limits.max_concurrent
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let caller = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        let timeout = caller.map_or(limits.timeout, |c| c.min(limits.timeout));
        let fut = inner.call(req);
        Box::pin(async move {
            let _permit = permit;
            let _slot = slot;
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    layer.metrics.reject("deadline");
                    let status = tonic::Status::deadline_exceeded(format!(
                        "deadline of {} ms exceeded on the server (the call's own grpc-timeout or --request-timeout-ms); its outcome is unknown and retrying is safe: writes are idempotent",
                        timeout.as_millis()
                    ));
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parses_every_unit_and_refuses_malformed_values() {
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S", "5 S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unknown_paths_get_one_bounded_label() {
        let m = Method::of("/receipts.v1.ReceiptService/SubscribeReceipts");
        assert_eq!(
            (m.service, m.method, m.streaming),
            ("receipts.v1.ReceiptService", "SubscribeReceipts", true)
        );
        for path in ["/", "/x.Y/Z", "/receipts.v1.ReceiptService/Nope", "garbage"] {
            let m = Method::of(path);
            assert_eq!((m.service, m.method), ("other", "other"), "{path}");
        }
    }

    #[test]
    fn the_method_table_lists_every_method_of_the_proto() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(receipts_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let mut seen = 0;
        for file in &set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                for method in &service.method {
                    let m = Method::of(&format!("/{name}/{}", method.name()));
                    assert_eq!(m.service, name, "{name}/{} is missing", method.name());
                    assert_eq!(
                        m.streaming,
                        method.server_streaming(),
                        "{name}/{} streaming flag",
                        method.name()
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 12, "the proto's methods were found ({seen})");
    }
}
