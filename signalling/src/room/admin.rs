//! Room and participant administration for the REST API: creating, listing,
//! reading and deleting rooms, listing, reading and removing participants.
use super::{validate_name, Caller, CreateRoom, Result, RoomError, RoomService};
use crate::model::{Participant, Room};

impl RoomService {
    pub async fn create_room(&self, caller: &Caller, req: CreateRoom, now_ms: u64) -> Result<Room> {
        if !caller.grants.room_create {
            return Err(RoomError::PermissionDenied("room_create grant required".into()));
        }
        if caller.grants.room.as_deref().is_some_and(|r| r != req.name) {
            return Err(RoomError::PermissionDenied(format!(
                "token is limited to room {:?}",
                caller.grants.room
            )));
        }
        validate_name("room name", &req.name)?;
        let _guard = self.lock_room(&req.name).await;
        self.ensure_room(req, now_ms).await
    }

    pub async fn list_rooms(&self, caller: &Caller) -> Result<Vec<Room>> {
        if !caller.grants.room_list {
            return Err(RoomError::PermissionDenied("room_list grant required".into()));
        }
        Ok(self.inner.store.list_rooms().await?)
    }

    pub async fn get_room(&self, caller: &Caller, name: &str) -> Result<Room> {
        if !(caller.grants.room_list || caller.is_admin_of(name)) {
            return Err(RoomError::PermissionDenied(
                "room_list or room_admin grant required".into(),
            ));
        }
        self.room_record(name).await
    }

    /// Ends every session in the room, then the room.
    pub async fn delete_room(&self, caller: &Caller, name: &str, now_ms: u64) -> Result<Room> {
        if !(caller.is_admin_of(name) || (caller.grants.room_create && caller.grants.room.is_none())) {
            return Err(RoomError::PermissionDenied(format!(
                "room_admin grant for room {name:?} required"
            )));
        }
        let guard = self.lock_room(name).await;
        let room = self.room_record(name).await?;
        self.close_room(room.clone(), "room_deleted", now_ms).await?;
        drop(guard);
        self.forget_room_lock(name);
        Ok(room)
    }

    pub async fn list_participants(&self, caller: &Caller, room: &str) -> Result<Vec<Participant>> {
        caller.require_admin(room)?;
        self.room_record(room).await?;
        Ok(self.inner.store.list_participants(room).await?)
    }

    pub async fn get_participant(&self, caller: &Caller, room: &str, identity: &str) -> Result<Participant> {
        caller.require_admin(room)?;
        self.room_record(room).await?;
        self.participant_record(room, identity).await
    }

    pub async fn remove_participant(&self, caller: &Caller, room: &str, identity: &str, now_ms: u64) -> Result<()> {
        caller.require_admin(room)?;
        let _guard = self.lock_room(room).await;
        self.room_record(room).await?;
        let p = self.participant_record(room, identity).await?;
        self.end_session(room, identity, Some(&p.sid), "removed", now_ms).await
    }
}
