//! Load shedding, per-connection limits and the server's deadline.

use super::*;

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
pub(super) struct ConnectionSlot(Arc<ConnState>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads and drops a request body, up to `max` bytes and `timeout`.
pub(super) async fn drain(mut body: Body, max: usize, timeout: Duration) {
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
