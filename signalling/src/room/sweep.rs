//! The periodic sweep: sessions past their resume window end, rooms empty
//! longer than their timeout close.
use super::{Result, RoomService};

impl RoomService {
    /// Ends sessions whose resume window has passed and closes rooms that
    /// have been empty longer than their timeout. Call it about once a second.
    pub async fn tick(&self, now_ms: u64) -> Result<()> {
        let window = self.inner.settings.resume_window_ms;
        let expired: Vec<(String, String, String)> = {
            let live = self.live();
            live.iter()
                .flat_map(|(room, lr)| {
                    lr.sessions.iter().filter_map(move |(identity, s)| {
                        let gone =
                            s.conn.is_none() && s.disconnected_at.is_some_and(|t| now_ms.saturating_sub(t) > window);
                        gone.then(|| (room.clone(), identity.clone(), s.sid.clone()))
                    })
                })
                .collect()
        };
        for (room, identity, sid) in expired {
            let _guard = self.lock_room(&room).await;
            let still = self
                .live()
                .get(&room)
                .and_then(|lr| lr.sessions.get(&identity))
                .is_some_and(|s| s.sid == sid && s.conn.is_none());
            if still {
                self.end_session(&room, &identity, Some(&sid), "resume_timeout", now_ms)
                    .await?;
            }
        }
        for room in self.inner.store.list_rooms().await? {
            if room.num_participants > 0 {
                continue;
            }
            let since = self
                .live()
                .get(&room.name)
                .and_then(|lr| lr.empty_since)
                .unwrap_or(room.created_at);
            let timeout_s = if room.empty_timeout_s > 0 {
                room.empty_timeout_s
            } else {
                self.inner.settings.default_empty_timeout_s
            };
            if now_ms.saturating_sub(since) >= u64::from(timeout_s) * 1000 {
                let guard = self.lock_room(&room.name).await;
                // Someone may have joined while we waited for the lock.
                if let Some(current) = self.inner.store.get_room(&room.name).await? {
                    if current.num_participants == 0 && current.sid == room.sid {
                        self.close_room(current, "room_closed", now_ms).await?;
                    }
                }
                drop(guard);
                self.forget_room_lock(&room.name);
            }
        }
        Ok(())
    }
}
