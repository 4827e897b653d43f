//! Calls in flight per connection, and the peer address.

use super::*;

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
