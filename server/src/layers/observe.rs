//! A span per call and the RPC metrics.

use super::*;

/// The caller's trace context from W3C `traceparent` / `tracestate`.
pub(super) fn parent_context(headers: &HeaderMap) -> opentelemetry::Context {
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
pub(super) struct CallRecord {
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
