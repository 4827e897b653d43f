//! Health and server reflection (v1 for grpcurl, v1alpha for Postman and
//! older tools), without credentials.

use receipts_tests::*;
use tonic_health::pb::health_check_response::ServingStatus;

async fn list_services_v1(s: &TestServer) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut client = ServerReflectionClient::new(s.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("message")
        .expect("one response");
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn list_services_v1alpha(s: &TestServer) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut client = ServerReflectionClient::new(s.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("message")
        .expect("one response");
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_both_receipts_services() {
    let s = TestServer::start().await;
    for services in [list_services_v1(&s).await, list_services_v1alpha(&s).await] {
        for name in [
            "receipts.v1.ReceiptService",
            "receipts.v1.ReceiptBackendService",
        ] {
            assert!(
                services.iter().any(|s| s == name),
                "{name} missing from {services:?}"
            );
        }
    }
}

#[tokio::test]
async fn health_reports_serving_for_both_services_without_credentials() {
    let s = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    for service in [
        "",
        "receipts.v1.ReceiptService",
        "receipts.v1.ReceiptBackendService",
    ] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            resp.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
}

#[tokio::test]
async fn health_turns_not_serving_for_every_name_when_shutdown_starts() {
    // `""` is what Kubernetes gRPC probes and most load balancers watch; the
    // two services are what per-service checks ask.
    let names = [
        "",
        "receipts.v1.ReceiptService",
        "receipts.v1.ReceiptBackendService",
    ];
    let s = TestServer::start().await;
    let mut watches = Vec::new();
    for name in names {
        let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
        let mut watch = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: name.into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let first = watch
            .message()
            .await
            .expect("status")
            .expect("first status");
        assert_eq!(first.status, ServingStatus::Serving as i32, "{name:?}");
        watches.push((name, watch));
    }
    let stop = tokio::spawn(s.stop());
    // The test server's grace period is 2 s: each watch must see NOT_SERVING
    // before its stream is cut, not merely end.
    for (name, mut watch) in watches {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
            .await
            .expect("status change in time");
        match next {
            Ok(Some(status)) => {
                assert_eq!(status.status, ServingStatus::NotServing as i32, "{name:?}")
            }
            other => panic!("watch on {name:?} ended without NOT_SERVING: {other:?}"),
        }
    }
    stop.await.expect("stopped");
}
