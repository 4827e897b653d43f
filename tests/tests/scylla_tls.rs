//! Scylla credentials and TLS (`--scylla-username`/`--scylla-password`,
//! `--scylla-tls-ca`, `--scylla-tls-cert`/`--scylla-tls-key`,
//! `--scylla-tls-name`) against a real Cassandra that wants all of them:
//! `scripts/backends.sh start-cassandra-secure` runs one with
//! PasswordAuthenticator (superuser cassandra/cassandra), client encryption
//! only and client certificates required; its CA and a client pair are in
//! `RECEIPTS_TEST_CASSANDRA_SECURE_TLS`.

use receipts_sdk::{Client, DeliveryOutcome};
use receipts_server::auth::Role;
use receipts_server::store::scylla::{ScyllaOptions, ScyllaPersistence};
use receipts_server::store::scylla_access::ScyllaAccess;
use receipts_tests::pki::Ca;
use receipts_tests::{ChildServer, free_port, required_env, sdk_chat, token};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

struct Secure {
    node: String,
    tls: PathBuf,
}

impl Secure {
    fn new() -> Self {
        Self {
            node: required_env("RECEIPTS_TEST_CASSANDRA_SECURE"),
            tls: PathBuf::from(required_env("RECEIPTS_TEST_CASSANDRA_SECURE_TLS")),
        }
    }

    /// Everything right: the password, the test CA, the client pair.
    fn access(&self) -> ScyllaAccess {
        ScyllaAccess {
            scylla_username: Some("cassandra".into()),
            scylla_password: Some("cassandra".into()),
            scylla_tls: false,
            scylla_tls_ca: Some(self.tls.join("ca.pem")),
            scylla_tls_cert: Some(self.tls.join("client.pem")),
            scylla_tls_key: Some(self.tls.join("client.key")),
            scylla_tls_name: None,
        }
    }

    /// [`Secure::access`] as `receiptd` flags.
    fn flags(&self) -> Vec<String> {
        let s = |p: &str| self.tls.join(p).display().to_string();
        [
            "--scylla-username",
            "cassandra",
            "--scylla-password",
            "cassandra",
            "--scylla-tls-ca",
            &s("ca.pem"),
            "--scylla-tls-cert",
            &s("client.pem"),
            "--scylla-tls-key",
            &s("client.key"),
        ]
        .map(String::from)
        .to_vec()
    }

    async fn connect(&self, access: ScyllaAccess) -> Result<ScyllaPersistence, String> {
        ScyllaPersistence::connect(&ScyllaOptions {
            nodes: vec![self.node.clone()],
            keyspace: "receipts_secure_test".into(),
            access,
            ..ScyllaOptions::default()
        })
        .await
        .map_err(|e| {
            // The driver's reason is the error's source.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })
    }

    /// Connects with the right settings, waiting for the node's default
    /// superuser, which Cassandra creates shortly after it answers.
    async fn connect_when_ready(&self) -> ScyllaPersistence {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.connect(self.access()).await {
                Ok(p) => return p,
                Err(e) if Instant::now() > deadline => panic!("never connected: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

#[tokio::test]
async fn persistence_needs_the_password_the_tls_and_the_client_certificate() {
    let secure = Secure::new();
    secure.connect_when_ready().await;

    let other_ca = Ca::new("not Cassandra's CA");
    let dir = tempfile::tempdir().unwrap();
    let other_ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca.pem()).unwrap();
    let good = secure.access();
    let cases = [
        (
            "a wrong password",
            ScyllaAccess {
                scylla_password: Some("not-it".into()),
                ..good.clone()
            },
            "bad credentials",
        ),
        (
            "no credentials",
            ScyllaAccess {
                scylla_username: None,
                scylla_password: None,
                ..good.clone()
            },
            "Authentication is required",
        ),
        (
            "plain text",
            ScyllaAccess {
                scylla_username: good.scylla_username.clone(),
                scylla_password: good.scylla_password.clone(),
                ..ScyllaAccess::default()
            },
            "Connection reset by peer",
        ),
        (
            "no client certificate",
            ScyllaAccess {
                scylla_tls_cert: None,
                scylla_tls_key: None,
                ..good.clone()
            },
            "CertificateRequired",
        ),
        (
            "another CA",
            ScyllaAccess {
                scylla_tls_ca: Some(other_ca_file),
                ..good.clone()
            },
            "UnknownIssuer",
        ),
        (
            "a name the node's certificate lacks",
            ScyllaAccess {
                scylla_tls_name: Some("cassandra.example".into()),
                ..good.clone()
            },
            "not valid for name \"cassandra.example\"",
        ),
    ];
    // Each refusal says why, in the driver's words.
    for (what, access, why) in cases {
        match secure.connect(access).await {
            Ok(_) => panic!("{what}: connected"),
            Err(e) => assert!(e.contains(why), "{what}: expected {why:?} in {e}"),
        }
    }
    // The certificate names localhost too: checked by name instead of by
    // the IP address the driver connects to.
    let by_name = ScyllaAccess {
        scylla_tls_name: Some("localhost".into()),
        ..good
    };
    secure
        .connect(by_name)
        .await
        .expect("--scylla-tls-name localhost");
}

/// A node of the production tier on the secure Cassandra: it serves, and
/// what it flushes lands there (read back over a session of its own).
#[tokio::test]
async fn a_node_persists_to_a_cassandra_with_a_password_and_tls() {
    let secure = Secure::new();
    secure.connect_when_ready().await;
    let keyspace = format!(
        "receipts_secure_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let mut args = vec![
        "--store".to_string(),
        "redis-scylla".into(),
        "--redis-urls".into(),
        required_env("RECEIPTS_TEST_REDIS"),
        "--redis-prefix".into(),
        keyspace.clone(),
        "--scylla-nodes".into(),
        secure.node.clone(),
        "--scylla-keyspace".into(),
        keyspace.clone(),
        "--flush-interval-ms".into(),
        "200".into(),
    ];
    args.extend(secure.flags());
    let data = tempfile::tempdir().unwrap();
    let node = ChildServer::start_with_args(data.path(), free_port(), &args).await;
    let url = format!("http://{}", node.addr);
    let backend = Client::builder(&url)
        .token(token(Uuid::now_v7(), Role::Service))
        .connect()
        .await
        .unwrap()
        .backend();
    let (sender, reader) = (Uuid::now_v7(), Uuid::now_v7());
    let (_conv, msg) = sdk_chat(&backend, &[sender, reader]).await;
    let reader_client = Client::builder(&url)
        .token(token(reader, Role::User))
        .connect()
        .await
        .unwrap();
    let d = reader_client.mark_delivered(&[msg]).await.unwrap();
    assert_eq!(d[0].outcome, DeliveryOutcome::Recorded);

    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&secure.node)
        .user("cassandra", "cassandra")
        .tls_context(secure.access().client_config().unwrap())
        .build()
        .await
        .expect("a session of the test's own");
    let query = format!("SELECT id FROM {keyspace}.messages WHERE id = ?");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = session
            .query_unpaged(query.as_str(), (msg,))
            .await
            .expect("query")
            .into_rows_result()
            .expect("rows")
            .rows_num();
        if rows == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the message never reached Cassandra"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), ())
        .await
        .expect("drop the keyspace");
}

#[test]
fn receiptd_config_checks_the_scylla_access_settings() {
    let config = receipts_tests::production_config;
    let ca = Ca::new("config CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.client("c").write(dir.path(), "client");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "nope").unwrap();
    let garbage = garbage.display().to_string();
    let cases: [(Vec<&str>, &str, &str); 5] = [
        (
            vec!["--scylla-username", "u"],
            "--scylla-password",
            "is needed with --scylla-username",
        ),
        (
            vec!["--scylla-password", "p"],
            "--scylla-username",
            "is needed with --scylla-password",
        ),
        (
            vec!["--scylla-tls-cert", &cert],
            "--scylla-tls-key",
            "is needed with --scylla-tls-cert",
        ),
        (
            vec!["--scylla-tls-ca", &garbage],
            "--scylla-tls-ca",
            "no PEM",
        ),
        (
            vec!["--scylla-tls-cert", &cert, "--scylla-tls-key", &cert],
            "--scylla-tls-key",
            "no PEM",
        ),
    ];
    for (args, flag, why) in cases {
        let (code, err, _) = config(&args);
        assert_eq!(code, Some(64), "{args:?} accepted: {err}");
        assert!(
            err.contains(flag) && err.contains(why),
            "{args:?}: expected {flag} / {why}, got {err}"
        );
    }
    let (code, err, out) = config(&[
        "--scylla-username",
        "receipts",
        "--scylla-password",
        "Qx9-not-to-be-printed",
        "--scylla-tls-ca",
        &cert,
        "--scylla-tls-cert",
        &cert,
        "--scylla-tls-key",
        &key,
    ]);
    assert_eq!(code, Some(0), "good settings refused: {err}");
    assert!(
        !out.contains("Qx9-not-to-be-printed") && !err.contains("Qx9-not-to-be-printed"),
        "the password was printed: {out}{err}"
    );
    assert!(
        out.contains("# scylla-password = ...  # secret, not shown"),
        "the password's line is missing: {out}"
    );
}
