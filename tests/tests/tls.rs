//! TLS on the listener (`--tls-cert`, `--tls-key`, `--tls-client-ca`), from
//! the Rust SDK over a real socket to a real `receiptd` process: a private
//! CA, mutual TLS, plain text refused, and certificates reloaded on SIGHUP
//! and on a file change without a restart.

use futures::StreamExt;
use receipts_sdk::{Client, ClientTls, DeliveryOutcome, Error};
use receipts_server::auth::Role;
use receipts_tests::pki::{Ca, Pair};
use receipts_tests::{ChildServer, free_port, scrape, sdk_chat, token};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

struct Tls {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Tls {
    fn new(server: &Pair) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = server.write(dir.path(), "server");
        // Padded, so that a later rewrite can keep the length.
        rewrite_unseen(&cert, &server.cert);
        rewrite_unseen(&key, &server.key);
        Self { dir, cert, key }
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("write");
        p
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut a = vec![
            "--tls-cert".to_string(),
            self.cert.display().to_string(),
            "--tls-key".to_string(),
            self.key.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }
}

fn start(data: &Path, args: Vec<String>) -> ChildServer {
    ChildServer::spawn(data, free_port(), &args, &[])
}

/// A server with a metrics port; returns it too.
fn start_watched(data: &Path, mut args: Vec<String>) -> (ChildServer, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    args.extend(["--metrics-listen".to_string(), metrics.to_string()]);
    (start(data, args), metrics)
}

fn https(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

fn client(addr: SocketAddr, tls: ClientTls, role: Role) -> receipts_sdk::ClientBuilder {
    Client::builder(https(addr))
        .tls(tls)
        .token(token(Uuid::now_v7(), role))
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .retry(receipts_sdk::RetryPolicy::none())
}

/// Connects until the server (just spawned, still opening its store)
/// accepts, or 30 s pass.
async fn connect(builder: receipts_sdk::ClientBuilder) -> Result<Client, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match builder.clone().connect().await {
            Err(e)
                if tokio::time::Instant::now() < deadline
                    && e.to_string().contains("onnection refused") =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// A round trip: a conversation, a message, a delivery, as over plain text.
async fn round_trip(backend: &Client, user: Uuid, user_client: &Client) {
    let (_, msg) = sdk_chat(&backend.backend(), &[Uuid::now_v7(), user]).await;
    let d = user_client
        .mark_delivered(&[msg])
        .await
        .expect("deliver over TLS");
    assert_eq!(d[0].outcome, DeliveryOutcome::Recorded);
}

fn metric(scraped: &str, series: &str) -> f64 {
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{scraped}"))
}

/// Scrapes until `series` reaches `at_least` (15 s at most); returns the
/// scrape.
async fn wait_for_metric(metrics: SocketAddr, series: &str, at_least: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let scraped = scrape(metrics).await;
        if metric(&scraped, series) >= at_least {
            return scraped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed below {at_least}:\n{scraped}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_sdk_calls_over_tls_trusting_a_private_ca_and_plain_text_is_refused() {
    let ca = Ca::new("receipts test CA");
    let tls = Tls::new(&ca.server());
    let data = tempfile::tempdir().unwrap();
    let (server, metrics) = start_watched(data.path(), tls.args(&[]));
    let trust = ClientTls::new().ca_certificate(ca.pem());
    let backend = connect(client(server.addr, trust.clone(), Role::Service))
        .await
        .expect("TLS connect with the private CA");
    let user = Uuid::now_v7();
    let user_client = Client::builder(https(server.addr))
        .tls(trust.clone())
        .token(token(user, Role::User))
        .connect()
        .await
        .expect("user connects");
    round_trip(&backend, user, &user_client).await;

    // A subscription works over TLS too.
    let mut sub = user_client.subscribe(None);
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("subscription answers over TLS");
    assert!(first.is_some(), "stream ended at once");

    // The public roots do not know the private CA: the error says why.
    let err = Client::builder(https(server.addr))
        .token(token(user, Role::User))
        .connect()
        .await
        .expect_err("an unknown issuer must be refused");
    let text = err.to_string();
    assert!(
        text.contains("UnknownIssuer") || text.contains("certificate"),
        "unclear error: {text}"
    );

    // TLS settings with an http:// endpoint are refused before anything
    // is sent (the token would go in clear text).
    let err = Client::builder(format!("http://{}", server.addr))
        .tls(trust.clone())
        .token(token(user, Role::User))
        .connect_lazy()
        .expect_err("TLS settings on http:// must be refused");
    assert!(
        matches!(&err, Error::Config(m) if m.contains("must be https://")),
        "{err:?}"
    );

    // A plain-text client gets no answer, and the server counts the failed
    // handshake.
    let plain = Client::builder(format!("http://{}", server.addr))
        .token(token(user, Role::User))
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .retry(receipts_sdk::RetryPolicy::none())
        .connect_lazy()
        .unwrap();
    let refused = plain.read_receipts().await;
    assert!(refused.is_err(), "plain text answered on a TLS port");
    wait_for_metric(
        metrics,
        "receipts_connections_closed_total{reason=\"tls_handshake\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let strangers = Ca::new("another CA");
    let tls = Tls::new(&ca.server());
    let client_ca = tls.file("clients.pem", &clients.pem());
    let data = tempfile::tempdir().unwrap();
    let server = start(
        data.path(),
        tls.args(&["--tls-client-ca", &client_ca.display().to_string()]),
    );
    let trust = ClientTls::new().ca_certificate(ca.pem());
    let me = clients.client("chat-backend");
    let backend = connect(client(
        server.addr,
        trust.clone().identity(me.cert.clone(), me.key.clone()),
        Role::Service,
    ))
    .await
    .expect("mTLS with a client certificate from the client CA");
    let user = Uuid::now_v7();
    let user_client = Client::builder(https(server.addr))
        .tls(trust.clone().identity(me.cert, me.key))
        .token(token(user, Role::User))
        .connect()
        .await
        .expect("connect");
    round_trip(&backend, user, &user_client).await;

    // No certificate, or one from another CA: the call fails, and nothing
    // is answered.
    let stranger = strangers.client("intruder");
    for (what, tls) in [
        ("no client certificate", trust.clone()),
        (
            "a certificate from another CA",
            trust.clone().identity(stranger.cert, stranger.key),
        ),
    ] {
        let c = client(server.addr, tls, Role::User).connect_lazy().unwrap();
        let r = c.read_receipts().await;
        assert!(r.is_err(), "{what} was let in: {r:?}");
    }
}

/// Whether a fresh connection trusting only `ca` gets an answer now.
async fn serves(addr: SocketAddr, ca: &Ca) -> bool {
    let c = client(addr, ClientTls::new().ca_certificate(ca.pem()), Role::User)
        .connect()
        .await;
    match c {
        Ok(c) => c.read_receipts().await.is_ok(),
        Err(_) => false,
    }
}

/// Waits until a fresh connection trusting only `ca` succeeds.
async fn served_by(addr: SocketAddr, ca: &Ca) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !serves(addr, ca).await {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// The size every certificate and key file is padded to (PEM ignores the
/// blank lines), so a rewrite keeps the length.
const PADDED: usize = 4096;

/// Writes `contents` into `path` so that the change poll cannot see it:
/// the same inode, length and modification time.
fn rewrite_unseen(path: &Path, contents: &str) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = contents.as_bytes().to_vec();
    assert!(bytes.len() < PADDED);
    bytes.resize(PADDED, b'\n');
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, &bytes).unwrap();
    f.set_modified(mtime).unwrap();
}

#[tokio::test]
async fn certificates_reload_on_sighup_and_on_a_file_change_and_a_bad_file_keeps_the_old_one() {
    let first = Ca::new("first CA");
    let tls = Tls::new(&first.server());
    let data = tempfile::tempdir().unwrap();
    let (server, metrics) = start_watched(data.path(), tls.args(&[]));
    let open = connect(client(
        server.addr,
        ClientTls::new().ca_certificate(first.pem()),
        Role::User,
    ))
    .await
    .expect("first certificate served");

    // Replace both files with a certificate from another CA, unseen by the
    // change poll: only SIGHUP can make it served.
    let second = Ca::new("second CA");
    let pair = second.server();
    rewrite_unseen(&tls.key, &pair.key);
    rewrite_unseen(&tls.cert, &pair.cert);
    tokio::time::sleep(receipts_server::tls::POLL * 2).await;
    assert!(
        serves(server.addr, &first).await && !serves(server.addr, &second).await,
        "the poll saw the unseen rewrite: this step would not test SIGHUP"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        served_by(server.addr, &second).await,
        "the new certificate was not served after SIGHUP"
    );
    // The connection made before the reload keeps working.
    open.read_receipts()
        .await
        .expect("an open connection survives a reload");

    // A file change alone (an atomic rename, as a Kubernetes secret update
    // does through its symlink) is picked up without a signal.
    let third = Ca::new("third CA");
    let pair = third.server();
    let tmp_cert = tls.file("server.pem.new", &pair.cert);
    let tmp_key = tls.file("server.key.new", &pair.key);
    std::fs::rename(&tmp_key, &tls.key).unwrap();
    std::fs::rename(&tmp_cert, &tls.cert).unwrap();
    assert!(
        served_by(server.addr, &third).await,
        "the changed files were not picked up"
    );

    // A key that does not fit the certificate: the reload fails, is counted,
    // and the certificate in force stays. (The rename above may have been
    // seen half done, a failure of its own: count from here.)
    let errors = "receipts_tls_reloads_total{result=\"error\"}";
    let before = metric(&scrape(metrics).await, errors);
    std::fs::write(&tls.key, first.server().key).unwrap();
    let scraped = wait_for_metric(metrics, errors, before + 1.0).await;
    assert!(metric(&scraped, "receipts_tls_reloads_total{result=\"ok\"}") >= 2.0);
    assert!(
        served_by(server.addr, &third).await,
        "a failed reload must keep the previous certificate"
    );
}

fn receiptd_config(args: &[String]) -> (i32, String) {
    let out = std::process::Command::new(receipts_tests::receiptd_path())
        .args(["--jwt-secret", receipts_tests::SECRET])
        .args(args)
        .arg("config")
        .output()
        .expect("run receiptd config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn receiptd_config_catches_tls_settings_it_cannot_serve() {
    let ca = Ca::new("config CA");
    let tls = Tls::new(&ca.server());
    let s = |p: &Path| p.display().to_string();
    let other_key = ca.server().key;
    let wrong_key = tls.file("other.key", &other_key);
    let not_pem = tls.file("garbage.pem", "not a certificate\n");
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec!["--tls-cert".into(), s(&tls.cert)],
            "--tls-key",
            "is needed with --tls-cert",
        ),
        (
            vec!["--tls-key".into(), s(&tls.key)],
            "--tls-cert",
            "is needed with --tls-key",
        ),
        (
            vec!["--tls-client-ca".into(), s(&tls.cert)],
            "--tls-client-ca",
            "needs --tls-cert",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&tls.cert),
                "--tls-key".into(),
                s(&wrong_key),
            ],
            "--tls-key",
            "does not fit the certificate",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&not_pem),
                "--tls-key".into(),
                s(&tls.key),
            ],
            "--tls-cert",
            "no PEM",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&tls.dir.path().join("missing.pem")),
                "--tls-key".into(),
                s(&tls.key),
            ],
            "--tls-cert",
            "No such file",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&tls.cert),
                "--tls-key".into(),
                s(&tls.key),
                "--tls-client-ca".into(),
                s(&not_pem),
            ],
            "--tls-client-ca",
            "no PEM",
        ),
    ];
    for (args, flag, why) in cases {
        let (code, err) = receiptd_config(&args);
        assert_eq!(code, 64, "{args:?} accepted: {err}");
        assert!(
            err.contains(flag) && err.contains(why),
            "{args:?}: expected {flag} / {why}, got {err}"
        );
    }
    let (code, err) = receiptd_config(&tls.args(&[]));
    assert_eq!(code, 0, "a good pair refused: {err}");
}

/// `receiptd <serve flags> health <probe flags>`: exit code and stderr.
fn receiptd_health(serve: &[String], probe: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(receipts_tests::receiptd_path())
        .args(serve)
        .arg("health")
        .args(probe)
        .output()
        .expect("run receiptd health");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The container's health check and Kubernetes `exec` probe: `receiptd
/// health` with the server's own settings finds it (plain or TLS, trusting
/// exactly the configured certificate), and fails, with the reason, for a
/// server that is not there, a certificate that is not the configured one,
/// and a mutual-TLS server without a client certificate.
#[tokio::test]
async fn receiptd_health_probes_plain_tls_and_mutual_tls_servers() {
    let s = |p: &Path| p.display().to_string();
    let listen = |addr: SocketAddr| vec!["--listen".to_string(), addr.to_string()];

    let plain_data = tempfile::tempdir().unwrap();
    let plain = ChildServer::start(plain_data.path(), free_port()).await;
    assert_eq!(
        receiptd_health(&listen(plain.addr), &[]),
        (0, String::new())
    );
    let (code, err) = receiptd_health(&listen(plain.addr), &["--service", "nope.v1.Nothing"]);
    assert_eq!(code, 1, "an unknown service is not serving: {err}");
    assert!(err.contains("NotFound"), "{err}");
    let nobody = format!("127.0.0.1:{}", free_port());
    let (code, err) = receiptd_health(&[], &["--addr", &nobody]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("connect {nobody}")), "{err}");

    // TLS, and mutual TLS: the probe runs with the server's own flags.
    let ca = Ca::new("probe CA");
    let clients = Ca::new("probe client CA");
    let tls = Tls::new(&ca.server());
    let client_ca = tls.file("clients.pem", &clients.pem());
    let data = tempfile::tempdir().unwrap();
    let server_args = tls.args(&["--tls-client-ca", &s(&client_ca)]);
    let server = start(data.path(), server_args.clone());
    let mut flags = server_args.clone();
    flags.extend(listen(server.addr));
    let probe = clients.client("kubelet");
    let (cert, key) = probe.write(tls.dir.path(), "probe");
    let identity = ["--client-cert", &s(&cert), "--client-key", &s(&key)];
    // (Started without waiting: the probe is the first to reach it.)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match receiptd_health(&flags, &identity) {
            (0, err) => {
                assert_eq!(err, "");
                break;
            }
            (_, err) if std::time::Instant::now() > deadline => {
                panic!("the TLS server never probed healthy: {err}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (code, err) = receiptd_health(&flags, &[]);
    assert_eq!(code, 1, "mTLS without a client certificate: {err}");
    // Trusting a CA instead of the configured certificate: the name must fit.
    let ca_file = tls.file("ca.pem", &ca.pem());
    let mut by_ca = vec!["--ca", ca_file.to_str().unwrap(), "--addr"];
    let localhost = format!("localhost:{}", server.addr.port());
    by_ca.push(&localhost);
    by_ca.extend(identity);
    assert_eq!(receiptd_health(&[], &by_ca), (0, String::new()));
    // Another server's certificate configured: the probe refuses this one.
    let other = Tls::new(&ca.server());
    let mut wrong = other.args(&[]);
    wrong.extend(listen(server.addr));
    let (code, err) = receiptd_health(&wrong, &identity);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not the one in --tls-cert"), "{err}");
    let (code, err) = receiptd_health(&flags, &identity[..2]);
    assert_eq!(code, 64, "{err}");
}

/// A server certificate this client refuses (an unknown issuer, another
/// name) is an error that says so and that no retry can fix: `connect`
/// fails with `Error::Tls`, a call with the default retry policy fails at
/// once with it (no backoff rounds), and a subscription ends with it instead
/// of reconnecting forever. (The server refusing this client's certificate
/// reaches the SDK only as a closed connection, which stays transient: see
/// sdk-rust/README.md.)
#[tokio::test]
async fn a_server_certificate_the_client_refuses_is_an_error_no_retry_can_fix() {
    let ca = Ca::new("server CA");
    let strangers = Ca::new("nobody's CA");
    let tls = Tls::new(&ca.server());
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), tls.args(&[]));
    // Reachable (with the right CA) before the checks below.
    connect(client(
        server.addr,
        ClientTls::new().ca_certificate(ca.pem()),
        Role::Service,
    ))
    .await
    .expect("the right CA connects");

    let cases = [
        (
            "the server's certificate from an unknown CA",
            ClientTls::new().ca_certificate(strangers.pem()),
        ),
        (
            "the server's certificate for another name",
            ClientTls::new()
                .ca_certificate(ca.pem())
                .domain("receipts.example"),
        ),
    ];
    for (what, trust) in cases {
        let builder = Client::builder(https(server.addr))
            .tls(trust)
            .token(token(Uuid::now_v7(), Role::User))
            .connect_timeout(Duration::from_secs(2));
        let e = builder.clone().connect().await.expect_err(what);
        assert!(matches!(e, Error::Tls { .. }), "{what}: connect: {e:?}");
        assert!(!e.is_transient(), "{what}: {e}");
        let lazy = builder.connect_lazy().unwrap();
        let started = tokio::time::Instant::now();
        let e = lazy.read_receipts().await.expect_err(what);
        assert!(matches!(e, Error::Tls { .. }), "{what}: call: {e:?}");
        assert!(!e.is_transient(), "{what}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: the call was retried ({:?})",
            started.elapsed()
        );
        let mut sub = lazy.subscribe(None);
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let mut last = None;
            while let Some(item) = sub.next().await {
                last = Some(item);
            }
            last
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: the subscription kept reconnecting"));
        assert!(
            matches!(ended, Some(Err(Error::Tls { .. }))),
            "{what}: the subscription ended with {ended:?}"
        );
    }
}
