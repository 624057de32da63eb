//! Token buckets and counters for the server's limits.
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A token bucket with time as an input. `rate` tokens per second, at most
/// `burst` stored. A rate of 0 means unlimited.
///
/// Refill is exact integer arithmetic: the fraction of a token earned but not
/// yet whole is carried in nano-tokens, so many short intervals add up to
/// exactly what one long interval gives.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Option<Instant>,
    /// Earned fraction of the next token, in billionths (< 1e9).
    frac: u64,
}

impl TokenBucket {
    /// Starts full. A non-zero `rate` with `burst` 0 never admits anything.
    pub fn new(rate: u64, burst: u64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: None,
            frac: 0,
        }
    }
    pub fn unlimited() -> Self {
        Self::new(0, 0)
    }
    /// Takes `n` tokens if available. Times earlier than the last one seen
    /// count as no elapsed time rather than going backwards.
    pub fn try_take(&mut self, now: Instant, n: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        if now <= last {
            return;
        }
        self.last = Some(now);
        if self.tokens >= self.burst {
            // A full bucket does not bank partial tokens either.
            self.frac = 0;
            return;
        }
        // u128: u64 nanos times u64 rate cannot overflow it.
        let earned = now.duration_since(last).as_nanos() * u128::from(self.rate) + u128::from(self.frac);
        let whole = earned / NANOS_PER_SEC;
        let room = u128::from(self.burst - self.tokens);
        if whole >= room {
            self.tokens = self.burst;
            self.frac = 0;
        } else {
            // whole < room <= u64::MAX and the remainder < 1e9: both fit.
            self.tokens += whole as u64;
            self.frac = (earned % NANOS_PER_SEC) as u64;
        }
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
    /// Users with at least one allocation; entries go when they drop to 0.
    users: Mutex<HashMap<String, usize>>,
    count: AtomicUsize,
}

/// Why an allocation was refused by quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("per-user allocation quota reached")]
    User,
    #[error("total allocation quota reached")]
    Total,
}

impl AllocationQuota {
    pub fn new(per_user: usize, total: usize) -> Self {
        AllocationQuota {
            per_user,
            total,
            ..Default::default()
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // The map holds plain counts that every update leaves consistent, so
        // a panic elsewhere while holding the lock does not corrupt it.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves one allocation for `user`. Every success must be paired with
    /// one [`release`](Self::release) of the same user.
    pub fn acquire(&self, user: &str) -> Result<(), QuotaError> {
        let mut users = self.users();
        let current = users.get(user).copied().unwrap_or(0);
        if self.per_user != 0 && current >= self.per_user {
            return Err(QuotaError::User);
        }
        let total = self.total;
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (total == 0 || c < total).then(|| c + 1)
            })
            .map_err(|_| QuotaError::Total)?;
        match users.get_mut(user) {
            Some(n) => *n += 1,
            None => {
                users.insert(user.to_string(), 1);
            }
        }
        Ok(())
    }

    /// Returns one allocation of `user`. Releasing a user with nothing
    /// reserved is ignored, so a double release cannot skew the counts.
    pub fn release(&self, user: &str) {
        let mut users = self.users();
        let Some(n) = users.get_mut(user) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            users.remove(user);
        }
        // The user's entry proves a matching acquire, so this stays >= 0; the
        // saturation only guards against a future bug.
        let _ = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
    }
    pub fn total(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Most slots a [`SourceLimiter`] allocates, whatever it is asked for.
const MAX_SLOTS: usize = 1 << 20;

/// Limits per source IP with bounded memory: a fixed table of buckets indexed
/// by a keyed hash of the address (collisions share a bucket, which only ever
/// makes the limit stricter). Used for 401 answers to unauthenticated requests.
///
/// The key is random per limiter so a sender cannot pick addresses that all
/// land on a victim's slot. IPv6 sources are keyed by their /64, the
/// smallest block a single host usually owns, so one host cannot spread over
/// every slot by cycling through its addresses; IPv4-mapped sources count as
/// the IPv4 address.
pub struct SourceLimiter {
    buckets: Vec<TokenBucket>,
    key: u64,
}

impl SourceLimiter {
    /// `slots` is rounded up to a power of two, between 1 and 2^20.
    pub fn new(slots: usize, rate: u64, burst: u64) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS).next_power_of_two();
        SourceLimiter {
            buckets: vec![TokenBucket::new(rate, burst); slots],
            key: rand::random(),
        }
    }

    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let slot = self.slot(ip);
        match self.buckets.get_mut(slot) {
            Some(bucket) => bucket.try_take(now, 1),
            None => false,
        }
    }

    fn slot(&self, ip: IpAddr) -> usize {
        // SipHash, with the secret fed in ahead of the address.
        let mut h = DefaultHasher::new();
        h.write_u64(self.key);
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                h.write_u8(4);
                h.write(&v4.octets());
            }
            IpAddr::V6(v6) => {
                h.write_u8(6);
                h.write(&v6.octets()[..8]);
            }
        }
        // Slot counts are powers of two, so the mask keeps the index in range.
        (h.finish() as usize) & (self.buckets.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn bucket_starts_full_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5);
        for _ in 0..5 {
            assert!(b.try_take(t0, 1));
        }
        assert!(!b.try_take(t0, 1));
        // 10/s: one token per 100 ms.
        assert!(!b.try_take(t0 + Duration::from_millis(99), 1));
        assert!(b.try_take(t0 + Duration::from_millis(100), 1));
        assert!(!b.try_take(t0 + Duration::from_millis(100), 1));
        // Capped at burst after a long idle period.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.try_take(later, 5));
        assert!(!b.try_take(later, 1));
    }

    #[test]
    fn bucket_has_no_drift_over_many_small_steps() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 1_000_000);
        assert!(b.try_take(t0, 1_000_000));
        // 3/s in 1 ms steps: each step earns 0.003 tokens, never whole alone.
        let mut got = 0u64;
        let mut t = t0;
        for _ in 0..10_000 {
            t += Duration::from_millis(1);
            while b.try_take(t, 1) {
                got += 1;
            }
        }
        assert_eq!(got, 30);
        // Sub-nanosecond-per-token rates also stay exact.
        let mut fast = TokenBucket::new(3_000_000_000, u64::MAX);
        assert!(fast.try_take(t0, u64::MAX));
        assert!(!fast.try_take(t0, 1));
        assert!(fast.try_take(t0 + Duration::from_nanos(1), 3));
        assert!(!fast.try_take(t0 + Duration::from_nanos(1), 1));
    }

    #[test]
    fn bucket_edge_cases() {
        let t0 = Instant::now();
        let mut u = TokenBucket::unlimited();
        assert!(u.try_take(t0, u64::MAX));
        assert!(u.try_take(t0, u64::MAX));

        let mut b = TokenBucket::new(1, 2);
        assert!(!b.try_take(t0, 3), "more than burst is never possible");
        assert!(b.try_take(t0, 0));
        assert!(b.try_take(t0 + Duration::from_secs(1), 2));
        // Time going backwards earns nothing and does not rewind `last`.
        assert!(!b.try_take(t0, 1));
        assert!(!b.try_take(t0 + Duration::from_millis(999), 1));
        assert!(b.try_take(t0 + Duration::from_secs(2), 1));

        let mut zero_burst = TokenBucket::new(5, 0);
        assert!(!zero_burst.try_take(t0 + Duration::from_secs(10), 1));

        let mut huge = TokenBucket::new(u64::MAX, u64::MAX);
        assert!(huge.try_take(t0, u64::MAX));
        assert!(huge.try_take(t0 + Duration::from_secs(u32::MAX.into()), u64::MAX));
    }

    #[test]
    fn full_bucket_does_not_bank_fractions() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1, 1);
        assert!(b.try_take(t0, 0));
        // Full for 10.5 s, then emptied: the half second spent full is lost.
        assert!(b.try_take(t0 + Duration::from_millis(10_500), 1));
        assert!(!b.try_take(t0 + Duration::from_millis(11_400), 1));
        assert!(b.try_take(t0 + Duration::from_millis(11_500), 1));
    }

    #[test]
    fn quota_per_user_and_total() {
        let q = AllocationQuota::new(2, 3);
        assert_eq!(q.acquire("a"), Ok(()));
        assert_eq!(q.acquire("a"), Ok(()));
        assert_eq!(q.acquire("a"), Err(QuotaError::User));
        assert_eq!(q.acquire("b"), Ok(()));
        assert_eq!(q.acquire("b"), Err(QuotaError::Total));
        assert_eq!(q.acquire("c"), Err(QuotaError::Total));
        assert_eq!(q.total(), 3);
        q.release("a");
        assert_eq!(q.total(), 2);
        assert_eq!(q.acquire("c"), Ok(()));
        assert_eq!(q.total(), 3);
        // A failed acquire took nothing.
        assert_eq!(q.users().get("c"), Some(&1));
    }

    #[test]
    fn quota_unlimited() {
        let q = AllocationQuota::new(0, 0);
        for _ in 0..1000 {
            q.acquire("a").unwrap();
        }
        assert_eq!(q.total(), 1000);
        let q = AllocationQuota::new(0, 2);
        q.acquire("a").unwrap();
        q.acquire("a").unwrap();
        assert_eq!(q.acquire("b"), Err(QuotaError::Total));
        let q = AllocationQuota::new(1, 0);
        q.acquire("a").unwrap();
        assert_eq!(q.acquire("a"), Err(QuotaError::User));
        q.acquire("b").unwrap();
    }

    #[test]
    fn release_never_underflows_and_frees_entries() {
        let q = AllocationQuota::new(1, 0);
        q.release("nobody");
        assert_eq!(q.total(), 0);
        q.acquire("a").unwrap();
        q.acquire("b").unwrap();
        q.release("a");
        q.release("a");
        assert_eq!(q.total(), 1);
        assert!(!q.users().contains_key("a"));
        q.release("b");
        assert_eq!(q.total(), 0);
        assert!(q.users().is_empty());
        q.acquire("a").unwrap();
    }

    #[test]
    fn quota_concurrent_total_is_exact() {
        let q = Arc::new(AllocationQuota::new(0, 100));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || (0..50).filter(|_| q.acquire(&format!("u{i}")).is_ok()).count())
            })
            .collect();
        let ok: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(ok, 100);
        assert_eq!(q.total(), 100);
    }

    #[test]
    fn source_limiter_slots_and_limits() {
        let t0 = Instant::now();
        assert_eq!(SourceLimiter::new(0, 1, 1).buckets.len(), 1);
        assert_eq!(SourceLimiter::new(1000, 1, 1).buckets.len(), 1024);
        assert_eq!(SourceLimiter::new(usize::MAX, 1, 1).buckets.len(), MAX_SLOTS);

        let mut l = SourceLimiter::new(4096, 1, 3);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.allow(a, t0));
        }
        assert!(!l.allow(a, t0));
        assert!(l.allow(a, t0 + Duration::from_secs(1)));
        // The same host as an IPv4-mapped address shares the bucket.
        assert!(!l.allow("::ffff:198.51.100.1".parse().unwrap(), t0 + Duration::from_secs(1)));
        // Hosts of one /64 share a bucket.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(l.slot(v6a), l.slot(v6b));
        // Most other sources are unaffected by one exhausted slot.
        let free = (0..100u8)
            .filter(|&i| l.allow(IpAddr::from([203, 0, 113, i]), t0 + Duration::from_secs(1)))
            .count();
        assert!(free >= 95, "{free}");
    }

    #[test]
    fn source_limiter_keys_differ() {
        let l1 = SourceLimiter::new(1 << 16, 1, 1);
        let l2 = SourceLimiter::new(1 << 16, 1, 1);
        let same = (0..64u8).filter(|&i| {
            let ip = IpAddr::from([192, 0, 2, i]);
            l1.slot(ip) == l2.slot(ip)
        });
        assert!(same.count() < 8);
    }

    #[test]
    fn source_limiter_unlimited_rate() {
        let mut l = SourceLimiter::new(16, 0, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..1000).all(|_| l.allow(a, Instant::now())));
    }
}
