//! Service errors and their one mapping to gRPC statuses.
//!
//! Every failure in the service is a [`ServiceError`]; [`ServiceError::into_status`]
//! is the only place that picks a gRPC code. Internal causes are logged and
//! kept out of client messages.

use thiserror::Error;

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
        /// A client-safe description.
        message: String,
    },
    /// A bug or corrupt data; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
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
            Self::Internal(_) => "internal",
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
            Self::Unavailable { .. } => Status::unavailable(self.to_string()),
            Self::Internal(detail) => {
                tracing::error!(%detail, "internal error");
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
