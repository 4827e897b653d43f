//! Logs and traces for the `receiptd` binary.
//!
//! Logs go to stderr, human-readable or JSON (`--log-json`), filtered by
//! `RUST_LOG` (default `info`). Traces are exported over OTLP/gRPC when the
//! standard OpenTelemetry variables ask for it:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   (e.g. `http://collector:4317`) turns export on;
//! - `OTEL_SERVICE_NAME` names the service (default `receiptd`),
//!   `OTEL_RESOURCE_ATTRIBUTES` adds attributes;
//! - `OTEL_TRACES_SAMPLER` / `_ARG`, `OTEL_BSP_*` and
//!   `OTEL_EXPORTER_OTLP_TIMEOUT` / `_HEADERS` work as the SDK documents;
//! - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns it off;
//! - a protocol other than `grpc` in `OTEL_EXPORTER_OTLP_PROTOCOL` (or its
//!   `_TRACES_` form) is a configuration error: only gRPC is built in.
//!
//! The W3C Trace Context propagator is always installed, so a caller's
//! `traceparent` becomes the parent of the service's spans.

use crate::config::ConfigError;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for OTLP trace export, or why it is wrong.
fn otlp_requested() -> Result<bool, ConfigError> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    if env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return Ok(false);
    }
    if env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(false);
    }
    for key in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = env(key)
            && p != "grpc"
        {
            return Err(ConfigError {
                key: "OTEL_EXPORTER_OTLP_PROTOCOL",
                reason: format!(
                    "{key}={p} is not supported; receiptd exports OTLP over gRPC (grpc)"
                ),
            });
        }
    }
    Ok(true)
}

/// Installs logging and, if configured, OTLP trace export. Call once, inside
/// the Tokio runtime (the exporter's gRPC channel lives on it).
pub fn init(log_json: bool) -> Result<Telemetry, ConfigError> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file, a pipe or a log
    // collector gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // RUST_LOG filters the logs only: traces keep every span of the service
    // whatever the log level.
    let fmt = if log_json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let provider = if otlp_requested()? {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| ConfigError {
                key: "OTEL_EXPORTER_OTLP_ENDPOINT",
                reason: format!("cannot build the OTLP exporter: {e}"),
            })?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if env("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("receiptd");
        }
        Some(
            SdkTracerProvider::builder()
                .with_resource(resource.build())
                .with_batch_exporter(exporter)
                .build(),
        )
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("receiptd"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("receipts_server", tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            // The SDK's shutdown blocks on its export thread.
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = p.shutdown() {
                    tracing::warn!("trace export shutdown: {e}");
                }
            })
            .await;
        }
    }
}
