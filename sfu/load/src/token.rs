//! Access tokens for `rtc-server` (see signalling's `auth`): HS256 JWTs
//! with `iss` = API key, `sub` = identity and a `grants` claim. Minted here
//! with ring's HMAC rather than by depending on the signalling crate, which
//! would pull the whole server into the load generator.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

/// A token that joins `room` as `identity` with the default full grants
/// (publish, subscribe, data), valid for `ttl_secs` from `now_unix`.
pub fn mint(api_key: &str, api_secret: &str, room: &str, identity: &str, now_unix: u64, ttl_secs: u64) -> String {
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": api_key,
        "sub": identity,
        "nbf": now_unix.saturating_sub(1),
        "exp": now_unix + ttl_secs,
        "grants": {"room": room, "room_join": true},
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, api_secret.as_bytes());
    let tag = hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_server_accepts_the_token_and_reads_its_grants() {
        let keys = signalling::auth::ApiKeys::new(HashMap::from([("k".to_string(), "s".to_string())]));
        let now = 1_700_000_000;
        let t = mint("k", "s", "room1", "alice", now, 60);
        let claims = keys.verify(&t, now).expect("valid token");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.grants.room.as_deref(), Some("room1"));
        let p = claims.grants.permissions();
        assert!(p.can_publish && p.can_subscribe && p.can_publish_data);
        // Another secret's signature, or an expired token, is refused.
        let forged = mint("k", "other", "room1", "alice", now, 60);
        assert!(keys.verify(&forged, now).is_err());
        assert!(keys.verify(&t, now + 3600).is_err());
    }
}
