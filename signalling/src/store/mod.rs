//! Room and participant records behind one trait.
//!
//! The store holds what every node must agree on (which rooms exist, who is
//! in them, what they publish); live connections stay node-local in the room
//! service. Every operation is a single call that a Redis implementation can
//! make atomic (a hash per room, a hash of participants per room, a Lua
//! script for the capacity check), so handlers never read-modify-write
//! across calls they cannot make atomic.
use async_trait::async_trait;
use thiserror::Error;

use crate::model::{Participant, Room};

pub mod memory;

pub use memory::MemoryStore;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("room {0} not found")]
    RoomNotFound(String),
    #[error("room {0} is full")]
    RoomFull(String),
    /// The backing service failed (network, serialisation); the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Whether [`Store::create_room`] made a new room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub room: Room,
    pub created: bool,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Creates `room` unless a room of that name exists, in which case the
    /// existing one is returned unchanged (`created == false`).
    async fn create_room(&self, room: Room) -> Result<Created, StoreError>;
    /// `num_participants` is filled in from the participant records.
    async fn get_room(&self, name: &str) -> Result<Option<Room>, StoreError>;
    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError>;
    /// Replaces the room's settings and metadata (not its participants).
    async fn update_room(&self, room: Room) -> Result<Room, StoreError>;
    /// Removes the room and all its participant records, returning the room.
    async fn delete_room(&self, name: &str) -> Result<Option<Room>, StoreError>;

    /// Inserts or replaces the participant with `p.identity`. A new identity
    /// is refused with [`StoreError::RoomFull`] when the room is at
    /// `max_participants`; the check and the insert are one atomic step.
    /// Returns the record it replaced.
    async fn put_participant(&self, room: &str, p: Participant) -> Result<Option<Participant>, StoreError>;
    async fn get_participant(&self, room: &str, identity: &str) -> Result<Option<Participant>, StoreError>;
    /// Ordered by join time.
    async fn list_participants(&self, room: &str) -> Result<Vec<Participant>, StoreError>;
    /// Removes the record only if its `sid` is `sid`, so a stale session
    /// cannot remove the identity's newer session.
    async fn remove_participant(
        &self,
        room: &str,
        identity: &str,
        sid: &str,
    ) -> Result<Option<Participant>, StoreError>;
}
