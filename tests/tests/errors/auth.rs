//! Authentication and roles.

use super::*;

/// Tries a write as a client with bad credentials, expecting `code` naming
/// `names`, and checks that nothing changed.
async fn refused_as(w: &World, mut client: UserClient, code: Code, names: &[&str]) {
    let before = w.observe().await;
    let r = client
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: w.msgs[2].to_string(),
        })
        .await;
    expect_err(r, code, names);
    let r = client
        .mark_delivered(pb::MarkDeliveredRequest {
            message_ids: ids(&w.msgs),
            ..Default::default()
        })
        .await;
    expect_err(r, code, names);
    let r = client
        .update_privacy_settings(pb::UpdatePrivacySettingsRequest {
            settings: Some(pb::PrivacySettings {
                send_read_receipts: false,
            }),
        })
        .await;
    expect_err(r, code, names);
    let r = client
        .get_receipts(pb::GetReceiptsRequest {
            conversation_id: w.group.id.to_string(),
            message_ids: ids(&w.msgs),
            include_recipients: true,
        })
        .await;
    expect_err(r, code, names);
    let r = client
        .subscribe_receipts(pb::SubscribeReceiptsRequest::default())
        .await;
    expect_err(r, code, names);
    assert_eq!(w.observe().await, before);
}

#[tokio::test]
async fn calls_without_a_token_are_unauthenticated() {
    let w = World::new().await;
    let client = w.s.user_with_token(None).await;
    refused_as(&w, client, Code::Unauthenticated, &["authorization"]).await;
    let mut backend =
        ReceiptBackendServiceClient::with_interceptor(w.s.channel().await, Bearer(None));
    let r = backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![registration(Uuid::now_v7(), w.group.id, 4, w.a)],
        })
        .await;
    expect_err(r, Code::Unauthenticated, &["authorization"]);
}

#[tokio::test]
async fn token_signed_with_another_secret_is_unauthenticated() {
    let w = World::new().await;
    let forged = mint_token(
        "some-other-secret-0123456789",
        w.b,
        Role::User,
        Duration::from_secs(3600),
    )
    .expect("mint");
    let client = w.s.user_with_token(Some(forged)).await;
    refused_as(
        &w,
        client,
        Code::Unauthenticated,
        &["authorization", "signature"],
    )
    .await;
}

#[tokio::test]
async fn expired_token_is_unauthenticated() {
    let w = World::new().await;
    let now = now_secs();
    let expired = sign(
        &Claims {
            sub: w.b.to_string(),
            role: Role::User,
            exp: now - 600,
            iat: Some(now - 4200),
            nbf: None,
            iss: None,
            aud: None,
        },
        SECRET,
    );
    let client = w.s.user_with_token(Some(expired)).await;
    refused_as(
        &w,
        client,
        Code::Unauthenticated,
        &["authorization", "expired"],
    )
    .await;
}

#[tokio::test]
async fn garbage_bearer_token_is_unauthenticated() {
    let w = World::new().await;
    let client = w.s.user_with_token(Some("xyz".into())).await;
    refused_as(&w, client, Code::Unauthenticated, &["authorization"]).await;
    let mut basic = meta_client(&w.s, &[("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")]).await;
    let r = basic
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await;
    expect_err(r, Code::Unauthenticated, &["authorization", "Bearer"]);
}

#[tokio::test]
async fn token_whose_sub_is_not_a_uuid_is_unauthenticated() {
    let w = World::new().await;
    let token = sign(
        &Claims {
            sub: "alice".into(),
            role: Role::User,
            exp: now_secs() + 3600,
            iat: None,
            nbf: None,
            iss: None,
            aud: None,
        },
        SECRET,
    );
    let client = w.s.user_with_token(Some(token)).await;
    refused_as(&w, client, Code::Unauthenticated, &["authorization", "sub"]).await;
}

#[tokio::test]
async fn user_token_calling_the_backend_service_is_permission_denied() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut backend = ReceiptBackendServiceClient::with_interceptor(
        w.s.channel().await,
        Bearer(Some(token(w.a, Role::User))),
    );
    let fresh_conversation = Uuid::now_v7();
    let fresh_message = Uuid::now_v7();
    let names = ["service"];
    let r = backend
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: fresh_conversation.to_string(),
            member_ids: ids(&[w.a, w.d]),
        })
        .await;
    expect_err(r, Code::PermissionDenied, &names);
    let r = backend
        .add_members(pb::AddMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(w.d, 1)],
        })
        .await;
    expect_err(r, Code::PermissionDenied, &names);
    let r = backend
        .remove_members(pb::RemoveMembersRequest {
            conversation_id: w.group.id.to_string(),
            members: vec![change(w.b, 2)],
        })
        .await;
    expect_err(r, Code::PermissionDenied, &names);
    let r = backend
        .register_messages(pb::RegisterMessagesRequest {
            messages: vec![registration(fresh_message, w.group.id, 4, w.a)],
        })
        .await;
    expect_err(r, Code::PermissionDenied, &names);
    assert_eq!(w.observe().await, before);
    w.assert_unregistered(&[fresh_message]).await;
    let created = w
        .backend()
        .await
        .create_conversation(pb::CreateConversationRequest {
            conversation_id: fresh_conversation.to_string(),
            member_ids: ids(&[w.b, w.c]),
        })
        .await
        .expect("create")
        .into_inner()
        .created;
    assert!(created, "the user could not create it");
}

#[tokio::test]
async fn service_token_calling_user_calls_is_permission_denied() {
    let w = World::new().await;
    let service = w.s.user_with_token(Some(token(w.b, Role::Service))).await;
    refused_as(&w, service.clone(), Code::PermissionDenied, &["user"]).await;
    let mut service = service;
    let r = service
        .get_unread_counts(pb::GetUnreadCountsRequest {
            conversation_ids: ids(&[w.group.id]),
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["user"]);
    let r = service
        .mark_conversations_read(pb::MarkConversationsReadRequest {
            conversation_ids: ids(&[w.group.id]),
            threads: Vec::new(),
        })
        .await;
    expect_err(r, Code::PermissionDenied, &["user"]);
    let r = service
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await;
    expect_err(r, Code::PermissionDenied, &["user"]);
}

#[tokio::test]
async fn dev_header_is_unauthenticated_when_dev_mode_is_off() {
    let s = TestServer::start_with(|c| c.dev_mode = false).await;
    let mut backend = s.backend().await;
    let mut conv = Conversation::create(&mut backend, 2).await;
    let (a, b) = (conv.members[0], conv.members[1]);
    let m = conv.send(&mut backend, a).await;
    let mut dev = meta_client(&s, &[("x-receipts-user", &b.to_string())]).await;
    let r = dev
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: conv.id.to_string(),
            message_id: m.to_string(),
        })
        .await;
    expect_err(r, Code::Unauthenticated, &["x-receipts-user", "dev mode"]);
    let r = receipt(&mut s.user(a).await, conv.id, m).await;
    assert_eq!((r.delivered_count, r.read_count), (0, 0));
}

#[tokio::test]
async fn dev_header_is_accepted_on_a_dev_mode_loopback_server() {
    let w = World::new().await;
    let mut dev = meta_client(&w.s, &[("x-receipts-user", &w.b.to_string())]).await;
    let read = dev
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: w.msgs[2].to_string(),
        })
        .await
        .expect("dev header accepted")
        .into_inner();
    assert_eq!(read.read_up_to_seq, 3);
    let r = receipt(&mut w.user(w.a).await, w.group.id, w.msgs[2]).await;
    assert_eq!(r.read_count, 1, "b's read, made through the dev header");
    // A dev header that is not a UUID is still refused.
    let mut bad = meta_client(&w.s, &[("x-receipts-user", "bob")]).await;
    let r = bad
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await;
    expect_err(r, Code::Unauthenticated, &["x-receipts-user"]);
}

#[tokio::test]
async fn a_bad_token_is_not_rescued_by_a_dev_header() {
    let w = World::new().await;
    let before = w.observe().await;
    let mut both = meta_client(
        &w.s,
        &[
            ("authorization", "Bearer xyz"),
            ("x-receipts-user", &w.b.to_string()),
        ],
    )
    .await;
    let r = both
        .mark_read_up_to(pb::MarkReadUpToRequest {
            conversation_id: w.group.id.to_string(),
            message_id: w.msgs[2].to_string(),
        })
        .await;
    expect_err(r, Code::Unauthenticated, &["authorization"]);
    assert_eq!(w.observe().await, before);
}

/// Runs `receiptd` with `args` and a clean environment; returns its exit code
/// and stderr.
async fn run_receiptd(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(receiptd_path())
        .args(args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn receiptd");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("receiptd must refuse the configuration and exit, not serve")
        .expect("wait for receiptd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dev_mode_on_a_non_loopback_listen_address_is_refused_with_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (code, stderr) = run_receiptd(&[
        "--dev-mode".as_ref(),
        "--listen".as_ref(),
        "0.0.0.0:0".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ])
    .await;
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert!(stderr.contains("--dev-mode"), "stderr: {stderr}");
    assert!(!data.exists(), "refused before opening the store");
}

#[tokio::test]
async fn receiptd_without_any_authentication_configured_exits_64_naming_jwt_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (code, stderr) = run_receiptd(&[
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ])
    .await;
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert!(stderr.contains("--jwt-secret"), "stderr: {stderr}");
    assert!(!data.exists(), "refused before opening the store");
}
