//! `rtc-relay credentials`: mints TURN REST credentials for one user.
//!
//! The output is the JSON an application server hands a browser, shaped like
//! an `RTCIceServer` (`urls`, `username`, `credential`) plus `ttl`, so it can
//! be passed to `new RTCPeerConnection({iceServers: [..]})` as is:
//!
//! ```text
//! $ rtc-relay credentials --secret s3cret --user alice --ttl 3600 --url turn:turn.example.com:3478
//! {"credential":"...","ttl":3600,"urls":["turn:turn.example.com:3478"],"username":"1700003600:alice"}
//! ```
//!
//! The username is `<expiry unix seconds><separator><user>` and the credential
//! is base64(HMAC-SHA1(secret, username)), the TURN REST scheme every major
//! TURN server and WebRTC stack understands. The relay verifies it with the
//! same secret (`--auth-secret`) and separator (`--rest-separator`).
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::turn::auth::rest_password;

/// Used when no `--url` is given. They only work on the relay's own host,
/// which is what a first local test needs; real deployments pass the public
/// name with `--url` (e.g. `turn:turn.example.com:3478?transport=udp`,
/// `turns:turn.example.com:5349?transport=tcp`).
pub const DEFAULT_URLS: [&str; 2] = ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"];

/// Default `--ttl`: a day, long enough for any call, short enough that a leaked
/// credential stops working soon.
pub const DEFAULT_TTL_SECS: u64 = 86_400;

/// The validated arguments of `rtc-relay credentials`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialsArgs {
    /// Shared secret, the relay's first `--auth-secret`.
    pub secret: String,
    pub user: String,
    /// Seconds from now until the credential expires (at least 1).
    pub ttl: u64,
    /// ICE server URLs to include; [`DEFAULT_URLS`] when none were given.
    pub urls: Vec<String>,
    /// Separator between expiry and user, the relay's `--rest-separator`.
    pub separator: char,
}

/// The REST username for `user` expiring at `expiry_unix`.
pub fn rest_username(expiry_unix: u64, separator: char, user: &str) -> String {
    format!("{expiry_unix}{separator}{user}")
}

/// Credentials for `user` valid for `ttl` seconds from `now_unix`, with the
/// default `:` separator.
pub fn credentials_json(secret: &[u8], user: &str, ttl: u64, urls: &[String], now_unix: u64) -> serde_json::Value {
    credentials_json_with_separator(secret, user, ttl, urls, now_unix, ':')
}

/// [`credentials_json`] for a relay running with a custom `--rest-separator`.
pub fn credentials_json_with_separator(
    secret: &[u8],
    user: &str,
    ttl: u64,
    urls: &[String],
    now_unix: u64,
    separator: char,
) -> serde_json::Value {
    let username = rest_username(now_unix.saturating_add(ttl), separator, user);
    let credential = rest_password(secret, &username);
    json!({
        "username": username,
        "credential": credential,
        "ttl": ttl,
        "urls": urls,
    })
}

/// Prints the credentials for `args` as one line of JSON on stdout.
pub fn run(args: &CredentialsArgs) -> std::io::Result<()> {
    // A clock before 1970 is broken beyond what a credential can fix; 0 still
    // yields well-formed (already expired) output rather than a panic.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let value = credentials_json_with_separator(
        args.secret.as_bytes(),
        &args.user,
        args.ttl,
        &args.urls,
        now,
        args.separator,
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected credentials computed independently:
    // python3 -c "import hmac,hashlib,base64; print(base64.b64encode(
    //   hmac.new(b'north-secret', b'1700003600:alice', hashlib.sha1).digest()).decode())"
    #[test]
    fn json_matches_independent_hmac() {
        let urls = vec!["turn:turn.example.com:3478".to_string()];
        let v = credentials_json(b"north-secret", "alice", 3600, &urls, 1_700_000_000);
        assert_eq!(
            v,
            json!({
                "username": "1700003600:alice",
                "credential": "Ji4axghh2/aljHmsPgH9mtDGVLw=",
                "ttl": 3600,
                "urls": ["turn:turn.example.com:3478"],
            })
        );
    }

    #[test]
    fn custom_separator() {
        let v = credentials_json_with_separator(b"north-secret", "alice", 3600, &[], 1_700_000_000, '/');
        assert_eq!(v["username"], "1700003600/alice");
        assert_eq!(v["credential"], "7mp71HXq8mQPqYCFdBlgl1U43VQ=");
        assert_eq!(v["urls"], json!([]));
    }

    #[test]
    fn username_shape() {
        assert_eq!(rest_username(42, ':', "bob:x"), "42:bob:x");
    }
}
