//! Per published stream packet cache, to answer subscribers' NACKs.
//!
//! A ring of fixed-size slots indexed by extended sequence number, allocated
//! once at construction: inserting copies the packet into its slot and never
//! allocates. A slot is valid only for the exact extended number it holds, so
//! wraparound and jumps in the sequence simply make older slots unreachable.
//! Packets older than `max_age` relative to the newest packet are treated as
//! evicted: a retransmission that late would arrive after the receiver's
//! jitter buffer gave up on it, and it is better to let the receiver ask for
//! a keyframe.

use std::time::{Duration, Instant};

use crate::downtrack::extend_seq;

/// Slot size: an Ethernet MTU, more than any RTP packet WebRTC sends.
pub const DEFAULT_SLOT_SIZE: usize = 1500;

/// See [`crate::downtrack`]: keeps unwrapping clear of zero.
const EXT_BASE: u64 = 1 << 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("packet of {len} bytes does not fit a {slot_size} byte slot")]
    TooLarge { len: usize, slot_size: usize },
    #[error("packet {seq} is older than the cache window")]
    TooOld { seq: u16 },
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// 0 = empty; real extended numbers are at least [`EXT_BASE`].
    ext: u64,
    len: u16,
    at: Option<Instant>,
}

#[derive(Debug)]
pub struct PacketCache {
    data: Box<[u8]>,
    slots: Box<[Slot]>,
    slot_size: usize,
    max_age: Duration,
    /// Highest extended sequence number inserted, and when.
    newest: Option<(u64, Instant)>,
}

impl PacketCache {
    /// `capacity` packets (at least 1) of up to [`DEFAULT_SLOT_SIZE`] bytes.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self::with_slot_size(capacity, DEFAULT_SLOT_SIZE, max_age)
    }

    pub fn with_slot_size(capacity: usize, slot_size: usize, max_age: Duration) -> Self {
        let capacity = capacity.max(1);
        // A slot's length is stored in a u16.
        let slot_size = slot_size.min(usize::from(u16::MAX));
        Self {
            // Zeroed memory: the pages are only touched as slots fill up.
            data: vec![0; capacity * slot_size].into_boxed_slice(),
            slots: vec![Slot::default(); capacity].into_boxed_slice(),
            slot_size,
            max_age,
            newest: None,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    fn extend(&self, seq: u16) -> u64 {
        match self.newest {
            Some((highest, _)) => extend_seq(highest, seq),
            None => EXT_BASE + u64::from(seq),
        }
    }

    fn index(&self, ext: u64) -> usize {
        (ext % self.slots.len() as u64) as usize
    }

    /// Stores a copy of `packet` under `seq`.
    pub fn insert(&mut self, seq: u16, packet: &[u8], now: Instant) -> Result<(), CacheError> {
        if packet.len() > self.slot_size {
            return Err(CacheError::TooLarge {
                len: packet.len(),
                slot_size: self.slot_size,
            });
        }
        let ext = self.extend(seq);
        match self.newest {
            Some((highest, _)) if highest >= ext + self.slots.len() as u64 => return Err(CacheError::TooOld { seq }),
            Some((highest, _)) if highest >= ext => {}
            _ => self.newest = Some((ext, now)),
        }
        let index = self.index(ext);
        let start = index * self.slot_size;
        self.data[start..start + packet.len()].copy_from_slice(packet);
        self.slots[index] = Slot {
            ext,
            len: packet.len() as u16,
            at: Some(now),
        };
        Ok(())
    }

    /// The packet stored under `seq`, if still held and not expired.
    pub fn get(&self, seq: u16) -> Option<&[u8]> {
        let (highest, newest_at) = self.newest?;
        let ext = self.extend(seq);
        if ext > highest || highest - ext >= self.slots.len() as u64 {
            return None;
        }
        let index = self.index(ext);
        let slot = &self.slots[index];
        if slot.ext != ext
            || slot
                .at
                .is_none_or(|at| newest_at.saturating_duration_since(at) > self.max_age)
        {
            return None;
        }
        let start = index * self.slot_size;
        self.data.get(start..start + usize::from(slot.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn insert_and_get() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(8, ms(1000));
        assert_eq!(c.get(1), None);
        c.insert(1, b"one", t0).expect("fits");
        c.insert(2, b"two!", t0).expect("fits");
        assert_eq!(c.get(1), Some(&b"one"[..]));
        assert_eq!(c.get(2), Some(&b"two!"[..]));
        assert_eq!(c.get(3), None);
        // Overwriting (a retransmission) replaces the bytes.
        c.insert(1, b"uno", t0).expect("fits");
        assert_eq!(c.get(1), Some(&b"uno"[..]));
        assert_eq!(c.get(9), None, "same slot as 1, different number");
    }

    #[test]
    fn wraparound() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(8, ms(1000));
        for seq in [65533u16, 65534, 65535, 0, 1] {
            c.insert(seq, &seq.to_be_bytes(), t0).expect("fits");
        }
        for seq in [65533u16, 65534, 65535, 0, 1] {
            assert_eq!(c.get(seq), Some(&seq.to_be_bytes()[..]));
        }
        // Reordered packet from before the wrap.
        c.insert(65532, b"late", t0).expect("fits");
        assert_eq!(c.get(65532), Some(&b"late"[..]));
    }

    #[test]
    fn capacity_evicts_oldest() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(4, ms(1000));
        assert_eq!(c.capacity(), 4);
        for seq in 10u16..16 {
            c.insert(seq, &[seq as u8], t0).expect("fits");
        }
        assert_eq!(c.get(10), None);
        assert_eq!(c.get(11), None);
        for seq in 12u16..16 {
            assert_eq!(c.get(seq), Some(&[seq as u8][..]));
        }
        assert_eq!(c.insert(11, b"x", t0), Err(CacheError::TooOld { seq: 11 }));
        assert_eq!(c.get(15), Some(&[15][..]));
    }

    #[test]
    fn eviction_by_age() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(16, ms(500));
        c.insert(1, b"a", t0).expect("fits");
        c.insert(2, b"b", t0 + ms(300)).expect("fits");
        c.insert(3, b"c", t0 + ms(500)).expect("fits");
        assert_eq!(c.get(1), Some(&b"a"[..]));
        c.insert(4, b"d", t0 + ms(501)).expect("fits");
        assert_eq!(c.get(1), None);
        assert_eq!(c.get(2), Some(&b"b"[..]));
    }

    #[test]
    fn oversized_packet_is_refused() {
        let t0 = Instant::now();
        let mut c = PacketCache::with_slot_size(4, 10, ms(1000));
        assert_eq!(
            c.insert(1, &[0; 11], t0),
            Err(CacheError::TooLarge { len: 11, slot_size: 10 })
        );
        c.insert(1, &[7; 10], t0).expect("fits exactly");
        assert_eq!(c.get(1), Some(&[7; 10][..]));
    }

    #[test]
    fn big_jump_makes_old_slots_unreachable() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(4, ms(1000));
        c.insert(101, b"old", t0).expect("fits");
        c.insert(30_000, b"new", t0).expect("fits");
        assert_eq!(c.get(101), None);
        assert_eq!(c.get(30_000), Some(&b"new"[..]));
    }
}
