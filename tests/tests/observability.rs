//! Traces and metrics of a real `receiptd` process: spans exported over
//! OTLP/gRPC to a receiver in the test (built from the official
//! opentelemetry-proto types), joined to the caller's W3C trace; Prometheus
//! metrics scraped over HTTP and seen to move.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use receipts_proto::v1 as pb;
use receipts_tests::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, sleep};
use uuid::Uuid;

/// Spans received, with the `service.name` of their resource.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// A receiver on a free port.
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let c = Self::default();
        let svc = TraceServiceServer::new(c.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (c, addr)
    }

    /// Waits until a span matching `pred` has arrived.
    async fn span(&self, what: &str, pred: impl Fn(&Span) -> bool) -> (String, Span) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|(_, s)| pred(s))
                .cloned()
            {
                return found;
            }
            assert!(Instant::now() < deadline, "no span {what} arrived");
            sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr_int(span: &Span, key: &str) -> Option<i64> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::IntValue(i) => Some(*i),
            _ => None,
        })
}

/// A node exporting to `collector` quickly (100 ms batches).
async fn traced_node(dir: &std::path::Path, collector: SocketAddr) -> ChildServer {
    ChildServer::start_with_env(
        dir,
        free_port(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
            ("OTEL_SERVICE_NAME", "receipts-trace-test".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    )
    .await
}

#[tokio::test]
async fn spans_join_the_callers_trace_and_cover_the_store_calls() {
    let (collector, at) = Collector::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = traced_node(dir.path(), at).await;

    let trace_id = Uuid::new_v4().simple().to_string();
    let parent = &Uuid::new_v4().simple().to_string()[..16];
    let mut backend = node.backend().await;
    let mut req = tonic::Request::new(pb::CreateConversationRequest {
        conversation_id: Uuid::now_v7().to_string(),
        member_ids: vec![Uuid::now_v7().to_string(), Uuid::now_v7().to_string()],
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent}-01").parse().expect("ascii"),
    );
    backend
        .create_conversation(req)
        .await
        .expect("create conversation");

    let (service, rpc) = collector
        .span("for the traced CreateConversation", |s| {
            hex(&s.trace_id) == trace_id && s.name.ends_with("/CreateConversation")
        })
        .await;
    assert_eq!(
        service, "receipts-trace-test",
        "OTEL_SERVICE_NAME names the service"
    );
    assert_eq!(
        rpc.name,
        "receipts.v1.ReceiptBackendService/CreateConversation"
    );
    assert_eq!(
        hex(&rpc.parent_span_id),
        parent,
        "the caller's span is the parent"
    );
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(attr_int(&rpc, "rpc.grpc.status_code"), Some(0));

    let (_, store) = collector
        .span("for the store call", |s| {
            hex(&s.trace_id) == trace_id && s.name == "create_conversation"
        })
        .await;
    assert_eq!(
        store.parent_span_id, rpc.span_id,
        "store span is the RPC's child"
    );

    // A call without a traceparent starts a trace of its own, and a failed
    // call records its status code.
    let mut user = node.user(Uuid::now_v7()).await;
    let status = user
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: "not-a-uuid".into(),
            message_ids: vec![],
            include_recipients: false,
        })
        .await
        .expect_err("invalid conversation id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let (_, root) = collector
        .span("for the untraced GetReceipts", |s| {
            s.name.ends_with("/GetReceipts")
        })
        .await;
    assert!(root.parent_span_id.is_empty(), "a root span");
    assert_ne!(hex(&root.trace_id), trace_id);
    assert_eq!(
        attr_int(&root, "rpc.grpc.status_code"),
        Some(tonic::Code::InvalidArgument as i64)
    );
}

#[tokio::test]
async fn the_rust_sdk_sends_the_callers_trace_context() {
    let (collector, at) = Collector::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = traced_node(dir.path(), at).await;

    let trace_id = Uuid::new_v4().simple().to_string();
    let parent = Uuid::new_v4().simple().to_string()[..16].to_string();
    let traceparent = format!("00-{trace_id}-{parent}-01");
    let client = receipts_sdk::Client::builder(format!("http://{}", node.addr))
        .token(token(Uuid::now_v7(), receipts_server::auth::Role::User))
        .trace_context(move || {
            Some(receipts_sdk::TraceContext {
                traceparent: traceparent.clone(),
                tracestate: Some("receipts=test".into()),
            })
        })
        .connect()
        .await
        .expect("connect");
    client.read_receipts().await.expect("privacy settings");

    let (_, rpc) = collector
        .span("for the SDK's GetPrivacySettings", |s| {
            hex(&s.trace_id) == trace_id && s.name.ends_with("/GetPrivacySettings")
        })
        .await;
    assert_eq!(hex(&rpc.parent_span_id), parent);
    assert_eq!(rpc.trace_state, "receipts=test", "tracestate travels too");

    // A malformed context is refused before anything is sent.
    let bad = receipts_sdk::Client::builder(format!("http://{}", node.addr))
        .token(token(Uuid::now_v7(), receipts_server::auth::Role::User))
        .trace_context(|| Some(receipts_sdk::TraceContext::new("00-zz-01")))
        .connect()
        .await
        .expect("connect");
    let err = bad.read_receipts().await.expect_err("bad traceparent");
    assert!(
        matches!(err, receipts_sdk::Error::Config(ref m) if m.contains("traceparent")),
        "{err}"
    );
}

// ----- metrics ---------------------------------------------------------------

const MARK_DELIVERED_OK: &str = r#"receipts_grpc_server_handled_total{grpc_service="receipts.v1.ReceiptService",grpc_method="MarkDelivered",grpc_code="OK"}"#;
const GET_RECEIPTS_INVALID: &str = r#"receipts_grpc_server_handled_total{grpc_service="receipts.v1.ReceiptService",grpc_method="GetReceipts",grpc_code="INVALID_ARGUMENT"}"#;
const MARK_DELIVERED_LATENCY_COUNT: &str = r#"receipts_grpc_server_handling_seconds_count{grpc_service="receipts.v1.ReceiptService",grpc_method="MarkDelivered"}"#;
const DIRECT_LIVE_EVENTS: &str =
    r#"receipts_events_sent_total{kind="receipts",conversation="direct",source="live"}"#;
const DIRECT_REPLAYED_EVENTS: &str =
    r#"receipts_events_sent_total{kind="receipts",conversation="direct",source="replay"}"#;
const ACTIVE: &str = "receipts_subscriptions_active";
const PROPAGATION_COUNT: &str = "receipts_propagation_seconds_count";
const STORE_DELIVERED_COUNT: &str = r#"receipts_store_call_seconds_count{op="mark_delivered"}"#;
const REPLAYS: &str = r#"receipts_replays_total{reason="events"}"#;
const RESETS_INVALID: &str = r#"receipts_resets_total{reason="invalid"}"#;

/// Scrapes until `ok` holds (metrics of a stream's end move asynchronously).
async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr).await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}; last scrape:\n{text}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// A `receiptd` process with its metrics endpoint, and that endpoint.
async fn node_with_metrics(dir: &std::path::Path) -> (ChildServer, SocketAddr) {
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = ChildServer::start_with_args(
        dir,
        free_port(),
        &["--metrics-listen".into(), metrics_addr.to_string()],
    )
    .await;
    (node, metrics_addr)
}

#[tokio::test]
async fn every_documented_metric_is_there_from_start_up_with_the_build_and_process_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, metrics_addr) = node_with_metrics(dir.path()).await;
    let text = scrape(metrics_addr).await;
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .expect("docs/operations.md");
    // Every family in the table, with at least one sample line (labelled
    // families with the label values the table names), except those only
    // the production tier and the latency histograms fill on first use.
    let lazy = [
        "receipts_grpc_server_handled_total",
        "receipts_grpc_server_handling_seconds",
        "receipts_store_call_seconds",
        "receipts_store_errors_total",
    ];
    let mut checked = 0;
    for line in doc.lines().filter(|l| l.starts_with("| `receipts_")) {
        let name = line.split('`').nth(1).expect("a metric name");
        if lazy.contains(&name) {
            continue;
        }
        let has_sample = text
            .lines()
            .any(|l| !l.starts_with('#') && l.starts_with(name));
        assert!(has_sample, "{name} has no sample at start-up:\n{text}");
        checked += 1;
    }
    assert!(checked >= 15, "the table was read ({checked} metrics)");
    for (series, value) in [
        (
            r#"receipts_events_sent_total{kind="receipts",conversation="direct",source="live"}"#,
            0.0,
        ),
        (r#"receipts_resets_total{reason="too_large"}"#, 0.0),
        (r#"receipts_rejected_total{reason="overloaded"}"#, 0.0),
    ] {
        assert_eq!(sample(&text, series), value, "{series}");
    }
    let build = format!(
        r#"receipts_build_info{{version="{}",commit="{}"}}"#,
        env!("CARGO_PKG_VERSION"),
        receipts_server::COMMIT
    );
    assert_eq!(sample(&text, &build), 1.0, "{text}");
    assert!(sample(&text, "process_resident_memory_bytes") > 1e6);
    // CPU time moves in clock ticks (10 ms): a quiet start may show 0.
    assert!(
        text.lines()
            .any(|l| l.starts_with("process_cpu_seconds_total ")),
        "{text}"
    );
    assert!(sample(&text, "process_open_fds") >= 3.0);
    assert!(sample(&text, "process_threads") >= 2.0);
    let started = sample(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - started).abs() < 300.0,
        "started {started}, now {now}"
    );
    drop(node);
}

#[tokio::test]
async fn metrics_count_calls_events_subscriptions_and_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, metrics_addr) = node_with_metrics(dir.path()).await;
    let before = scrape(metrics_addr).await;
    assert!(before.contains("# TYPE receipts_grpc_server_handled counter"));
    assert!(before.trim_end().ends_with("# EOF"), "OpenMetrics text");
    assert_eq!(sample(&before, MARK_DELIVERED_OK), 0.0);
    assert_eq!(sample(&before, ACTIVE), 0.0);

    let mut backend = node.backend().await;
    let mut chat = Conversation::create(&mut backend, 2).await;
    let (alice, bob) = (chat.members[0], chat.members[1]);
    let m1 = chat.send(&mut backend, alice).await;
    let mut alice_client = node.user(alice).await;
    let (mut sub, _) = Subscription::open(&mut alice_client, None).await;

    let mut bob_client = node.user(bob).await;
    deliver(&mut bob_client, &[m1]).await;
    read_up_to(&mut bob_client, chat.id, m1).await;
    sub.next_receipts().await;
    sub.next_receipts().await;
    let _ = bob_client
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: "nope".into(),
            message_ids: vec![],
            include_recipients: false,
        })
        .await
        .expect_err("invalid argument");

    let after = scrape(metrics_addr).await;
    assert_eq!(sample(&after, MARK_DELIVERED_OK), 1.0, "{after}");
    assert_eq!(sample(&after, GET_RECEIPTS_INVALID), 1.0);
    assert_eq!(sample(&after, MARK_DELIVERED_LATENCY_COUNT), 1.0);
    assert_eq!(sample(&after, STORE_DELIVERED_COUNT), 1.0);
    assert_eq!(
        sample(&after, DIRECT_LIVE_EVENTS),
        2.0,
        "delivered, then read"
    );
    assert_eq!(sample(&after, PROPAGATION_COUNT), 2.0);
    assert_eq!(sample(&after, ACTIVE), 1.0);

    // The stream ends: the gauge falls. Resuming from its cursor replays.
    let cursor = sub.cursor.clone();
    drop(sub);
    scrape_until(metrics_addr, "the closed stream is no longer active", |t| {
        sample(t, ACTIVE) == 0.0
    })
    .await;
    let m2 = chat.send(&mut backend, alice).await;
    deliver(&mut bob_client, &[m2]).await;
    let (_sub, replayed) = Subscription::open(&mut alice_client, Some(cursor)).await;
    assert_eq!(replayed.len(), 1);
    let (_bad, _) = Subscription::open(&mut alice_client, Some("garbage".into())).await;
    let last = scrape(metrics_addr).await;
    assert_eq!(sample(&last, REPLAYS), 1.0, "{last}");
    assert_eq!(sample(&last, DIRECT_REPLAYED_EVENTS), 1.0);
    assert_eq!(sample(&last, RESETS_INVALID), 1.0);
    assert_eq!(sample(&last, ACTIVE), 2.0);
    assert_eq!(sample(&last, "receipts_subscriptions_opened_total"), 3.0);
    // The embedded store writes through: no write-behind backlog.
    assert_eq!(sample(&last, "receipts_writebehind_queues"), 0.0);
}
