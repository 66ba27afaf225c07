//! Login tokens.
//!
//! The business backend, not Tern, decides who a user is. It mints a token for a user
//! (with the shared secret, via `tern-server token` or its own code in any language) and
//! hands it to the app; the app presents it in `Login`. The format is deliberately
//! simple so any backend can produce it:
//!
//! ```text
//! base64url(claims JSON) "." base64url(HMAC-SHA256(secret, base64url(claims JSON)))
//! claims = {"sub": "<user id>", "exp": <unix seconds>, "dev": "<device id>"?, "plat": "<platform>"?}
//! ```
//!
//! `dev`, when present, binds the token to one device id; `plat` (`android`, `ios`,
//! `desktop`, `web`) to one platform. Verification is constant-time
//! on the signature. Deployments that check tokens against their own SSO implement
//! [`TokenVerifier`] instead of using [`HmacVerifier`].

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tern_protocol::{ErrorCode, pb};

type HmacSha256 = Hmac<Sha256>;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Device id the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Platform the token is bound to (`android`, `ios`, `desktop`, `web`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plat: Option<String>,
}

/// What a login presents, as a verifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct LoginRequest<'a> {
    /// Claimed user id.
    pub user: &'a str,
    /// Device id.
    pub device: &'a str,
    /// Platform.
    pub platform: pb::Platform,
    /// The token.
    pub token: &'a str,
}

/// The lower-case claim name of a platform.
pub fn platform_name(p: pb::Platform) -> &'static str {
    match p {
        pb::Platform::Android => "android",
        pb::Platform::Ios => "ios",
        pb::Platform::Desktop => "desktop",
        pb::Platform::Web => "web",
        pb::Platform::Unspecified => "unspecified",
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Malformed, wrongly signed, or issued for another user or device.
    #[error("bad token: {0}")]
    BadToken(&'static str),
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// The user is banned.
    #[error("user is banned")]
    Banned,
}

impl AuthError {
    /// The login result code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::BadToken(_) => ErrorCode::BadToken,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::Banned => ErrorCode::Banned,
        }
    }
}

/// Checks a login's credentials. Implement this to verify against your own SSO.
#[async_trait]
pub trait TokenVerifier: Send + Sync + 'static {
    /// Ok if the login's token lets its user log in on its device and platform.
    async fn verify(&self, login: LoginRequest<'_>) -> Result<(), AuthError>;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// HMAC-SHA256 of the concatenated `parts` under `secret`: what signs login tokens and
/// webhook requests.
pub(crate) fn sign(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac
}

/// Mints a token for `user`, valid for `ttl_secs`, optionally bound to `device`.
pub fn mint(secret: &[u8], user: &str, device: Option<&str>, ttl_secs: u64) -> String {
    let claims = Claims {
        sub: user.to_owned(),
        exp: unix_now().saturating_add(ttl_secs),
        dev: device.map(str::to_owned),
        plat: None,
    };
    mint_claims(secret, &claims)
}

/// Mints a token carrying exactly `claims`.
pub fn mint_claims(secret: &[u8], claims: &Claims) -> String {
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let sig = B64.encode(sign(secret, &[payload.as_bytes()]).finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// Decodes and checks a token's signature and expiry (not the user).
pub fn decode(secret: &[u8], token: &str, now_secs: u64) -> Result<Claims, AuthError> {
    let (payload, sig) = token
        .split_once('.')
        .ok_or(AuthError::BadToken("not two parts"))?;
    let sig = B64
        .decode(sig)
        .map_err(|_| AuthError::BadToken("signature is not base64url"))?;
    sign(secret, &[payload.as_bytes()])
        .verify_slice(&sig)
        .map_err(|_| AuthError::BadToken("signature mismatch"))?;
    let json = B64
        .decode(payload)
        .map_err(|_| AuthError::BadToken("claims are not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&json).map_err(|_| AuthError::BadToken("claims are not JSON"))?;
    if claims.exp <= now_secs {
        return Err(AuthError::Expired);
    }
    Ok(claims)
}

/// The default verifier: HMAC tokens signed with the configured secret.
pub struct HmacVerifier {
    secret: Vec<u8>,
    banned: HashSet<String>,
}

impl HmacVerifier {
    /// A verifier with `secret`, refusing `banned` users.
    pub fn new(secret: Vec<u8>, banned: impl IntoIterator<Item = String>) -> Self {
        HmacVerifier {
            secret,
            banned: banned.into_iter().collect(),
        }
    }
}

#[async_trait]
impl TokenVerifier for HmacVerifier {
    async fn verify(&self, login: LoginRequest<'_>) -> Result<(), AuthError> {
        let claims = decode(&self.secret, login.token, unix_now())?;
        if claims.sub != login.user {
            return Err(AuthError::BadToken("issued for another user"));
        }
        if claims.dev.as_deref().is_some_and(|d| d != login.device) {
            return Err(AuthError::BadToken("issued for another device"));
        }
        if claims
            .plat
            .as_deref()
            .is_some_and(|p| p != platform_name(login.platform))
        {
            return Err(AuthError::BadToken("issued for another platform"));
        }
        if self.banned.contains(login.user) {
            return Err(AuthError::Banned);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(user: &'a str, device: &'a str, token: &'a str) -> LoginRequest<'a> {
        LoginRequest {
            user,
            device,
            platform: pb::Platform::Android,
            token,
        }
    }

    #[tokio::test]
    async fn tokens_verify_and_fail_for_the_right_reasons() {
        let v = HmacVerifier::new(b"0123456789abcdef".to_vec(), ["mallory".to_owned()]);
        let t = mint(b"0123456789abcdef", "alice", None, 60);
        assert_eq!(v.verify(req("alice", "phone", &t)).await, Ok(()));
        assert_eq!(
            v.verify(req("bob", "phone", &t)).await,
            Err(AuthError::BadToken("issued for another user"))
        );
        let bound = mint(b"0123456789abcdef", "alice", Some("phone"), 60);
        assert!(v.verify(req("alice", "tablet", &bound)).await.is_err());
        let forged = mint(b"another-secret-xx", "alice", None, 60);
        assert_eq!(
            v.verify(req("alice", "phone", &forged)).await,
            Err(AuthError::BadToken("signature mismatch"))
        );
        assert_eq!(
            decode(b"0123456789abcdef", &t, unix_now() + 61),
            Err(AuthError::Expired)
        );
        assert!(v.verify(req("alice", "p", "garbage")).await.is_err());
        let m = mint(b"0123456789abcdef", "mallory", None, 60);
        assert_eq!(
            v.verify(req("mallory", "p", &m)).await,
            Err(AuthError::Banned)
        );
        let ios_only = mint_claims(
            b"0123456789abcdef",
            &Claims {
                sub: "alice".into(),
                exp: unix_now() + 60,
                dev: None,
                plat: Some("ios".into()),
            },
        );
        assert_eq!(
            v.verify(req("alice", "p", &ios_only)).await,
            Err(AuthError::BadToken("issued for another platform"))
        );
        let ios = LoginRequest {
            platform: pb::Platform::Ios,
            ..req("alice", "p", &ios_only)
        };
        assert_eq!(v.verify(ios).await, Ok(()));
    }
}
