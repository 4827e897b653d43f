//! gRPC-web over HTTP/1.1 and CORS, as a browser speaks them: raw HTTP/1.1
//! requests on a real socket, no gRPC client library in between.

use receipts_proto::v1 as pb;
use receipts_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Sends one HTTP/1.1 request and returns the raw response (connection closed).
async fn http1(s: &TestServer, head: &str, body: &[u8]) -> Vec<u8> {
    let mut req = head.replace('\n', "\r\n").into_bytes();
    req.extend_from_slice(body);
    http1_exchange(s.addr, &req).await
}

fn grpc_web_frame(msg: &impl prost::Message) -> Vec<u8> {
    let bytes = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(&bytes);
    frame
}

fn post(path: &str, user: Uuid, body_len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\nHost: localhost\nOrigin: http://example.test\nContent-Type: application/grpc-web+proto\nX-Grpc-Web: 1\nx-receipts-user: {user}\nContent-Length: {body_len}\nConnection: close\n\n"
    )
}

fn lower(resp: &[u8]) -> String {
    String::from_utf8_lossy(resp).to_lowercase()
}

#[tokio::test]
async fn grpc_web_call_over_http1_returns_the_message_and_trailers() {
    let s = TestServer::start().await;
    let frame = grpc_web_frame(&pb::GetPrivacySettingsRequest {});
    let resp = http1(
        &s,
        &post(
            "/receipts.v1.ReceiptService/GetPrivacySettings",
            Uuid::now_v7(),
            frame.len(),
        ),
        &frame,
    )
    .await;
    let text = lower(&resp);
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("content-type: application/grpc-web"),
        "{text}"
    );
    assert!(
        text.contains("access-control-allow-origin"),
        "CORS on the actual response: {text}"
    );
    // The body holds a data frame (flag 0x00) with the message, then a trailer
    // frame (flag 0x80) with grpc-status: 0.
    let body_at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end")
        + 4;
    let body = dechunk(&resp[body_at..]);
    assert_eq!(body[0], 0x00);
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let msg: pb::GetPrivacySettingsResponse =
        prost::Message::decode(&body[5..5 + len]).expect("decode");
    assert!(msg.settings.expect("settings").send_read_receipts);
    assert_eq!(body[5 + len], 0x80);
    assert!(lower(&body[5 + len..]).contains("grpc-status:0"));
}

#[tokio::test]
async fn grpc_web_error_is_readable_by_browsers() {
    let s = TestServer::start().await;
    let frame = grpc_web_frame(&pb::MarkDeliveredRequest {
        message_ids: vec!["not-a-uuid".into()],
        ..Default::default()
    });
    let resp = http1(
        &s,
        &post(
            "/receipts.v1.ReceiptService/MarkDelivered",
            Uuid::now_v7(),
            frame.len(),
        ),
        &frame,
    )
    .await;
    let text = lower(&resp);
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("grpc-status: 3"),
        "trailers-only error in headers: {text}"
    );
    assert!(text.contains("message_ids[0]"), "{text}");
    let expose = text
        .lines()
        .find(|l| l.starts_with("access-control-expose-headers"))
        .expect("expose headers");
    assert!(
        expose.contains("grpc-status") && expose.contains("grpc-message"),
        "{expose}"
    );
}

#[tokio::test]
async fn cors_preflight_allows_grpc_web_headers() {
    let s = TestServer::start().await;
    let head = "OPTIONS /receipts.v1.ReceiptService/GetReceipts HTTP/1.1\nHost: localhost\nOrigin: http://example.test\nAccess-Control-Request-Method: POST\nAccess-Control-Request-Headers: content-type,x-grpc-web,authorization\nConnection: close\n\n";
    let text = lower(&http1(&s, head, b"").await);
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("access-control-allow-origin: *"), "{text}");
    let allow = text
        .lines()
        .find(|l| l.starts_with("access-control-allow-headers"))
        .expect("allow headers");
    for h in ["content-type", "x-grpc-web", "authorization"] {
        assert!(allow.contains(h), "{allow}");
    }
}

#[tokio::test]
async fn cors_only_allows_configured_origins() {
    let s = TestServer::start_with(|c| c.cors_origins = vec!["http://app.test".into()]).await;
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /receipts.v1.ReceiptService/GetReceipts HTTP/1.1\nHost: localhost\nOrigin: {origin}\nAccess-Control-Request-Method: POST\nConnection: close\n\n"
        )
    };
    let ok = lower(&http1(&s, &preflight("http://app.test"), b"").await);
    assert!(
        ok.contains("access-control-allow-origin: http://app.test"),
        "{ok}"
    );
    let other = lower(&http1(&s, &preflight("http://evil.test"), b"").await);
    assert!(!other.contains("access-control-allow-origin"), "{other}");
}

/// Undoes HTTP/1.1 chunked transfer encoding (or returns the body as is).
fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return body.to_vec();
        };
        let Ok(size) = usize::from_str_radix(
            std::str::from_utf8(&rest[..line_end]).unwrap_or("x").trim(),
            16,
        ) else {
            return body.to_vec();
        };
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
}

/// A client that sends headers before the body (as connect-node does) must
/// get its UNAUTHENTICATED answer, not a connection closed under it: the
/// server reads the request before answering, even when it will reject it.
#[tokio::test]
async fn rejected_grpc_web_call_is_answered_after_the_body_is_read() {
    let s = TestServer::start_with(|c| c.dev_mode = false).await;
    let frame = grpc_web_frame(&pb::GetPrivacySettingsRequest {});
    let head = format!(
        "POST /receipts.v1.ReceiptService/GetPrivacySettings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: {}\r\n\r\n",
        frame.len()
    );
    let mut conn = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    conn.write_all(head.as_bytes()).await.expect("write head");
    let mut early = [0u8; 64];
    let answered_early =
        tokio::time::timeout(std::time::Duration::from_millis(300), conn.read(&mut early))
            .await
            .is_ok();
    assert!(
        !answered_early,
        "the server answered before reading the request"
    );
    conn.write_all(&frame)
        .await
        .expect("write body: the connection is still open");
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    while !lower(&resp).contains("grpc-status") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed without an answer: {}",
            lower(&resp)
        );
        resp.extend_from_slice(&buf[..n]);
    }
    let text = lower(&resp);
    assert!(text.contains("grpc-status: 16"), "{text}");
    assert!(
        text.contains("authorization") || text.contains("credentials"),
        "{text}"
    );
}
