//! Allocations, their permissions and channels, and the table that finds
//! them by client five-tuple and by relay socket.
//!
//! The table is a slab (a `Vec` with a free list) plus two hash indices, so
//! both directions of the data path are one hash lookup to the allocation and
//! one or two small hash lookups inside it. Permissions and channels expire
//! lazily: the data path compares their deadline with `now`, and the periodic
//! sweep removes them.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::quota::TokenBucket;
use super::server::{FiveTuple, RelayId};
use crate::stun::TransactionId;

/// A long-term credential key, as derived for the allocation's username.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl Key {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Md5(k) => k,
            Key::Sha256(k) => k,
        }
    }
}

/// Index of an allocation in the table's slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocId(pub u32);

/// One relayed transport address of an allocation (an allocation has one per
/// address family, RFC 8656 dual allocations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relayed {
    pub relay: RelayId,
    /// The address advertised in XOR-RELAYED-ADDRESS.
    pub advertised: SocketAddr,
    /// The address the socket is bound to.
    pub bound: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelBinding {
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// Most permissions and channels one allocation may hold: a bound on memory
/// per allocation whatever a client asks for.
pub const MAX_PERMISSIONS: usize = 256;
pub const MAX_CHANNELS: usize = 1024;

#[derive(Debug)]
pub struct Allocation {
    pub tuple: FiveTuple,
    pub username: Box<str>,
    pub key: Key,
    /// The transaction that created it, so a retransmitted Allocate gets the
    /// same success instead of 437.
    pub txid: TransactionId,
    /// `relays[0]` is IPv4, `relays[1]` IPv6.
    pub relays: [Option<Relayed>; 2],
    /// REQUESTED-TRANSPORT was TCP (RFC 6062).
    pub tcp: bool,
    pub created: Instant,
    pub expires: Instant,
    /// Peer IP to permission deadline.
    pub permissions: HashMap<IpAddr, Instant>,
    pub channels: HashMap<u16, ChannelBinding>,
    pub channel_by_peer: HashMap<SocketAddr, u16>,
    pub bytes: TokenBucket,
    pub packets: TokenBucket,
    pub new_peers: TokenBucket,
}

impl Allocation {
    pub fn relay_for(&self, peer: &SocketAddr) -> Option<&Relayed> {
        self.relays[family_index(peer.ip())].as_ref()
    }
    pub fn has_family(&self, ip: IpAddr) -> bool {
        self.relays[family_index(ip)].is_some()
    }
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        matches!(self.permissions.get(&ip), Some(deadline) if *deadline > now)
    }
    /// The channel bound to `peer`, if it has not expired.
    pub fn channel_for(&self, peer: &SocketAddr, now: Instant) -> Option<u16> {
        let number = *self.channel_by_peer.get(peer)?;
        match self.channels.get(&number) {
            Some(b) if b.expires > now => Some(number),
            _ => None,
        }
    }
    /// The peer of a channel, if bound and not expired.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        match self.channels.get(&number) {
            Some(b) if b.expires > now => Some(b.peer),
            _ => None,
        }
    }
    /// Applies the per-allocation bandwidth and packet-rate caps.
    pub fn admit(&mut self, now: Instant, bytes: usize) -> bool {
        self.packets.try_take(now, 1) && self.bytes.try_take(now, bytes as u64)
    }
    /// Drops expired permissions and channels; returns how many of each went.
    pub fn prune(&mut self, now: Instant) -> (usize, usize) {
        let before_p = self.permissions.len();
        self.permissions.retain(|_, deadline| *deadline > now);
        let before_c = self.channels.len();
        let by_peer = &mut self.channel_by_peer;
        self.channels.retain(|_, b| {
            let keep = b.expires > now;
            if !keep {
                by_peer.remove(&b.peer);
            }
            keep
        });
        (before_p - self.permissions.len(), before_c - self.channels.len())
    }
}

/// 0 for IPv4, 1 for IPv6.
pub fn family_index(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 0,
        IpAddr::V6(_) => 1,
    }
}

/// The allocations of one shard.
#[derive(Debug, Default)]
pub struct AllocationTable {
    slots: Vec<Option<Allocation>>,
    free: Vec<u32>,
    by_tuple: HashMap<FiveTuple, AllocId>,
    by_relay: HashMap<RelayId, AllocId>,
}

impl AllocationTable {
    pub fn len(&self) -> usize {
        self.by_tuple.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_tuple.is_empty()
    }
    pub fn insert(&mut self, alloc: Allocation) -> AllocId {
        let tuple = alloc.tuple;
        let relays: Vec<RelayId> = alloc.relays.iter().flatten().map(|r| r.relay).collect();
        let id = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(alloc);
                AllocId(i)
            }
            None => {
                self.slots.push(Some(alloc));
                AllocId((self.slots.len() - 1) as u32)
            }
        };
        self.by_tuple.insert(tuple, id);
        for r in relays {
            self.by_relay.insert(r, id);
        }
        id
    }
    pub fn remove(&mut self, id: AllocId) -> Option<Allocation> {
        let alloc = self.slots.get_mut(id.0 as usize)?.take()?;
        self.free.push(id.0);
        self.by_tuple.remove(&alloc.tuple);
        for r in alloc.relays.iter().flatten() {
            self.by_relay.remove(&r.relay);
        }
        Some(alloc)
    }
    /// Forgets one relay of an allocation (a family removed by Refresh).
    pub fn unindex_relay(&mut self, relay: RelayId) {
        self.by_relay.remove(&relay);
    }
    pub fn by_tuple(&self, tuple: &FiveTuple) -> Option<AllocId> {
        self.by_tuple.get(tuple).copied()
    }
    pub fn by_relay(&self, relay: RelayId) -> Option<AllocId> {
        self.by_relay.get(&relay).copied()
    }
    pub fn get(&self, id: AllocId) -> Option<&Allocation> {
        self.slots.get(id.0 as usize)?.as_ref()
    }
    pub fn get_mut(&mut self, id: AllocId) -> Option<&mut Allocation> {
        self.slots.get_mut(id.0 as usize)?.as_mut()
    }
    /// Ids of every live allocation (for the sweep; not on the packet path).
    pub fn ids(&self) -> Vec<AllocId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| AllocId(i as u32))
            .collect()
    }
}
