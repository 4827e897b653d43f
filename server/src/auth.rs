//! Who is calling: verified JWT bearer tokens, or — in dev mode on loopback
//! only — a plain `x-receipts-user` header.
//!
//! The interceptor puts an [`Identity`] into the request extensions; handlers
//! take identity from there and never from a request field.

use crate::config::ServeArgs;
use crate::error::ServiceError;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// Metadata key of the dev-mode user header.
pub const DEV_USER_HEADER: &str = "x-receipts-user";
/// Metadata key of the dev-mode role header (`user` or `service`).
pub const DEV_ROLE_HEADER: &str = "x-receipts-role";

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An end user acting as itself.
    User,
    /// The messaging backend.
    Service,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Role::User),
            "service" => Ok(Role::Service),
            other => Err(format!("unknown role {other:?} (expected user or service)")),
        }
    }
}

/// The authenticated caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The caller's id (`sub`).
    pub id: Uuid,
    /// Its role.
    pub role: Role,
}

/// Token claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user or service id; required. (A missing `sub` or `exp` decodes
    /// as empty here so that the validation, which runs on the raw claims
    /// after this struct was decoded, names the missing claim.)
    #[serde(default)]
    pub sub: String,
    /// `user` or `service`.
    pub role: Role,
    /// Expiry (seconds since the epoch); required.
    #[serde(default)]
    pub exp: u64,
    /// Issued at; when present it may not be in the future.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before; when present the token is refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer; required when the server has `--jwt-issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience; required when the server has `--jwt-audience`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: one string or a list of strings, as RFC 7519 allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "receipts"`.
    One(String),
    /// `"aud": ["receipts", "other"]`.
    Many(Vec<String>),
}

/// Verifies credentials.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<Vec<(DecodingKey, Validation)>>,
    dev_mode: bool,
    leeway_secs: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("dev_mode", &self.dev_mode)
            .finish()
    }
}

/// What a token must carry and satisfy: `exp` and `sub` always, `iss` and
/// `aud` whenever the server is configured with them (a token without a
/// configured claim is refused, not let through), `nbf` whenever present;
/// `iat`, when present, is checked by [`Authenticator::verify`].
fn validation(alg: Algorithm, cfg: &ServeArgs) -> Validation {
    let mut v = Validation::new(alg);
    let mut required = vec!["exp", "sub"];
    v.leeway = cfg.jwt_leeway_secs;
    v.validate_nbf = true;
    if let Some(iss) = &cfg.jwt_issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match &cfg.jwt_audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

impl Authenticator {
    /// Builds the verifier from configuration.
    pub fn from_config(cfg: &ServeArgs) -> Result<Self, crate::config::ConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &cfg.jwt_secret {
            keys.push((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256, cfg),
            ));
        }
        if let Some(path) = &cfg.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|e| crate::config::ConfigError {
                key: "--jwt-public-key-file",
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                keys.push((k, validation(Algorithm::RS256, cfg)));
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                keys.push((k, validation(Algorithm::ES256, cfg)));
            } else {
                return Err(crate::config::ConfigError {
                    key: "--jwt-public-key-file",
                    reason: "not an RSA or EC public key in PEM form".into(),
                });
            }
        }
        Ok(Self {
            keys: Arc::new(keys),
            dev_mode: cfg.dev_mode,
            leeway_secs: cfg.jwt_leeway_secs,
        })
    }

    /// Identifies the caller of a request.
    pub fn identify(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Identity, ServiceError> {
        if let Some(auth) = metadata.get("authorization") {
            let value = auth
                .to_str()
                .map_err(|_| ServiceError::Unauthenticated("authorization: not ASCII".into()))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| {
                    ServiceError::Unauthenticated("authorization: expected `Bearer <token>`".into())
                })?;
            return self.verify(token.trim());
        }
        if let Some(user) = metadata.get(DEV_USER_HEADER) {
            if !self.dev_mode {
                return Err(ServiceError::Unauthenticated(format!(
                    "{DEV_USER_HEADER}: dev mode is off; send `authorization: Bearer <token>`"
                )));
            }
            if !peer.is_some_and(|p| p.ip().is_loopback()) {
                return Err(ServiceError::Unauthenticated(format!(
                    "{DEV_USER_HEADER}: only accepted from loopback peers"
                )));
            }
            let id = user
                .to_str()
                .ok()
                .and_then(|s| Uuid::parse_str(s.trim()).ok())
                .ok_or_else(|| {
                    ServiceError::Unauthenticated(format!("{DEV_USER_HEADER}: not a UUID"))
                })?;
            let role = match metadata.get(DEV_ROLE_HEADER) {
                None => Role::User,
                Some(r) => r
                    .to_str()
                    .map_err(|_| {
                        ServiceError::Unauthenticated(format!("{DEV_ROLE_HEADER}: not ASCII"))
                    })?
                    .parse()
                    .map_err(|e| {
                        ServiceError::Unauthenticated(format!("{DEV_ROLE_HEADER}: {e}"))
                    })?,
            };
            return Ok(Identity { id, role });
        }
        Err(ServiceError::Unauthenticated(
            "missing credentials: send `authorization: Bearer <token>`".into(),
        ))
    }

    fn verify(&self, token: &str) -> Result<Identity, ServiceError> {
        if self.keys.is_empty() {
            return Err(ServiceError::Unauthenticated(
                "authorization: tokens are not configured on this server".into(),
            ));
        }
        // The key is chosen by the token's `alg` (one key per algorithm), so
        // the reason given is that key's, not another key's "wrong algorithm".
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            ServiceError::Unauthenticated("authorization: not a JWT (bad header)".into())
        })?;
        let Some((key, validation)) = self
            .keys
            .iter()
            .find(|(_, v)| v.algorithms.contains(&header.alg))
        else {
            return Err(ServiceError::Unauthenticated(format!(
                "authorization: algorithm {:?} is not accepted by this server",
                header.alg
            )));
        };
        let error = match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) => return self.identity_of(&data.claims),
            Err(e) => e,
        };
        use jsonwebtoken::errors::ErrorKind;
        let reason = match error.kind() {
            ErrorKind::ExpiredSignature => "token expired".to_string(),
            ErrorKind::ImmatureSignature => "token not valid yet (nbf)".to_string(),
            ErrorKind::InvalidSignature => "bad signature".to_string(),
            ErrorKind::InvalidIssuer => "wrong issuer".to_string(),
            ErrorKind::InvalidAudience => "wrong audience".to_string(),
            ErrorKind::MissingRequiredClaim(claim) => {
                format!("the token has no `{claim}` claim, which this server requires")
            }
            ErrorKind::InvalidClaimFormat(claim) => format!("the `{claim}` claim is malformed"),
            ErrorKind::Json(_) => {
                "the claims do not decode (`role` must be \"user\" or \"service\"; `sub`, `exp`, `nbf` and `iat` must have the right types)".to_string()
            }
            _ => "invalid token".to_string(),
        };
        Err(ServiceError::Unauthenticated(format!(
            "authorization: {reason}"
        )))
    }

    /// The caller named by verified claims; the checks the JWT library does
    /// not make (`iat` in the future, `sub` a UUID) are made here.
    fn identity_of(&self, claims: &Claims) -> Result<Identity, ServiceError> {
        if let Some(iat) = claims.iat {
            let now = jsonwebtoken::get_current_timestamp();
            if iat > now.saturating_add(self.leeway_secs) {
                return Err(ServiceError::Unauthenticated(
                    "authorization: token issued in the future (iat)".into(),
                ));
            }
        }
        let id = Uuid::parse_str(&claims.sub).map_err(|_| {
            ServiceError::Unauthenticated("authorization: sub is not a UUID".into())
        })?;
        Ok(Identity {
            id,
            role: claims.role,
        })
    }
}

/// Mints an HS256 token (for `receiptd token` and tests).
pub fn mint_token(
    secret: &str,
    sub: Uuid,
    role: Role,
    ttl: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: sub.to_string(),
        role,
        exp: now + ttl.as_secs(),
        iat: Some(now),
        nbf: None,
        iss: None,
        aud: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// The interceptor's verdict, read by the handlers.
#[derive(Clone, Debug)]
pub struct AuthOutcome(pub Result<Identity, String>);

impl AuthOutcome {
    /// The caller, or UNAUTHENTICATED with the reason.
    pub fn identity(&self) -> Result<Identity, tonic::Status> {
        self.0.clone().map_err(tonic::Status::unauthenticated)
    }
}

/// A tonic interceptor that authenticates every call.
///
/// It records its verdict instead of rejecting the call itself: the handler
/// rejects it after the request message was read. Answering before reading
/// the body makes HTTP/1.1 (gRPC-web) connections close under a client that
/// is still sending, which clients see as a broken pipe instead of
/// UNAUTHENTICATED.
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    /// The verifier.
    pub auth: Authenticator,
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        // The protect layer already identified the caller from the headers.
        if req.extensions().get::<AuthOutcome>().is_some() {
            return Ok(req);
        }
        let outcome = self
            .auth
            .identify(req.metadata(), req.remote_addr())
            .map_err(|e| match e {
                ServiceError::Unauthenticated(m) => m,
                other => other.to_string(),
            });
        req.extensions_mut().insert(AuthOutcome(outcome));
        Ok(req)
    }
}
