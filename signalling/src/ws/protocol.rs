//! The WebSocket signalling protocol, version 1 (see PROTOCOL.md).
//!
//! Every frame is one JSON text message `{"v":1,"type":"...",...}`. A client
//! may add `"id"` to a request; replies and errors caused by it echo it, so a
//! client can match them without ordering assumptions.
use serde::{Deserialize, Serialize};

use crate::media::{IceCandidate, QualityInfo, SpeakerInfo, Target, TrackSettings};
use crate::model::{Participant, Permissions, Quality, Room, TrackKind, TrackSource, VideoLayer};

pub const VERSION: u32 = 1;

fn default_true() -> bool {
    true
}

fn default_publisher() -> Target {
    Target::Publisher
}

fn default_subscriber() -> Target {
    Target::Subscriber
}

/// A track the client is about to send, announced before (or with) the
/// offer that carries it; `cid` ties the two together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTrack {
    /// The client's `MediaStreamTrack.id` (the SDP `msid` track id).
    pub cid: String,
    #[serde(default)]
    pub name: String,
    pub kind: TrackKind,
    #[serde(default = "unknown_source")]
    pub source: TrackSource,
    #[serde(default)]
    pub muted: bool,
    /// Simulcast layers with their resolutions; empty for a single stream.
    #[serde(default)]
    pub layers: Vec<VideoLayer>,
}

fn unknown_source() -> TrackSource {
    TrackSource::Unknown
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first message on a connection.
    Join {
        /// Subscribe to every track others publish, now and later.
        #[serde(default = "default_true")]
        auto_subscribe: bool,
        /// Tracks to publish at once, so `offer` can carry them.
        #[serde(default)]
        publish: Vec<PublishTrack>,
        /// The publisher's first SDP offer: publishing starts in one round trip.
        #[serde(default)]
        offer: Option<String>,
        /// `session_token` from a previous `joined`, to resume that session.
        #[serde(default)]
        resume: Option<String>,
    },
    Offer {
        sdp: String,
        #[serde(default = "default_publisher")]
        target: Target,
    },
    Answer {
        sdp: String,
        #[serde(default = "default_subscriber")]
        target: Target,
    },
    Trickle {
        target: Target,
        candidate: IceCandidate,
    },
    Publish(PublishTrack),
    Unpublish {
        track_sid: String,
    },
    Subscribe {
        track_sid: String,
    },
    Unsubscribe {
        track_sid: String,
    },
    TrackSettings {
        track_sid: String,
        #[serde(flatten)]
        settings: TrackSettings,
    },
    Mute {
        track_sid: String,
        muted: bool,
    },
    Data {
        payload: String,
        #[serde(default)]
        topic: String,
        /// Empty = everyone else in the room.
        #[serde(default)]
        destination_identities: Vec<String>,
    },
    Leave,
    Ping {
        #[serde(default)]
        timestamp: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// `joined` is large but sent once per session; boxing it would only cost the
// frequent small messages an indirection in serde.
#[allow(clippy::large_enum_variant)]
pub enum ServerMessage {
    Joined {
        room: Room,
        participant: Participant,
        /// Everyone else who is visible, with their tracks.
        participants: Vec<Participant>,
        ice_servers: Vec<IceServer>,
        /// Present with `join.resume` to resume this session after a drop.
        session_token: String,
        resume_window_s: u64,
        resumed: bool,
        /// Track sids this participant is subscribed to (kept across a resume).
        subscriptions: Vec<String>,
    },
    Offer {
        sdp: String,
        target: Target,
    },
    Answer {
        sdp: String,
        target: Target,
    },
    Trickle {
        target: Target,
        candidate: IceCandidate,
    },
    ParticipantJoined {
        participant: Participant,
    },
    ParticipantUpdated {
        participant: Participant,
    },
    ParticipantLeft {
        participant_sid: String,
        identity: String,
    },
    /// For one's own tracks this is the reply to `publish` (match by `track.cid`).
    TrackPublished {
        participant_sid: String,
        track: crate::model::Track,
    },
    TrackUnpublished {
        participant_sid: String,
        track_sid: String,
    },
    Subscribed {
        participant_sid: String,
        track_sid: String,
    },
    Unsubscribed {
        track_sid: String,
        reason: String,
    },
    TrackMuted {
        participant_sid: String,
        track_sid: String,
        muted: bool,
    },
    PermissionsChanged {
        permissions: Permissions,
    },
    Speakers {
        speakers: Vec<SpeakerInfo>,
    },
    ConnectionQuality {
        updates: Vec<QualityInfo>,
    },
    /// To a subscriber: the server's downlink bandwidth estimate for it.
    BandwidthEstimate {
        bitrate: u64,
    },
    /// Dynacast, to a track's publisher: the simulcast layers some
    /// subscriber needs (lowest first); the others may stop. Empty = none.
    LayersWanted {
        track_sid: String,
        qualities: Vec<Quality>,
    },
    Data {
        from_sid: String,
        from_identity: String,
        payload: String,
        topic: String,
    },
    /// The server ends the session; the socket closes after this.
    Leave {
        reason: String,
    },
    Pong {
        timestamp: u64,
        server_time: u64,
    },
    Error {
        code: String,
        message: String,
    },
}

/// A client frame: the version, the optional request id, the message.
#[derive(Debug, Deserialize)]
pub struct ClientEnvelope {
    pub v: u32,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(flatten)]
    pub message: ClientMessage,
}

#[derive(Debug, Serialize)]
pub struct ServerEnvelope<'a> {
    pub v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(flatten)]
    pub message: &'a ServerMessage,
}

/// Why a frame could not be read, named precisely for the error reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message is not JSON: {0}")]
    NotJson(String),
    #[error("message has no \"v\" field")]
    NoVersion,
    #[error("unsupported protocol version {0} (this server speaks {VERSION})")]
    Version(u64),
    #[error("message has no \"type\" field")]
    NoType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("invalid {kind:?} message: {detail}")]
    Invalid { kind: String, detail: String },
}

/// Decodes a client frame, returning the request id when it could be read
/// so even an error reply can echo it.
pub fn decode(text: &str) -> (Option<u64>, Result<ClientMessage, DecodeError>) {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (None, Err(DecodeError::NotJson(e.to_string()))),
    };
    let id = value.get("id").and_then(|v| v.as_u64());
    let Some(v) = value.get("v").and_then(|v| v.as_u64()) else {
        return (id, Err(DecodeError::NoVersion));
    };
    if v != u64::from(VERSION) {
        return (id, Err(DecodeError::Version(v)));
    }
    let Some(kind) = value.get("type").and_then(|t| t.as_str()).map(str::to_owned) else {
        return (id, Err(DecodeError::NoType));
    };
    match serde_json::from_value::<ClientEnvelope>(value) {
        Ok(env) => (id, Ok(env.message)),
        Err(e) => {
            let detail = e.to_string();
            if detail.starts_with(&format!("unknown variant `{kind}`")) {
                (id, Err(DecodeError::UnknownType(kind)))
            } else {
                (id, Err(DecodeError::Invalid { kind, detail }))
            }
        }
    }
}

pub fn encode(id: Option<u64>, message: &ServerMessage) -> String {
    let env = ServerEnvelope {
        v: VERSION,
        id,
        message,
    };
    // Serialising these plain structs cannot fail (string keys, no maps with
    // non-string keys, no NaN in practice); an empty object is a safe fallback.
    serde_json::to_string(&env).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_join_with_defaults_and_names_problems() {
        let (id, m) = decode(r#"{"v":1,"id":7,"type":"join"}"#);
        assert_eq!(id, Some(7));
        assert_eq!(
            m.unwrap(),
            ClientMessage::Join {
                auto_subscribe: true,
                publish: vec![],
                offer: None,
                resume: None
            }
        );
        assert_eq!(decode(r#"{"v":2,"type":"join"}"#).1, Err(DecodeError::Version(2)));
        assert_eq!(decode(r#"{"type":"join"}"#).1, Err(DecodeError::NoVersion));
        assert_eq!(
            decode(r#"{"v":1,"type":"fly"}"#).1,
            Err(DecodeError::UnknownType("fly".into()))
        );
        assert!(matches!(
            decode(r#"{"v":1,"type":"mute"}"#).1,
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(decode("nope").1, Err(DecodeError::NotJson(_))));
        let (_, m) = decode(r#"{"v":1,"type":"track_settings","track_sid":"TR_1","max_width":640}"#);
        match m.unwrap() {
            ClientMessage::TrackSettings { settings, .. } => assert_eq!(settings.max_width, 640),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"{"v":1,"type":"leave"}"#).1,
            Ok(ClientMessage::Leave)
        ));
    }

    #[test]
    fn encodes_with_version_and_tag() {
        let s = encode(
            Some(3),
            &ServerMessage::Pong {
                timestamp: 1,
                server_time: 2,
            },
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["id"], 3);
        assert_eq!(v["type"], "pong");
    }
}
