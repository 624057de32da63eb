//! Just enough of each video codec's RTP payload format to forward
//! temporal layers (VP8, VP9, AV1): which layer a packet belongs to, where frames start and
//! where a receiver may switch up. Parsed once per received packet, before
//! the fan-out; untrusted input, so errors are values and a packet that
//! cannot be parsed is treated as unlayered (always forwarded).
use str0m::format::Codec;

pub mod av1;
pub mod dd;
pub mod picture_id;
pub mod vp8;
pub mod vp9;

/// Temporal layers tracked per stream. VP8 has at most 4 (2-bit TID); VP9
/// indices above 3 are counted as layer 3: forwarding all of the upper
/// layers together is always decodable.
pub const MAX_TEMPORAL: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("payload descriptor truncated")]
    Truncated,
    #[error("no payload after the descriptor")]
    NoPayload,
    #[error("malformed payload descriptor")]
    Malformed,
}

/// What the forwarding decision needs to know about one video packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameInfo {
    /// Temporal layer, `None` when the payload does not say (single-layer
    /// streams, codecs without a parser here): such packets always pass.
    pub tid: Option<u8>,
    /// A switching point: a receiver of the lower layers may start this
    /// packet's layer at this frame (VP8 Y bit, VP9 U bit).
    pub sync: bool,
    /// A switching point for a receiver of the layer just below this
    /// packet's (AV1, whose browser structures make every upper-layer
    /// frame one; see [`av1`]).
    pub step_up: bool,
    /// First packet of a frame.
    pub frame_start: bool,
    pub keyframe: bool,
}

impl FrameInfo {
    /// A VP9 packet's, from its parsed descriptor (temporal indices above
    /// [`MAX_TEMPORAL`] count as the top one).
    pub fn vp9(d: &vp9::Vp9Descriptor) -> FrameInfo {
        FrameInfo {
            tid: d.tid.map(|t| t.min(MAX_TEMPORAL as u8 - 1)),
            sync: d.switching_up,
            step_up: false,
            frame_start: d.begin,
            keyframe: d.keyframe(),
        }
    }
}

/// Reads `payload` of `codec` (`None` for codecs without stateless
/// temporal layer parsing; the caller detects keyframes on its own then,
/// and reads AV1 through [`av1::Av1Frames`]).
pub fn frame_info(codec: Codec, payload: &[u8]) -> Option<FrameInfo> {
    match codec {
        Codec::Vp8 => {
            let d = vp8::parse(payload).ok()?;
            Some(FrameInfo {
                tid: d.tid,
                sync: d.layer_sync,
                step_up: false,
                frame_start: d.frame_start(),
                keyframe: d.keyframe,
            })
        }
        Codec::Vp9 => vp9::parse(payload).ok().map(|d| FrameInfo::vp9(&d)),
        _ => None,
    }
}
