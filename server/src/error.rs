//! Service errors and their one mapping to gRPC statuses.
//!
//! Every failure in the service is a [`ServiceError`]: a kind (the variant,
//! [`ServiceError::kind`]), a client-safe message (its `Display`) and, for
//! failures of a backend or a bug, the cause behind it (its `source()`: the
//! driver's or the engine's error, which may name hosts, keys or protocol
//! details and so is never sent). [`ServiceError::into_status`] is the only
//! place that picks a gRPC code.
//!
//! A failure is logged once, where it leaves: `into_status` logs UNAVAILABLE
//! and INTERNAL with their cause chain ([`ServiceError::report`]) for the
//! request that failed, and background work logs the report in its own line.
//! Code that builds an error does not log it.

use thiserror::Error;

/// The cause behind a failure: kept for the log, never sent to clients.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Anything that can go wrong while serving a request.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// Malformed input; `field` names the request field (e.g. `message_ids[2]`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An id that does not exist.
    #[error("{field}: {what} {id} not found")]
    NotFound {
        /// The field that carried the id.
        field: String,
        /// What kind of thing (message, conversation).
        what: &'static str,
        /// The id.
        id: String,
    },
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Conflicts with what is already stored.
    #[error("{field}: {reason}")]
    AlreadyExists {
        /// The offending field.
        field: String,
        /// What it conflicts with.
        reason: String,
    },
    /// Valid input that does not fit the current state.
    #[error("{field}: {reason}")]
    FailedPrecondition {
        /// The offending field.
        field: String,
        /// Why it does not fit.
        reason: String,
    },
    /// Too much at once (rate, subscriptions, buffers).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The storage backend failed; retrying later may help.
    #[error("storage unavailable: {message}")]
    Unavailable {
        /// A client-safe description, in the service's terms.
        message: String,
        /// What failed underneath, if anything did.
        #[source]
        source: Option<Source>,
    },
    /// A bug or corrupt data; details are logged, not sent.
    #[error("internal error: {detail}")]
    Internal {
        /// What went wrong (logged only).
        detail: String,
        /// What failed underneath, if anything did.
        #[source]
        source: Option<Source>,
    },
}

impl ServiceError {
    /// An INVALID_ARGUMENT naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A NOT_FOUND for `what` `id` carried in `field`.
    pub fn not_found(field: impl Into<String>, what: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            field: field.into(),
            what,
            id: id.to_string(),
        }
    }

    /// An UNAVAILABLE telling the client `message` (in the service's terms).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// An UNAVAILABLE telling the client `message`, caused by `source`.
    pub fn unavailable_because(message: impl Into<String>, source: impl Into<Source>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An INTERNAL error: a bug or corrupt data described by `detail`.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::Internal {
            detail: detail.into(),
            source: None,
        }
    }

    /// An INTERNAL error described by `detail`, caused by `source`.
    pub fn internal_because(detail: impl Into<String>, source: impl Into<Source>) -> Self {
        Self::Internal {
            detail: detail.into(),
            source: Some(source.into()),
        }
    }

    /// The error and every cause behind it, for the log (never for clients).
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    /// A short name of the variant, for metrics and span fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::NotFound { .. } => "not_found",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::AlreadyExists { .. } => "already_exists",
            Self::FailedPrecondition { .. } => "failed_precondition",
            Self::ResourceExhausted(_) => "resource_exhausted",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal { .. } => "internal",
        }
    }

    /// Converts to the gRPC status sent to the client.
    pub fn into_status(self) -> tonic::Status {
        use tonic::Status;
        match &self {
            Self::InvalidArgument { .. } => Status::invalid_argument(self.to_string()),
            Self::NotFound { .. } => Status::not_found(self.to_string()),
            Self::PermissionDenied(_) => Status::permission_denied(self.to_string()),
            Self::Unauthenticated(_) => Status::unauthenticated(self.to_string()),
            Self::AlreadyExists { .. } => Status::already_exists(self.to_string()),
            Self::FailedPrecondition { .. } => Status::failed_precondition(self.to_string()),
            Self::ResourceExhausted(_) => Status::resource_exhausted(self.to_string()),
            Self::Unavailable { .. } => {
                tracing::warn!(error = %self.report(), "request failed: unavailable");
                Status::unavailable(self.to_string())
            }
            Self::Internal { .. } => {
                tracing::error!(error = %self.report(), "request failed: internal error");
                Status::internal("internal error")
            }
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        e.into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client sees the service's words; the log sees the cause too.
    #[test]
    fn the_cause_goes_to_the_log_never_to_the_client() {
        let driver = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connect 10.0.0.7:6379",
        );
        let e = ServiceError::unavailable_because("the hot store (Redis) is unreachable", driver);
        assert_eq!(e.kind(), "unavailable");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            e.report(),
            "storage unavailable: the hot store (Redis) is unreachable: connect 10.0.0.7:6379"
        );
        let status = e.into_status();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            !status.message().contains("10.0.0.7"),
            "{}",
            status.message()
        );

        let e =
            ServiceError::internal_because("corrupt record", "bad varint at byte 3".to_string());
        assert!(e.report().ends_with("bad varint at byte 3"));
        let status = e.into_status();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}
