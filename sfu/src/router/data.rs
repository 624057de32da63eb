//! Data channel messages: relayed from a participant's publisher connection
//! to the rest of the room (or, when signalling routes them, to named
//! participants).
use std::time::Instant;

use str0m::channel::ChannelId;

use super::{ParticipantId, Router, SfuEvent};
use crate::Error;

impl Router {
    /// A data channel message from a participant: reported, and relayed to
    /// the rest of the room unless the participant's relay is off (then
    /// signalling routes it with [`Router::send_data`], e.g. to the
    /// destinations named inside the message).
    pub(super) fn relay_data(&mut self, now: Instant, from: ParticipantId, id: ChannelId, binary: bool, data: Vec<u8>) {
        let Some(p) = self.participants.get(&from) else { return };
        let Some(label) = p.channels.iter().find(|(_, c)| **c == id).map(|(l, _)| l.clone()) else {
            return;
        };
        if p.relay_data {
            let _ = self.send_data(now, from, &label, binary, &data, &[]);
        }
        self.events.push_back(SfuEvent::Data {
            from,
            label,
            binary,
            data,
        });
    }

    /// Sends a data channel message from `from` to the members of its room
    /// named in `to` (all others when empty) that have a channel `label`
    /// open; names outside the room are skipped, so a participant can
    /// never reach another room. `from` itself never gets its own message.
    pub fn send_data(
        &mut self,
        _now: Instant,
        from: ParticipantId,
        label: &str,
        binary: bool,
        data: &[u8],
        to: &[ParticipantId],
    ) -> Result<(), Error> {
        let room = &self.participants.get(&from).ok_or(Error::Unknown)?.room;
        let Some(members) = self.rooms.get(room) else {
            return Ok(());
        };
        for &m in members {
            if m == from || !(to.is_empty() || to.contains(&m)) {
                continue;
            }
            let Some(mp) = self.participants.get(&m) else { continue };
            let (Some(&cid), pid) = (mp.channels.get(label), mp.publisher) else {
                continue;
            };
            let Some(slot) = self.peers.get_mut(pid.0 as usize).and_then(Option::as_mut) else {
                continue;
            };
            slot.peer.guard(|rtc| {
                if let Some(mut ch) = rtc.channel(cid) {
                    let _ = ch.write(binary, data);
                }
            });
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(pid);
            }
        }
        Ok(())
    }

    /// Whether `participant`'s data channel messages are relayed to the
    /// whole room by the SFU (the default) or only reported.
    pub fn set_data_relay(&mut self, participant: ParticipantId, relay: bool) -> Result<(), Error> {
        self.participants
            .get_mut(&participant)
            .ok_or(Error::Unknown)?
            .relay_data = relay;
        Ok(())
    }
}
