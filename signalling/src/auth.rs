//! Access tokens: JWTs signed with HS256 by an API secret.
//!
//! `iss` names the API key whose secret signed the token (several keys may
//! be configured, so keys rotate), `sub` is the participant identity, and the
//! `grants` claim says what the bearer may do. Verification is purely local:
//! no store, no network.
use std::collections::HashMap;
use std::time::Duration;

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
        let _ = self;
        todo!()
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
        let _ = (token, now_unix);
        todo!()
    }
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
    let _ = (api_key, secret, req, now_unix);
    todo!()
}
