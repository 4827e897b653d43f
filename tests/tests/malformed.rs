//! DESIGN.md §6: bytes that do not decode are the caller's error.
//!
//! Raw requests on a real socket: native gRPC over HTTP/2 (through tonic's
//! channel, with a body we build byte by byte) and gRPC-web over HTTP/1.1.
//! Garbage protobuf, a wrong wire type, a truncated field, invalid UTF-8, a
//! truncated or malformed frame and malformed base64 each get
//! INVALID_ARGUMENT saying what could not be decoded, never INTERNAL; an
//! oversized request to any service, health included, gets
//! RESOURCE_EXHAUSTED. None of them changes anything.

use bytes::Bytes;
use http_body_util::BodyExt;
use receipts_proto::v1 as pb;
use receipts_tests::*;
use tonic::Code;
use tower::ServiceExt;
use uuid::Uuid;

const MARK_READ: &str = "/receipts.v1.ReceiptService/MarkReadUpTo";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// A gRPC frame: flag, big-endian length, payload.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Sends `body` as the request of `path` over HTTP/2 and returns the status
/// (from the headers of a trailers-only response, or the trailers).
async fn raw_grpc(s: &TestServer, path: &str, user: Uuid, body: Vec<u8>) -> tonic::Status {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", s.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-receipts-user", user.to_string())
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(body),
        )))
        .expect("request");
    let resp = s.channel().await.oneshot(req).await.expect("response");
    if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
        return status;
    }
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    tonic::Status::from_header_map(&trailers).expect("grpc-status in trailers")
}

#[track_caller]
fn invalid(status: &tonic::Status, says: &[&str]) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for word in says {
        assert!(
            status.message().contains(word),
            "{:?} does not say {word:?}",
            status.message()
        );
    }
}

/// A member's state that none of the bad requests may change.
async fn world(s: &TestServer) -> (Conversation, Uuid, Uuid) {
    let mut backend = s.backend().await;
    let mut c = Conversation::create(&mut backend, 2).await;
    let (a, b) = (c.members[0], c.members[1]);
    let m = c.send(&mut backend, a).await;
    (c, b, m)
}

async fn unread(s: &TestServer, c: &Conversation, user: Uuid) -> i64 {
    s.user(user)
        .await
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: vec![c.id.to_string()],
        })
        .await
        .expect("unread")
        .into_inner()
        .conversations[0]
        .unread_count
}

#[tokio::test]
async fn undecodable_protobuf_is_invalid_argument_naming_what_failed() {
    let s = TestServer::start().await;
    let (c, b, _) = world(&s).await;
    assert_eq!(unread(&s, &c, b).await, 1);
    // Garbage: a field key with wire type 7, which does not exist.
    let st = raw_grpc(&s, MARK_READ, b, frame(0, &[0xff, 0xff, 0xff])).await;
    invalid(&st, &["decoded"]);
    // conversation_id (field 1, a string) sent as a varint.
    let st = raw_grpc(&s, MARK_READ, b, frame(0, &[0x08, 0x01])).await;
    invalid(&st, &["decoded", "wire type"]);
    // A string field whose length runs past the message.
    let st = raw_grpc(&s, MARK_READ, b, frame(0, &[0x0a, 0x10, b'a'])).await;
    invalid(&st, &["decoded"]);
    // Invalid UTF-8 in conversation_id.
    let st = raw_grpc(&s, MARK_READ, b, frame(0, &[0x0a, 0x02, 0xff, 0xfe])).await;
    invalid(&st, &["decoded", "conversation_id", "UTF-8"]);
    assert_eq!(unread(&s, &c, b).await, 1, "a rejected call changed state");
}

#[tokio::test]
async fn broken_grpc_frames_are_invalid_argument() {
    let s = TestServer::start().await;
    let (c, b, m) = world(&s).await;
    let good = prost::Message::encode_to_vec(&pb::MarkReadUpToRequest {
        conversation_id: c.id.to_string(),
        message_id: m.to_string(),
    });
    // The frame says 100 bytes more than the body carries.
    let mut truncated = vec![0u8];
    truncated.extend_from_slice(&((good.len() + 100) as u32).to_be_bytes());
    truncated.extend_from_slice(&good);
    let st = raw_grpc(&s, MARK_READ, b, truncated).await;
    invalid(&st, &["truncated"]);
    // A header cut after three bytes.
    let st = raw_grpc(&s, MARK_READ, b, vec![0, 0, 0]).await;
    invalid(&st, &["truncated"]);
    // A compression flag that does not exist, and one without grpc-encoding.
    let st = raw_grpc(&s, MARK_READ, b, frame(7, &good)).await;
    invalid(&st, &["frame", "compression flag"]);
    let st = raw_grpc(&s, MARK_READ, b, frame(1, &good)).await;
    invalid(&st, &["frame", "grpc-encoding"]);
    // No message at all.
    let st = raw_grpc(&s, MARK_READ, b, Vec::new()).await;
    invalid(&st, &["no message"]);
    assert_eq!(unread(&s, &c, b).await, 1, "a rejected call changed state");
}

#[tokio::test]
async fn health_answers_undecodable_requests_as_invalid_argument_too() {
    let s = TestServer::start().await;
    let user = Uuid::now_v7();
    let st = raw_grpc(&s, HEALTH_CHECK, user, frame(0, &[0x0a, 0x02, 0xff, 0xfe])).await;
    invalid(&st, &["decoded", "UTF-8"]);
}

#[tokio::test]
async fn an_oversized_request_to_any_service_is_resource_exhausted() {
    let s = TestServer::start_with(|c| c.max_message_bytes = 1024).await;
    let user = Uuid::now_v7();
    let big = frame(
        0,
        &[0x0a, 0x80, 0x10]
            .iter()
            .copied()
            .chain([b'a'; 2048])
            .collect::<Vec<_>>(),
    );
    for path in [MARK_READ, HEALTH_CHECK] {
        let st = raw_grpc(&s, path, user, big.clone()).await;
        assert_eq!(st.code(), Code::ResourceExhausted, "{path}: {st:?}");
        assert!(st.message().contains("too large"), "{path}: {st:?}");
    }
    // Reflection (a bidirectional stream) too.
    let st = raw_grpc(
        &s,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        user,
        big,
    )
    .await;
    assert_eq!(st.code(), Code::ResourceExhausted, "reflection: {st:?}");
}

#[tokio::test]
async fn a_bidirectional_stream_answers_undecodable_requests_as_invalid_argument() {
    let s = TestServer::start().await;
    let st = raw_grpc(
        &s,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Uuid::now_v7(),
        frame(0, &[0xff, 0xff, 0xff]),
    )
    .await;
    invalid(&st, &["decoded"]);
}

/// Sends one HTTP/1.1 gRPC-web request and returns the raw response text.
async fn grpc_web(s: &TestServer, content_type: &str, user: Uuid, body: &[u8]) -> String {
    let mut req = format!(
        "POST {MARK_READ} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nX-Grpc-Web: 1\r\nx-receipts-user: {user}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    String::from_utf8_lossy(&http1_exchange(s.addr, &req).await).to_lowercase()
}

#[tokio::test]
async fn malformed_grpc_web_framing_and_base64_are_invalid_argument() {
    let s = TestServer::start().await;
    let (c, b, _) = world(&s).await;
    for (content_type, body, says) in [
        // Not base64 at all.
        (
            "application/grpc-web-text",
            b"!!!!****".to_vec(),
            "malformed%20grpc-web%20request",
        ),
        // Base64 cut in the middle of a quantum.
        ("application/grpc-web-text", b"AAAAAAE".to_vec(), "grpc-web"),
        // A binary frame cut short.
        (
            "application/grpc-web+proto",
            vec![0, 0, 0, 0, 50, 0x0a],
            "truncated",
        ),
        // Garbage protobuf in a well-formed frame.
        (
            "application/grpc-web+proto",
            frame(0, &[0xff, 0xff, 0xff]),
            "decoded",
        ),
    ] {
        let text = grpc_web(&s, content_type, b, &body).await;
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(
            text.contains("grpc-status: 3\r\n"),
            "{content_type} {body:?}: {text}"
        );
        assert!(
            text.contains(says),
            "{content_type} {body:?} does not say {says}: {text}"
        );
    }
    assert_eq!(unread(&s, &c, b).await, 1, "a rejected call changed state");
}
