//! DESIGN.md §6: every configured token claim is required and checked.
//!
//! One server accepts HS256 tokens (a shared secret) and ES256 tokens (a
//! public key file), with `--jwt-issuer` and `--jwt-audience` set. Every rule
//! is checked with both algorithms: a token that lacks a configured claim,
//! carries a wrong one, is not valid yet (`nbf`) or was issued in the future
//! (`iat`) is UNAUTHENTICATED with a message naming the claim, and the call
//! it came with changes nothing.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::ecdsa::SigningKey;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use receipts_proto::v1 as pb;
use receipts_tests::*;
use serde_json::{Value, json};
use tonic::Code;
use uuid::Uuid;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "receipts";

/// The two ways a token can be signed here.
struct Keys {
    hs256: EncodingKey,
    es256: EncodingKey,
    /// Holds the public key file for the server's lifetime.
    _dir: tempfile::TempDir,
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// A server with both keys, the issuer and the audience configured.
async fn server() -> (TestServer, Keys) {
    // A fixed test key (not a secret): any 32 bytes below the curve order.
    let signing = SigningKey::from_bytes(&[7u8; 32].into()).expect("test key");
    let private = signing.to_pkcs8_pem(LineEnding::LF).expect("private pem");
    let public = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    let dir = tempfile::tempdir().expect("tempdir");
    let public_file = dir.path().join("jwt-es256.pub.pem");
    std::fs::write(&public_file, public).expect("write public key");
    let s = TestServer::start_with(|c| {
        c.dev_mode = false;
        c.jwt_public_key_file = Some(public_file);
        c.jwt_issuer = Some(ISSUER.into());
        c.jwt_audience = Some(AUDIENCE.into());
    })
    .await;
    let keys = Keys {
        hs256: EncodingKey::from_secret(SECRET.as_bytes()),
        es256: EncodingKey::from_ec_pem(private.as_bytes()).expect("es256 key"),
        _dir: dir,
    };
    (s, keys)
}

impl Keys {
    fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let key = match alg {
            Algorithm::HS256 => &self.hs256,
            Algorithm::ES256 => &self.es256,
            other => panic!("no test key for {other:?}"),
        };
        jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
    }
}

/// Claims every configured rule accepts, for `user`.
fn good_claims(user: Uuid) -> Value {
    json!({
        "sub": user.to_string(),
        "role": "user",
        "exp": now() + 3600,
        "iat": now(),
        "iss": ISSUER,
        "aud": AUDIENCE,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("object").remove(key);
    claims
}

/// Whether `user` shares read receipts, asked with a good token.
async fn sharing(s: &TestServer, keys: &Keys, user: Uuid) -> bool {
    let good = keys.sign(Algorithm::HS256, &good_claims(user));
    s.user_with_token(Some(good))
        .await
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await
        .expect("a good token is accepted")
        .into_inner()
        .settings
        .expect("settings")
        .send_read_receipts
}

/// Tries to turn `user`'s read receipts off with `token`: refused as
/// UNAUTHENTICATED naming `claim`, and nothing changed.
async fn refused(s: &TestServer, keys: &Keys, user: Uuid, token: String, claim: &str) {
    let r = s
        .user_with_token(Some(token))
        .await
        .update_privacy_settings(pb::UpdatePrivacySettingsRequest {
            settings: Some(pb::PrivacySettings {
                send_read_receipts: false,
            }),
        })
        .await;
    let status = r.expect_err("the token must be refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains(claim) && status.message().contains("authorization"),
        "message {:?} does not name {claim:?}",
        status.message()
    );
    assert!(sharing(s, keys, user).await, "a refused call changed state");
}

/// Accepted: the same call with `token` succeeds.
async fn accepted(s: &TestServer, token: String) {
    s.user_with_token(Some(token))
        .await
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await
        .expect("the token must be accepted");
}

const ALGS: [Algorithm; 2] = [Algorithm::HS256, Algorithm::ES256];

#[tokio::test]
async fn a_token_with_every_configured_claim_is_accepted_with_either_key() {
    let (s, keys) = server().await;
    let user = Uuid::now_v7();
    for alg in ALGS {
        accepted(&s, keys.sign(alg, &good_claims(user))).await;
        // `aud` may be a list that contains the configured audience.
        let list = with(good_claims(user), "aud", json!(["other", AUDIENCE]));
        accepted(&s, keys.sign(alg, &list)).await;
        // `iat` is optional; `nbf` in the past is fine.
        accepted(&s, keys.sign(alg, &without(good_claims(user), "iat"))).await;
        let past = with(good_claims(user), "nbf", json!(now() - 60));
        accepted(&s, keys.sign(alg, &past)).await;
    }
}

#[tokio::test]
async fn a_token_without_the_configured_issuer_or_audience_is_unauthenticated() {
    let (s, keys) = server().await;
    let user = Uuid::now_v7();
    for alg in ALGS {
        for claim in ["iss", "aud"] {
            let token = keys.sign(alg, &without(good_claims(user), claim));
            refused(&s, &keys, user, token, claim).await;
        }
        let token = keys.sign(alg, &with(good_claims(user), "iss", json!("https://evil")));
        refused(&s, &keys, user, token, "iss").await;
        let token = keys.sign(alg, &with(good_claims(user), "aud", json!("other")));
        refused(&s, &keys, user, token, "aud").await;
        let token = keys.sign(alg, &with(good_claims(user), "aud", json!(["a", "b"])));
        refused(&s, &keys, user, token, "aud").await;
    }
}

#[tokio::test]
async fn a_token_not_valid_yet_is_unauthenticated_naming_nbf() {
    let (s, keys) = server().await;
    let user = Uuid::now_v7();
    for alg in ALGS {
        let token = keys.sign(alg, &with(good_claims(user), "nbf", json!(now() + 600)));
        refused(&s, &keys, user, token, "nbf").await;
        // Within the leeway (5 s by default) a small skew is forgiven.
        let token = keys.sign(alg, &with(good_claims(user), "nbf", json!(now() + 2)));
        accepted(&s, token).await;
    }
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_unauthenticated_naming_iat() {
    let (s, keys) = server().await;
    let user = Uuid::now_v7();
    for alg in ALGS {
        let token = keys.sign(alg, &with(good_claims(user), "iat", json!(now() + 600)));
        refused(&s, &keys, user, token, "iat").await;
        let token = keys.sign(alg, &with(good_claims(user), "iat", json!(now() + 2)));
        accepted(&s, token).await;
    }
}

#[tokio::test]
async fn an_expired_token_or_one_without_exp_is_unauthenticated_naming_exp() {
    let (s, keys) = server().await;
    let user = Uuid::now_v7();
    for alg in ALGS {
        let token = keys.sign(alg, &with(good_claims(user), "exp", json!(now() - 600)));
        refused(&s, &keys, user, token, "exp").await;
        let token = keys.sign(alg, &without(good_claims(user), "exp"));
        refused(&s, &keys, user, token, "exp").await;
    }
}

#[tokio::test]
async fn the_leeway_is_configurable() {
    let (s, keys) = server().await;
    drop(s);
    // With a 0 s leeway, a token whose nbf is 3 s ahead is refused; the
    // default 5 s forgives it (checked above).
    let s = TestServer::start_with(|c| {
        c.jwt_leeway_secs = 0;
    })
    .await;
    let user = Uuid::now_v7();
    let claims =
        json!({"sub": user.to_string(), "role": "user", "exp": now() + 3600, "nbf": now() + 3});
    refused(&s, &keys, user, keys.sign(Algorithm::HS256, &claims), "nbf").await;
}

#[tokio::test]
async fn a_token_signed_with_an_algorithm_the_server_has_no_key_for_is_unauthenticated() {
    let s = TestServer::start().await;
    let (_, keys) = server().await;
    let user = Uuid::now_v7();
    // This server has only the HS256 secret.
    let token = keys.sign(Algorithm::ES256, &good_claims(user));
    let status = s
        .user_with_token(Some(token))
        .await
        .get_privacy_settings(pb::GetPrivacySettingsRequest {})
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("ES256"), "{}", status.message());
}

#[tokio::test]
async fn a_token_without_sub_or_role_is_unauthenticated_naming_it() {
    let (s, keys) = server().await;
    let user = Uuid::now_v7();
    for alg in ALGS {
        let token = keys.sign(alg, &without(good_claims(user), "sub"));
        refused(&s, &keys, user, token, "sub").await;
        let token = keys.sign(alg, &without(good_claims(user), "role"));
        refused(&s, &keys, user, token, "role").await;
        let token = keys.sign(alg, &with(good_claims(user), "role", json!("admin")));
        refused(&s, &keys, user, token, "role").await;
    }
}
