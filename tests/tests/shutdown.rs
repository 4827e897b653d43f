//! Graceful shutdown of a real `receiptd` process (embedded store): SIGTERM
//! and SIGINT end open streams with a resumable status, flush, and exit 0
//! within the grace period even with a stuck client; the subscriber resumes
//! on the next process with no loss and no duplicate.
//! (tests/tests/production/nodes.rs runs the same scenario across two nodes.)

use receipts_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_the_subscriber_resumes_on_the_next_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = ChildServer::start_with_args(
        dir.path(),
        free_port(),
        &["--shutdown-grace-ms".into(), "1000".into()],
    )
    .await;
    let data = dir.path().to_path_buf();
    shutdown_then_resume_elsewhere(a, Duration::from_millis(1000), || async move {
        ChildServer::start(&data, free_port()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_shuts_down_as_gracefully_as_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = ChildServer::start(dir.path(), free_port()).await;
    let mut user = a.user(uuid::Uuid::now_v7()).await;
    let (mut sub, _) = Subscription::open(&mut user, None).await;
    let pid = a.pid().expect("running");
    let exit = tokio::task::spawn_blocking(move || {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        a.wait()
    });
    let end = loop {
        match sub.stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    let status = exit.await.expect("wait").expect("exit status");
    assert!(status.success(), "exit 0 on SIGINT, got {status:?}");
}
