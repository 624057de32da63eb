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

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::hmac;
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
    /// Ours (the MAC matches this client) but too old, or minted more than
    /// 60 s in the future: 438.
    Stale,
    /// Not a nonce we issued to this client address (bad shape, wrong key,
    /// or another client's IP): 401 with a fresh one.
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
    nonce_key: hmac::Key,
}

/// Longest USERNAME RFC 8489 §14.3 allows (< 513 bytes).
const MAX_USERNAME: usize = 512;

/// RFC 8489 §9.2: the nonce cookie, then the 24-bit security feature set in
/// base64 with only "Password algorithms" (the most significant bit) set, so
/// clients know they may offer PASSWORD-ALGORITHMS.
const NONCE_PREFIX: &str = "obMatJos2gAAA";

/// Issue time (8 bytes) followed by the truncated MAC.
const NONCE_TS_LEN: usize = 8;
/// 128 bits of HMAC-SHA256 is far beyond what an online forger can try.
const NONCE_MAC_LEN: usize = 16;
const NONCE_RAW_LEN: usize = NONCE_TS_LEN + NONCE_MAC_LEN;

/// How far a nonce's issue time may lie in the future: nodes' clocks differ a
/// little, but a nonce from far ahead was minted with a wrong clock and would
/// otherwise stay fresh for too long.
const NONCE_MAX_SKEW_SECS: u64 = 60;

/// Separates the MAC input of nonces from anything else the key might sign.
const NONCE_DOMAIN: &[u8] = b"relay-turn-nonce-v1";

impl Authenticator {
    pub fn new(cfg: AuthConfig) -> Self {
        let nonce_key = hmac::Key::new(hmac::HMAC_SHA256, &cfg.nonce_key);
        Authenticator { cfg, nonce_key }
    }
    pub fn realm(&self) -> &str {
        &self.cfg.realm
    }

    fn nonce_mac(&self, ts: u64, client: IpAddr) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.nonce_key);
        ctx.update(NONCE_DOMAIN);
        ctx.update(&ts.to_be_bytes());
        // A dual-stack socket may report the same client as ::ffff:a.b.c.d on
        // one node and a.b.c.d on another; both must bind to the same nonce.
        match client.to_canonical() {
            IpAddr::V4(v4) => {
                ctx.update(&[4]);
                ctx.update(&v4.octets());
            }
            IpAddr::V6(v6) => {
                ctx.update(&[6]);
                ctx.update(&v6.octets());
            }
        }
        ctx.sign()
    }

    /// Issues a nonce for a client at `now_unix` (seconds).
    ///
    /// Layout: `obMatJos2gAAA` then URL-safe base64 (no padding) of the issue
    /// time (big-endian u64) and 16 bytes of HMAC-SHA256(nonce_key, time,
    /// client IP): 45 ASCII characters in all.
    pub fn make_nonce(&self, client: IpAddr, now_unix: u64) -> Nonce {
        let mut raw = [0u8; NONCE_RAW_LEN];
        raw[..NONCE_TS_LEN].copy_from_slice(&now_unix.to_be_bytes());
        let tag = self.nonce_mac(now_unix, client);
        raw[NONCE_TS_LEN..].copy_from_slice(&tag.as_ref()[..NONCE_MAC_LEN]);

        let mut nonce = Nonce { buf: [0; 64], len: 0 };
        let p = NONCE_PREFIX.len();
        nonce.buf[..p].copy_from_slice(NONCE_PREFIX.as_bytes());
        // 24 bytes always encode to 32 characters, which fit after the prefix.
        let n = URL_SAFE_NO_PAD.encode_slice(raw, &mut nonce.buf[p..]).unwrap_or(0);
        nonce.len = (p + n) as u8;
        nonce
    }

    /// Invalid when the nonce is not one this fleet issued to `client` (bad
    /// shape, MAC mismatch, or another client address: the MAC cannot tell a
    /// forgery from a nonce for someone else, and a client whose address
    /// changed needs a fresh nonce anyway). Stale when it is ours but older
    /// than `nonce_lifetime`, or issued more than 60 s in the future.
    pub fn check_nonce(&self, nonce: &str, client: IpAddr, now_unix: u64) -> NonceCheck {
        let Some(body) = nonce.strip_prefix(NONCE_PREFIX) else {
            return NonceCheck::Invalid;
        };
        // Bounded before decoding so an oversized attribute costs nothing.
        if body.len() != 32 {
            return NonceCheck::Invalid;
        }
        let mut raw = [0u8; NONCE_RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(body, &mut raw) {
            Ok(NONCE_RAW_LEN) => {}
            _ => return NonceCheck::Invalid,
        }
        let mut ts_bytes = [0u8; NONCE_TS_LEN];
        ts_bytes.copy_from_slice(&raw[..NONCE_TS_LEN]);
        let ts = u64::from_be_bytes(ts_bytes);
        let tag = self.nonce_mac(ts, client);
        if !ct_eq(&tag.as_ref()[..NONCE_MAC_LEN], &raw[NONCE_TS_LEN..]) {
            return NonceCheck::Invalid;
        }
        if ts > now_unix.saturating_add(NONCE_MAX_SKEW_SECS) {
            return NonceCheck::Stale;
        }
        if ts.saturating_add(self.cfg.nonce_lifetime.as_secs()) < now_unix {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    /// The passwords that could belong to `username` at `now_unix`: one per
    /// REST secret for a REST username that has not expired, or the static
    /// user's password. The caller derives keys and lets MESSAGE-INTEGRITY
    /// pick the one that matches.
    ///
    /// Rules, in order:
    /// - A username is REST-shaped when the text before the first separator
    ///   (or the whole username if there is none) is a non-empty run of ASCII
    ///   digits fitting a u64; the rest, possibly empty and possibly holding
    ///   more separators, is the user. With secrets configured it yields one
    ///   candidate per secret (first secret first) while `expiry >= now`.
    /// - A static user whose name equals the whole username adds its password
    ///   (after the REST candidates, so both kinds may coexist).
    /// - With no candidate: `Expired` for an expired REST username when
    ///   secrets are configured; `Malformed` when secrets are configured and
    ///   the username is not REST-shaped (or is longer than 512 bytes);
    ///   `UnknownUser` otherwise (no secrets and no such static user).
    ///
    /// At most [`MAX_KEYS`] candidates are returned; secrets beyond that are
    /// ignored, so the config layer should reject more than `MAX_KEYS - 1`.
    pub fn passwords(&self, username: &str, now_unix: u64) -> Result<Passwords, AuthError> {
        let has_secrets = !self.cfg.secrets.is_empty();
        if username.len() > MAX_USERNAME {
            return Err(if has_secrets {
                AuthError::Malformed
            } else {
                AuthError::UnknownUser
            });
        }
        let static_pw = self.cfg.static_users.get(username);
        let mut items = Vec::new();
        let mut expired = false;
        let rest_expiry = parse_rest_expiry(username, self.cfg.rest_separator);
        if let (Some(expiry), true) = (rest_expiry, has_secrets) {
            if expiry >= now_unix {
                let room = MAX_KEYS - usize::from(static_pw.is_some());
                items.extend(self.cfg.secrets.iter().take(room).map(|s| rest_password(s, username)));
            } else {
                expired = true;
            }
        }
        if let Some(pw) = static_pw {
            items.push(pw.clone());
        }
        if !items.is_empty() {
            return Ok(Passwords { items });
        }
        if expired {
            Err(AuthError::Expired)
        } else if has_secrets && rest_expiry.is_none() {
            Err(AuthError::Malformed)
        } else {
            Err(AuthError::UnknownUser)
        }
    }
}

/// The expiry of a REST-shaped username, split at the first separator.
fn parse_rest_expiry(username: &str, sep: char) -> Option<u64> {
    let expiry = username.split_once(sep).map_or(username, |(e, _)| e);
    // u64::from_str alone would accept a leading '+'.
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    expiry.parse().ok()
}

/// The TURN REST password for `username` under `secret`:
/// base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // SHA-1 is what the TURN REST scheme and every client speaking it use.
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    STANDARD.encode(hmac::sign(&key, username.as_bytes()))
}

/// Constant-time equality for secrets and MACs. Lengths are not secret.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const NOW: u64 = 1_700_000_000;

    fn cfg() -> AuthConfig {
        AuthConfig {
            realm: "example.org".into(),
            secrets: vec![b"logen".to_vec(), b"secret2".to_vec()],
            static_users: HashMap::from([("alice".to_string(), "wonderland".to_string())]),
            nonce_key: b"fleet-nonce-key".to_vec(),
            nonce_lifetime: Duration::from_secs(600),
            rest_separator: ':',
        }
    }

    fn client() -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))
    }

    #[test]
    fn rest_password_known_values() {
        // python3: base64.b64encode(hmac.new(b"north", b"1433895918:alice", hashlib.sha1).digest())
        assert_eq!(
            rest_password(b"north", "1433895918:alice"),
            "RqMvcGPYTJMGThVLSi4amT4zFtI="
        );
        assert_eq!(
            rest_password(b"logen", "1700000000:bob"),
            "mQ7u6/Ls00G5oWXjwfadgEnL5qE="
        );
    }

    #[test]
    fn rest_candidates_one_per_secret_for_rotation() {
        let auth = Authenticator::new(cfg());
        let pw = auth.passwords("1700000000:bob", NOW).unwrap();
        assert_eq!(
            pw.items,
            vec!["mQ7u6/Ls00G5oWXjwfadgEnL5qE=", "QHIrPt0X8Tpky9RT/BFhEk3Gw3E="]
        );
        // A client whose credential was minted with the second (old) secret
        // still finds its password among the candidates.
        let minted = rest_password(b"secret2", "1700000000:bob");
        assert!(pw.items.iter().any(|p| ct_eq(p.as_bytes(), minted.as_bytes())));
    }

    #[test]
    fn expiry_boundary() {
        let auth = Authenticator::new(cfg());
        assert!(auth.passwords("1700000000:bob", NOW).is_ok());
        assert!(auth.passwords("1700000000:bob", NOW - 1).is_ok());
        assert_eq!(
            auth.passwords("1700000000:bob", NOW + 1).unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(auth.passwords("0:bob", NOW).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn user_part_may_hold_separator_and_be_empty() {
        let auth = Authenticator::new(cfg());
        let pw = auth.passwords("1700000000:bob:extra", NOW).unwrap();
        assert_eq!(pw.items[0], rest_password(b"logen", "1700000000:bob:extra"));
        // Digits alone: an expiry with an empty user, as coturn accepts.
        let pw = auth.passwords("1700000000", NOW).unwrap();
        assert_eq!(pw.items[0], rest_password(b"logen", "1700000000"));
        assert_eq!(auth.passwords("1700000000:", NOW).unwrap().items.len(), 2);
    }

    #[test]
    fn custom_separator() {
        let mut c = cfg();
        c.rest_separator = '_';
        let auth = Authenticator::new(c);
        assert!(auth.passwords("1700000000_bob", NOW).is_ok());
        assert_eq!(auth.passwords("1700000000:bob", NOW).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn malformed_usernames() {
        let auth = Authenticator::new(cfg());
        for bad in [
            "abc:user",
            ":user",
            "",
            "+1700000000:bob",
            "-1:bob",
            "17000x:bob",
            "１７:bob",
        ] {
            assert_eq!(auth.passwords(bad, NOW).unwrap_err(), AuthError::Malformed, "{bad:?}");
        }
        // Expiry that does not fit a u64.
        assert_eq!(
            auth.passwords("99999999999999999999999:bob", NOW).unwrap_err(),
            AuthError::Malformed
        );
        let long = format!("1700000000:{}", "x".repeat(600));
        assert_eq!(auth.passwords(&long, NOW).unwrap_err(), AuthError::Malformed);
        let long_digits = "9".repeat(10_000);
        assert_eq!(auth.passwords(&long_digits, NOW).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn static_users() {
        let auth = Authenticator::new(cfg());
        assert_eq!(auth.passwords("alice", NOW).unwrap().items, vec!["wonderland"]);

        let mut c = cfg();
        c.secrets.clear();
        let auth = Authenticator::new(c);
        assert_eq!(auth.passwords("alice", NOW).unwrap().items, vec!["wonderland"]);
        assert_eq!(auth.passwords("mallory", NOW).unwrap_err(), AuthError::UnknownUser);
        // Without secrets a REST-shaped name is just an unknown static user.
        assert_eq!(
            auth.passwords("1700000000:bob", NOW).unwrap_err(),
            AuthError::UnknownUser
        );
        assert_eq!(auth.passwords("", NOW).unwrap_err(), AuthError::UnknownUser);
    }

    #[test]
    fn static_user_with_rest_shaped_name_adds_a_candidate() {
        let mut c = cfg();
        c.static_users.insert("1700000000:carol".into(), "pw".into());
        let auth = Authenticator::new(c);
        let pw = auth.passwords("1700000000:carol", NOW).unwrap();
        assert_eq!(pw.items.len(), 3);
        assert_eq!(pw.items[2], "pw");
        // Expired as REST, still a static user.
        assert_eq!(auth.passwords("1700000000:carol", NOW + 10).unwrap().items, vec!["pw"]);
    }

    #[test]
    fn candidates_capped_at_max_keys() {
        let mut c = cfg();
        c.secrets = (0..20u8).map(|i| vec![i]).collect();
        let auth = Authenticator::new(c);
        assert_eq!(auth.passwords("1700000000:bob", NOW).unwrap().items.len(), MAX_KEYS);
    }

    #[test]
    fn nonce_round_trip_and_shape() {
        let auth = Authenticator::new(cfg());
        let n = auth.make_nonce(client(), NOW);
        let s = n.as_str();
        assert!(s.starts_with("obMatJos2gAAA"), "{s}");
        assert!(s.len() < 128 && s.is_ascii());
        assert_eq!(s.len(), 45);
        assert_eq!(auth.check_nonce(s, client(), NOW), NonceCheck::Valid);
        assert_eq!(auth.check_nonce(s, client(), NOW + 600), NonceCheck::Valid);
    }

    #[test]
    fn nonce_accepted_by_another_node_with_same_key() {
        let a = Authenticator::new(cfg());
        let b = Authenticator::new(cfg());
        let n = a.make_nonce(client(), NOW);
        assert_eq!(b.check_nonce(n.as_str(), client(), NOW + 5), NonceCheck::Valid);
    }

    #[test]
    fn nonce_mapped_client_address_is_the_same_client() {
        let auth = Authenticator::new(cfg());
        let n = auth.make_nonce(client(), NOW);
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped());
        assert_eq!(auth.check_nonce(n.as_str(), mapped, NOW), NonceCheck::Valid);
    }

    #[test]
    fn nonce_with_other_key_is_invalid() {
        let a = Authenticator::new(cfg());
        let mut c = cfg();
        c.nonce_key = b"other-fleet".to_vec();
        let b = Authenticator::new(c);
        let n = a.make_nonce(client(), NOW);
        assert_eq!(b.check_nonce(n.as_str(), client(), NOW), NonceCheck::Invalid);
    }

    #[test]
    fn nonce_for_other_client_is_invalid() {
        let auth = Authenticator::new(cfg());
        let n = auth.make_nonce(client(), NOW);
        let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 8));
        assert_eq!(auth.check_nonce(n.as_str(), other, NOW), NonceCheck::Invalid);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(auth.check_nonce(n.as_str(), v6, NOW), NonceCheck::Invalid);
    }

    #[test]
    fn tampered_nonce_is_invalid() {
        let auth = Authenticator::new(cfg());
        let n = auth.make_nonce(client(), NOW);
        let s = n.as_str();
        for i in 0..s.len() {
            let mut b = s.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            assert_eq!(auth.check_nonce(&t, client(), NOW), NonceCheck::Invalid, "byte {i}");
        }
        for bad in [
            "",
            "obMatJos2gAAA",
            "garbage",
            &format!("{s}x"),
            &s[..s.len() - 1],
            "obMatJos2gAAA€€€€€€€€",
        ] {
            assert_eq!(auth.check_nonce(bad, client(), NOW), NonceCheck::Invalid, "{bad:?}");
        }
        // A re-dated nonce keeps the old MAC.
        let later = auth.make_nonce(client(), NOW + 1000);
        let spliced = format!("{}{}", &later.as_str()[..24], &s[24..]);
        assert_eq!(auth.check_nonce(&spliced, client(), NOW + 1000), NonceCheck::Invalid);
    }

    #[test]
    fn stale_nonces() {
        let auth = Authenticator::new(cfg());
        let n = auth.make_nonce(client(), NOW);
        assert_eq!(auth.check_nonce(n.as_str(), client(), NOW + 600), NonceCheck::Valid);
        assert_eq!(auth.check_nonce(n.as_str(), client(), NOW + 601), NonceCheck::Stale);
        // Issued by a node whose clock runs ahead.
        assert_eq!(auth.check_nonce(n.as_str(), client(), NOW - 60), NonceCheck::Valid);
        assert_eq!(auth.check_nonce(n.as_str(), client(), NOW - 61), NonceCheck::Stale);
        // Extreme times never overflow.
        let max = auth.make_nonce(client(), u64::MAX);
        assert_eq!(auth.check_nonce(max.as_str(), client(), u64::MAX), NonceCheck::Valid);
        assert_eq!(auth.check_nonce(max.as_str(), client(), 0), NonceCheck::Stale);
    }

    #[test]
    fn ct_eq_semantics() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
    }
}
