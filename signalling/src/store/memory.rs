//! The default, single-node store.
use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Created, Store, StoreError};
use crate::model::{Participant, Room};

struct Entry {
    room: Room,
    participants: HashMap<String, Participant>,
}

impl Entry {
    fn snapshot(&self) -> Room {
        let mut room = self.room.clone();
        room.num_participants = self.participants.len() as u32;
        room
    }
}

/// Rooms in a `HashMap` behind a mutex held only for the map operation itself.
#[derive(Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<String, Entry>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while holding the lock cannot leave a map
        // half-updated (every operation is a single insert/remove), so the
        // data is still consistent and serving it beats failing every call.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_room(&self, room: Room) -> Result<Created, StoreError> {
        let mut rooms = self.lock();
        if let Some(existing) = rooms.get(&room.name) {
            return Ok(Created {
                room: existing.snapshot(),
                created: false,
            });
        }
        let entry = Entry {
            room: room.clone(),
            participants: HashMap::new(),
        };
        let snapshot = entry.snapshot();
        rooms.insert(room.name, entry);
        Ok(Created {
            room: snapshot,
            created: true,
        })
    }

    async fn get_room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        Ok(self.lock().get(name).map(Entry::snapshot))
    }

    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError> {
        let mut rooms: Vec<Room> = self.lock().values().map(Entry::snapshot).collect();
        rooms.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.name.cmp(&b.name)));
        Ok(rooms)
    }

    async fn update_room(&self, room: Room) -> Result<Room, StoreError> {
        let mut rooms = self.lock();
        let entry = rooms
            .get_mut(&room.name)
            .ok_or_else(|| StoreError::RoomNotFound(room.name.clone()))?;
        entry.room = room;
        Ok(entry.snapshot())
    }

    async fn delete_room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        Ok(self.lock().remove(name).map(|e| e.snapshot()))
    }

    async fn put_participant(&self, room: &str, p: Participant) -> Result<Option<Participant>, StoreError> {
        let mut rooms = self.lock();
        let entry = rooms
            .get_mut(room)
            .ok_or_else(|| StoreError::RoomNotFound(room.to_string()))?;
        let max = entry.room.max_participants as usize;
        if max > 0 && !entry.participants.contains_key(&p.identity) && entry.participants.len() >= max {
            return Err(StoreError::RoomFull(room.to_string()));
        }
        Ok(entry.participants.insert(p.identity.clone(), p))
    }

    async fn get_participant(&self, room: &str, identity: &str) -> Result<Option<Participant>, StoreError> {
        Ok(self
            .lock()
            .get(room)
            .and_then(|e| e.participants.get(identity).cloned()))
    }

    async fn list_participants(&self, room: &str) -> Result<Vec<Participant>, StoreError> {
        let rooms = self.lock();
        let entry = rooms
            .get(room)
            .ok_or_else(|| StoreError::RoomNotFound(room.to_string()))?;
        let mut list: Vec<Participant> = entry.participants.values().cloned().collect();
        list.sort_by(|a, b| a.joined_at.cmp(&b.joined_at).then_with(|| a.identity.cmp(&b.identity)));
        Ok(list)
    }

    async fn remove_participant(
        &self,
        room: &str,
        identity: &str,
        sid: &str,
    ) -> Result<Option<Participant>, StoreError> {
        let mut rooms = self.lock();
        let Some(entry) = rooms.get_mut(room) else {
            return Ok(None);
        };
        if entry.participants.get(identity).is_some_and(|p| p.sid == sid) {
            return Ok(entry.participants.remove(identity));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ParticipantState, Permissions};

    fn room(name: &str, max: u32) -> Room {
        Room {
            sid: format!("RM_{name}"),
            name: name.into(),
            max_participants: max,
            empty_timeout_s: 0,
            metadata: String::new(),
            created_at: 1,
            num_participants: 0,
        }
    }

    fn participant(identity: &str, sid: &str) -> Participant {
        Participant {
            sid: sid.into(),
            identity: identity.into(),
            name: String::new(),
            metadata: String::new(),
            state: ParticipantState::Joined,
            joined_at: 1,
            permissions: Permissions {
                can_publish: true,
                can_subscribe: true,
                can_publish_data: true,
                can_publish_sources: vec![],
                hidden: false,
            },
            tracks: vec![],
        }
    }

    #[tokio::test]
    async fn create_is_idempotent_and_capacity_is_atomic() {
        let s = MemoryStore::new();
        assert!(s.create_room(room("a", 1)).await.unwrap().created);
        let again = s.create_room(room("a", 5)).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.room.max_participants, 1);
        s.put_participant("a", participant("x", "PA_1")).await.unwrap();
        // Replacing the same identity is not a new seat.
        s.put_participant("a", participant("x", "PA_2")).await.unwrap();
        assert_eq!(
            s.put_participant("a", participant("y", "PA_3")).await,
            Err(StoreError::RoomFull("a".into()))
        );
        assert_eq!(s.get_room("a").await.unwrap().unwrap().num_participants, 1);
        // A stale sid does not remove the newer session.
        assert_eq!(s.remove_participant("a", "x", "PA_1").await.unwrap(), None);
        assert!(s.remove_participant("a", "x", "PA_2").await.unwrap().is_some());
        assert!(s.delete_room("a").await.unwrap().is_some());
        assert_eq!(s.get_room("a").await.unwrap(), None);
    }
}
