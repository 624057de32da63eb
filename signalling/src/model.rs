//! Plain data shared by the REST API, the WebSocket protocol, webhooks and
//! the store. Field names are the JSON names (snake_case).
use serde::{Deserialize, Serialize};

/// A room as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub sid: String,
    pub name: String,
    /// 0 = unlimited.
    pub max_participants: u32,
    /// Seconds an empty room lives before it is closed (0 = server default).
    pub empty_timeout_s: u32,
    pub metadata: String,
    /// Unix milliseconds.
    pub created_at: u64,
    pub num_participants: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    /// Token accepted, WebSocket open, join answer sent.
    Joined,
    /// Media is connected.
    Active,
    /// The WebSocket dropped; the session may still resume.
    Disconnected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Camera,
    Microphone,
    ScreenShare,
    ScreenShareAudio,
    Unknown,
}

/// Simulcast layer quality, by `rid` convention: `q` quarter, `h` half, `f` full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Low,
    Medium,
    High,
}

impl Quality {
    pub fn rid(self) -> &'static str {
        match self {
            Quality::Low => "q",
            Quality::Medium => "h",
            Quality::High => "f",
        }
    }
    pub fn from_rid(rid: &str) -> Option<Quality> {
        match rid {
            "q" => Some(Quality::Low),
            "h" => Some(Quality::Medium),
            "f" => Some(Quality::High),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoLayer {
    pub quality: Quality,
    pub width: u32,
    pub height: u32,
    /// Bits per second the publisher targets for this layer (0 = unknown).
    #[serde(default)]
    pub bitrate: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    pub sid: String,
    #[serde(default)]
    pub name: String,
    pub kind: TrackKind,
    pub source: TrackSource,
    #[serde(default)]
    pub muted: bool,
    /// Empty for a single-stream track.
    #[serde(default)]
    pub layers: Vec<VideoLayer>,
    /// The publisher's `MediaStreamTrack.id` / SDP `msid`, to match the offer.
    #[serde(default)]
    pub cid: String,
}

/// What a participant may do. Changes apply to live sessions at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
    /// Empty = every source.
    #[serde(default)]
    pub can_publish_sources: Vec<TrackSource>,
    /// Hidden participants are not announced to others.
    #[serde(default)]
    pub hidden: bool,
}

impl Permissions {
    pub fn may_publish_source(&self, source: TrackSource) -> bool {
        self.can_publish && (self.can_publish_sources.is_empty() || self.can_publish_sources.contains(&source))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub sid: String,
    pub identity: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub metadata: String,
    pub state: ParticipantState,
    /// Unix milliseconds.
    pub joined_at: u64,
    pub permissions: Permissions,
    #[serde(default)]
    pub tracks: Vec<Track>,
}

/// Generates a prefixed random id such as `RM_4fK2...` (rooms), `PA_` (participants), `TR_` (tracks).
pub fn new_sid(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{tail}")
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
