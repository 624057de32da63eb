//! The VP9 RTP payload descriptor (RFC 9628 section 4.2), read without
//! allocating, bounds-checked (untrusted input: errors, never panics).
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! |I|P|L|F|B|E|V|Z|   I: PictureID, P: inter-picture predicted, L: layer
//! |M| PICTURE ID  |   indices, F: flexible mode, B/E: start/end of a frame,
//! |  PICTURE ID   |   V: scalability structure follows, Z: not a reference
//! |TID  |U| SID |D|   for the next spatial layer
//! |   TL0PICIDX   |   (non-flexible mode only)
//! |  P_DIFF     |N|   (flexible mode, P set: up to 3)
//! ```
//! Only what forwarding needs is read: of the scalability structure (V,
//! sent with keyframes) the number of spatial layers and their sizes.

use super::ParseError;

/// The fields of one packet's descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vp9Descriptor {
    pub inter_picture: bool,
    pub flexible: bool,
    /// B: first packet of a frame (of one spatial layer).
    pub begin: bool,
    /// E: last packet of a frame.
    pub end: bool,
    pub picture_id: Option<u16>,
    pub tid: Option<u8>,
    /// U: switching-up point; later frames of higher temporal layers do
    /// not reference frames of those layers from before this one.
    pub switching_up: bool,
    pub sid: Option<u8>,
    pub tl0_pic_idx: Option<u8>,
    /// The scalability structure, when V is set.
    pub ss: Option<ScalabilityStructure>,
    /// Bytes of descriptor up to the scalability structure (or payload).
    pub len: usize,
}

/// How many spatial layers the stream has and (when the structure says)
/// their sizes, lowest first; sizes past the third are not kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalabilityStructure {
    pub spatial_layers: u8,
    pub sizes: Option<[(u16, u16); 3]>,
}

impl Vp9Descriptor {
    /// The first packet of an intra-only picture of the base spatial layer.
    pub fn keyframe(&self) -> bool {
        !self.inter_picture && self.begin && self.sid.unwrap_or(0) == 0
    }
}

/// Parses the descriptor at the start of an RTP payload.
pub fn parse(p: &[u8]) -> Result<Vp9Descriptor, ParseError> {
    let mut i = 0;
    let mut byte = || -> Result<u8, ParseError> {
        let b = *p.get(i).ok_or(ParseError::Truncated)?;
        i += 1;
        Ok(b)
    };
    let b0 = byte()?;
    let mut d = Vp9Descriptor {
        inter_picture: b0 & 0x40 != 0,
        flexible: b0 & 0x10 != 0,
        begin: b0 & 0x08 != 0,
        end: b0 & 0x04 != 0,
        ..Vp9Descriptor::default()
    };
    if b0 & 0x80 != 0 {
        let hi = byte()?;
        d.picture_id = Some(if hi & 0x80 != 0 {
            u16::from(hi & 0x7f) << 8 | u16::from(byte()?)
        } else {
            u16::from(hi)
        });
    }
    if b0 & 0x20 != 0 {
        let l = byte()?;
        d.tid = Some(l >> 5);
        d.switching_up = l & 0x10 != 0;
        d.sid = Some((l >> 1) & 0x07);
        if !d.flexible {
            d.tl0_pic_idx = Some(byte()?);
        }
    }
    if d.flexible && d.inter_picture {
        // Up to three reference indices, each saying whether one follows.
        for n in 0.. {
            if byte()? & 0x01 == 0 {
                break;
            }
            if n == 2 {
                return Err(ParseError::Malformed);
            }
        }
    }
    d.len = i;
    if b0 & 0x02 != 0 {
        d.ss = Some(scalability_structure(p.get(d.len..).unwrap_or_default())?);
    }
    if d.len >= p.len() && b0 & 0x02 == 0 {
        return Err(ParseError::NoPayload);
    }
    Ok(d)
}

/// |N_S|Y|G|-|-|-|, then N_S + 1 sizes when Y (the group description
/// after them is not needed).
fn scalability_structure(p: &[u8]) -> Result<ScalabilityStructure, ParseError> {
    let b = *p.first().ok_or(ParseError::Truncated)?;
    let spatial_layers = (b >> 5) + 1;
    let mut sizes = None;
    if b & 0x10 != 0 {
        let n = usize::from(spatial_layers);
        let table = p.get(1..1 + 4 * n).ok_or(ParseError::Truncated)?;
        let mut all = [(0u16, 0u16); 3];
        for (slot, c) in all.iter_mut().zip(table.chunks_exact(4)) {
            *slot = (u16::from_be_bytes([c[0], c[1]]), u16::from_be_bytes([c[2], c[3]]));
        }
        sizes = Some(all);
    }
    Ok(ScalabilityStructure { spatial_layers, sizes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn non_flexible_with_layers() {
        // I, L, B; 15-bit PictureID 0x0102; TID 2, U, SID 0; TL0PICIDX 9.
        let d = parse(&[0xa8, 0x81, 0x02, 0x50, 9, 0xaa]).unwrap();
        assert_eq!(d.picture_id, Some(0x0102));
        assert_eq!(
            (d.tid, d.switching_up, d.sid, d.tl0_pic_idx),
            (Some(2), true, Some(0), Some(9))
        );
        assert!(d.begin && !d.end && d.keyframe());
        assert_eq!(d.len, 5);
    }

    #[test]
    fn flexible_with_references() {
        // I P L F E; 7-bit PictureID; TID 1, SID 1; two P_DIFFs.
        let d = parse(&[0xf4, 0x05, 0x22, 0x03, 0x04, 0xee]).unwrap();
        assert_eq!(
            (d.picture_id, d.tid, d.sid, d.tl0_pic_idx),
            (Some(5), Some(1), Some(1), None)
        );
        assert!(d.end && d.inter_picture && !d.keyframe());
        assert_eq!(d.len, 5);
        // A fourth reference is malformed.
        assert_eq!(parse(&[0xd0, 0x05, 0x03, 0x03, 0x03, 0x00]), Err(ParseError::Malformed));
    }

    /// A libwebrtc L3T3_KEY keyframe's first packet: I L B V; SID 0;
    /// three layers with sizes (320x180, 640x360, 1280x720) and a group.
    #[test]
    fn scalability_structure_gives_layers_and_sizes() {
        let p = [
            0xaa, 0x80, 0x07, 0x00, 3,    // I L B V, PictureID 7, TID 0 SID 0, TL0PICIDX
            0x58, // N_S = 2, Y, G
            0x01, 0x40, 0x00, 0xb4, 0x02, 0x80, 0x01, 0x68, 0x05, 0x00, 0x02, 0xd0, //
            0x01, 0x00, // N_G = 1: TID 0, no references
            0x83, // payload
        ];
        let d = parse(&p).unwrap();
        assert!(d.keyframe());
        let ss = d.ss.unwrap();
        assert_eq!(ss.spatial_layers, 3);
        assert_eq!(ss.sizes, Some([(320, 180), (640, 360), (1280, 720)]));
        // Sizes cut short: truncated, not misread.
        assert_eq!(parse(&p[..12]), Err(ParseError::Truncated));
        // Without Y: the layer count only.
        let d = parse(&[0xaa, 0x80, 0x07, 0x00, 3, 0x40, 0x83]).unwrap();
        assert_eq!(
            d.ss,
            Some(ScalabilityStructure {
                spatial_layers: 3,
                sizes: None
            })
        );
    }

    #[test]
    fn truncation_is_an_error() {
        let full = [0xa8u8, 0x81, 0x02, 0x50, 9, 0xaa];
        for n in 0..5 {
            assert_eq!(parse(&full[..n]), Err(ParseError::Truncated), "{n} bytes");
        }
        assert_eq!(parse(&full[..5]), Err(ParseError::NoPayload));
        // No layer indices: temporal layer unknown.
        assert_eq!(parse(&[0x0c, 0x00]).map(|d| d.tid), Ok(None));
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(p in prop::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(d) = parse(&p) {
                prop_assert!(d.len <= p.len());
                prop_assert!(d.len <= 8);
                prop_assert!(d.tid.is_none_or(|t| t < 8));
                prop_assert!(d.picture_id.is_none_or(|id| id < 0x8000));
            }
        }
    }
}
