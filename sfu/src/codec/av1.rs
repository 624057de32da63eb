//! AV1 temporal layers from the OBU extension header (AV1 RTP payload
//! format, section 4.4; AV1 bitstream, section 5.3), for publishers that
//! do not send the dependency descriptor ([`super::dd`], which is used
//! instead when present): a subscriber that never gets the descriptor
//! decodes a single-spatial-layer stream by sequence number, which the
//! down-track keeps gap-free.
//!
//! An RTP packet starts with the one-byte aggregation header `Z Y W W N - -
//! -`; then OBU elements, each prefixed by its LEB128 length except the
//! last when `W` counts them. An encoder with temporal layers (Chrome with
//! `scalabilityMode: "L1T3"`) gives every frame's OBU an extension byte
//! `temporal_id(3) spatial_id(2) reserved(3)`. Only a packet whose first
//! element starts an OBU (`Z = 0`) shows that byte; the rest of a frame
//! (`Z = 1`, same RTP timestamp) is attributed by [`Av1Frames`].
//!
//! AV1 has no switching-point flag outside the dependency descriptor. In
//! the structures browsers encode (libwebrtc's L1T2 and L1T3) a frame of
//! layer `t` references only frames of layers below `t`, so a receiver of
//! layers up to `t - 1` may add layer `t` at any of its frames: the packet
//! is marked [`FrameInfo::step_up`], one layer at a time.
use super::{FrameInfo, ParseError, MAX_TEMPORAL};

/// What the first packet of an OBU says about its frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Av1Header {
    /// `Z`: the first element continues an OBU from the previous packet.
    pub continuation: bool,
    /// `N`: the first packet of a coded video sequence (a keyframe).
    pub new_sequence: bool,
    /// Temporal id of the first frame-carrying OBU, when it has an
    /// extension header; `None` for continuations and unlayered streams.
    pub tid: Option<u8>,
    pub sid: Option<u8>,
}

// OBU types (AV1 bitstream section 6.2.2) that carry no frame data and come
// before a frame's OBUs in a temporal unit.
const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_METADATA: u8 = 5;
const OBU_PADDING: u8 = 15;

/// Reads the aggregation header and the OBU headers up to the first one
/// that belongs to a frame.
pub fn parse(p: &[u8]) -> Result<Av1Header, ParseError> {
    let (&agg, mut rest) = p.split_first().ok_or(ParseError::Truncated)?;
    let mut h = Av1Header {
        continuation: agg & 0x80 != 0,
        new_sequence: agg & 0x08 != 0,
        ..Av1Header::default()
    };
    if rest.is_empty() {
        return Err(ParseError::NoPayload);
    }
    if h.continuation {
        return Ok(h);
    }
    // W: 0 means every element has a length; 1-3 the count, the last of
    // them without one.
    let count = usize::from((agg >> 4) & 0x03);
    let mut index = 1;
    loop {
        let sized = count == 0 || index < count;
        let len = if sized {
            let (len, used) = leb128(rest)?;
            rest = &rest[used..];
            Some(len)
        } else {
            None
        };
        let element = match len {
            Some(len) => rest.get(..len).ok_or(ParseError::Truncated)?,
            None => rest,
        };
        let &obu = element.first().ok_or(ParseError::Malformed)?;
        if obu & 0x80 != 0 {
            // The forbidden bit.
            return Err(ParseError::Malformed);
        }
        let kind = (obu >> 3) & 0x0f;
        if !matches!(
            kind,
            OBU_SEQUENCE_HEADER | OBU_TEMPORAL_DELIMITER | OBU_METADATA | OBU_PADDING
        ) {
            if obu & 0x04 != 0 {
                let &ext = element.get(1).ok_or(ParseError::Truncated)?;
                h.tid = Some(ext >> 5);
                h.sid = Some((ext >> 3) & 0x03);
            }
            return Ok(h);
        }
        match len {
            // The last element, and no frame in this packet.
            None => return Ok(h),
            Some(len) => rest = &rest[len..],
        }
        if rest.is_empty() {
            return Ok(h);
        }
        index += 1;
    }
}

/// LEB128 as the AV1 RTP format uses it: at most 8 bytes, and a length must
/// fit the packet, so anything above `usize` is malformed anyway.
fn leb128(p: &[u8]) -> Result<(usize, usize), ParseError> {
    let mut value: u64 = 0;
    for (i, &b) in p.iter().take(8).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let v = usize::try_from(value).map_err(|_| ParseError::Malformed)?;
            return Ok((v, i + 1));
        }
    }
    Err(if p.len() < 8 {
        ParseError::Truncated
    } else {
        ParseError::Malformed
    })
}

/// The temporal layer of the frame being received, so the packets after a
/// frame's first are attributed to it. One per published AV1 stream (per
/// simulcast layer: their timestamps are unrelated).
#[derive(Clone, Copy, Debug, Default)]
pub struct Av1Frames {
    /// RTP timestamp and temporal id of the last frame whose first packet
    /// was seen.
    last: Option<(u32, Option<u8>)>,
}

impl Av1Frames {
    /// The frame information of one packet; `None` when it cannot be told
    /// (a continuation of a frame whose first packet was lost or is late):
    /// such a packet is forwarded, because dropping it could break a base
    /// layer frame, whereas a stray piece of a dropped frame is discarded
    /// by the receiver as incomplete.
    pub fn frame_info(&mut self, payload: &[u8], ts: u32, keyframe: bool) -> Option<FrameInfo> {
        let h = parse(payload).ok()?;
        if h.continuation {
            let (last_ts, tid) = self.last?;
            return (last_ts == ts).then_some(FrameInfo {
                tid,
                sync: false,
                step_up: tid.is_some(),
                frame_start: false,
                keyframe,
            });
        }
        let frame_start = self.last.is_none_or(|(t, _)| t != ts);
        let tid = h.tid.map(|t| t.min(MAX_TEMPORAL as u8 - 1));
        self.last = Some((ts, tid));
        Some(FrameInfo {
            tid,
            sync: false,
            step_up: tid.is_some(),
            frame_start,
            keyframe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Packet openings as Chrome 14x sends AV1 with L1T3 (seen through the
    // SFU): one OBU_FRAME element with an extension byte.
    #[test]
    fn chrome_l1t3_frames() {
        let h = parse(&[0x10, 0x34, 0x40, 0x30, 0x00]).unwrap();
        assert_eq!((h.continuation, h.tid, h.sid), (false, Some(2), Some(0)));
        assert_eq!(parse(&[0x10, 0x34, 0x20, 0x30]).unwrap().tid, Some(1));
        assert_eq!(parse(&[0x50, 0x34, 0x00, 0x30]).unwrap().tid, Some(0));
        // Middle and last packets of a frame.
        for agg in [0xd0, 0x90] {
            let h = parse(&[agg, 0x12, 0x34]).unwrap();
            assert!(h.continuation);
            assert_eq!(h.tid, None);
        }
    }

    #[test]
    fn keyframe_with_a_sequence_header_first() {
        // W=2: a 3-byte sequence header with its length, then the frame.
        let p = [0x28, 0x03, 0x08, 0x00, 0x00, 0x34, 0x00, 0x10];
        let h = parse(&p).unwrap();
        assert!(h.new_sequence);
        assert_eq!(h.tid, Some(0));
        // W=0: every element sized.
        let p = [0x08, 0x01, 0x12, 0x03, 0x34, 0x20, 0x10];
        assert_eq!(parse(&p).unwrap().tid, Some(1));
        // A lone sequence header carries no layer.
        assert_eq!(parse(&[0x18, 0x08, 0x00]).unwrap().tid, None);
    }

    #[test]
    fn unlayered_and_malformed() {
        // Chrome's L1T1: OBU_FRAME without an extension.
        assert_eq!(parse(&[0x10, 0x30, 0x30]).unwrap().tid, None);
        assert_eq!(parse(&[]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0x10]), Err(ParseError::NoPayload));
        // Forbidden bit, a length beyond the packet, an endless LEB128,
        // an extension flag without its byte.
        assert_eq!(parse(&[0x10, 0xb4, 0x00]), Err(ParseError::Malformed));
        assert_eq!(parse(&[0x20, 0x09, 0x08, 0x00]), Err(ParseError::Truncated));
        assert_eq!(
            parse(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(ParseError::Malformed)
        );
        assert_eq!(parse(&[0x10, 0x34]), Err(ParseError::Truncated));
        for len in 0..12 {
            for b in [0x00u8, 0x7f, 0x80, 0xff] {
                let p: Vec<u8> = std::iter::once(0x20).chain(std::iter::repeat_n(b, len)).collect();
                let _ = parse(&p);
            }
        }
    }

    #[test]
    fn continuations_take_their_frames_layer() {
        let mut f = Av1Frames::default();
        // Head lost: nothing to attribute the tail to.
        assert_eq!(f.frame_info(&[0x90, 0x01], 100, false), None);
        let head = f.frame_info(&[0x50, 0x34, 0x40, 0x00], 200, false).unwrap();
        assert_eq!((head.tid, head.frame_start, head.step_up), (Some(2), true, true));
        let mid = f.frame_info(&[0xd0, 0x01], 200, false).unwrap();
        assert_eq!((mid.tid, mid.frame_start), (Some(2), false));
        // A retransmitted head is not a new frame.
        assert!(!f.frame_info(&[0x50, 0x34, 0x40, 0x00], 200, false).unwrap().frame_start);
        // The next frame's tail before its head.
        assert_eq!(f.frame_info(&[0x90, 0x01], 300, false), None);
        let unlayered = f.frame_info(&[0x10, 0x30, 0x00], 400, false).unwrap();
        assert_eq!((unlayered.tid, unlayered.step_up), (None, false));
    }
}
