//! The dependency descriptor RTP header extension (AV1 RTP payload format,
//! appendix A): which spatial and temporal layer each packet's frame
//! belongs to, and where that frame starts and ends, for any codec it is
//! sent with. The SFU reads it from publishers to forward the spatial
//! layers of an AV1 SVC stream (`L2T3`, `L3T3_KEY`): the OBU extension
//! header ([`super::av1`]) is only in a frame's first packet, and a
//! picture's spatial layer frames share one RTP timestamp, so only the
//! descriptor attributes every packet.
//!
//! Every packet carries the three mandatory bytes (start/end of frame, a
//! template id, a frame number); a keyframe's first packet also carries
//! the template dependency structure, which maps template ids to layers
//! and stays in force until the next one. [`DdStream`] keeps it per
//! published stream.
//!
//! Subscribers of an AV1 SVC stream get each packet's descriptor as it
//! came: Chrome assembles and orders AV1 layer frames by it (without it,
//! a picture's layer frames, which share a timestamp, stall its decoder
//! after the first keyframe). Frames the SFU drops are never referenced by
//! those it keeps (upper spatial layers, upper temporal layers), so the
//! descriptor needs no rewriting. Passing it on costs a small allocation
//! per forwarded packet of such streams only, in str0m 0.25's user
//! extension map; every other stream is forwarded without one.
use std::fmt;

use str0m::rtp::{ExtensionSerializer, ExtensionValues};

use super::ParseError;

pub const URI: &str = "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// Templates a structure may define (the template id is 6 bits).
const MAX_TEMPLATES: usize = 64;
/// Decode targets (`dt_cnt_minus_one` is 5 bits).
const MAX_DECODE_TARGETS: usize = 32;
/// Spatial layers whose resolutions are kept.
pub const MAX_SPATIAL: usize = 4;

/// Decode target indication "switch": a receiver may start decoding this
/// target at the frame.
const DTI_SWITCH: u8 = 2;

/// The extension's bytes as str0m received them. Kept raw because reading
/// them needs the stream's structure, which a stateless serializer does
/// not have; inline, so no buffer of its own. str0m's user value map
/// still costs two small allocations (the map and its `Arc` slot) per
/// received packet that carries a descriptor (Chrome's VP8 and AV1 once it
/// is negotiated), and the router adds one per forwarded packet of AV1 SVC
/// streams only (see the module docs).
#[derive(Clone, Copy)]
pub struct DdBytes {
    len: u8,
    buf: [u8; 255],
}

impl DdBytes {
    pub fn new(b: &[u8]) -> Option<DdBytes> {
        let len = u8::try_from(b.len()).ok()?;
        let mut buf = [0; 255];
        buf[..b.len()].copy_from_slice(b);
        Some(DdBytes { len, buf })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl fmt::Debug for DdBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DdBytes({:02x?})", self.bytes())
    }
}

/// Registered with every `Rtc`: str0m negotiates the extension, hands a
/// publisher's bytes over and writes them to a subscriber where the
/// router attached them.
#[derive(Debug)]
pub struct DdSerializer;

impl ExtensionSerializer for DdSerializer {
    fn write_to(&self, buf: &mut [u8], ev: &ExtensionValues) -> usize {
        let Some(dd) = ev.user_values.get::<DdBytes>() else {
            return 0;
        };
        let b = dd.bytes();
        match buf.get_mut(..b.len()) {
            Some(out) => {
                out.copy_from_slice(b);
                b.len()
            }
            None => 0,
        }
    }

    fn parse_value(&self, buf: &[u8], ev: &mut ExtensionValues) -> bool {
        // Shorter than the mandatory fields: not a descriptor.
        if buf.len() < 3 {
            return false;
        }
        match DdBytes::new(buf) {
            Some(b) => {
                ev.user_values.set(b);
                true
            }
            None => false,
        }
    }

    fn is_video(&self) -> bool {
        true
    }

    fn is_audio(&self) -> bool {
        false
    }

    fn requires_two_byte_form(&self, ev: &ExtensionValues) -> bool {
        // Only for a descriptor that does not fit the one-byte form's 16
        // bytes (a keyframe's structure); other packets keep that form.
        ev.user_values.get::<DdBytes>().is_some_and(|d| d.bytes().len() > 16)
    }
}

/// A template dependency structure: per template its layers and decode
/// target indications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Structure {
    template_id_offset: u8,
    templates: u8,
    decode_targets: u8,
    /// (spatial, temporal) of each template.
    layers: [(u8, u8); MAX_TEMPLATES],
    /// Each template's DTIs, two bits per decode target.
    dtis: [u64; MAX_TEMPLATES],
    /// (spatial, temporal) of each decode target: the highest layers of
    /// the templates it is present in.
    target_layers: [(u8, u8); MAX_DECODE_TARGETS],
    pub max_spatial: u8,
    pub max_temporal: u8,
    /// Render sizes of the spatial layers, when the structure has them.
    pub resolutions: Option<[(u16, u16); MAX_SPATIAL]>,
    /// Frame number of the packet that carried it, so a late retransmission
    /// of an older keyframe does not replace a newer structure.
    frame_number: u16,
}

/// What one packet's descriptor says about its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DdFrame {
    pub start_of_frame: bool,
    pub end_of_frame: bool,
    pub frame_number: u16,
    pub spatial: u8,
    pub temporal: u8,
    /// The frame is a switching point into its own layer (its DTI for the
    /// decode target of its spatial and temporal layer is "switch").
    pub switch: bool,
}

/// A packet's descriptor: the frame, and the structure it carried.
#[derive(Debug)]
pub struct Parsed {
    pub frame: Option<DdFrame>,
    pub structure: Option<Box<Structure>>,
}

/// MSB-first bit reader over untrusted bytes.
struct Bits<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: u32) -> Result<u32, ParseError> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.buf.get(self.pos / 8).ok_or(ParseError::Truncated)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool, ParseError> {
        Ok(self.read(1)? == 1)
    }

    /// `ns(n)`: a non-symmetric unsigned value below `n`.
    fn ns(&mut self, n: u32) -> Result<u32, ParseError> {
        let w = 32 - n.leading_zeros();
        if w == 0 {
            return Ok(0);
        }
        let m = (1u32 << w) - n;
        let v = self.read(w - 1)?;
        if v < m {
            return Ok(v);
        }
        let extra = self.read(1)?;
        Ok((v << 1) - m + extra)
    }
}

/// Reads one packet's descriptor; `known` is the stream's structure in
/// force, which the packet's own replaces for its frame.
pub fn parse(bytes: &[u8], known: Option<&Structure>) -> Result<Parsed, ParseError> {
    let mut r = Bits { buf: bytes, pos: 0 };
    let start_of_frame = r.flag()?;
    let end_of_frame = r.flag()?;
    let template_id = r.read(6)? as u8;
    let frame_number = r.read(16)? as u16;
    let (mut has_structure, mut active_present, mut custom_dtis) = (false, false, false);
    if bytes.len() > 3 {
        has_structure = r.flag()?;
        active_present = r.flag()?;
        custom_dtis = r.flag()?;
        // custom fdiffs and chains: not needed to place a frame.
        r.read(2)?;
    }
    let structure = if has_structure {
        Some(Box::new(parse_structure(&mut r, frame_number)?))
    } else {
        None
    };
    let Some(s) = structure.as_deref().or(known) else {
        return Ok(Parsed { frame: None, structure });
    };
    if active_present {
        r.read(u32::from(s.decode_targets))?;
    }
    let index = (usize::from(template_id) + MAX_TEMPLATES - usize::from(s.template_id_offset)) % MAX_TEMPLATES;
    if index >= usize::from(s.templates) {
        return Err(ParseError::Malformed);
    }
    let (spatial, temporal) = s.layers[index];
    let dtis = if custom_dtis {
        let mut d = 0u64;
        for dt in 0..s.decode_targets {
            d |= u64::from(r.read(2)?) << (2 * dt);
        }
        d
    } else {
        s.dtis[index]
    };
    let switch = (0..s.decode_targets).any(|dt| {
        s.target_layers[usize::from(dt)] == (spatial, temporal) && (dtis >> (2 * dt)) & 3 == u64::from(DTI_SWITCH)
    });
    Ok(Parsed {
        frame: Some(DdFrame {
            start_of_frame,
            end_of_frame,
            frame_number,
            spatial,
            temporal,
            switch,
        }),
        structure,
    })
}

fn parse_structure(r: &mut Bits<'_>, frame_number: u16) -> Result<Structure, ParseError> {
    let template_id_offset = r.read(6)? as u8;
    let decode_targets = r.read(5)? as u8 + 1;
    let mut s = Structure {
        template_id_offset,
        templates: 0,
        decode_targets,
        layers: [(0, 0); MAX_TEMPLATES],
        dtis: [0; MAX_TEMPLATES],
        target_layers: [(0, 0); MAX_DECODE_TARGETS],
        max_spatial: 0,
        max_temporal: 0,
        resolutions: None,
        frame_number,
    };
    // template_layers(): each template's layers, then how the next differs.
    let (mut spatial, mut temporal) = (0u8, 0u8);
    loop {
        let slot = s
            .layers
            .get_mut(usize::from(s.templates))
            .ok_or(ParseError::Malformed)?;
        *slot = (spatial, temporal);
        s.templates += 1;
        match r.read(2)? {
            0 => {}
            1 => {
                temporal = temporal.checked_add(1).ok_or(ParseError::Malformed)?;
                s.max_temporal = s.max_temporal.max(temporal);
            }
            2 => {
                temporal = 0;
                spatial = spatial.checked_add(1).ok_or(ParseError::Malformed)?;
            }
            _ => break,
        }
    }
    s.max_spatial = spatial;
    let templates = usize::from(s.templates);
    for t in 0..templates {
        for dt in 0..decode_targets {
            s.dtis[t] |= u64::from(r.read(2)?) << (2 * dt);
        }
    }
    // template_fdiffs(): references, not needed to place a frame.
    for _ in 0..templates {
        while r.flag()? {
            r.read(4)?;
        }
    }
    // template_chains()
    let chains = r.ns(u32::from(decode_targets) + 1)?;
    if chains > 0 {
        for _ in 0..decode_targets {
            r.ns(chains)?;
        }
        for _ in 0..templates {
            for _ in 0..chains {
                r.read(4)?;
            }
        }
    }
    // decode_target_layers(): derived, no bits.
    for dt in 0..usize::from(decode_targets) {
        let mut layers = (0, 0);
        for t in 0..templates {
            if (s.dtis[t] >> (2 * dt)) & 3 != 0 {
                layers.0 = layers.0.max(s.layers[t].0);
                layers.1 = layers.1.max(s.layers[t].1);
            }
        }
        s.target_layers[dt] = layers;
    }
    if r.flag()? {
        let mut res = [(0u16, 0u16); MAX_SPATIAL];
        for sid in 0..=usize::from(s.max_spatial) {
            let w = r.read(16)? as u16 + 1;
            let h = r.read(16)? as u16 + 1;
            if let Some(slot) = res.get_mut(sid) {
                *slot = (w, h);
            }
        }
        s.resolutions = Some(res);
    }
    Ok(s)
}

/// The structure in force for one published stream.
#[derive(Debug, Default)]
pub struct DdStream {
    structure: Option<Box<Structure>>,
    /// A structure was adopted since [`DdStream::take_new`] last looked.
    fresh: bool,
}

impl DdStream {
    pub fn structure(&self) -> Option<&Structure> {
        self.structure.as_deref()
    }

    /// The structure, once after each packet that brought a new one (so
    /// the track's layer count and sizes are not rewritten per packet).
    pub fn take_new(&mut self) -> Option<&Structure> {
        if !std::mem::take(&mut self.fresh) {
            return None;
        }
        self.structure.as_deref()
    }

    /// One packet's frame, `None` when the descriptor cannot be read (no
    /// structure seen yet, or malformed): such a packet is forwarded as if
    /// unlayered.
    pub fn on_packet(&mut self, bytes: &[u8]) -> Option<DdFrame> {
        let parsed = parse(bytes, self.structure.as_deref()).ok()?;
        if let Some(s) = parsed.structure {
            let newer = self
                .structure
                .as_ref()
                .is_none_or(|old| s.frame_number.wrapping_sub(old.frame_number) < 0x8000);
            if newer {
                // Every keyframe's: cheap, and its sizes may have changed.
                self.fresh = true;
                self.structure = Some(s);
            }
        }
        parsed.frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MSB-first bit writer for building descriptors.
    #[derive(Default)]
    struct W {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl W {
        fn put(&mut self, n: u32, v: u32) -> &mut Self {
            for i in (0..n).rev() {
                if self.bits.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                let bit = ((v >> i) & 1) as u8;
                let last = self.bytes.len() - 1;
                self.bytes[last] |= bit << (7 - self.bits % 8);
                self.bits += 1;
            }
            self
        }
    }

    /// An L2T2 structure as libwebrtc's `ScalabilityStructureL2T2` writes
    /// it: templates S0T0, S0T1, S1T0, S1T1 (plus a keyframe template per
    /// spatial layer), four decode targets.
    fn l2t2_structure(w: &mut W, resolutions: bool) {
        w.put(6, 0); // template_id_offset
        w.put(5, 3); // four decode targets
                     // Templates: S0T0 (key), S0T0, S0T1 | S1T0 (key), S1T0, S1T1.
        for idc in [0, 1, 2, 0, 1, 3] {
            w.put(2, idc);
        }
        // DTIs per template for DT0 (S0T0), DT1 (S0T1), DT2 (S1T0), DT3 (S1T1);
        // 2 = switch, 3 = required, 1 = discardable, 0 = not present.
        let dtis: [[u32; 4]; 6] = [
            [2, 2, 2, 2],
            [3, 3, 3, 3],
            [0, 1, 0, 1],
            [0, 0, 2, 2],
            [0, 0, 3, 3],
            [0, 0, 0, 1],
        ];
        for t in dtis {
            for d in t {
                w.put(2, d);
            }
        }
        // fdiffs: none for the keyframe templates, one for the others.
        for f in [0, 1, 1, 1, 1, 1] {
            if f == 1 {
                w.put(1, 1).put(4, 0);
            }
            w.put(1, 0);
        }
        // Two chains: ns(5) = 2 is "010" (w=3, m=3: v=2 < 3 in 2 bits).
        w.put(2, 2);
        for c in [0, 0, 1, 1] {
            w.put(1, c); // ns(2): one bit
        }
        for _ in 0..6 {
            w.put(4, 0).put(4, 0);
        }
        w.put(1, u32::from(resolutions));
        if resolutions {
            w.put(16, 319).put(16, 179).put(16, 639).put(16, 359);
        }
    }

    fn packet(start: bool, end: bool, template: u32, frame: u32) -> W {
        let mut w = W::default();
        w.put(1, u32::from(start))
            .put(1, u32::from(end))
            .put(6, template)
            .put(16, frame);
        w
    }

    #[test]
    fn a_keyframe_structure_places_the_frames_after_it() {
        let mut w = packet(true, false, 0, 100);
        w.put(1, 1).put(1, 0).put(1, 0).put(2, 0);
        l2t2_structure(&mut w, true);
        let mut stream = DdStream::default();
        let key = stream.on_packet(&w.bytes).unwrap();
        assert_eq!(
            (key.spatial, key.temporal, key.start_of_frame, key.end_of_frame),
            (0, 0, true, false)
        );
        assert!(key.switch);
        let s = stream.take_new().unwrap();
        assert_eq!(
            (s.max_spatial, s.max_temporal, s.templates, s.decode_targets),
            (1, 1, 6, 4)
        );
        assert_eq!(s.resolutions.unwrap()[..2], [(320, 180), (640, 360)]);
        assert!(stream.take_new().is_none(), "reported once");
        // Mandatory fields only, from here on.
        let f = stream.on_packet(&packet(true, true, 5, 101).bytes).unwrap();
        assert_eq!((f.spatial, f.temporal, f.frame_number, f.switch), (1, 1, 101, false));
        let f = stream.on_packet(&packet(false, true, 3, 102).bytes).unwrap();
        assert_eq!((f.spatial, f.temporal, f.start_of_frame, f.switch), (1, 0, false, true));
        // A template the structure does not have.
        assert!(stream.on_packet(&packet(true, true, 6, 103).bytes).is_none());
    }

    #[test]
    fn nothing_is_known_before_a_structure() {
        let mut stream = DdStream::default();
        assert!(stream.on_packet(&packet(true, true, 0, 1).bytes).is_none());
    }

    #[test]
    fn template_ids_count_from_the_offset() {
        let mut w = packet(true, true, 62, 7);
        w.put(1, 1).put(4, 0);
        // Offset 61: template id 62 is index 1; one decode target; S0T0, S0T1.
        w.put(6, 61).put(5, 0).put(2, 1).put(2, 3);
        w.put(2, 2).put(2, 1); // DTIs
        w.put(1, 0).put(1, 0); // no fdiffs
        w.put(1, 0); // ns(2) = 0: no chains
        w.put(1, 0); // no resolutions
        let p = parse(&w.bytes, None).unwrap();
        let f = p.frame.unwrap();
        assert_eq!((f.spatial, f.temporal), (0, 1));
        // Index (0 + 64 - 61) % 64 = 3: beyond two templates.
        let s = p.structure.unwrap();
        assert_eq!(
            parse(&packet(true, true, 0, 8).bytes, Some(&s)).unwrap_err(),
            ParseError::Malformed
        );
        assert_eq!(
            parse(&packet(true, true, 61, 8).bytes, Some(&s))
                .unwrap()
                .frame
                .unwrap()
                .temporal,
            0
        );
    }

    #[test]
    fn custom_dtis_override_the_templates() {
        let mut w = packet(true, false, 0, 100);
        w.put(1, 1).put(1, 0).put(1, 0).put(2, 0);
        l2t2_structure(&mut w, false);
        let mut stream = DdStream::default();
        stream.on_packet(&w.bytes).unwrap();
        // S0T1 (template 2) marked "switch" for DT1 by custom DTIs; the
        // active decode target mask (four bits) comes first.
        let mut w = packet(true, true, 2, 101);
        w.put(1, 0).put(1, 1).put(1, 1).put(2, 0).put(4, 0b1111);
        for d in [3, 2, 0, 0] {
            w.put(2, d);
        }
        let f = stream.on_packet(&w.bytes).unwrap();
        assert_eq!((f.spatial, f.temporal, f.switch), (0, 1, true));
    }

    #[test]
    fn an_older_structure_does_not_replace_a_newer_one() {
        let mut stream = DdStream::default();
        let mut newer = packet(true, false, 0, 5);
        newer.put(1, 1).put(1, 0).put(1, 0).put(2, 0);
        l2t2_structure(&mut newer, true);
        stream.on_packet(&newer.bytes).unwrap();
        // Frame 65530 (before 5, across the wrap) had no resolutions.
        let mut older = packet(true, false, 0, 65530);
        older.put(1, 1).put(1, 0).put(1, 0).put(2, 0);
        l2t2_structure(&mut older, false);
        stream.on_packet(&older.bytes).unwrap();
        assert!(stream.structure().unwrap().resolutions.is_some());
    }

    #[test]
    fn truncated_and_malformed_descriptors_are_errors() {
        assert_eq!(parse(&[0x80, 0x00], None).unwrap_err(), ParseError::Truncated);
        // A structure flag with nothing after it.
        assert_eq!(
            parse(&[0x80, 0x00, 0x01, 0x80], None).unwrap_err(),
            ParseError::Truncated
        );
        // More than 64 templates: idc 0 forever.
        let mut w = packet(true, true, 0, 1);
        w.put(1, 1).put(4, 0).put(6, 0).put(5, 0);
        for _ in 0..70 {
            w.put(2, 0);
        }
        assert_eq!(parse(&w.bytes, None).unwrap_err(), ParseError::Malformed);
        // Anything at all: no panic.
        let mut seed = 0x1234_5678u32;
        for len in 3..80 {
            for _ in 0..50 {
                let b: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (seed >> 24) as u8
                    })
                    .collect();
                let mut stream = DdStream::default();
                let _ = stream.on_packet(&b);
                let _ = stream.on_packet(&b[..3]);
            }
        }
    }

    #[test]
    fn ns_reads_the_short_and_long_codes() {
        // ns(5): w=3, m=3: 0..=2 in two bits, 3 and 4 as 3 bits "110", "111".
        let mut r = Bits {
            buf: &[0b0001_1101, 0b1100_0000],
            pos: 0,
        };
        assert_eq!(r.ns(5).unwrap(), 0);
        assert_eq!(r.ns(5).unwrap(), 1);
        assert_eq!(r.ns(5).unwrap(), 3);
        assert_eq!(r.ns(5).unwrap(), 4);
        let mut r = Bits { buf: &[0], pos: 0 };
        assert_eq!(r.ns(1).unwrap(), 0);
        assert_eq!(r.pos, 0);
    }
}
