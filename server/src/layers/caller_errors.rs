//! What the caller got wrong is answered as the caller's error.

use super::*;

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
pub(super) type DecodeCheck = fn(&[u8]) -> Result<(), String>;

/// The request-stream methods whose messages are checked as they pass.
pub(super) fn request_stream_check(path: &str) -> Option<DecodeCheck> {
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
pub(super) type Verdict = Arc<std::sync::Mutex<Option<tonic::Status>>>;

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
