//! `receiptd`: the Receipts service as a library.
//!
//! [`run`] serves the whole API (gRPC, gRPC-web with CORS, health, reflection)
//! on a bound listener until `shutdown` resolves; the binary only parses
//! configuration and calls it, and tests call it on port 0.

#![warn(missing_docs, missing_debug_implementations)]

/// The commit this build comes from (12 hex digits, or "unknown" outside a
/// git checkout).
pub const COMMIT: &str = env!("RECEIPTD_COMMIT");

/// `receiptd --version`: the crate's version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RECEIPTD_COMMIT"),
    ")"
);

pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod domain;
pub mod error;
pub mod fanout;
pub mod layers;
pub mod metrics;
pub mod probe;
pub mod store;
pub mod telemetry;
pub mod tls;

use crate::api::Api;
use crate::auth::{AuthInterceptor, Authenticator};
use crate::config::ServeArgs;
use crate::store::ReceiptStore;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use receipts_proto::v1::receipt_backend_service_server::ReceiptBackendServiceServer;
use receipts_proto::v1::receipt_service_server::ReceiptServiceServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration (exit code 64 in the binary).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] error::ServiceError),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The metrics listener could not be bound.
    #[error("metrics listener {addr}: {source}")]
    MetricsListen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// The names health answers for: the whole server (`""`) and each service.
const HEALTH_NAMES: [&str; 3] = [
    "",
    <ReceiptServiceServer<Api> as tonic::server::NamedService>::NAME,
    <ReceiptBackendServiceServer<Api> as tonic::server::NamedService>::NAME,
];

/// Headers browsers may send on gRPC-web calls.
const CORS_ALLOW_HEADERS: &[&str] = &[
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "traceparent",
    "tracestate",
    auth::DEV_USER_HEADER,
    auth::DEV_ROLE_HEADER,
];
/// Headers browsers may read: without these, gRPC-web errors are invisible.
const CORS_EXPOSE_HEADERS: &[&str] = &["grpc-status", "grpc-message", "grpc-status-details-bin"];

fn cors(config: &ServeArgs) -> CorsLayer {
    let origin = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .cors_origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o).ok()),
        )
    };
    let names = |list: &[&'static str]| -> Vec<http::HeaderName> {
        list.iter()
            .map(|h| http::HeaderName::from_static(h))
            .collect()
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(names(CORS_ALLOW_HEADERS))
        .expose_headers(names(CORS_EXPOSE_HEADERS))
        .max_age(Duration::from_secs(24 * 3600))
}

/// Accepted connections, bounded in number and in how long they may wait
/// for a call (see [`conn`]), with Nagle's algorithm off. tonic sets
/// TCP_NODELAY only on listeners it binds itself; without it, a response's
/// trailers can wait for the client's delayed ACK (tens of milliseconds).
///
/// With TLS, each handshake runs in its own task, so a slow or silent
/// client never holds up the accept of the next one.
fn incoming(
    listener: TcpListener,
    acceptor: conn::Acceptor,
    tls: Option<Arc<tls::Tls>>,
) -> std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<conn::Conn>> + Send>> {
    use tokio_stream::StreamExt;
    let admit = move |conn: std::io::Result<tokio::net::TcpStream>| {
        // tonic logs a failed accept and goes on.
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => return Some(Err(e)),
        };
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        acceptor.admit(conn).map(Ok)
    };
    let accepted = tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(admit);
    let Some(tls) = tls else {
        return Box::pin(accepted.map(|c| c.map(conn::Conn::Plain)));
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        loop {
            let next = tokio::select! {
                next = accepted.next() => next,
                // The server stopped reading: it is shutting down.
                _ = tx.closed() => return,
            };
            match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(conn)) => {
                    let (tx, acceptor) = (tx.clone(), tls.acceptor());
                    tokio::spawn(async move {
                        if let Some(conn) = conn::Conn::handshake(conn, acceptor).await {
                            let _ = tx.send(Ok(conn)).await;
                        }
                    });
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Opens the store configured in `config`.
pub async fn open_store(config: &ServeArgs) -> Result<Arc<dyn ReceiptStore>, RunError> {
    if config.store == config::StoreKind::RedisScylla {
        let store = store::redis::RedisStore::open(store::redis::RedisOptions {
            redis_urls: config.redis_urls.clone(),
            cluster: config.redis_cluster,
            access: store::redis::RedisAccess {
                username: config.redis_username.clone(),
                password: config.redis_password.clone(),
                tls: config.redis_tls().map_err(config::ConfigError::from)?,
            },
            prefix: config.redis_prefix.clone(),
            hot_ttl: Duration::from_secs(config.hot_ttl_secs),
            group_window: config.group_window(),
            log_retention: config.log_retention,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            max_outage: Duration::from_secs(config.writebehind_max_outage_secs),
            subscriber_buffer: config.subscriber_buffer,
            wait_replicas: (config.redis_wait_replicas > 0).then(|| {
                (
                    config.redis_wait_replicas,
                    Duration::from_millis(config.redis_wait_timeout_ms),
                )
            }),
            scylla: store::scylla::ScyllaOptions {
                nodes: config.scylla_nodes.clone(),
                keyspace: config.scylla_keyspace.clone(),
                replication: config.scylla_replication.clone(),
                retention: Duration::from_secs(config.retention_days * 86_400),
                access: config.scylla_access.clone(),
            },
        })
        .await?;
        return Ok(Arc::new(store));
    }
    let store = EmbeddedStore::open(
        &config.data_dir,
        EmbeddedOptions {
            group_window: config.group_window(),
            log_retention: config.log_retention,
            subscriber_buffer: config.subscriber_buffer,
            cache_bytes: (config.cache_mb as usize).saturating_mul(1 << 20),
            indexed_above: store::embedded::INDEXED_ABOVE,
        },
    )?;
    Ok(Arc::new(store))
}

/// Serves on `listener` until `shutdown` resolves, then drains: health goes
/// NOT_SERVING, open streams end with a resumable UNAVAILABLE, in-flight
/// calls finish, pending group windows are flushed and the store closes.
pub async fn run(
    listener: TcpListener,
    config: ServeArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    config.validate()?;
    let authenticator = Authenticator::from_config(&config)?;
    if config.dev_mode {
        tracing::warn!(
            "DEV MODE: the `{}` header is trusted WITHOUT verification (loopback only). Never use this in production.",
            auth::DEV_USER_HEADER
        );
    }
    let metrics = metrics::Metrics::new();
    let tls = match config.tls_files() {
        Some(files) => {
            Some(
                tls::Tls::new(files, metrics.clone()).map_err(|e| config::ConfigError {
                    key: e.flag,
                    reason: format!("{}: {}", e.path, e.reason),
                })?,
            )
        }
        None => None,
    };
    let tls_watch = tls.clone().map(tls::Tls::watch);
    // Bind the metrics port before opening the store, so a taken port fails
    // fast.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    let store: Arc<dyn ReceiptStore> = Arc::new(store::observed::ObservedStore::new(
        open_store(&config).await?,
        metrics.clone(),
    ));
    let (stop_streams, streams_stopped) = tokio::sync::watch::channel(false);
    let api = Api::new(
        store.clone(),
        &config,
        metrics.clone(),
        streams_stopped.clone(),
    );
    let metrics_server = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
        }
        let mut stopped = streams_stopped.clone();
        tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            store.clone(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    });
    // Per-user limiter state of idle users is dropped now and then.
    let housekeeping = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                api.housekeep();
            }
        })
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ReceiptServiceServer<Api>>().await;
    health
        .set_serving::<ReceiptBackendServiceServer<Api>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(receipts_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(receipts_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let interceptor = AuthInterceptor {
        auth: authenticator.clone(),
    };

    // Health follows the backends: NOT_SERVING while one is unreachable.
    let backend_watch = {
        let health = health.clone();
        let store = store.clone();
        let mut stopped = stop_streams.subscribe();
        tokio::spawn(async move {
            use tonic_health::ServingStatus;
            let mut last = true;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                let ok = store.healthy().await;
                if ok == last || *stopped.borrow() {
                    continue;
                }
                last = ok;
                let status = if ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for name in HEALTH_NAMES {
                    health.set_service_status(name, status).await;
                }
            }
        })
    };

    match listener.local_addr() {
        Ok(addr) => tracing::info!(
            %addr,
            tls = tls.is_some(),
            client_certificates = config.tls_client_ca.is_some(),
            "listening (gRPC and gRPC-web); the store is open"
        ),
        Err(e) => tracing::warn!("listening on an address the OS does not report: {e}"),
    }
    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let drain = {
        let health = health.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining streams");
            // All three names, `""` first: it is what Kubernetes probes and
            // most load balancers watch.
            for name in HEALTH_NAMES {
                health
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            let _ = stop_streams.send(true);
            let _ = draining.send(());
        }
    };
    let layers = tower::ServiceBuilder::new()
        // Each call counted on its connection (idle timeout, peer address).
        .layer(layers::ConnectionLayer)
        // CORS next, so preflights are answered before anything else.
        .layer(cors(&config))
        // Translate gRPC-web (binary and text) to gRPC for the layers below.
        .layer(tonic_web::GrpcWebLayer::new())
        // A span per call (joined to the caller's trace) and RPC metrics.
        .layer(layers::ObserveLayer::new(metrics.clone()))
        // Undecodable or oversized requests answered as the caller's error.
        .layer(layers::CallerErrorsLayer::new(
            metrics.clone(),
            config.max_message_bytes,
        ))
        // Shed past the concurrency limit; the server's deadline.
        .layer(layers::ProtectLayer::new(
            layers::ProtectLimits {
                max_concurrent: config.max_concurrent_requests,
                max_per_connection: config.max_calls_per_connection,
                timeout: Duration::from_millis(config.request_timeout_ms),
                unauthenticated_body_timeout: Duration::from_millis(config.header_timeout_ms),
                max_message_bytes: config.max_message_bytes,
            },
            authenticator,
            metrics.clone(),
        ));
    let acceptor = conn::Acceptor::new(
        conn::ConnLimits {
            max_connections: config.max_connections,
            first_request_timeout: Duration::from_millis(config.header_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        },
        metrics.clone(),
    );
    let keepalive = (config.keepalive_interval_ms > 0)
        .then(|| Duration::from_millis(config.keepalive_interval_ms));
    let max_message = config.max_message_bytes;
    let server = tonic::transport::Server::builder()
        // gRPC-web arrives over HTTP/1.1 from browsers.
        .accept_http1(true)
        // One connection opens at most this many streams at once.
        .max_concurrent_streams(config.max_streams_per_connection)
        // Dead peers are found by pings, not by the kernel hours later.
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_millis(config.keepalive_timeout_ms)))
        .layer(layers)
        // Every service reads at most --max-message-bytes per request.
        .add_service(health_service.max_decoding_message_size(max_message))
        .add_service(reflection_v1.max_decoding_message_size(max_message))
        .add_service(reflection_v1alpha.max_decoding_message_size(max_message))
        // Authentication is per service so health and reflection stay open.
        .add_service(tonic::service::interceptor::InterceptedService::new(
            ReceiptServiceServer::new(api.clone()).max_decoding_message_size(max_message),
            interceptor.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            ReceiptBackendServiceServer::new(api).max_decoding_message_size(max_message),
            interceptor,
        ))
        .serve_with_incoming_shutdown(incoming(listener, acceptor, tls), drain);
    // Shutdown is bounded: calls that do not finish within the grace period
    // (a client holding a health watch open, say) are cut off.
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    tokio::select! {
        served = server => served?,
        _ = async {
            if drain_started.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(?grace, "shutdown grace period over; closing remaining connections");
        }
    }
    backend_watch.abort();
    housekeeping.abort();
    if let Some(t) = tls_watch {
        t.abort();
    }
    store.shutdown().await;
    if let Some(m) = metrics_server {
        // Stopped with the streams; it only has to finish its last scrape.
        let _ = tokio::time::timeout(Duration::from_secs(1), m).await;
    }
    tracing::info!("receiptd stopped");
    Ok(())
}
