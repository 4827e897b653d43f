//! The transport ceiling: `grpc.health.v1.Health/Check` on the same server,
//! through the same HTTP/2 stack and layers, with the same concurrency as the
//! receipts load. It touches no store, so "receipts RPC cost / no-op RPC
//! cost" is what the receipts logic adds on top of the stack.

use crate::stats::Stats;
use std::sync::Arc;
use std::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

async fn connect(url: &str) -> Option<Channel> {
    Channel::from_shared(url.to_string())
        .ok()?
        .tcp_nodelay(true)
        .connect()
        .await
        .ok()
}

/// Whether the receipts service reports SERVING.
pub async fn serving(url: &str) -> bool {
    let Some(ch) = connect(url).await else {
        return false;
    };
    let req = HealthCheckRequest {
        service: "receipts.v1.ReceiptService".into(),
    };
    HealthClient::new(ch)
        .check(req)
        .await
        .is_ok_and(|r| r.get_ref().status == 1)
}

/// Runs `connections` closed-loop workers, each on its own connection, until
/// the end of the stats window.
pub async fn run(url: &str, connections: usize, stats: Arc<Stats>) -> anyhow::Result<()> {
    let mut workers = Vec::new();
    for _ in 0..connections {
        let ch = connect(url)
            .await
            .ok_or_else(|| anyhow::anyhow!("cannot connect to {url}"))?;
        let stats = stats.clone();
        workers.push(tokio::spawn(async move {
            let mut client = HealthClient::new(ch);
            while Instant::now() < stats.window.1 {
                let issued = Instant::now();
                let out = client
                    .check(HealthCheckRequest::default())
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}", s.code()));
                stats.rpc_done("noop", issued, out);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    Ok(())
}
