//! Plain counters the core bumps as it works. Each shard owns its own copy
//! (no atomics, no sharing on the packet path); the shell publishes
//! snapshots to the metrics registry now and then.

/// Why a packet or request was dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Drop {
    /// Not STUN, not ChannelData, or failed to parse.
    Malformed = 0,
    /// ChannelData or Send for a five-tuple with no allocation.
    NoAllocation,
    /// ChannelData on a channel that is not bound.
    NoChannel,
    /// Peer datagram or Send to a peer with no permission.
    NoPermission,
    /// Per-allocation bandwidth or packet-rate cap.
    RateLimited,
    /// Unauthenticated request over the per-source 401 limit.
    SourceLimited,
    /// The kernel refused the send (buffer full).
    SendFailed,
    /// Peer address refused by the filter (Send indications).
    PeerDenied,
    /// A response or indication that a server never expects.
    Unexpected,
}

pub const DROP_CAUSES: [&str; 9] = [
    "malformed",
    "no_allocation",
    "no_channel",
    "no_permission",
    "rate_limited",
    "source_limited",
    "send_failed",
    "peer_denied",
    "unexpected",
];

/// Why authentication failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum AuthFailure {
    /// No credentials at all (the normal first round trip).
    Missing = 0,
    BadIntegrity,
    Expired,
    MalformedUsername,
    UnknownUser,
    StaleNonce,
    BadNonce,
    WrongUser,
}

pub const AUTH_FAILURES: [&str; 8] = [
    "missing",
    "bad_integrity",
    "expired",
    "malformed_username",
    "unknown_user",
    "stale_nonce",
    "bad_nonce",
    "wrong_user",
];

/// Upper bounds (seconds) of the allocation lifetime histogram buckets.
pub const LIFETIME_BUCKETS: [f64; 10] = [1.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0];

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub allocations: u64,
    pub permissions: u64,
    pub channels: u64,
    pub tcp_connections: u64,
    pub allocations_created: u64,
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
    pub drops: [u64; DROP_CAUSES.len()],
    pub auth_failures: [u64; AUTH_FAILURES.len()],
    pub requests: u64,
    pub error_responses: u64,
    /// Histogram of ended allocations' lifetimes: counts per bucket (not cumulative) plus +Inf.
    pub lifetime_counts: [u64; LIFETIME_BUCKETS.len() + 1],
    pub lifetime_sum_secs: f64,
}

impl Stats {
    pub fn drop(&mut self, cause: Drop) {
        self.drops[cause as usize] += 1;
    }
    pub fn auth_failure(&mut self, why: AuthFailure) {
        self.auth_failures[why as usize] += 1;
    }
    pub fn allocation_ended(&mut self, lived_secs: f64) {
        let i = LIFETIME_BUCKETS
            .iter()
            .position(|b| lived_secs <= *b)
            .unwrap_or(LIFETIME_BUCKETS.len());
        self.lifetime_counts[i] += 1;
        self.lifetime_sum_secs += lived_secs;
    }
    /// Adds another shard's counters into this one.
    pub fn merge(&mut self, o: &Stats) {
        self.allocations += o.allocations;
        self.permissions += o.permissions;
        self.channels += o.channels;
        self.tcp_connections += o.tcp_connections;
        self.allocations_created += o.allocations_created;
        self.packets_to_peer += o.packets_to_peer;
        self.bytes_to_peer += o.bytes_to_peer;
        self.packets_to_client += o.packets_to_client;
        self.bytes_to_client += o.bytes_to_client;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        for (a, b) in self.auth_failures.iter_mut().zip(o.auth_failures.iter()) {
            *a += b;
        }
        self.requests += o.requests;
        self.error_responses += o.error_responses;
        for (a, b) in self.lifetime_counts.iter_mut().zip(o.lifetime_counts.iter()) {
            *a += b;
        }
        self.lifetime_sum_secs += o.lifetime_sum_secs;
    }
}
