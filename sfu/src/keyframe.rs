//! Is this RTP payload the start of a keyframe? Just enough of each
//! codec's payload format to answer, without decoding and without
//! allocating; anything malformed answers `false` (the network is
//! untrusted, and a false negative only delays a layer switch).
use str0m::format::Codec;

/// Whether `payload` (RTP payload, header stripped) starts or belongs to a
/// keyframe of `codec`.
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::H264 => h264(payload),
        Codec::Av1 => av1(payload),
        _ => false,
    }
}

/// RFC 7741: skip the payload descriptor; at the start of partition 0 the
/// VP8 frame tag's P bit is 0 for a key frame.
fn vp8(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start_of_partition = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    if !start_of_partition || pid != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 15 bits when M is set, else 7.
            let Some(&pic) = p.get(i) else { return false };
            i += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    p.get(i).is_some_and(|b| b & 0x01 == 0)
}

/// RFC 9628: P (inter-picture predicted) clear and B (beginning of frame)
/// set, on the base spatial layer: in an SVC picture every layer frame is
/// intra-coded, but only the first starts the keyframe.
fn vp9(p: &[u8]) -> bool {
    crate::codec::vp9::parse(p).is_ok_and(|d| d.keyframe())
}

/// RFC 6184: an IDR slice or an SPS, alone, aggregated (STAP-A) or at the
/// start of a fragment (FU-A).
fn h264(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let key = |t: u8| t == 5 || t == 7;
    match b0 & 0x1f {
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                if key(p[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => p.get(1).is_some_and(|b| b & 0x80 != 0 && key(b & 0x1f)),
        t => key(t),
    }
}

/// AV1 RTP: the aggregation header's N bit marks the first packet of a
/// coded video sequence, which starts with a keyframe.
fn av1(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_and_delta() {
        // S=1, PID=0, no extensions, then frame tag with P=0 / P=1.
        assert!(is_keyframe(Codec::Vp8, &[0x10, 0x00]));
        assert!(!is_keyframe(Codec::Vp8, &[0x10, 0x01]));
        // Not the start of a partition.
        assert!(!is_keyframe(Codec::Vp8, &[0x00, 0x00]));
        // X, I with a 15-bit PictureID, L, T: 5 descriptor bytes then tag.
        assert!(is_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x81, 0x23, 0x01, 0x20, 0x00]));
        assert!(!is_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x81]));
    }

    #[test]
    fn h264_forms() {
        assert!(is_keyframe(Codec::H264, &[0x65]));
        assert!(is_keyframe(Codec::H264, &[0x67, 0x42]));
        assert!(!is_keyframe(Codec::H264, &[0x41]));
        // STAP-A with an SPS inside.
        assert!(is_keyframe(Codec::H264, &[0x78, 0x00, 0x02, 0x67, 0x42]));
        // FU-A start of an IDR, and its continuation.
        assert!(is_keyframe(Codec::H264, &[0x7c, 0x85]));
        assert!(!is_keyframe(Codec::H264, &[0x7c, 0x05]));
        // Truncated STAP-A.
        assert!(!is_keyframe(Codec::H264, &[0x78, 0xff]));
    }

    #[test]
    fn vp9_av1_and_garbage() {
        assert!(is_keyframe(Codec::Vp9, &[0x08, 0x00]));
        assert!(!is_keyframe(Codec::Vp9, &[0x48, 0x00]));
        // L, B: the intra frame of spatial layer 1 does not start one.
        assert!(is_keyframe(Codec::Vp9, &[0x28, 0x00, 0x00, 0x00]));
        assert!(!is_keyframe(Codec::Vp9, &[0x28, 0x02, 0x00, 0x00]));
        assert!(is_keyframe(Codec::Av1, &[0x08]));
        assert!(!is_keyframe(Codec::Av1, &[0x10]));
        for c in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::Opus] {
            assert!(!is_keyframe(c, &[]));
        }
    }
}
