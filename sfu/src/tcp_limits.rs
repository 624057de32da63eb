//! Bounds on ICE-TCP connections: how many may be open at once, and how
//! long one may go without a packet for a live peer.
//!
//! A TCP connection holds a descriptor, a reader task and buffers for as
//! long as it is open, and anyone can open one for free. So every shard's
//! acceptor takes a [`ConnPermit`] from one shared [`ConnCap`] before
//! reading a byte and refuses (closes at once, counted) beyond the cap; the
//! permit travels with the connection and is given back when it closes.
//!
//! Each shard closes connections that sent nothing the mux routed to one of
//! its peers for [`TcpLimits::idle_timeout`] (see `TcpConns::expire`, time
//! as an input). A browser sends ICE consent checks every few seconds on a
//! live connection, so such silence means the client is gone without a FIN
//! (network lost, laptop closed), and a connection whose participant was
//! removed has its frames dropped by the mux and expires the same way.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The configurable bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpLimits {
    /// Connections open at once over all shards, handshakes included.
    pub max_connections: usize,
    /// How long a connection may send nothing for a live peer.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            // Far below a default descriptor limit, far above what one
            // node's share of TCP-only clients needs (one per peer
            // connection; most clients use UDP).
            max_connections: 4096,
            // Six missed consent checks (RFC 7675 sends one every ~5 s);
            // str0m's own ICE gives up on a silent peer sooner.
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of the ICE-TCP connections, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Open now (being identified or adopted by a shard).
    pub open: usize,
    /// Refused at accept because `max_connections` were open.
    pub refused: u64,
    /// Closed for being idle.
    pub idle_closed: u64,
}

/// The process-wide count of open connections. Touched once per accept and
/// once per close, never per packet.
#[derive(Debug)]
pub struct ConnCap {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
    idle_closed: AtomicU64,
}

impl ConnCap {
    pub fn new(max: usize) -> Arc<ConnCap> {
        Arc::new(ConnCap {
            max,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
        })
    }

    /// A permit for one more connection, or `None` (counted as refused)
    /// when `max` are open.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnPermit> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .is_ok();
        if !admitted {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnPermit { cap: self.clone() })
    }

    pub(crate) fn count_idle_close(&self) {
        self.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> TcpStats {
        TcpStats {
            open: self.open.load(Ordering::Acquire),
            refused: self.refused.load(Ordering::Relaxed),
            idle_closed: self.idle_closed.load(Ordering::Relaxed),
        }
    }
}

/// One open connection's place under the cap; dropping it frees the place.
#[derive(Debug)]
pub struct ConnPermit {
    cap: Arc<ConnCap>,
}

impl ConnPermit {
    pub(crate) fn cap(&self) -> &ConnCap {
        &self.cap
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.cap.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_stop_at_the_cap_and_come_back_on_drop() {
        let cap = ConnCap::new(2);
        let a = cap.try_acquire().expect("first");
        let b = cap.try_acquire().expect("second");
        assert!(cap.try_acquire().is_none(), "third is refused");
        assert_eq!(
            cap.stats(),
            TcpStats {
                open: 2,
                refused: 1,
                idle_closed: 0
            }
        );
        drop(a);
        let c = cap.try_acquire().expect("a place came free");
        drop((b, c));
        assert_eq!(cap.stats().open, 0);
        assert_eq!(cap.stats().refused, 1);
    }
}
