//! The VP8 RTP payload descriptor (RFC 7741 section 4.2), read without
//! allocating. The input is untrusted: every field is bounds-checked and a
//! short or inconsistent descriptor is an error, never a panic.
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! |X|R|N|S|R| PID |   X: extensions follow, N: non-reference frame,
//! |I|L|T|K| RSV   |   S: start of a partition, PID: partition index
//! |M| PictureID   |   I: PictureID (M: 15 bits instead of 7)
//! |   PictureID   |
//! |   TL0PICIDX   |   L: TL0PICIDX
//! |TID|Y| KEYIDX  |   T: TID and Y (layer sync), K: KEYIDX
//! ```

use super::ParseError;

/// A VP8 PictureID and its width on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PictureId {
    pub value: u16,
    /// 15 bits (M set) rather than 7.
    pub long: bool,
}

impl PictureId {
    /// The number space the field wraps in.
    pub fn modulus(self) -> u16 {
        if self.long {
            1 << 15
        } else {
            1 << 7
        }
    }
}

/// The fields of one packet's descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// N: no other frame references this one.
    pub non_reference: bool,
    /// S: this packet starts a partition.
    pub start_of_partition: bool,
    pub partition_id: u8,
    pub picture_id: Option<PictureId>,
    pub tl0_pic_idx: Option<u8>,
    /// Temporal layer index (T bit set).
    pub tid: Option<u8>,
    /// Y: this frame depends only on the base layer (TL0) frame, so a
    /// receiver can start receiving its layer here.
    pub layer_sync: bool,
    pub key_idx: Option<u8>,
    /// Bytes of descriptor before the VP8 payload.
    pub len: usize,
    /// The first packet of a key frame (start of partition 0 and the frame
    /// tag's P bit clear).
    pub keyframe: bool,
}

impl Vp8Descriptor {
    /// The first packet of a frame.
    pub fn frame_start(&self) -> bool {
        self.start_of_partition && self.partition_id == 0
    }
}

/// Parses the descriptor at the start of an RTP payload.
pub fn parse(p: &[u8]) -> Result<Vp8Descriptor, ParseError> {
    let mut r = Reader { p, i: 0 };
    let b0 = r.byte()?;
    let mut d = Vp8Descriptor {
        non_reference: b0 & 0x20 != 0,
        start_of_partition: b0 & 0x10 != 0,
        partition_id: b0 & 0x07,
        ..Vp8Descriptor::default()
    };
    if b0 & 0x80 != 0 {
        let x = r.byte()?;
        if x & 0x80 != 0 {
            let hi = r.byte()?;
            d.picture_id = Some(if hi & 0x80 != 0 {
                let lo = r.byte()?;
                PictureId {
                    value: u16::from(hi & 0x7f) << 8 | u16::from(lo),
                    long: true,
                }
            } else {
                PictureId {
                    value: u16::from(hi),
                    long: false,
                }
            });
        }
        if x & 0x40 != 0 {
            d.tl0_pic_idx = Some(r.byte()?);
        }
        if x & 0x30 != 0 {
            let b = r.byte()?;
            if x & 0x20 != 0 {
                d.tid = Some(b >> 6);
                d.layer_sync = b & 0x20 != 0;
            }
            if x & 0x10 != 0 {
                d.key_idx = Some(b & 0x1f);
            }
        }
    }
    d.len = r.i;
    // A descriptor with no VP8 data after it is not a valid packet.
    let first = *p.get(d.len).ok_or(ParseError::NoPayload)?;
    d.keyframe = d.frame_start() && first & 0x01 == 0;
    Ok(d)
}

struct Reader<'a> {
    p: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, ParseError> {
        let b = *self.p.get(self.i).ok_or(ParseError::Truncated)?;
        self.i += 1;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minimal_descriptor() {
        let d = parse(&[0x10, 0x00]).unwrap();
        assert!(d.frame_start() && d.keyframe);
        assert_eq!((d.len, d.tid, d.picture_id), (1, None, None));
        let d = parse(&[0x10, 0x01]).unwrap();
        assert!(!d.keyframe);
        let d = parse(&[0x21, 0x00]).unwrap();
        assert!(d.non_reference && !d.start_of_partition && !d.keyframe);
        assert_eq!(d.partition_id, 1);
    }

    #[test]
    fn all_extensions_with_long_picture_id() {
        // X; I L T K; M + PictureID 0x1234; TL0PICIDX 7; TID 2, Y, KEYIDX 5.
        let p = [0x90, 0xf0, 0x80 | 0x12, 0x34, 7, 0x80 | 0x20 | 5, 0x01];
        let d = parse(&p).unwrap();
        assert_eq!(
            d.picture_id,
            Some(PictureId {
                value: 0x1234,
                long: true
            })
        );
        assert_eq!(
            (d.tl0_pic_idx, d.tid, d.layer_sync, d.key_idx),
            (Some(7), Some(2), true, Some(5))
        );
        assert_eq!(d.len, 6);
        assert!(d.frame_start() && !d.keyframe);
    }

    #[test]
    fn short_picture_id_and_tid_without_keyidx() {
        let p = [0x90, 0xe0, 0x55, 200, 0x40, 0x00];
        let d = parse(&p).unwrap();
        assert_eq!(
            d.picture_id,
            Some(PictureId {
                value: 0x55,
                long: false
            })
        );
        assert_eq!(d.picture_id.map(|p| p.modulus()), Some(128));
        assert_eq!(
            (d.tl0_pic_idx, d.tid, d.layer_sync, d.key_idx),
            (Some(200), Some(1), false, None)
        );
        assert!(d.keyframe);
        // KEYIDX alone: the octet carries no TID.
        let d = parse(&[0x80, 0x10, 0xff, 0x00]).unwrap();
        assert_eq!((d.tid, d.key_idx, d.layer_sync), (None, Some(0x1f), false));
    }

    #[test]
    fn truncation_is_an_error() {
        let full = [0x90u8, 0xf0, 0x80 | 0x12, 0x34, 7, 0xa5, 0x01];
        // Six descriptor bytes: any shorter prefix is truncated, exactly six
        // has no payload.
        for n in 0..6 {
            assert_eq!(parse(&full[..n]), Err(ParseError::Truncated), "{n} bytes");
        }
        assert_eq!(parse(&full[..6]), Err(ParseError::NoPayload));
        assert_eq!(parse(&[]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0x10]), Err(ParseError::NoPayload));
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(p in prop::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(d) = parse(&p) {
                prop_assert!(d.len < p.len());
                prop_assert!(d.len <= 6);
                prop_assert!(d.tid.is_none_or(|t| t < 4));
                prop_assert!(d.picture_id.is_none_or(|id| id.value < id.modulus()));
            }
        }

        #[test]
        fn round_trips_what_it_writes(
            pid in prop::option::of((0u16..0x8000, any::<bool>())),
            tl0 in prop::option::of(any::<u8>()),
            tid in prop::option::of((0u8..4, any::<bool>())),
            key in prop::option::of(0u8..32),
            start in any::<bool>(),
            tag in any::<u8>(),
        ) {
            let mut p = vec![if start { 0x10 } else { 0 }];
            let x = u8::from(pid.is_some()) << 7 | u8::from(tl0.is_some()) << 6
                | u8::from(tid.is_some()) << 5 | u8::from(key.is_some()) << 4;
            if x != 0 {
                p[0] |= 0x80;
                p.push(x);
            }
            let pid = pid.map(|(v, long)| PictureId { value: if long { v } else { v & 0x7f }, long });
            if let Some(id) = pid {
                if id.long {
                    p.push(0x80 | (id.value >> 8) as u8);
                }
                p.push(id.value as u8);
            }
            p.extend(tl0);
            if tid.is_some() || key.is_some() {
                let (t, y) = tid.unwrap_or((0, false));
                p.push(t << 6 | u8::from(y) << 5 | key.unwrap_or(0));
            }
            let len = p.len();
            p.push(tag);
            let d = parse(&p).unwrap();
            prop_assert_eq!(d.len, len);
            prop_assert_eq!(d.picture_id, pid);
            prop_assert_eq!(d.tl0_pic_idx, tl0);
            prop_assert_eq!(d.tid, tid.map(|t| t.0));
            prop_assert_eq!(d.layer_sync, tid.is_some_and(|t| t.1));
            prop_assert_eq!(d.key_idx, key);
            prop_assert_eq!(d.keyframe, start && tag & 1 == 0);
        }
    }
}
