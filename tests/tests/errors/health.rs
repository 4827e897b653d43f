//! Health needs no credentials.

use super::*;

#[tokio::test]
async fn health_check_reports_serving_without_a_token() {
    let s = TestServer::start_with(|c| c.dev_mode = false).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "receipts.v1.ReceiptService".into(),
        })
        .await
        .expect("health without a token")
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn health_check_of_an_unknown_service_is_not_found() {
    let s = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "receipts.v1.NoSuchService".into(),
        })
        .await;
    assert_eq!(r.expect_err("unknown service").code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_answers_without_a_token() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let s = TestServer::start_with(|c| c.dev_mode = false).await;
    let mut client = ServerReflectionClient::new(s.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "receipts.v1.ReceiptService".into(),
        )),
    };
    let resp = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection without a token")
        .into_inner()
        .message()
        .await
        .expect("message")
        .expect("one response");
    match resp.message_response {
        Some(MessageResponse::FileDescriptorResponse(f)) => {
            assert!(!f.file_descriptor_proto.is_empty());
        }
        other => panic!("expected a file descriptor, got {other:?}"),
    }
}
