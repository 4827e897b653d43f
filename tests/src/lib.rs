//! Test harness: a real `receiptd` on an ephemeral port (in-process, or as a
//! child process for crash tests) and clients over a real TCP socket.

#![allow(missing_docs)]

pub mod load;
pub mod pki;
pub mod recipients;
mod rpc;
mod servers;
mod shutdown;
pub mod tier;

use receipts_proto::v1 as pb;
use receipts_server::auth::{Role, mint_token};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

pub use pb::receipt_backend_service_client::ReceiptBackendServiceClient;
pub use pb::receipt_service_client::ReceiptServiceClient;
pub use recipients::{all_recipients, list_recipients};
pub use rpc::{
    Conversation, Subscription, counts_only, deliver, event_offset, latest_states, read_up_to,
    receipt, registration, sdk_chat, set_sharing, try_read_up_to,
};
pub use servers::{
    ChildServer, TestServer, TestStore, channel, free_port, http1_exchange, prepare_backends,
    production_config, receiptd_path, required_env, sample, scrape, scylla_options, stalled_call,
    test_config, wait_serving,
};
pub use shutdown::shutdown_then_resume_elsewhere;

/// The HS256 secret every test server accepts.
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// Adds a bearer token (or nothing) to every call.
#[derive(Clone, Debug)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        Ok(req)
    }
}

/// A user-facing client.
pub type UserClient = ReceiptServiceClient<InterceptedService<Channel, Bearer>>;
/// A backend client.
pub type BackendClient = ReceiptBackendServiceClient<InterceptedService<Channel, Bearer>>;

/// A token for `id` with `role`, valid for an hour.
pub fn token(id: Uuid, role: Role) -> String {
    mint_token(SECRET, id, role, Duration::from_secs(3600)).expect("mint")
}
