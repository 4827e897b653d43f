//! One error type for every SDK call, decoded from gRPC statuses in exactly
//! one place ([`Error::from_status`]).

use tonic::{Code, Status};

/// What went wrong. Every variant that came from the server keeps its
/// [`Status`] (see [`Error::status`]). `Debug` shows the code and message,
/// not the response headers.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was malformed; `field` names the offending request field
    /// (e.g. `message_ids[2]`) when the server said which.
    #[error("invalid argument ({field}): {}", status.message())]
    InvalidArgument {
        /// The request field the server named.
        field: String,
        /// The server's status.
        status: Status,
    },
    /// An id does not exist.
    #[error("not found: {}", .0.message())]
    NotFound(Status),
    /// The caller may not do this (not a member, wrong role).
    #[error("permission denied: {}", .0.message())]
    PermissionDenied(Status),
    /// Missing, expired or invalid credentials.
    #[error("unauthenticated: {}", .0.message())]
    Unauthenticated(Status),
    /// Conflicts with stored data.
    #[error("already exists: {}", .0.message())]
    AlreadyExists(Status),
    /// Valid input that does not fit the current state.
    #[error("failed precondition: {}", .0.message())]
    FailedPrecondition(Status),
    /// Rate or capacity limits; retrying later may succeed.
    #[error("resource exhausted: {}", .0.message())]
    ResourceExhausted(Status),
    /// The service is unavailable (restarting, overloaded, storage down).
    #[error("unavailable: {}", .0.message())]
    Unavailable(Status),
    /// The per-call deadline passed.
    #[error("deadline exceeded: {}", .0.message())]
    DeadlineExceeded(Status),
    /// Any other status.
    #[error("{}: {}", .0.code(), .0.message())]
    Other(Status),
    /// The connection could not be set up.
    #[error("transport: {}", causes(.0))]
    Transport(#[from] tonic::transport::Error),
    /// [`ClientBuilder::connect`](crate::ClientBuilder::connect) could not
    /// reach the server.
    #[error("connect {endpoint}: {reason}")]
    Connect {
        /// The endpoint it tried.
        endpoint: String,
        /// Why, down to the socket error (e.g. `Connection refused`).
        reason: String,
    },
    /// The TLS handshake with `endpoint` failed on a certificate: the
    /// server's is not trusted (an unknown issuer, another name, expired),
    /// or the server refused this client's (mutual TLS). Retrying cannot
    /// help, so it is not transient: calls are not retried and a
    /// subscription ends with it.
    #[error(
        "TLS with {endpoint}: {reason} (a certificate or the trust settings are wrong; \
         retrying cannot help)"
    )]
    Tls {
        /// The endpoint the handshake was with.
        endpoint: String,
        /// What the TLS stack said (e.g. `invalid peer certificate: UnknownIssuer`).
        reason: String,
    },
    /// The token provider failed.
    #[error("token provider: {0}")]
    Token(String),
    /// Client-side misuse (bad endpoint URL, invalid header value).
    #[error("configuration: {0}")]
    Config(String),
    /// The server sent something the SDK does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// Decodes a gRPC status into the typed error.
    ///
    /// A connection that broke mid-call (the server process died, a proxy
    /// reset it) reaches tonic as an HTTP/2 or socket error, which it reports
    /// as `UNKNOWN` ("transport error") or `CANCELLED`; the server never said
    /// either. Those become [`Error::Unavailable`], naming what happened: the
    /// call may or may not have been applied, and repeating it is safe.
    pub fn from_status(status: Status) -> Self {
        Self::from_call(status, "the server")
    }

    /// [`Error::from_status`] for a call to `endpoint`: a status tonic made
    /// from a connection failure names the endpoint and the socket error.
    pub(crate) fn from_call(status: Status, endpoint: &str) -> Self {
        if let Some(source) = std::error::Error::source(&status)
            && certificate_failure(source)
        {
            return Error::Tls {
                endpoint: endpoint.to_string(),
                reason: causes(source),
            };
        }
        Self::decode(connection_lost(status, Some(endpoint)))
    }

    /// [`Error::Connect`], or [`Error::Tls`] when a certificate was the
    /// reason the connection could not be made.
    pub(crate) fn from_connect(e: tonic::transport::Error, endpoint: &str) -> Self {
        let endpoint = endpoint.to_string();
        let reason = causes(&e);
        if certificate_failure(&e) {
            Error::Tls { endpoint, reason }
        } else {
            Error::Connect { endpoint, reason }
        }
    }

    fn decode(status: Status) -> Self {
        match status.code() {
            Code::InvalidArgument => Error::InvalidArgument {
                field: field_of(status.message()),
                status,
            },
            Code::NotFound => Error::NotFound(status),
            Code::PermissionDenied => Error::PermissionDenied(status),
            Code::Unauthenticated => Error::Unauthenticated(status),
            Code::AlreadyExists => Error::AlreadyExists(status),
            Code::FailedPrecondition => Error::FailedPrecondition(status),
            Code::ResourceExhausted => Error::ResourceExhausted(status),
            Code::Unavailable => Error::Unavailable(status),
            Code::DeadlineExceeded => Error::DeadlineExceeded(status),
            _ => Error::Other(status),
        }
    }

    /// The server's status, if the error came from the server.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::InvalidArgument { status, .. } => Some(status),
            Error::NotFound(s)
            | Error::PermissionDenied(s)
            | Error::Unauthenticated(s)
            | Error::AlreadyExists(s)
            | Error::FailedPrecondition(s)
            | Error::ResourceExhausted(s)
            | Error::Unavailable(s)
            | Error::DeadlineExceeded(s)
            | Error::Other(s) => Some(s),
            _ => None,
        }
    }

    /// The gRPC code, if the error came from the server.
    pub fn code(&self) -> Option<Code> {
        self.status().map(Status::code)
    }

    /// Whether repeating the same call later may succeed. Receipt writes are
    /// idempotent, so the SDK retries these itself (see `RetryPolicy`).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_)
                | Error::ResourceExhausted(_)
                | Error::DeadlineExceeded(_)
                | Error::Transport(_)
                | Error::Connect { .. }
        ) || matches!(self, Error::Other(s) if matches!(s.code(), Code::Aborted | Code::Unknown))
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::from_status(s)
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidArgument { field, status } => f
                .debug_struct("InvalidArgument")
                .field("field", field)
                .field("message", &status.message())
                .finish(),
            Error::Transport(e) => f.debug_tuple("Transport").field(&causes(e)).finish(),
            Error::Connect { endpoint, reason } => f
                .debug_struct("Connect")
                .field("endpoint", endpoint)
                .field("reason", reason)
                .finish(),
            Error::Tls { endpoint, reason } => f
                .debug_struct("Tls")
                .field("endpoint", endpoint)
                .field("reason", reason)
                .finish(),
            Error::Token(s) => f.debug_tuple("Token").field(s).finish(),
            Error::Config(s) => f.debug_tuple("Config").field(s).finish(),
            Error::Protocol(s) => f.debug_tuple("Protocol").field(s).finish(),
            other => match other.status() {
                Some(status) => f
                    .debug_struct("Error")
                    .field("code", &status.code())
                    .field("message", &status.message())
                    .finish(),
                None => f.write_str("Error"),
            },
        }
    }
}

/// An error and its sources, `: `-separated, each said once.
pub(crate) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out = format!("{out}: {text}");
        }
        next = s.source();
    }
    out
}

/// Whether `e` (or an error under it) is rustls refusing a certificate, or
/// the peer's TLS alert refusing ours. tokio-rustls wraps rustls' error in
/// an `io::Error`, whose `source()` skips it, hence the `get_ref`.
#[cfg(feature = "tls")]
fn certificate_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::{AlertDescription as A, Error as R};
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        let tls = e.downcast_ref::<R>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<R>())
        });
        matches!(
            tls,
            Some(
                R::InvalidCertificate(_)
                    | R::NoCertificatesPresented
                    | R::AlertReceived(
                        A::BadCertificate
                            | A::UnsupportedCertificate
                            | A::CertificateRevoked
                            | A::CertificateExpired
                            | A::CertificateUnknown
                            | A::UnknownCA
                            | A::CertificateRequired
                            | A::AccessDenied
                    )
            )
        )
    })
}

/// Without TLS support there is no certificate to fail.
#[cfg(not(feature = "tls"))]
fn certificate_failure(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}

/// A status tonic made from a connection failure (it carries the transport
/// error as its source; a status the server sent has none), told as what it
/// is: a connection that broke mid-call (UNKNOWN or CANCELLED to tonic) is
/// UNAVAILABLE, and one that could not be made says where and why.
fn connection_lost(status: Status, endpoint: Option<&str>) -> Status {
    if !matches!(
        status.code(),
        Code::Unknown | Code::Cancelled | Code::Unavailable
    ) {
        return status;
    }
    let Some(source) = std::error::Error::source(&status) else {
        return status;
    };
    let to = endpoint.map(|e| format!(" to {e}")).unwrap_or_default();
    // tonic ends a call that outlived the client's own deadline with
    // CANCELLED: that is a deadline, not a broken connection.
    if std::iter::successors(Some(source), |e| e.source()).any(|e| e.is::<tonic::TimeoutExpired>())
    {
        return Status::deadline_exceeded(format!(
            "no answer{to} within the client's deadline; the call may or may not have been \
             applied, and retrying it is safe"
        ));
    }
    let cause = causes(source);
    if status.code() == Code::Unavailable {
        let at = endpoint
            .map(|e| format!("connect {e}: "))
            .unwrap_or_default();
        return Status::unavailable(format!("{at}{}: {cause}", status.message()));
    }
    Status::unavailable(format!(
        "connection{to} lost during the call ({cause}); it may or may not have been applied, \
         and retrying it is safe"
    ))
}

/// The server names the field before the first `: ` of an INVALID_ARGUMENT
/// message (`message_ids[0]: "x" is not a valid UUID`).
fn field_of(message: &str) -> String {
    match message.split_once(": ") {
        Some((field, _)) if !field.contains(' ') => field.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let e = Error::from_status(Status::invalid_argument(
            "message_ids[3]: \"x\" is not a valid UUID",
        ));
        match e {
            Error::InvalidArgument { field, .. } => assert_eq!(field, "message_ids[3]"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn transient_codes_are_retried_others_are_not() {
        assert!(Error::from_status(Status::unavailable("x")).is_transient());
        assert!(!Error::from_status(Status::permission_denied("x")).is_transient());
        assert!(!Error::from_status(Status::invalid_argument("f: x")).is_transient());
    }
}
