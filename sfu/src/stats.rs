//! What the data plane dropped, for the control plane's metrics.
//!
//! Each shard owns one [`ShardCounters`] and publishes its running totals
//! into it after a turn of its loop in which they changed (relaxed stores:
//! nothing waits on them); [`crate::Sfu::stats`] sums the shards.
use std::sync::atomic::{AtomicU64, Ordering};

/// Totals since start, summed over shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// Media packets not queued for a subscriber because its send queue in
    /// str0m already held [`crate::router::MAX_QUEUED_PACKETS`] (a stuck or
    /// far too slow subscriber); video then waits for a keyframe.
    pub queue_full_drops: u64,
    /// Datagrams dropped because the UDP socket buffer was full.
    pub udp_would_block: u64,
    /// Datagrams the kernel refused for another reason.
    pub udp_send_failed: u64,
    /// Subscribers' downlink estimates restarted because they stayed below
    /// what the allocation wants: video paused for bandwidth, or a layer
    /// held back ([`crate::estimate_recovery`]); a steady rise means links
    /// too narrow for what their subscribers watch.
    pub estimate_resets: u64,
    /// Keyframes asked for because a subscriber's temporal upswitch found
    /// no switching point in time; a steady rise means publishers whose
    /// encoders mark none.
    pub temporal_upswitch_keyframes: u64,
}

impl SfuStats {
    fn add(&mut self, o: SfuStats) {
        self.queue_full_drops += o.queue_full_drops;
        self.udp_would_block += o.udp_would_block;
        self.udp_send_failed += o.udp_send_failed;
        self.estimate_resets += o.estimate_resets;
        self.temporal_upswitch_keyframes += o.temporal_upswitch_keyframes;
    }
}

/// One shard's totals, written by the shard only.
#[derive(Debug, Default)]
pub struct ShardCounters {
    queue_full_drops: AtomicU64,
    udp_would_block: AtomicU64,
    udp_send_failed: AtomicU64,
    estimate_resets: AtomicU64,
    temporal_upswitch_keyframes: AtomicU64,
}

impl ShardCounters {
    pub fn publish(&self, s: SfuStats) {
        self.queue_full_drops.store(s.queue_full_drops, Ordering::Relaxed);
        self.udp_would_block.store(s.udp_would_block, Ordering::Relaxed);
        self.udp_send_failed.store(s.udp_send_failed, Ordering::Relaxed);
        self.estimate_resets.store(s.estimate_resets, Ordering::Relaxed);
        self.temporal_upswitch_keyframes
            .store(s.temporal_upswitch_keyframes, Ordering::Relaxed);
    }

    pub fn read(&self) -> SfuStats {
        SfuStats {
            queue_full_drops: self.queue_full_drops.load(Ordering::Relaxed),
            udp_would_block: self.udp_would_block.load(Ordering::Relaxed),
            udp_send_failed: self.udp_send_failed.load(Ordering::Relaxed),
            estimate_resets: self.estimate_resets.load(Ordering::Relaxed),
            temporal_upswitch_keyframes: self.temporal_upswitch_keyframes.load(Ordering::Relaxed),
        }
    }
}

/// Sums shards' counters.
pub fn sum<'a>(shards: impl IntoIterator<Item = &'a ShardCounters>) -> SfuStats {
    let mut total = SfuStats::default();
    for c in shards {
        total.add(c.read());
    }
    total
}
