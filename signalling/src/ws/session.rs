//! One task per WebSocket connection: reads client messages, hands them to
//! the room service, and writes whatever the room service queues for it.
//!
//! Everything a client sends is bounded (frame size, message rate) and every
//! problem is answered with an `error` message naming it; only the socket
//! itself failing, the client leaving, or the server ending the session
//! closes the connection. Writes have a deadline and the outbound queue is
//! bounded (see [`crate::room`]): a client that does not read is cut off.
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::debug;

use super::protocol::{decode, encode, ClientMessage, ServerMessage};
use crate::model::now_ms;
use crate::room::{Caller, RoomError, RoomService, SessionHandle, SLOW_CLIENT};

#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Larger text frames are refused with an error (and frames above four
    /// times this close the socket at the WebSocket layer).
    pub max_message_bytes: usize,
    /// Sustained client messages per second.
    pub messages_per_s: f64,
    /// Messages a client may send in a burst above the sustained rate.
    pub burst: f64,
    /// A write that takes longer marks the client as too slow.
    pub write_timeout: Duration,
    /// The first message (`join`) must arrive within this.
    pub join_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_message_bytes: 64 * 1024,
            messages_per_s: 50.0,
            burst: 100.0,
            write_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(10),
        }
    }
}

/// A token bucket; `allow` also says whether this is the first refusal of a
/// run, so a flooding client gets one error, not one per dropped message.
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
    warned: bool,
}

enum Admit {
    Yes,
    NoWarn,
    No,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Bucket {
            tokens: burst,
            last: Instant::now(),
            rate,
            burst,
            warned: false,
        }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.warned = false;
            Admit::Yes
        } else if self.warned {
            Admit::No
        } else {
            self.warned = true;
            Admit::NoWarn
        }
    }
}

enum Step {
    Continue,
    Leave,
}

struct Session {
    socket: WebSocket,
    rooms: RoomService,
    limits: SessionLimits,
    bucket: Bucket,
    /// Set once joined: lets a blocked write give up as soon as the room
    /// service declares this client too slow.
    close: Option<watch::Receiver<Option<String>>>,
}

fn error_msg(code: &str, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        code: code.into(),
        message: message.into(),
    }
}

fn room_error(e: &RoomError) -> ServerMessage {
    error_msg(e.code(), e.to_string())
}

/// What reading one frame produced.
enum Incoming {
    Message(Option<u64>, ClientMessage),
    /// Already answered with an error; nothing to do.
    Handled,
    Closed,
}

impl Session {
    /// Writes one message; `false` when the socket failed, timed out or the
    /// client was declared too slow. Counts every message and error sent.
    async fn send(&mut self, id: Option<u64>, msg: &ServerMessage) -> bool {
        if let ServerMessage::Error { code, .. } = msg {
            // Codes are the fixed strings of PROTOCOL.md, so the label set is bounded.
            self.rooms.metrics().errors.with_label_values(&[code.as_str()]).inc();
        }
        let sent = self.write(id, msg).await;
        if sent {
            self.rooms.metrics().messages_out.inc();
        }
        sent
    }

    async fn write(&mut self, id: Option<u64>, msg: &ServerMessage) -> bool {
        let text = encode(id, msg);
        let write = timeout(self.limits.write_timeout, self.socket.send(Message::Text(text.into())));
        match &self.close {
            Some(close) => {
                let mut close = close.clone();
                tokio::select! {
                    r = write => matches!(r, Ok(Ok(()))),
                    // `Err` (the room service dropped the session) must not
                    // abort the write: the final `leave` is sent that way.
                    Ok(_) = close.wait_for(|r| r.as_deref() == Some(SLOW_CLIENT)) => false,
                }
            }
            None => matches!(write.await, Ok(Ok(()))),
        }
    }

    /// Turns one WebSocket frame into a client message, answering problems itself.
    async fn read(&mut self, frame: Option<Result<Message, axum::Error>>) -> Incoming {
        if let Some(Ok(Message::Text(_) | Message::Binary(_))) = &frame {
            // Every client message counts, including those refused below.
            self.rooms.metrics().messages_in.inc();
        }
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                let ok = self
                    .send(
                        None,
                        &error_msg(
                            "unsupported_frame",
                            "binary frames are not part of the protocol; send JSON text",
                        ),
                    )
                    .await;
                return if ok { Incoming::Handled } else { Incoming::Closed };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Incoming::Handled,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Incoming::Closed,
        };
        match self.bucket.admit(Instant::now()) {
            Admit::Yes => {}
            Admit::NoWarn => {
                let msg = error_msg("rate_limited", "too many messages; messages are being dropped");
                return if self.send(None, &msg).await {
                    Incoming::Handled
                } else {
                    Incoming::Closed
                };
            }
            Admit::No => return Incoming::Handled,
        }
        if text.len() > self.limits.max_message_bytes {
            let msg = error_msg(
                "message_too_large",
                format!(
                    "message of {} bytes exceeds the limit of {}",
                    text.len(),
                    self.limits.max_message_bytes
                ),
            );
            return if self.send(None, &msg).await {
                Incoming::Handled
            } else {
                Incoming::Closed
            };
        }
        match decode(text.as_str()) {
            (id, Ok(m)) => Incoming::Message(id, m),
            (id, Err(e)) => {
                let msg = error_msg("malformed_message", e.to_string());
                if self.send(id, &msg).await {
                    Incoming::Handled
                } else {
                    Incoming::Closed
                }
            }
        }
    }
}

/// Runs a connection for `caller` until it ends.
pub async fn run_session(socket: WebSocket, rooms: RoomService, caller: Caller, limits: SessionLimits) {
    let bucket = Bucket::new(limits.messages_per_s, limits.burst);
    let mut s = Session {
        socket,
        rooms,
        limits,
        bucket,
        close: None,
    };

    // Until a join succeeds, only join (and ping) are understood.
    let deadline = tokio::time::Instant::now() + s.limits.join_timeout;
    let joined = loop {
        let frame = match tokio::time::timeout_at(deadline, s.socket.next()).await {
            Ok(f) => f,
            Err(_) => {
                s.send(None, &error_msg("join_timeout", "no join message received in time"))
                    .await;
                return;
            }
        };
        let (id, msg) = match s.read(frame).await {
            Incoming::Message(id, m) => (id, m),
            Incoming::Handled => continue,
            Incoming::Closed => return,
        };
        match msg {
            ClientMessage::Join {
                auto_subscribe,
                publish,
                offer,
                resume,
            } => match s.rooms.join(&caller, auto_subscribe, resume.as_deref(), now_ms()).await {
                Ok(j) => break (id, j, publish, offer),
                Err(e) => {
                    if !s.send(id, &room_error(&e)).await {
                        return;
                    }
                }
            },
            ClientMessage::Ping { timestamp } => {
                if !s
                    .send(
                        id,
                        &ServerMessage::Pong {
                            timestamp,
                            server_time: now_ms(),
                        },
                    )
                    .await
                {
                    return;
                }
            }
            other => {
                let msg = error_msg(
                    "not_joined",
                    format!("{} before join; the first message must be join", kind(&other)),
                );
                if !s.send(id, &msg).await {
                    return;
                }
            }
        }
    };
    let (join_id, joined, publish, offer) = joined;
    let handle = joined.handle;
    let mut events = joined.events;
    let mut close = joined.close;
    s.close = Some(close.clone());
    debug!(room = %handle.room, identity = %handle.identity, "session joined");

    let mut alive = s.send(join_id, &joined.message).await;
    // Publishing with join: announce the tracks, then answer the offer that carries them.
    if alive {
        for track in publish {
            if let Err(e) = s.rooms.publish(&handle, track, now_ms()).await {
                alive = s.send(join_id, &room_error(&e)).await;
            }
        }
        // The `track_published` replies go out before the answer, as they would
        // for separate publish messages.
        while let (true, Ok(msg)) = (alive, events.try_recv()) {
            alive = s.send(None, &msg).await;
        }
        if let Some(sdp) = offer {
            let reply = match s.rooms.offer(&handle, crate::media::Target::Publisher, sdp).await {
                Ok(sdp) => ServerMessage::Answer {
                    sdp,
                    target: crate::media::Target::Publisher,
                },
                Err(e) => room_error(&e),
            };
            alive = alive && s.send(join_id, &reply).await;
        }
    }

    while alive {
        tokio::select! {
            frame = s.socket.next() => {
                match s.read(frame).await {
                    Incoming::Message(id, msg) => match handle_message(&mut s, &handle, id, msg).await {
                        Some(Step::Continue) => {}
                        Some(Step::Leave) => {
                            // The confirming `leave` is already queued.
                            while let Ok(msg) = events.try_recv() {
                                if !s.send(None, &msg).await {
                                    break;
                                }
                            }
                            let _ = timeout(s.limits.write_timeout, s.socket.send(Message::Close(None))).await;
                            return;
                        }
                        None => alive = false,
                    },
                    Incoming::Handled => {}
                    Incoming::Closed => alive = false,
                }
            }
            event = events.recv() => match event {
                Some(msg) => alive = s.send(None, &msg).await,
                None => alive = false,
            },
            changed = close.changed() => {
                let reason = if changed.is_ok() { close.borrow_and_update().clone() } else { None };
                // Deliver what was queued before the close (e.g. the `leave` naming the reason).
                while let Ok(msg) = events.try_recv() {
                    if !s.send(None, &msg).await {
                        break;
                    }
                }
                debug!(identity = %handle.identity, ?reason, "session closed by server");
                let _ = timeout(s.limits.write_timeout, s.socket.send(Message::Close(None))).await;
                alive = false;
            }
        }
    }
    // A no-op unless this connection is still the session's (kicks, leaves
    // and resumes elsewhere have already detached it).
    s.rooms.disconnected(&handle, now_ms()).await;
}

fn kind(m: &ClientMessage) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "message".into())
}

/// Executes one client message. `None` means the socket failed.
async fn handle_message(s: &mut Session, h: &SessionHandle, id: Option<u64>, msg: ClientMessage) -> Option<Step> {
    let rooms = s.rooms.clone();
    let now = now_ms();
    let reply: Result<Option<ServerMessage>, RoomError> = match msg {
        ClientMessage::Join { .. } => Ok(Some(error_msg("already_joined", "this connection has already joined"))),
        ClientMessage::Offer { sdp, target } => rooms
            .offer(h, target, sdp)
            .await
            .map(|sdp| Some(ServerMessage::Answer { sdp, target })),
        ClientMessage::Answer { sdp, target } => rooms.answer(h, target, sdp).map(|_| None),
        ClientMessage::Trickle { target, candidate } => rooms.ice_candidate(h, target, candidate).map(|_| None),
        // The reply is the `track_published` queued by the room service.
        ClientMessage::Publish(track) => rooms.publish(h, track, now).await.map(|_| None),
        ClientMessage::Unpublish { track_sid } => rooms.unpublish(h, &track_sid, now).await.map(|_| None),
        ClientMessage::Subscribe { track_sid } => rooms.subscribe(h, &track_sid).await.map(|_| None),
        ClientMessage::Unsubscribe { track_sid } => rooms.unsubscribe(h, &track_sid).await.map(|_| None),
        ClientMessage::TrackSettings { track_sid, settings } => {
            rooms.set_track_settings(h, &track_sid, &settings).await.map(|_| None)
        }
        ClientMessage::Mute { track_sid, muted } => rooms.mute_own(h, &track_sid, muted).await.map(|_| None),
        ClientMessage::Data {
            payload,
            topic,
            destination_identities,
        } => rooms
            .send_data(h, payload, topic, &destination_identities)
            .await
            .map(|_| None),
        ClientMessage::Leave => {
            let _ = rooms.leave(h, now).await;
            return Some(Step::Leave);
        }
        ClientMessage::Ping { timestamp } => Ok(Some(ServerMessage::Pong {
            timestamp,
            server_time: now,
        })),
    };
    let out = match reply {
        Ok(Some(m)) => m,
        Ok(None) => return Some(Step::Continue),
        Err(e) => room_error(&e),
    };
    if s.send(id, &out).await {
        Some(Step::Continue)
    } else {
        None
    }
}
