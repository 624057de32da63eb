//! Namespace names: `rtcnm-<pid>-<seq>-<node>`.
//!
//! The pid and a per-process counter make names unique across parallel runs
//! and across topologies built by one process (parallel tests), and let
//! `netem down` tell a leftover (its creator is gone) from a live run.

use std::sync::atomic::{AtomicU32, Ordering};

use super::error::TopologyError;

pub const PREFIX: &str = "rtcnm-";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Identifies one topology: `<pid>-<seq>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    pub fn next() -> Self {
        Self(format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ))
    }

    pub fn netns(&self, node: &str) -> String {
        format!("{PREFIX}{}-{node}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Node names end up in namespace names and in scenario files: keep them
/// short and shell- and path-safe.
pub fn validate_node(name: &str) -> Result<(), TopologyError> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TopologyError::InvalidName(name.to_string()))
    }
}

/// The pid that created a rig namespace, if `name` is one.
pub fn creator_pid(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let a = RunId::next();
        let b = RunId::next();
        assert_ne!(a, b);
        let ns = a.netns("client_1");
        assert!(ns.starts_with(PREFIX));
        assert_eq!(creator_pid(&ns), Some(std::process::id() as i32));
        assert_eq!(creator_pid("other-ns"), None);
    }

    #[test]
    fn node_names_are_checked() {
        assert!(validate_node("alice").is_ok());
        assert!(validate_node("c_12").is_ok());
        for bad in ["", "Alice", "a-b", "a b", "../x", "abcdefghijklmnopqrstu"] {
            assert!(validate_node(bad).is_err(), "{bad}");
        }
    }
}
