//! The production tier on a Redis that speaks only TLS and wants an ACL user
//! and a client certificate: `rediss://` with `--redis-tls-ca`,
//! `--redis-tls-cert`/`--redis-tls-key`, `--redis-username` and
//! `--redis-password`, against a real `redis-server` (Debian's, built with
//! TLS) and the shared Cassandra.

use futures::StreamExt;
use receipts_sdk::{Client, DeliveryOutcome, Event};
use receipts_server::auth::Role;
use receipts_tests::pki::Ca;
use receipts_tests::tier::{OwnedRedis, Tier};
use receipts_tests::{free_port, receiptd_path, sdk_chat, token};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

const PASSWORD: &str = "s3cret-for-receipts";

/// A TLS-only Redis (plain port off) whose default user is off; `receipts`
/// may do everything with [`PASSWORD`]; clients must show a certificate
/// from the CA.
struct SecureRedis {
    redis: OwnedRedis,
    ca_file: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl SecureRedis {
    fn start() -> Self {
        let ca = Ca::new("redis CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.server().write(dir.path(), "redis");
        let (client_cert, client_key) = ca.client("receiptd").write(dir.path(), "client");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let port = free_port();
        let s = |p: &PathBuf| p.display().to_string();
        let password = format!(">{PASSWORD}");
        let redis = OwnedRedis::start_with(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &s(&cert),
                "--tls-key-file",
                &s(&key),
                "--tls-ca-cert-file",
                &s(&ca_file),
                "--tls-auth-clients",
                "yes",
                "--user",
                "default",
                "off",
                "--user",
                "receipts",
                "on",
                &password,
                "~*",
                "&*",
                "+@all",
            ],
        );
        Self {
            redis,
            ca_file,
            client_cert,
            client_key,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.redis.port)
    }

    /// Everything a node needs to reach it.
    fn access(&self) -> Vec<String> {
        let s = |p: &PathBuf| p.display().to_string();
        vec![
            "--redis-username".into(),
            "receipts".into(),
            "--redis-password".into(),
            PASSWORD.into(),
            "--redis-tls-ca".into(),
            s(&self.ca_file),
            "--redis-tls-cert".into(),
            s(&self.client_cert),
            "--redis-tls-key".into(),
            s(&self.client_key),
        ]
    }
}

/// Runs a node that must fail to start; returns what it said.
fn start_fails(args: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(receiptd_path())
        .args(args)
        .args(["--jwt-secret", receipts_tests::SECRET])
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "the node started: {args:?}");
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node neither served nor failed within 60 s: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn the_tier_runs_on_a_tls_only_redis_with_an_acl_user_and_a_client_certificate() {
    let redis = SecureRedis::start();
    let tier = Tier::with_redis(redis.url()).await;
    let access = redis.access();
    let access: Vec<&str> = access.iter().map(String::as_str).collect();
    let node = tier.node_with(&access).await;
    let url = format!("http://{}", node.addr);

    let (sender, reader) = (Uuid::now_v7(), Uuid::now_v7());
    let backend = Client::builder(&url)
        .token(token(Uuid::now_v7(), Role::Service))
        .connect()
        .await
        .unwrap()
        .backend();
    let (conv, msg) = sdk_chat(&backend, &[sender, reader]).await;
    // The sender's live stream goes through the bus (Redis pub/sub over
    // TLS, with the same credentials).
    let sender_client = Client::builder(&url)
        .token(token(sender, Role::User))
        .connect()
        .await
        .unwrap();
    let mut sub = sender_client.subscribe(None);
    // Live first: a stream opened without a cursor starts at the live
    // position, so a write committed before it is open is not in it (under
    // a loaded CI run the stream may open after the delivery otherwise).
    let live = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the stream opens in time");
    assert!(
        matches!(live, Some(Ok(Event::Live { .. }))),
        "the stream starts live: {live:?}"
    );
    let reader_client = Client::builder(&url)
        .token(token(reader, Role::User))
        .connect()
        .await
        .unwrap();
    let d = reader_client.mark_delivered(&[msg]).await.unwrap();
    assert_eq!(d[0].outcome, DeliveryOutcome::Recorded);
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = sub.next().await {
            if let Event::Receipts {
                conversation_id, ..
            } = ev.expect("no error")
                && conversation_id == conv
            {
                return;
            }
        }
        panic!("stream ended");
    })
    .await;
    assert!(seen.is_ok(), "no live event through the TLS bus");
}

#[tokio::test]
async fn a_node_without_the_right_credentials_or_certificates_fails_to_start_saying_why() {
    let redis = SecureRedis::start();
    let tier = Tier::with_redis(redis.url()).await;
    let good = redis.access();
    let with = |replace: &[(&str, Option<&str>)]| -> Vec<String> {
        let mut args = Vec::new();
        let mut i = 0;
        while i < good.len() {
            let (flag, value) = (&good[i], &good[i + 1]);
            match replace.iter().find(|(f, _)| f == flag) {
                Some((_, Some(v))) => args.extend([flag.clone(), v.to_string()]),
                Some((_, None)) => {}
                None => args.extend([flag.clone(), value.clone()]),
            }
            i += 2;
        }
        tier.args(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let cases = [
        (
            "a wrong password",
            with(&[("--redis-password", Some("not-the-password"))]),
            "credentials",
        ),
        (
            "no CA: the system roots do not know the test CA",
            with(&[("--redis-tls-ca", None)]),
            "UnknownIssuer",
        ),
        (
            "no client certificate",
            with(&[("--redis-tls-cert", None), ("--redis-tls-key", None)]),
            "cannot connect to Redis",
        ),
    ];
    for (what, args, why) in cases {
        let err = start_fails(&args);
        assert!(
            err.contains(why),
            "{what}: the error does not say {why:?}: {err}"
        );
    }
}

#[test]
fn receiptd_config_checks_the_redis_tls_settings() {
    let config = receipts_tests::production_config;
    let ca = Ca::new("config CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.client("c").write(dir.path(), "client");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "nope").unwrap();
    let garbage = garbage.display().to_string();

    let (code, err, _) = config(&["--redis-urls", "rediss://127.0.0.1:6380"]);
    assert_eq!(code, Some(0), "rediss:// refused: {err}");
    let rediss = |more: &[&'static str]| {
        let mut a = vec!["--redis-urls", "rediss://127.0.0.1:6380"];
        a.extend_from_slice(more);
        a
    };
    let (cert, key, garbage): (&'static str, &'static str, &'static str) =
        (cert.leak(), key.leak(), garbage.leak());
    for (args, flag, why) in [
        (
            vec!["--redis-tls-ca", cert],
            "--redis-tls-ca",
            "only used with rediss://",
        ),
        (
            vec![
                "--redis-urls",
                "rediss://127.0.0.1:6380,redis://127.0.0.1:6381",
                "--redis-cluster",
            ],
            "--redis-urls",
            "mixes rediss:// and redis://",
        ),
        (
            rediss(&["--redis-tls-cert", cert]),
            "--redis-tls-key",
            "is needed with --redis-tls-cert",
        ),
        (
            rediss(&["--redis-tls-ca", garbage]),
            "--redis-tls-ca",
            "no PEM",
        ),
        (
            rediss(&["--redis-tls-cert", cert, "--redis-tls-key", cert]),
            "--redis-tls-key",
            "no PEM",
        ),
    ] {
        let (code, err, _) = config(&args);
        assert_eq!(code, Some(64), "{args:?} accepted: {err}");
        assert!(
            err.contains(flag) && err.contains(why),
            "{args:?}: expected {flag} / {why}, got {err}"
        );
    }
    let (code, err, out) = config(&rediss(&[
        "--redis-tls-cert",
        cert,
        "--redis-tls-key",
        key,
        "--redis-password",
        "Zq7-not-to-be-printed",
    ]));
    assert_eq!(code, Some(0), "a good client pair refused: {err}");
    assert!(
        !out.contains("Zq7-not-to-be-printed") && !err.contains("Zq7-not-to-be-printed"),
        "the password was printed: {out}{err}"
    );
    assert!(
        out.contains("# redis-password = ...  # secret, not shown"),
        "the password's line is missing: {out}"
    );
}
