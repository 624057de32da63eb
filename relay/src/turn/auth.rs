//! Long-term credential authentication without per-client state.
//!
//! Users are either static (`name:password`) or TURN REST users whose
//! username is `<unix-expiry><sep><user>` and whose password is
//! base64(HMAC-SHA1(secret, username)). Several secrets may verify at once
//! (rotation): each yields a candidate key and the message integrity decides.
//!
//! Nonces are stateless: a timestamp and a MAC over it and the client's IP,
//! keyed by a fleet-wide key, so any node behind an anycast address accepts a
//! nonce another node issued and nothing is stored for unauthenticated clients.
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use thiserror::Error;

/// Everything the authenticator needs, validated by the config layer.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub realm: String,
    /// TURN REST shared secrets: the first signs, all verify.
    pub secrets: Vec<Vec<u8>>,
    /// Static long-term users, name to password.
    pub static_users: HashMap<String, String>,
    /// Key for the nonce MAC; the same on every node of a fleet.
    pub nonce_key: Vec<u8>,
    /// How long a nonce stays fresh before it earns 438.
    pub nonce_lifetime: Duration,
    /// Separator between expiry and user in REST usernames (default ':').
    pub rest_separator: char,
}

/// Why a username cannot be authenticated (all answered with 401).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    #[error("REST username has expired")]
    Expired,
    #[error("username is not of the form <expiry>:<user>")]
    Malformed,
    #[error("unknown user")]
    UnknownUser,
}

/// Result of checking a nonce the client sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Well-formed and ours but too old, or for another client address: 438.
    Stale,
    /// Not a nonce we issued: 401 with a fresh one.
    Invalid,
}

/// Most keys one username may yield (one per secret, plus a static user).
pub const MAX_KEYS: usize = 8;

/// A fixed-capacity nonce string, so issuing one allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct Nonce {
    buf: [u8; 64],
    len: u8,
}

impl Nonce {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into buf.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

/// Candidate long-term passwords for one username.
#[derive(Clone, Debug, Default)]
pub struct Passwords {
    pub items: Vec<String>,
}

pub struct Authenticator {
    cfg: AuthConfig,
}

impl Authenticator {
    pub fn new(cfg: AuthConfig) -> Self {
        Authenticator { cfg }
    }
    pub fn realm(&self) -> &str {
        &self.cfg.realm
    }
    /// Issues a nonce for a client at `now_unix` (seconds).
    pub fn make_nonce(&self, client: IpAddr, now_unix: u64) -> Nonce {
        let _ = (client, now_unix);
        todo!()
    }
    pub fn check_nonce(&self, nonce: &str, client: IpAddr, now_unix: u64) -> NonceCheck {
        let _ = (nonce, client, now_unix);
        todo!()
    }
    /// The passwords that could belong to `username` at `now_unix`: one per
    /// REST secret for a REST username that has not expired, or the static
    /// user's password. The caller derives keys and lets MESSAGE-INTEGRITY
    /// pick the one that matches.
    pub fn passwords(&self, username: &str, now_unix: u64) -> Result<Passwords, AuthError> {
        let _ = (username, now_unix);
        todo!()
    }
}

/// The TURN REST password for `username` under `secret`:
/// base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let _ = (secret, username);
    todo!()
}

/// Constant-time equality for secrets and MACs.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let _ = (a, b);
    todo!()
}
