//! Cross-cutting behaviour as tower layers, composed in [`crate::run`]:
//!
//! - [`ObserveLayer`]: a tracing span per call (joined to the caller's trace
//!   through W3C `traceparent`) and the RPC metrics by method and status.
//! - [`CallerErrorsLayer`]: a request the caller got wrong (bytes that do
//!   not decode, a broken frame, an oversized message) is answered as the
//!   caller's error, on every service, not as INTERNAL.
//! - [`ProtectLayer`]: load shedding past a concurrency limit and the
//!   server's deadline.
//!
//! All sit inside the gRPC-web translation, so browser calls are observed
//! and protected exactly like native gRPC calls.
//!
//! One file per layer (`connection.rs`, `observe.rs`, `caller_errors.rs`,
//! `protect.rs`); this file holds the method table and status helpers they
//! share.

use crate::auth::{AuthOutcome, Authenticator};
use crate::conn::{ConnInfo, ConnState};
use crate::metrics::{MethodLabels, Metrics, RpcLabels};
use http::{HeaderMap, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::Code;
use tonic::body::Body;
use tracing::Instrument;

mod caller_errors;
mod connection;
mod observe;
mod protect;
#[cfg(test)]
mod tests;

pub use caller_errors::*;
pub use connection::*;
pub use observe::*;
pub use protect::*;

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

// ----- which call is this --------------------------------------------------

/// Every service this server exposes, with its methods and whether a method
/// streams its response (a streaming call's duration is its lifetime, so it
/// is kept out of the latency histogram). A unit test checks this table
/// against the proto, so a new method cannot be missed.
const SERVICES: &[(&str, &[(&str, bool)])] = &[
    (
        "receipts.v1.ReceiptService",
        &[
            ("MarkDelivered", false),
            ("MarkReadUpTo", false),
            ("GetReceipts", false),
            ("ListRecipients", false),
            ("SubscribeReceipts", true),
            ("GetUnreadCounts", false),
            ("MarkConversationsRead", false),
            ("GetPrivacySettings", false),
            ("UpdatePrivacySettings", false),
        ],
    ),
    (
        "receipts.v1.ReceiptBackendService",
        &[
            ("CreateConversation", false),
            ("AddMembers", false),
            ("RemoveMembers", false),
            ("RegisterMessages", false),
        ],
    ),
    (
        "grpc.health.v1.Health",
        &[("Check", false), ("Watch", true)],
    ),
    (
        "grpc.reflection.v1.ServerReflection",
        &[("ServerReflectionInfo", true)],
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        &[("ServerReflectionInfo", true)],
    ),
];

/// A call's service and method as static labels (`other` for paths no
/// service serves, which keeps label cardinality bounded), and whether it
/// streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Method {
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
    pub(crate) streaming: bool,
}

impl Method {
    pub(crate) fn of(path: &str) -> Self {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        for (s, methods) in SERVICES {
            if *s != service {
                continue;
            }
            for (m, streaming) in *methods {
                if *m == method {
                    return Self {
                        service: s,
                        method: m,
                        streaming: *streaming,
                    };
                }
            }
        }
        Self {
            service: "other",
            method: "other",
            streaming: false,
        }
    }

    fn receipts(&self) -> bool {
        self.service.starts_with("receipts.")
    }
}

/// The canonical name of a status code, as gRPC's docs spell it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_code(headers: &HeaderMap) -> Option<Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(v))
}
