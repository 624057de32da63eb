//! ICE servers handed to clients: STUN URLs plus TURN REST credentials for
//! the embedded relay (or any TURN server sharing the secret).
use super::{unix_s, Caller, Result, RoomError, RoomService};
use crate::ws::protocol::IceServer;

#[derive(Clone, Debug, Default)]
pub struct TurnConfig {
    /// The relay's `--auth-secret`; empty disables TURN credentials.
    pub secret: Vec<u8>,
    pub stun_urls: Vec<String>,
    /// e.g. `turn:host:3478?transport=udp`, `turn:host:3478?transport=tcp`, `turns:host:5349?transport=tcp`.
    pub turn_urls: Vec<String>,
    /// Lifetime of the credentials put in a join answer.
    pub join_ttl_s: u64,
}

/// Longest lifetime a caller may ask for: a day, the relay's own default.
pub const MAX_TTL_S: u64 = 86_400;

impl TurnConfig {
    /// The `iceServers` list for `user`, with credentials valid `ttl_s` from `now_unix`.
    pub fn ice_servers(&self, user: &str, ttl_s: u64, now_unix: u64) -> Vec<IceServer> {
        let mut servers = Vec::new();
        if !self.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if !self.turn_urls.is_empty() && !self.secret.is_empty() {
            // The relay's default `--rest-separator` is ':'; a ':' inside the
            // user would make the username ambiguous to it, so it is replaced.
            let user = user.replace(':', "_");
            let username = relay::credentials::rest_username(now_unix.saturating_add(ttl_s), ':', &user);
            let credential = relay::turn::auth::rest_password(&self.secret, &username);
            servers.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }
}

impl RoomService {
    /// TURN credentials for an admin or for a participant's own token.
    pub fn turn_credentials(&self, caller: &Caller, ttl_s: u64, now_ms: u64) -> Result<Vec<IceServer>> {
        let participant = caller.grants.room_join && !caller.identity.is_empty();
        if !(caller.grants.room_admin || participant) {
            return Err(RoomError::PermissionDenied(
                "room_admin or room_join grant required".into(),
            ));
        }
        if ttl_s == 0 || ttl_s > MAX_TTL_S {
            return Err(RoomError::InvalidArgument(format!(
                "ttl must be between 1 and {}",
                MAX_TTL_S
            )));
        }
        let user = if caller.identity.is_empty() {
            "admin"
        } else {
            caller.identity.as_str()
        };
        Ok(self.inner.turn.ice_servers(user, ttl_s, unix_s(now_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_verify_with_the_relay_scheme() {
        let cfg = TurnConfig {
            secret: b"s3cret".to_vec(),
            stun_urls: vec!["stun:h:3478".into()],
            turn_urls: vec!["turn:h:3478?transport=udp".into()],
            join_ttl_s: 600,
        };
        let servers = cfg.ice_servers("a:b", 60, 1000);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].username.as_deref(), Some("1060:a_b"));
        let expected = relay::turn::auth::rest_password(b"s3cret", "1060:a_b");
        assert_eq!(servers[1].credential.as_deref(), Some(expected.as_str()));
        assert_eq!(TurnConfig::default().ice_servers("x", 1, 1), vec![]);
    }
}
