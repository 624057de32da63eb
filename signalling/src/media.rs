//! The seam between signalling and the media plane (the SFU).
//!
//! The room service decides *whether* something may happen (permissions,
//! room membership) and then tells the media plane *to do it*. Calls are
//! fire-and-forget except [`MediaPlane::offer`], which must produce an SDP
//! answer; none of them may block on packet processing. Whatever the media
//! plane learns on its own (renegotiation offers, ICE candidates, tracks
//! arriving, speakers, connection quality) comes back as [`MediaEvent`]s on
//! the channel the room service hands it at construction.
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::model::{Quality, Track};

/// Which peer connection an SDP or ICE candidate belongs to. Publishing and
/// subscribing use separate peer connections, as in LiveKit, so a
/// renegotiation on one never stalls the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Publisher,
    Subscriber,
}

/// A participant as the media plane knows it: its room and session sid.
/// A resumed session keeps its sid; a rejoin gets a new one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParticipantRef {
    pub room: String,
    pub sid: String,
}

/// What a subscriber wants of a video track. `paused` stops forwarding
/// entirely; otherwise the SFU picks the highest layer that fits both
/// `quality` and the maximum dimensions / frame rate (0 = no limit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackSettings {
    #[serde(default)]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    #[serde(default)]
    pub max_width: u32,
    #[serde(default)]
    pub max_height: u32,
    #[serde(default)]
    pub max_fps: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    /// The `candidate` line, as `RTCIceCandidate.candidate`.
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    pub participant_sid: String,
    /// 0.0 (silence) to 1.0 (loudest).
    pub level: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionQuality {
    Excellent,
    Good,
    Poor,
    Lost,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityInfo {
    pub participant_sid: String,
    pub quality: ConnectionQuality,
}

/// What the media plane reports back.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaEvent {
    /// A server-initiated offer (the subscriber connection gained or lost tracks).
    Offer {
        participant: ParticipantRef,
        sdp: String,
    },
    /// An answer to a client offer that arrived asynchronously (e.g. an ICE restart).
    Answer {
        participant: ParticipantRef,
        sdp: String,
    },
    IceCandidate {
        participant: ParticipantRef,
        target: Target,
        candidate: IceCandidate,
    },
    /// The publisher's media for `track_sid` started flowing.
    TrackMediaStarted {
        participant: ParticipantRef,
        track_sid: String,
    },
    /// The publisher's renegotiation withdrew `track_sid`'s m-line (stopped
    /// it, or stopped sending on it) without unpublishing it: the media
    /// plane already stopped forwarding it, and the room unpublishes it.
    TrackEnded {
        participant: ParticipantRef,
        track_sid: String,
    },
    /// DTLS is up: the participant becomes `active`.
    Connected {
        participant: ParticipantRef,
    },
    /// Media transport failed beyond ICE restart.
    Disconnected {
        participant: ParticipantRef,
    },
    /// Loudest first; an empty list means silence.
    Speakers {
        room: String,
        speakers: Vec<SpeakerInfo>,
    },
    Quality {
        room: String,
        updates: Vec<QualityInfo>,
    },
    /// The SFU's downlink bandwidth estimate for the participant's
    /// subscriber connection (bits per second), at most every 250 ms.
    Estimate {
        participant: ParticipantRef,
        bitrate: u64,
    },
    /// Dynacast: the simulcast layers of the publisher's `track_sid` that
    /// some subscriber needs, lowest first; the publisher may stop encoding
    /// the others. Empty = nobody needs any (every layer may stop).
    LayersWanted {
        participant: ParticipantRef,
        track_sid: String,
        qualities: Vec<Quality>,
    },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MediaError {
    #[error("media plane not available")]
    Unavailable,
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    #[error("unknown participant or track: {0}")]
    Unknown(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("media plane error: {0}")]
    Failed(String),
}

/// Implemented by the SFU. Permission checks have already been made when a
/// method is called; the media plane only executes.
#[async_trait]
pub trait MediaPlane: Send + Sync {
    /// A client offer on `target` (a publisher offer may arrive with join).
    /// Returns the SDP answer.
    async fn offer(&self, participant: &ParticipantRef, target: Target, sdp: String) -> Result<String, MediaError>;
    /// The client's answer to a [`MediaEvent::Offer`].
    fn answer(&self, participant: &ParticipantRef, target: Target, sdp: String) -> Result<(), MediaError>;
    fn ice_candidate(
        &self,
        participant: &ParticipantRef,
        target: Target,
        candidate: IceCandidate,
    ) -> Result<(), MediaError>;
    /// The publisher announced `track` (matched to the offer by `track.cid`).
    fn publish(&self, participant: &ParticipantRef, track: &Track) -> Result<(), MediaError>;
    /// Stop accepting media for the track and end every subscription to it.
    fn unpublish(&self, participant: &ParticipantRef, track_sid: &str) -> Result<(), MediaError>;
    /// Stop (or resume) forwarding a track while keeping it published.
    fn set_muted(&self, participant: &ParticipantRef, track_sid: &str, muted: bool) -> Result<(), MediaError>;
    fn subscribe(
        &self,
        subscriber: &ParticipantRef,
        publisher: &ParticipantRef,
        track: &Track,
    ) -> Result<(), MediaError>;
    fn unsubscribe(&self, subscriber: &ParticipantRef, track_sid: &str) -> Result<(), MediaError>;
    fn set_track_settings(
        &self,
        subscriber: &ParticipantRef,
        track_sid: &str,
        settings: &TrackSettings,
    ) -> Result<(), MediaError>;
    /// Tear down both peer connections. Called when the session ends for
    /// good, not when a WebSocket drops (media may outlive a signalling blip).
    fn remove_participant(&self, participant: &ParticipantRef);
}

/// Capacity of the media event channel: bursts of ICE candidates fit; a
/// media plane that outruns the room service by more than this is told so
/// by `try_send` failing rather than growing memory.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

pub fn event_channel() -> (mpsc::Sender<MediaEvent>, mpsc::Receiver<MediaEvent>) {
    mpsc::channel(EVENT_CHANNEL_CAPACITY)
}

/// Signalling without media: every control-plane operation is accepted and
/// recorded, and SDP offers are refused, so rooms, permissions and the
/// protocol work (and are tested) before the SFU exists.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMedia;

#[async_trait]
impl MediaPlane for NoMedia {
    async fn offer(&self, _: &ParticipantRef, _: Target, _: String) -> Result<String, MediaError> {
        Err(MediaError::Unavailable)
    }
    fn answer(&self, _: &ParticipantRef, _: Target, _: String) -> Result<(), MediaError> {
        Err(MediaError::Unavailable)
    }
    fn ice_candidate(&self, _: &ParticipantRef, _: Target, _: IceCandidate) -> Result<(), MediaError> {
        Err(MediaError::Unavailable)
    }
    fn publish(&self, _: &ParticipantRef, _: &Track) -> Result<(), MediaError> {
        Ok(())
    }
    fn unpublish(&self, _: &ParticipantRef, _: &str) -> Result<(), MediaError> {
        Ok(())
    }
    fn set_muted(&self, _: &ParticipantRef, _: &str, _: bool) -> Result<(), MediaError> {
        Ok(())
    }
    fn subscribe(&self, _: &ParticipantRef, _: &ParticipantRef, _: &Track) -> Result<(), MediaError> {
        Ok(())
    }
    fn unsubscribe(&self, _: &ParticipantRef, _: &str) -> Result<(), MediaError> {
        Ok(())
    }
    fn set_track_settings(&self, _: &ParticipantRef, _: &str, _: &TrackSettings) -> Result<(), MediaError> {
        Ok(())
    }
    fn remove_participant(&self, _: &ParticipantRef) {}
}
