//! Preallocated packet buffers, addressed by slot index.
//!
//! The engine carries slot indices, never bytes, so a packet is read from
//! one TUN into its slot and written to the other TUN from the same slot: no
//! copy and no allocation per packet. A slot has a reference count because
//! a duplicated packet is released (and written) twice.

use crate::engine::Proto;

pub type Slot = u32;

#[derive(Debug, Clone, Copy)]
struct Meta {
    len: u32,
    dst: u32,
    proto: Proto,
    refs: u32,
}

#[derive(Debug)]
pub struct Pool {
    bytes: Vec<u8>,
    slot_size: usize,
    meta: Vec<Meta>,
    free: Vec<Slot>,
}

impl Pool {
    pub fn new(slots: usize, slot_size: usize) -> Self {
        Self {
            bytes: vec![0; slots * slot_size],
            slot_size,
            meta: vec![
                Meta {
                    len: 0,
                    dst: 0,
                    proto: Proto::Other,
                    refs: 0
                };
                slots
            ],
            free: (0..slots as Slot).rev().collect(),
        }
    }

    /// A free slot with one reference, or `None` when every slot holds a
    /// packet in flight (the caller drops the packet and counts it).
    pub fn alloc(&mut self) -> Option<Slot> {
        let s = self.free.pop()?;
        self.meta[s as usize].refs = 1;
        Some(s)
    }

    /// The whole slot, to read a packet into.
    pub fn buf_mut(&mut self, s: Slot) -> &mut [u8] {
        let start = s as usize * self.slot_size;
        &mut self.bytes[start..start + self.slot_size]
    }

    pub fn fill(&mut self, s: Slot, len: usize, dst: usize, proto: Proto) {
        let m = &mut self.meta[s as usize];
        m.len = len.min(self.slot_size) as u32;
        m.dst = dst as u32;
        m.proto = proto;
    }

    pub fn packet(&self, s: Slot) -> &[u8] {
        let start = s as usize * self.slot_size;
        &self.bytes[start..start + self.meta[s as usize].len as usize]
    }

    /// The first `len` bytes of a slot just read into, before `fill`.
    pub fn packet_prefix(&self, s: Slot, len: usize) -> &[u8] {
        let start = s as usize * self.slot_size;
        &self.bytes[start..start + len.min(self.slot_size)]
    }

    pub fn dst(&self, s: Slot) -> usize {
        self.meta[s as usize].dst as usize
    }

    pub fn proto(&self, s: Slot) -> Proto {
        self.meta[s as usize].proto
    }

    /// One more release of this slot is pending (duplication).
    pub fn add_ref(&mut self, s: Slot) {
        self.meta[s as usize].refs += 1;
    }

    /// One release done (written or dropped); frees the slot at zero.
    pub fn release(&mut self, s: Slot) {
        let m = &mut self.meta[s as usize];
        m.refs = m.refs.saturating_sub(1);
        if m.refs == 0 {
            self.free.push(s);
        }
    }

    pub fn in_use(&self) -> usize {
        self.meta.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_after_their_last_release() {
        let mut pool = Pool::new(2, 16);
        let a = pool.alloc().expect("free slot");
        let b = pool.alloc().expect("free slot");
        assert_eq!(pool.alloc(), None);
        pool.buf_mut(a)[..3].copy_from_slice(b"abc");
        pool.fill(a, 3, 1, Proto::Udp);
        assert_eq!(pool.packet(a), b"abc");
        pool.add_ref(a);
        pool.release(a);
        assert_eq!(pool.alloc(), None, "still referenced by the duplicate");
        pool.release(a);
        assert_eq!(pool.alloc(), Some(a));
        pool.release(b);
        assert_eq!(pool.in_use(), 1);
    }
}
