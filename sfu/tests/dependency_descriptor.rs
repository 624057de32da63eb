//! The dependency descriptor through the router.
//!
//! AV1 spatial layers inside one stream (SVC), placed by it: a publisher
//! sends three spatial layers per picture on one SSRC, each layer frame
//! over two packets of which only the first shows an OBU header, every
//! packet with its descriptor and the keyframe's first with the template
//! structure. A subscriber gets the spatial layers its rendered size
//! allows, whole layer frames (the continuation packets included), each
//! picture ending (RTP marker) on the top layer it gets, with the
//! descriptor passed on untouched and sequence numbers without gaps;
//! moving up waits for a keyframe.
//!
//! VP8 temporal layers told only by it: once the descriptor is negotiated,
//! Chrome's VP8 payload descriptor has no TID (nor PictureID), so the
//! frame rate cap must read the layers from the dependency descriptor.
mod common;

use std::time::Duration;

use common::{Net, FRAME};
use sfu::codec::dd::{self, DdBytes, DdSerializer, DdStream};
use sfu::participant::Role;
use sfu::router::TrackId;
use str0m::bwe::Bitrate;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::rtp::{Extension, ExtensionValues, RtpWrite};
use str0m::RtcConfig;

/// Payload bytes of each packet of a layer's frame (two per frame), so a
/// received packet tells its layer.
const SIZES: [usize; 3] = [300, 500, 700];

/// MSB-first bits, for writing descriptors.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    n: usize,
}

impl Bits {
    fn put(&mut self, width: u32, v: u32) -> &mut Bits {
        for i in (0..width).rev() {
            if self.n.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let last = self.bytes.len() - 1;
            self.bytes[last] |= (((v >> i) & 1) as u8) << (7 - self.n % 8);
            self.n += 1;
        }
        self
    }
}

/// One packet's descriptor, with the template structure `structure`
/// writes when it is the keyframe's first packet.
fn descriptor(start: bool, end: bool, template: u32, frame: u16, structure: Option<fn(&mut Bits)>) -> Vec<u8> {
    let mut b = Bits::default();
    b.put(1, u32::from(start))
        .put(1, u32::from(end))
        .put(6, template)
        .put(16, u32::from(frame));
    if let Some(write) = structure {
        b.put(1, 1).put(4, 0);
        write(&mut b);
    }
    b.bytes
}

/// Writes a structure: template id offset 0, `layers` (the next layer
/// codes), `dtis` per template, no frame references, no chains, and the
/// spatial layers' sizes if any.
fn structure(b: &mut Bits, layers: &[u32], dtis: &[[u32; 3]], sizes: &[(u32, u32)]) {
    b.put(6, 0).put(5, 2); // three decode targets
    for idc in layers {
        b.put(2, *idc);
    }
    for t in dtis {
        for d in t {
            b.put(2, *d);
        }
    }
    for _ in dtis {
        b.put(1, 0); // no fdiffs
    }
    b.put(2, 0); // ns(4) = 0: no chains
    b.put(1, u32::from(!sizes.is_empty()));
    for (w, h) in sizes {
        b.put(16, w - 1).put(16, h - 1);
    }
}

/// AV1 L3T1: template 2s is layer s's keyframe frame, 2s + 1 its delta
/// frames; a decode target per spatial layer; sizes 320x180, 640x360 and
/// 1280x720.
fn l3t1(b: &mut Bits) {
    let dtis = [[2, 2, 2], [3, 3, 3], [0, 2, 2], [0, 3, 3], [0, 0, 2], [0, 0, 3]];
    structure(b, &[0, 2, 0, 2, 0, 3], &dtis, &[(320, 180), (640, 360), (1280, 720)]);
}

/// L1T3: templates keyframe, TL0, TL1, TL2; a decode target per temporal
/// layer; every upper layer frame a switching point into its layer.
fn l1t3(b: &mut Bits) {
    structure(b, &[0, 1, 1, 3], &[[2, 2, 2], [3, 3, 3], [0, 2, 2], [0, 0, 2]], &[]);
}

/// Registers the descriptor, as the SFU does and as Chrome offers it.
fn with_dd(c: &mut RtcConfig) {
    c.extension_map()
        .set(12, Extension::with_serializer(dd::URI, DdSerializer));
}

/// VP8 payload bytes per packet of a temporal layer's frame.
const VP8_SIZES: [usize; 3] = [310, 410, 510];
/// The libwebrtc L1T3 pattern.
const PATTERN: [u8; 4] = [0, 2, 1, 2];

struct Publisher {
    seq: u64,
    picture: u64,
    frame_number: u16,
    force_key: bool,
    requested: usize,
    /// VP8 L1T3 as Chrome sends it with the descriptor (no TID in the
    /// payload descriptor); else AV1 L3T1.
    vp8: bool,
}

impl Publisher {
    fn send_picture(&mut self, net: &mut Net, c: usize, mid: Mid) {
        let requested = common::keyframe_requested(net, c);
        if requested {
            self.requested += 1;
        }
        self.force_key |= requested;
        if self.vp8 {
            self.send_vp8_frame(net, c, mid);
            return;
        }
        let key = self.picture.is_multiple_of(150) || self.force_key;
        self.force_key &= !key;
        let now = net.now;
        let rtc = &mut net.clients[c].rtc;
        let pt = rtc.codec_config().find(|p| p.spec().codec == Codec::Av1).unwrap().pt();
        for (sid, size) in SIZES.iter().enumerate() {
            let template = 2 * sid as u32 + u32::from(!key);
            for k in 0..2 {
                let mut payload = vec![0xAAu8; *size];
                if k == 0 {
                    // Z=0 Y=1 W=1 (N on the keyframe), OBU_FRAME with its
                    // extension byte (temporal 0, spatial sid).
                    payload[0] = 0x50 | u8::from(key && sid == 0) << 3;
                    payload[1] = 0x34;
                    payload[2] = (sid as u8) << 3;
                } else {
                    // Z=1 Y=0 W=1: the rest of the OBU, no header.
                    payload[0] = 0x90;
                }
                let mut ext = ExtensionValues::default();
                let first = key && sid == 0 && k == 0;
                let d = descriptor(
                    k == 0,
                    k == 1,
                    template,
                    self.frame_number,
                    first.then_some(l3t1 as fn(&mut Bits)),
                );
                ext.user_values.set(DdBytes::new(&d).unwrap());
                let mut api = rtc.direct_api();
                let stream = api.stream_tx_by_mid(mid, None).expect("publisher stream");
                stream.write_rtp(
                    RtpWrite::new(pt, self.seq.into(), 3000 * self.picture as u32, now, payload)
                        .marker(sid == 2 && k == 1)
                        .ext_vals(ext)
                        .nackable(true),
                );
                self.seq += 1;
            }
            self.frame_number = self.frame_number.wrapping_add(1);
        }
        self.picture += 1;
    }

    /// One frame of two packets whose VP8 descriptor is the bare first
    /// byte (S on the first), the layer only in the dependency descriptor.
    fn send_vp8_frame(&mut self, net: &mut Net, c: usize, mid: Mid) {
        let tid = PATTERN[(self.picture % 4) as usize];
        let key = tid == 0 && (self.picture.is_multiple_of(150) || self.force_key);
        self.force_key &= !key;
        let template = if key { 0 } else { 1 + u32::from(tid) };
        let now = net.now;
        let rtc = &mut net.clients[c].rtc;
        let pt = rtc.codec_config().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt();
        for k in 0..2 {
            let mut payload = vec![0xAAu8; VP8_SIZES[usize::from(tid)]];
            // S and PID 0; the frame tag's P bit clear on a keyframe.
            payload[0] = if k == 0 { 0x10 } else { 0x00 };
            payload[1] = u8::from(!key);
            let first = key && k == 0;
            let d = descriptor(
                k == 0,
                k == 1,
                template,
                self.frame_number,
                first.then_some(l1t3 as fn(&mut Bits)),
            );
            let mut ext = ExtensionValues::default();
            ext.user_values.set(DdBytes::new(&d).unwrap());
            let mut api = rtc.direct_api();
            let stream = api.stream_tx_by_mid(mid, None).expect("publisher stream");
            stream.write_rtp(
                RtpWrite::new(pt, self.seq.into(), 3000 * self.picture as u32, now, payload)
                    .marker(k == 1)
                    .ext_vals(ext)
                    .nackable(true),
            );
            self.seq += 1;
        }
        self.frame_number = self.frame_number.wrapping_add(1);
        self.picture += 1;
    }
}

/// A packet bob got: sequence number, marker, layer (by size), and what
/// its descriptor says, read as a receiver would (`None`: no descriptor).
#[derive(Debug, Clone, Copy)]
struct Got {
    seq: u64,
    marker: bool,
    sid: u8,
    keyframe: bool,
    dd: Option<dd::DdFrame>,
}

struct Room {
    net: Net,
    bob: sfu::ParticipantId,
    track: TrackId,
    a: usize,
    b: usize,
    mid: Mid,
    publisher: Publisher,
}

impl Room {
    fn new() -> Room {
        Room::with(true, false)
    }

    /// Alice (negotiating the descriptor if `alice_dd`) publishes for 2 s,
    /// so the SFU measures each layer; then bob, who takes it, subscribes
    /// with 10 Mbit/s.
    fn with(alice_dd: bool, vp8: bool) -> Room {
        let mut net = Net::new();
        let now = net.now;
        let alice = net.sfu.create_participant(now, "room", None).unwrap().id;
        let bob = net.sfu.create_participant(now, "room", None).unwrap().id;
        let a = net.add_client_with("10.0.0.2:4000", |c| {
            if alice_dd {
                with_dd(c);
            }
        });
        let b = net.add_client_with("10.0.0.3:4000", with_dd);
        let mut mid = None;
        net.publish_offer(a, alice, |api| {
            mid = Some(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
        });
        assert!(net.run_until(Duration::from_secs(5), |n| n.connected(alice, Role::Publisher)));
        let mid = mid.unwrap();
        let mut room = Room {
            net,
            bob,
            track: TrackId { publisher: alice, mid },
            a,
            b,
            mid,
            publisher: Publisher {
                seq: 65_400,
                picture: 0,
                frame_number: 65_500,
                force_key: false,
                requested: 0,
                vp8,
            },
        };
        room.run(Duration::from_secs(2));
        let now = room.net.now;
        room.net.sfu.set_estimate_override(now, bob, Some(Bitrate::mbps(10)));
        room.net.subscribe_connected(b, bob, &[room.track]);
        room
    }

    fn run(&mut self, d: Duration) {
        let (publisher, a, mid) = (&mut self.publisher, self.a, self.mid);
        self.net.run_paced(d, FRAME, |net| publisher.send_picture(net, a, mid));
    }

    fn received(&self) -> Vec<Got> {
        let mut stream = DdStream::default();
        self.net.clients[self.b]
            .rtp_packets()
            .filter_map(|p| {
                let sid = SIZES.iter().position(|s| *s == p.payload.len())? as u8;
                let dd = p
                    .header
                    .ext_vals
                    .user_values
                    .get::<DdBytes>()
                    .and_then(|b| stream.on_packet(b.bytes()));
                Some(Got {
                    seq: *p.seq_no,
                    marker: p.header.marker,
                    sid,
                    keyframe: p.payload[0] & 0x08 != 0,
                    dd,
                })
            })
            .collect()
    }

    fn limit(&mut self, w: u32, h: u32) {
        let limits = sfu::Limits {
            max_width: w,
            max_height: h,
            ..sfu::Limits::default()
        };
        let now = self.net.now;
        self.net
            .sfu
            .set_track_limits(now, self.bob, self.track, limits)
            .unwrap();
    }
}

/// The spatial layers in `got`, checking that sequence numbers have no
/// gap, every layer frame is whole (both its packets), the descriptor
/// came along and agrees with the packet, and the marker is on the last
/// packet of each picture's top layer only.
fn spatial_layers(got: &[Got]) -> Vec<u8> {
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "sequence gap: {w:?}");
    }
    let start = got
        .iter()
        .position(|g| g.sid == 0 && g.dd.is_some_and(|d| d.start_of_frame))
        .unwrap_or(got.len());
    let got = &got[start..];
    let mut layers = Vec::new();
    for (i, g) in got.iter().enumerate() {
        let d = g.dd.unwrap_or_else(|| panic!("no descriptor read from {g:?}"));
        assert_eq!(d.spatial, g.sid, "descriptor of another layer: {g:?}");
        let next = got.get(i + 1);
        if let Some(n) = next {
            let nd = n.dd.unwrap();
            // Whole frames: a start is followed by its end.
            if d.start_of_frame {
                assert!(
                    !nd.start_of_frame && nd.end_of_frame && n.sid == g.sid,
                    "frame cut: {g:?} {n:?}"
                );
            }
            let ends_picture = d.end_of_frame && n.sid == 0;
            assert_eq!(
                g.marker, ends_picture,
                "marker must end each picture, only there: {g:?} {n:?}"
            );
        }
        if !layers.contains(&g.sid) {
            layers.push(g.sid);
        }
    }
    layers.sort_unstable();
    layers
}

#[test]
fn rendered_size_picks_av1_spatial_layers_by_the_dependency_descriptor() {
    let mut room = Room::new();
    room.run(Duration::from_secs(1));
    let got = room.received();
    assert!(!got.is_empty(), "bob got nothing");
    assert_eq!(spatial_layers(&got), [0, 1, 2]);

    // Small: the base layer only, from the next picture, without a
    // keyframe; its continuation packets (no OBU header) stay, those of
    // the layers above go.
    let (requested, mark) = (room.publisher.requested, got.len());
    room.limit(320, 180);
    room.run(Duration::from_secs(1));
    let got = room.received();
    let tail = &got[mark + 6..];
    assert_eq!(spatial_layers(tail), [0], "the 320x180 layer covers 320x180");
    assert!(tail.len() >= 40, "{} base layer packets in 1 s", tail.len());
    assert_eq!(
        room.publisher.requested, requested,
        "no keyframe asked for to move down"
    );

    // The middle layer: up at a keyframe, which the SFU asks for.
    let mark = got.len();
    room.limit(640, 360);
    room.run(Duration::from_secs(1));
    assert!(room.publisher.requested > requested, "no keyframe asked for");
    let got = room.received();
    let tail = &got[mark..];
    let up = tail.iter().position(|g| g.sid == 1).expect("layer 1 never forwarded");
    assert!(
        tail[up - 2].keyframe,
        "moved up at a picture that is not a keyframe: {:?}",
        &tail[up - 2..up]
    );
    assert_eq!(spatial_layers(&tail[up - 2..]), [0, 1]);
    spatial_layers(&got);
}

/// Without the descriptor (a publisher that does not negotiate it) the
/// stream is not seen as layered: everything is forwarded, as before.
#[test]
fn without_the_descriptor_the_stream_passes_whole() {
    let mut room = Room::with(false, false);
    room.limit(320, 180);
    room.run(Duration::from_secs(1));
    let got = room.received();
    let mut sids: Vec<u8> = got.iter().map(|g| g.sid).collect();
    sids.sort_unstable();
    sids.dedup();
    assert_eq!(sids, [0, 1, 2], "a stream without descriptors is not cut");
    assert!(got.iter().all(|g| g.dd.is_none()), "a descriptor appeared from nowhere");
}

/// VP8 whose temporal layer only the descriptor tells: a frame rate cap
/// keeps the base layer, and lifting it brings every layer back at the
/// switching points the descriptor marks, without a keyframe. The
/// descriptor is not passed on (VP8 subscribers decode without it).
#[test]
fn vp8_temporal_layers_by_the_dependency_descriptor() {
    let mut room = Room::with(true, true);
    room.run(Duration::from_secs(1));
    // (sequence number, temporal layer, frame start, descriptor present)
    let received = |room: &Room| -> Vec<(u64, u8, bool, bool)> {
        room.net.clients[room.b]
            .rtp_packets()
            .filter_map(|p| {
                let tid = VP8_SIZES.iter().position(|s| *s == p.payload.len())? as u8;
                let dd = p.header.ext_vals.user_values.get::<DdBytes>().is_some();
                Some((*p.seq_no, tid, p.payload[0] & 0x10 != 0, dd))
            })
            .collect()
    };
    let tids = |got: &[(u64, u8, bool, bool)]| {
        let mut t: Vec<u8> = got.iter().map(|g| g.1).collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    let got = received(&room);
    assert_eq!(tids(&got), [0, 1, 2], "no limit: every layer");

    let (requested, mark) = (room.publisher.requested, got.len());
    let now = room.net.now;
    let capped = sfu::Limits {
        max_fps: 10,
        ..sfu::Limits::default()
    };
    room.net
        .sfu
        .set_track_limits(now, room.bob, room.track, capped)
        .unwrap();
    room.run(Duration::from_secs(2));
    let got = received(&room);
    let low = &got[mark + 2..];
    assert_eq!(tids(low), [0], "TL0 only under a 10 fps cap");
    let frames = low.iter().filter(|g| g.2).count();
    assert!((13..=17).contains(&frames), "{frames} base layer frames in 2 s");

    let mark = got.len();
    let now = room.net.now;
    room.net
        .sfu
        .set_track_limits(now, room.bob, room.track, sfu::Limits::default())
        .unwrap();
    room.run(Duration::from_secs(1));
    let got = received(&room);
    assert_eq!(tids(&got[mark..]), [0, 1, 2], "every layer again");
    assert_eq!(room.publisher.requested, requested, "no keyframe needed");
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "sequence gap: {w:?}");
    }
    assert!(got.iter().all(|g| !g.3), "the descriptor went to a VP8 subscriber");
}
