//! Token buckets and counters for the server's limits.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket with time as an input. `rate` tokens per second, at most
/// `burst` stored. A rate of 0 means unlimited.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: u64, burst: u64) -> Self {
        TokenBucket { rate, burst, tokens: burst, last: None }
    }
    pub fn unlimited() -> Self {
        Self::new(0, 0)
    }
    /// Takes `n` tokens if available.
    pub fn try_take(&mut self, now: Instant, n: u64) -> bool {
        let _ = (now, n);
        todo!()
    }
}

/// Allocation counts per user and in total, shared by all shards. Touched only
/// when allocations are created or freed, never per packet.
#[derive(Debug, Default)]
pub struct AllocationQuota {
    /// 0 = unlimited.
    pub per_user: usize,
    /// 0 = unlimited.
    pub total: usize,
    users: Mutex<HashMap<String, usize>>,
    count: AtomicUsize,
}

/// Why an allocation was refused by quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    User,
    Total,
}

impl AllocationQuota {
    pub fn new(per_user: usize, total: usize) -> Self {
        AllocationQuota { per_user, total, ..Default::default() }
    }
    /// Reserves one allocation for `user`.
    pub fn acquire(&self, user: &str) -> Result<(), QuotaError> {
        let _ = user;
        todo!()
    }
    pub fn release(&self, user: &str) {
        let _ = user;
        todo!()
    }
    pub fn total(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Limits per source IP with bounded memory: a fixed table of buckets indexed
/// by a keyed hash of the address (collisions share a bucket, which only ever
/// makes the limit stricter). Used for 401 answers to unauthenticated requests.
pub struct SourceLimiter {
    buckets: Vec<TokenBucket>,
    key: u64,
}

impl SourceLimiter {
    pub fn new(slots: usize, rate: u64, burst: u64) -> Self {
        let _ = (slots, rate, burst);
        todo!()
    }
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let _ = (ip, now, &self.buckets, self.key);
        todo!()
    }
}
