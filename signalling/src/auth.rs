//! Access tokens: JWTs signed with HS256 by an API secret.
//!
//! `iss` names the API key whose secret signed the token (several keys may
//! be configured, so keys rotate), `sub` is the participant identity, and the
//! `grants` claim says what the bearer may do. Verification is purely local:
//! no store, no network.
use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{Permissions, TrackSource};

/// What a token allows. Absent booleans are false, except that a token with
/// `room_join` and no explicit `can_publish`/`can_subscribe`/`can_publish_data`
/// gets all three (the common case of a full participant).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default)]
    pub room_join: bool,
    #[serde(default)]
    pub room_create: bool,
    #[serde(default)]
    pub room_list: bool,
    #[serde(default)]
    pub room_admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub can_publish_sources: Vec<TrackSource>,
    #[serde(default)]
    pub hidden: bool,
}

impl Grants {
    /// The permissions a participant joining with these grants starts with.
    pub fn permissions(&self) -> Permissions {
        // Each capability defaults on its own, so a token that only says
        // `can_publish: false` still subscribes and sends data.
        let default = self.room_join;
        Permissions {
            can_publish: self.can_publish.unwrap_or(default),
            can_subscribe: self.can_subscribe.unwrap_or(default),
            can_publish_data: self.can_publish_data.unwrap_or(default),
            can_publish_sources: self.can_publish_sources.clone(),
            hidden: self.hidden,
        }
    }
}

/// The claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed it.
    pub iss: String,
    /// Participant identity (may be empty for server-to-server admin tokens).
    #[serde(default)]
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub nbf: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    pub grants: Grants,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no access token")]
    Missing,
    #[error("access token is malformed")]
    Malformed,
    #[error("access token signed by an unknown API key")]
    UnknownKey,
    #[error("access token signature does not verify")]
    BadSignature,
    #[error("access token has expired")]
    Expired,
    #[error("access token is not valid yet")]
    NotYetValid,
}

/// The configured API keys (name to secret).
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    keys: HashMap<String, String>,
}

impl ApiKeys {
    pub fn new(keys: HashMap<String, String>) -> Self {
        ApiKeys { keys }
    }
    pub fn secret(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }
    /// Verifies a token at `now_unix`, allowing a little clock skew.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // The secret depends on `iss`, so the payload is read once unverified
        // only to pick the key; nothing from it is trusted until the
        // signature checks out below.
        let issuer = unverified_issuer(token)?;
        let secret = self.secret(&issuer).ok_or(AuthError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::HS256);
        // Time is checked below against the caller's clock, which tests
        // control; jsonwebtoken would read the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            })?;
        let claims = data.claims;
        // Defence in depth: the key was chosen by `iss`, so a token whose
        // verified `iss` differs was tampered with in a way the MAC missed.
        if claims.iss != issuer {
            return Err(AuthError::Malformed);
        }
        if now_unix > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::Expired);
        }
        if claims.nbf > now_unix.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::NotYetValid);
        }
        Ok(claims)
    }

    /// Configured key names, sorted (for logs and the `token` subcommand).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Clock skew tolerated between the minting server and this one.
pub const LEEWAY_SECS: u64 = 10;

/// Current Unix time in seconds, the clock [`ApiKeys::verify`] and [`mint`]
/// are normally given.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let json = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    let issuer: Issuer = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
    Ok(issuer.iss)
}

/// What `mint` needs besides the grants.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub ttl: Duration,
    pub grants: Grants,
}

/// Signs a token with `api_key`/`secret`, valid from `now_unix` for `req.ttl`.
pub fn mint(api_key: &str, secret: &str, req: &TokenRequest, now_unix: u64) -> Result<String, AuthError> {
    let claims = Claims {
        iss: api_key.to_string(),
        sub: req.identity.clone(),
        exp: now_unix.saturating_add(req.ttl.as_secs()),
        nbf: now_unix,
        name: req.name.clone(),
        metadata: req.metadata.clone(),
        grants: req.grants.clone(),
    };
    // HS256 encoding only fails when the claims cannot be serialised, which
    // plain strings, numbers and booleans always can.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|_| AuthError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn keys(pairs: &[(&str, &str)]) -> ApiKeys {
        ApiKeys::new(pairs.iter().map(|(k, s)| (k.to_string(), s.to_string())).collect())
    }

    fn request(ttl: u64) -> TokenRequest {
        TokenRequest {
            identity: "alice".into(),
            name: "Alice".into(),
            metadata: "{\"team\":1}".into(),
            ttl: Duration::from_secs(ttl),
            grants: Grants {
                room: Some("standup".into()),
                room_join: true,
                can_publish_sources: vec![TrackSource::Camera, TrackSource::Microphone],
                ..Grants::default()
            },
        }
    }

    #[test]
    fn round_trip() {
        let token = mint("key1", "secret1", &request(3600), NOW).unwrap();
        let c = keys(&[("key1", "secret1")]).verify(&token, NOW + 5).unwrap();
        assert_eq!(c.iss, "key1");
        assert_eq!(c.sub, "alice");
        assert_eq!(c.name, "Alice");
        assert_eq!(c.metadata, "{\"team\":1}");
        assert_eq!((c.nbf, c.exp), (NOW, NOW + 3600));
        assert_eq!(c.grants, request(3600).grants);
        // Surrounding whitespace (a header value, a pasted token) is not an error.
        assert!(keys(&[("key1", "secret1")]).verify(&format!(" {token}\n"), NOW).is_ok());
    }

    #[test]
    fn grants_serialise_compactly() {
        let token = mint("k", "s", &request(60), NOW).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let grants = json["grants"].as_object().unwrap();
        assert!(!grants.contains_key("can_publish"), "unset options are omitted: {json}");
        assert_eq!(
            json["grants"]["can_publish_sources"],
            serde_json::json!(["camera", "microphone"])
        );
    }

    #[test]
    fn expiry_and_not_before_with_leeway() {
        let ks = keys(&[("k", "s")]);
        let token = mint("k", "s", &request(60), NOW).unwrap();
        assert!(ks.verify(&token, NOW + 60 + LEEWAY_SECS).is_ok());
        assert_eq!(ks.verify(&token, NOW + 61 + LEEWAY_SECS), Err(AuthError::Expired));
        assert!(ks.verify(&token, NOW - LEEWAY_SECS).is_ok());
        assert_eq!(ks.verify(&token, NOW - LEEWAY_SECS - 1), Err(AuthError::NotYetValid));
    }

    #[test]
    fn errors() {
        let ks = keys(&[("k", "s")]);
        let token = mint("k", "s", &request(60), NOW).unwrap();
        assert_eq!(ks.verify("", NOW), Err(AuthError::Missing));
        assert_eq!(ks.verify("   ", NOW), Err(AuthError::Missing));
        for junk in ["abc", "a.b", "a.b.c", "a.b.c.d", "..", "eyJ.eyJ.x"] {
            assert_eq!(ks.verify(junk, NOW), Err(AuthError::Malformed), "{junk}");
        }
        let other = mint("other", "s", &request(60), NOW).unwrap();
        assert_eq!(ks.verify(&other, NOW), Err(AuthError::UnknownKey));
        let forged = mint("k", "not-the-secret", &request(60), NOW).unwrap();
        assert_eq!(ks.verify(&forged, NOW), Err(AuthError::BadSignature));
        // A payload swapped from another token keeps the old signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let elevated = {
            let mut r = request(60);
            r.grants.room_admin = true;
            mint("k", "other", &r, NOW).unwrap()
        };
        parts[1] = elevated.split('.').nth(1).unwrap();
        assert_eq!(ks.verify(&parts.join("."), NOW), Err(AuthError::BadSignature));
        // Valid JSON payload with a known issuer but no grants.
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"k","exp":1}"#);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        assert_eq!(
            ks.verify(&format!("{header}.{payload}.sig"), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let ks = keys(&[("k", "s")]);
        let claims = serde_json::json!({"iss": "k", "exp": NOW + 60, "grants": {}});
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(ks.verify(&format!("{none}.{payload}."), NOW), Err(AuthError::Malformed));
        let hs512 =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(b"s")).unwrap();
        assert_eq!(ks.verify(&hs512, NOW), Err(AuthError::Malformed));
        // Correctly signed, but the claims are not ours.
        let bad = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": "k", "exp": NOW + 60}),
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert_eq!(ks.verify(&bad, NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn key_rotation() {
        let old = mint("2024", "old-secret", &request(60), NOW).unwrap();
        let new = mint("2025", "new-secret", &request(60), NOW).unwrap();
        let both = keys(&[("2024", "old-secret"), ("2025", "new-secret")]);
        assert!(both.verify(&old, NOW).is_ok());
        assert!(both.verify(&new, NOW).is_ok());
        assert_eq!(both.names(), vec!["2024", "2025"]);
        let retired = keys(&[("2025", "new-secret")]);
        assert_eq!(retired.verify(&old, NOW), Err(AuthError::UnknownKey));
        assert!(retired.verify(&new, NOW).is_ok());
    }

    #[test]
    fn grants_defaults() {
        let none = Grants::default().permissions();
        assert!(!none.can_publish && !none.can_subscribe && !none.can_publish_data && !none.hidden);
        let join = Grants {
            room_join: true,
            ..Grants::default()
        };
        let p = join.permissions();
        assert!(p.can_publish && p.can_subscribe && p.can_publish_data);
        assert!(p.can_publish_sources.is_empty() && !p.hidden);
        let viewer = Grants {
            room_join: true,
            can_publish: Some(false),
            hidden: true,
            ..Grants::default()
        };
        let p = viewer.permissions();
        assert!(!p.can_publish && p.can_subscribe && p.can_publish_data && p.hidden);
        let admin_publisher = Grants {
            room_admin: true,
            can_publish: Some(true),
            can_publish_sources: vec![TrackSource::ScreenShare],
            ..Grants::default()
        };
        let p = admin_publisher.permissions();
        assert!(p.can_publish && !p.can_subscribe && !p.can_publish_data);
        assert!(p.may_publish_source(TrackSource::ScreenShare) && !p.may_publish_source(TrackSource::Camera));
        // Absent fields in JSON are the defaults.
        let g: Grants = serde_json::from_str(r#"{"room_join":true}"#).unwrap();
        assert_eq!(g, join);
    }
}
