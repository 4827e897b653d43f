//! Configuration from flags, environment and a TOML file, through the real
//! `receiptd` binary: precedence, errors naming the key, `receiptd config`,
//! the start-up line with secrets redacted, and docs/configuration.md.

use receipts_tests::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `receiptd` with a clean environment plus `env`; (exit code, stdout, stderr).
fn receiptd(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(receiptd_path())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run receiptd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `key = value  # source` lines of `receiptd config` → key → (value, source).
fn effective(stdout: &str) -> BTreeMap<String, (String, String)> {
    stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (kv, source) = l.rsplit_once("  # ")?;
            let (k, v) = kv.split_once(" = ")?;
            Some((k.to_string(), (v.to_string(), source.to_string())))
        })
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

#[test]
fn flags_override_the_environment_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "receiptd.toml",
        "group-window-ms = 300\nmax_batch = 50\nsubscriber-buffer = 77\n\
         cors-origins = [\"https://a.example\", \"https://b.example\"]\ndev-mode = true\n",
    );
    let (code, out, err) = receiptd(
        &["--config", &file, "--subscriber-buffer", "88", "config"],
        &[("RECEIPTS_MAX_BATCH", "60")],
    );
    assert_eq!(code, Some(0), "{err}");
    let e = effective(&out);
    let get = |k: &str| {
        e.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} missing: {out}"))
    };
    assert_eq!(get("group-window-ms"), ("300".into(), "file".into()));
    assert_eq!(get("max-batch"), ("60".into(), "env".into()));
    assert_eq!(get("subscriber-buffer"), ("88".into(), "flag".into()));
    assert_eq!(get("dev-mode"), ("true".into(), "file".into()));
    assert_eq!(
        get("cors-origins"),
        (
            "[\"https://a.example\", \"https://b.example\"]".into(),
            "file".into()
        )
    );
    assert_eq!(get("max-members"), ("10000".into(), "default".into()));
}

#[test]
fn the_file_can_come_from_receipts_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "r.toml", "dev-mode = true\nmax-replay = 123\n");
    let (code, out, err) = receiptd(&["config"], &[("RECEIPTS_CONFIG", &file)]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(effective(&out)["max-replay"], ("123".into(), "file".into()));
}

#[test]
fn receiptd_config_prints_a_file_that_loads_to_the_same_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (code, first, err) = receiptd(
        &[
            "--dev-mode",
            "--group-window-ms",
            "250",
            "--cors-origins",
            "https://x.example,https://y.example",
            "--data-dir",
            "/var/lib/receipts",
            "config",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let file = write(dir.path(), "printed.toml", &first);
    let (code, second, err) = receiptd(&["--config", &file, "config"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let values = |o: &str| -> BTreeMap<String, String> {
        effective(o).into_iter().map(|(k, (v, _))| (k, v)).collect()
    };
    assert_eq!(values(&first), values(&second));
    assert_eq!(values(&second)["group-window-ms"], "250");
}

#[test]
fn a_bad_file_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("no-such-setting = 1\n", "unknown key `no-such-setting`"),
        ("group-window-ms = \"soon\"\n", "--group-window-ms"),
        ("max-batch = { a = 1 }\n", "`max-batch`"),
        ("max-batch = \n", "--config"),
        (
            "group-window-ms = 5000\ndev-mode = true\n",
            "--group-window-ms",
        ),
        ("cache-mb = 1\ndev-mode = true\n", "--cache-mb"),
        (
            "store = \"redis-scylla\"\nredis-urls = [\"redis://r:6380\"]\nredis-tls-ca = \"/ca.pem\"\ndev-mode = true\n",
            "--redis-tls-ca: is only used with rediss://",
        ),
        (
            "store = \"redis-scylla\"\nredis-urls = [\"r:6379\"]\ndev-mode = true\n",
            "must start with redis://",
        ),
        (
            "store = \"redis-scylla\"\nwritebehind-max-outage-secs = 0\ndev-mode = true\n",
            "--writebehind-max-outage-secs",
        ),
    ] {
        let file = write(dir.path(), "bad.toml", text);
        let (code, _, err) = receiptd(&["--config", &file, "config"], &[]);
        assert_eq!(code, Some(64), "{text}: {err}");
        assert!(err.contains(needle), "{text}: expected {needle} in {err}");
    }
    let (code, _, err) = receiptd(&["--config", "/nonexistent/receiptd.toml", "config"], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn an_unknown_flag_exits_64_and_help_exits_0() {
    let (code, _, err) = receiptd(&["--no-such-flag"], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    let (code, out, _) = receiptd(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for flag in ["--config", "--store", "--redis-urls", "--flush-interval-ms"] {
        assert!(out.contains(flag), "--help documents {flag}");
    }
}

#[test]
fn an_invalid_configuration_is_said_once_and_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // No way to authenticate.
    let (code, out, err) = receiptd(&["--listen", "127.0.0.1:0", "--data-dir", data], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line, nothing before it: {err}");
    assert!(lines[0].contains("invalid configuration"), "{err}");
    assert!(lines[0].contains("--jwt-secret"), "{err}");
}

#[test]
fn listening_is_said_only_once_the_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory that cannot be one: the store does not open.
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let (code, _, err) = receiptd(
        &[
            "--dev-mode",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(!err.contains("listening"), "{err}");
    // With a usable one, it is said, with a plain address.
    let data = dir.path().join("data");
    let mut child = Command::new(receiptd_path())
        .args(["--dev-mode", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn receiptd");
    let stderr = child.stderr.take().unwrap();
    let line = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening"))
        .expect("a listening line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("addr=127.0.0.1:"), "{line}");
    assert!(!line.contains("Some("), "{line}");
}

#[test]
fn the_documented_token_command_mints_a_token_the_server_accepts() {
    let secret = "a-very-secret-signing-key";
    let user = uuid::Uuid::now_v7();
    // As the README writes it: the secret after the sub-command.
    let (code, out, err) = receiptd(
        &[
            "token",
            "--jwt-secret",
            secret,
            "--sub",
            &user.to_string(),
            "--role",
            "user",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.jwt_secret = Some(secret.to_string());
    let auth = receipts_server::auth::Authenticator::from_config(&cfg).expect("authenticator");
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        "authorization",
        format!("Bearer {}", out.trim()).parse().expect("ascii"),
    );
    let who = auth.identify(&md, None).expect("the minted token verifies");
    assert_eq!(who.id, user);
    // Without a secret it says which flag is missing.
    let (code, _, err) = receiptd(&["token", "--sub", &user.to_string()], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("--jwt-secret"), "{err}");
}

#[test]
fn the_start_up_line_shows_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a-very-secret-signing-key";
    let mut child = Command::new(receiptd_path())
        .args(["--listen", "127.0.0.1:0", "--jwt-secret", secret])
        .args(["--redis-urls", "redis://app:hunter2@redis.internal:6379"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_clear()
        .env("RECEIPTS_MAX_BATCH", "64")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn receiptd");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx
            .recv_timeout(left)
            .expect("a start-up configuration line");
        if l.contains("effective configuration") {
            break l;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(!line.contains(secret), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {line:?}"
    );
    assert!(line.contains("jwt-secret=<redacted> (flag)"), "{line}");
    assert!(line.contains("max-batch=64 (env)"), "{line}");
    assert!(
        line.contains("redis://app:<redacted>@redis.internal:6379"),
        "{line}"
    );
    assert!(line.contains("group-window-ms=1000"), "{line}");
}

#[test]
fn docs_configuration_lists_every_key_with_its_default() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    let (start, end) = ("<!-- keys:start -->\n", "<!-- keys:end -->");
    let from = doc.find(start).expect("start marker") + start.len();
    let to = doc.find(end).expect("end marker");
    let want = receipts_server::config::reference_table();
    assert!(
        doc[from..to] == want,
        "docs/configuration.md is stale; its table should read:\n{want}"
    );
}
