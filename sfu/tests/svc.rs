//! VP9 spatial layers inside one stream (SVC) through the router: a
//! publisher sends three spatial layers per picture on one SSRC (the
//! `L3T3_KEY` shape, one temporal layer here), with the scalability
//! structure and layer sizes on each keyframe; a subscriber gets the layers
//! its estimate and rendered size allow, each picture ending (RTP marker) on
//! the top layer it gets, sequence numbers without gaps, and moves up only
//! at a keyframe.
mod common;

use std::time::Duration;

use common::{Net, FRAME};
use sfu::codec::vp9;
use sfu::router::TrackId;
use str0m::bwe::Bitrate;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid};
use str0m::rtp::RtpWrite;

/// Payload bytes per layer frame: at 30 fps about 50, 100 and 200 kbit/s.
const SIZES: [usize; 3] = [200, 400, 800];

struct Publisher {
    seq: u64,
    picture: u64,
    force_key: bool,
    requested: usize,
    /// Three temporal layers too (L3T3: the 0 2 1 2 pattern, U on the
    /// first TL1 and TL2 pictures after a TL0 one); else TID 0 only.
    temporal: bool,
    tl0: u8,
}

/// The libwebrtc L1T3 / L3T3 temporal pattern.
const PATTERN: [u8; 4] = [0, 2, 1, 2];

impl Publisher {
    /// One picture: a frame per spatial layer, lowest first, one packet
    /// each (B and E), the marker on the last. A keyframe every 4 s or at
    /// the next picture after a request; its first packet carries the
    /// scalability structure with the sizes 320x180, 640x360, 1280x720.
    fn send_picture(&mut self, net: &mut Net, c: usize, mid: Mid) {
        self.send_layers(net, c, mid, None);
    }

    /// [`Publisher::send_picture`], with `between` run once the base layer
    /// frame has reached the SFU and before the upper ones are sent.
    fn send_picture_with(&mut self, net: &mut Net, c: usize, mid: Mid, mut between: impl FnMut(&mut Net)) {
        self.send_layers(net, c, mid, Some(&mut between));
    }

    fn send_layers(&mut self, net: &mut Net, c: usize, mid: Mid, mut between: Option<&mut dyn FnMut(&mut Net)>) {
        let requested = common::keyframe_requested(net, c);
        if requested {
            self.requested += 1;
        }
        self.force_key |= requested;
        let pos = (self.picture % 4) as usize;
        let tid = if self.temporal { PATTERN[pos] } else { 0 };
        let switching_up = self.temporal && (pos == 1 || pos == 2);
        let key = tid == 0 && (self.picture.is_multiple_of(120) || self.force_key);
        if key {
            self.force_key = false;
        }
        if tid == 0 {
            self.tl0 = self.tl0.wrapping_add(1);
        }
        let pid = (self.picture & 0x7fff) as u16;
        for (sid, size) in SIZES.iter().enumerate() {
            if let (1, Some(between)) = (sid, between.as_mut()) {
                net.run(Duration::from_millis(2));
                between(net);
            }
            let now = net.now;
            let rtc = &mut net.clients[c].rtc;
            let pt = rtc.codec_config().find(|p| p.spec().codec == Codec::Vp9).unwrap().pt();
            // I, P unless a keyframe, L, B, E; V on the keyframe's first.
            let v = key && sid == 0;
            let mut d = vec![
                0xac | u8::from(!key) << 6 | u8::from(v) << 1,
                0x80 | (pid >> 8) as u8,
                pid as u8,
                // TID, U, SID, D (inter-layer: on a keyframe only).
                tid << 5 | u8::from(switching_up) << 4 | (sid as u8) << 1 | u8::from(key && sid > 0),
                self.tl0,
            ];
            if v {
                d.push(0x50); // N_S = 2, Y
                for (w, h) in [(320u16, 180u16), (640, 360), (1280, 720)] {
                    d.extend(w.to_be_bytes());
                    d.extend(h.to_be_bytes());
                }
            }
            let mut payload = vec![0xAAu8; *size];
            payload[..d.len()].copy_from_slice(&d);
            let mut api = rtc.direct_api();
            let stream = api.stream_tx_by_mid(mid, None).expect("publisher stream");
            stream.write_rtp(
                RtpWrite::new(pt, self.seq.into(), 3000 * self.picture as u32, now, payload)
                    .marker(sid == 2)
                    .nackable(true),
            );
            self.seq += 1;
        }
        self.picture += 1;
    }
}

/// A packet the subscriber got: sequence number, marker, descriptor.
type Got = (u64, bool, vp9::Vp9Descriptor);

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
    /// Alice publishes for 2 s (the SFU measures each spatial layer), then
    /// bob subscribes with `estimate` imposed on his downlink.
    fn new(estimate: Bitrate) -> Room {
        Room::with(estimate, false)
    }

    fn with(estimate: Bitrate, temporal: bool) -> Room {
        let mut net = Net::new();
        let common::Pair { alice, bob, a, b, mids } = common::alice_publishes(&mut net, &[MediaKind::Video]);
        let mid = mids[0];
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
                force_key: false,
                requested: 0,
                temporal,
                tl0: 0,
            },
        };
        room.run(Duration::from_secs(2));
        let now = room.net.now;
        room.net.sfu.set_estimate_override(now, bob, Some(estimate));
        room.net.subscribe_connected(b, bob, &[room.track]);
        room
    }

    fn run(&mut self, d: Duration) {
        let (publisher, a, mid) = (&mut self.publisher, self.a, self.mid);
        self.net.run_paced(d, FRAME, |net| publisher.send_picture(net, a, mid));
    }

    fn received(&self) -> Vec<Got> {
        self.net.clients[self.b]
            .rtp_packets()
            .filter(|p| SIZES.contains(&p.payload.len()))
            .map(|p| {
                (
                    *p.seq_no,
                    p.header.marker,
                    vp9::parse(&p.payload).expect("a VP9 descriptor"),
                )
            })
            .collect()
    }

    fn set_estimate(&mut self, b: Bitrate) {
        let now = self.net.now;
        self.net.sfu.set_estimate_override(now, self.bob, Some(b));
    }
}

/// The spatial layers of the pictures in `got` (after the first complete
/// picture), checking along the way that numbers have no gap and each
/// picture ends with the marker on its top layer and nowhere else.
fn spatial_layers(got: &[Got]) -> Vec<u8> {
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "sequence gap: {w:?}");
    }
    let start = got.iter().position(|g| g.2.sid == Some(0)).unwrap_or(got.len());
    let got = &got[start..];
    let mut layers = Vec::new();
    for (i, (_, marker, d)) in got.iter().enumerate() {
        let next_starts = got.get(i + 1).is_some_and(|n| n.2.sid == Some(0));
        if got.get(i + 1).is_some() {
            assert_eq!(
                *marker, next_starts,
                "marker must end each picture, only there: {:?}",
                &got[i]
            );
        }
        let sid = d.sid.unwrap();
        if !layers.contains(&sid) {
            layers.push(sid);
        }
    }
    layers.sort_unstable();
    layers
}

#[test]
fn estimate_picks_spatial_layers_and_moving_up_waits_for_a_keyframe() {
    // About 150 kbit/s for layers 0 and 1 (plus headroom), 350 for all.
    let mut room = Room::new(Bitrate::kbps(220));
    room.run(Duration::from_secs(2));
    let got = room.received();
    assert!(!got.is_empty(), "bob got nothing");
    assert_eq!(spatial_layers(&got), [0, 1], "two layers fit 220 kbit/s");

    // Down to the base layer: at the next picture, no keyframe needed.
    let (requested, mark) = (room.publisher.requested, got.len());
    room.set_estimate(Bitrate::kbps(80));
    room.run(Duration::from_secs(1));
    let got = room.received();
    assert_eq!(spatial_layers(&got[mark + 2..]), [0]);
    assert_eq!(
        room.publisher.requested, requested,
        "no keyframe asked for to move down"
    );

    // Up to all three: asks for a keyframe and moves there.
    let (requested, mark) = (room.publisher.requested, got.len());
    room.set_estimate(Bitrate::mbps(10));
    room.run(Duration::from_secs(1));
    assert!(room.publisher.requested > requested, "no keyframe asked for");
    let got = room.received();
    let up = got[mark..]
        .iter()
        .position(|g| g.2.sid == Some(2))
        .expect("layer 2 never forwarded");
    assert!(
        got[mark + up - 2].2.keyframe(),
        "moved up at a picture that is not a keyframe"
    );
    assert_eq!(spatial_layers(&got[mark + up - 2..]), [0, 1, 2]);
    spatial_layers(&got);
}

#[test]
fn rendered_size_caps_the_spatial_layer() {
    let mut room = Room::new(Bitrate::mbps(10));
    room.run(Duration::from_secs(1));
    let got = room.received();
    assert_eq!(spatial_layers(&got), [0, 1, 2]);
    let (now, bob, track) = (room.net.now, room.bob, room.track);
    let small = sfu::Limits {
        max_width: 320,
        max_height: 180,
        ..sfu::Limits::default()
    };
    room.net.sfu.set_track_limits(now, bob, track, small).unwrap();
    let mark = got.len();
    room.run(Duration::from_secs(1));
    let got = room.received();
    assert_eq!(
        spatial_layers(&got[mark + 3..]),
        [0],
        "the 320x180 layer covers 320x180"
    );
    let middle = sfu::Limits {
        max_width: 400,
        max_height: 300,
        ..sfu::Limits::default()
    };
    let (now, mark) = (room.net.now, got.len());
    room.net.sfu.set_track_limits(now, bob, track, middle).unwrap();
    room.run(Duration::from_secs(1));
    let got = room.received();
    let tail = &got[mark..];
    let up = tail
        .iter()
        .position(|g| g.2.sid == Some(1))
        .expect("layer 1 never forwarded");
    assert_eq!(
        spatial_layers(&tail[up - 1..]),
        [0, 1],
        "the smallest layer that covers 400x300"
    );
}

/// A subscriber's preferred quality on an SVC track is its top spatial
/// layer (there are no rids to pin).
#[test]
fn preferred_quality_caps_the_spatial_layer() {
    let mut room = Room::new(Bitrate::mbps(10));
    let (now, bob, track) = (room.net.now, room.bob, room.track);
    let medium = sfu::Limits {
        max_spatial: Some(1),
        ..sfu::Limits::default()
    };
    room.net.sfu.set_track_limits(now, bob, track, medium).unwrap();
    room.run(Duration::from_secs(1));
    let got = room.received();
    assert_eq!(spatial_layers(&got[3.min(got.len())..]), [0, 1]);
    let (now, mark) = (room.net.now, got.len());
    room.net
        .sfu
        .set_track_limits(now, bob, track, sfu::Limits::default())
        .unwrap();
    room.run(Duration::from_secs(1));
    let got = room.received();
    assert!(spatial_layers(&got[mark..]).contains(&2), "no limit: all three again");
}

/// L3T3: a frame rate cap drops the same temporal layers from every
/// spatial layer (whole pictures, never some of their layer frames), and
/// the spatial choice still applies on top.
#[test]
fn frame_rate_cap_drops_whole_pictures_of_every_spatial_layer() {
    let mut room = Room::with(Bitrate::mbps(10), true);
    room.run(Duration::from_secs(1));
    let (now, bob, track) = (room.net.now, room.bob, room.track);
    let capped = sfu::Limits {
        max_fps: 10,
        ..sfu::Limits::default()
    };
    room.net.sfu.set_track_limits(now, bob, track, capped).unwrap();
    let mark = room.received().len();
    room.run(Duration::from_secs(2));
    let got = room.received();
    let later = &got[mark + 3..];
    assert_eq!(spatial_layers(later), [0, 1, 2], "the cap keeps every spatial layer");
    let start = later.iter().position(|g| g.2.sid == Some(0) && g.2.begin).unwrap();
    let pictures: Vec<&[Got]> = later[start..].chunk_by(|_, b| b.2.sid != Some(0)).collect();
    for p in &pictures[..pictures.len() - 1] {
        let sids: Vec<u8> = p.iter().map(|g| g.2.sid.unwrap()).collect();
        assert_eq!(sids, [0, 1, 2], "a picture cut short: {p:?}");
        assert!(p.iter().all(|g| g.2.tid == Some(0)), "above the cap: {p:?}");
    }
    // 30 fps in, about 7.5 pictures per second out (TL0 only).
    assert!(
        (12..=18).contains(&pictures.len()),
        "{} pictures in 2 s",
        pictures.len()
    );

    // And the rendered size on top of it: the base layer's TL0 only.
    let small = sfu::Limits {
        max_width: 320,
        max_height: 180,
        max_fps: 10,
        ..sfu::Limits::default()
    };
    let (now, mark) = (room.net.now, room.received().len());
    room.net.sfu.set_track_limits(now, bob, track, small).unwrap();
    room.run(Duration::from_secs(1));
    let got = room.received();
    let later = &got[mark + 3..];
    assert_eq!(spatial_layers(later), [0]);
    assert!(later.iter().all(|g| g.2.tid == Some(0)));

    // Lifted: every temporal layer of every spatial layer again.
    let (now, mark) = (room.net.now, room.received().len());
    room.net
        .sfu
        .set_track_limits(now, bob, track, sfu::Limits::default())
        .unwrap();
    room.run(Duration::from_secs(2));
    let got = room.received();
    let mut tids: Vec<u8> = got[mark..].iter().filter_map(|g| g.2.tid).collect();
    tids.sort_unstable();
    tids.dedup();
    assert_eq!(tids, [0, 1, 2]);
    assert!(spatial_layers(&got[mark..]).contains(&2));
}

/// The temporal target changes between a picture's base layer frame and
/// its upper ones (a frame rate cap set and lifted at every picture): the
/// temporal filter moves at pictures only, so each picture reaches bob
/// whole (its own three spatial layer frames, the marker on the top one)
/// or not at all, and both directions of the cap take effect. (Switching
/// at layer frames instead, bob got one picture's base frame followed by
/// the next one's upper frames.)
#[test]
fn a_temporal_switch_mid_picture_waits_for_the_next_picture() {
    let mut room = Room::with(Bitrate::mbps(10), true);
    room.run(Duration::from_secs(1));
    let (bob, track, a, mid) = (room.bob, room.track, room.a, room.mid);
    let capped = sfu::Limits {
        max_fps: 10,
        ..sfu::Limits::default()
    };
    let mark = room.received().len();
    for _ in 0..60 {
        // Capped in the middle of the TL2 pictures (odd ones: 0 2 1 2),
        // lifted in the middle of the others: both directions of the
        // switch fall inside a picture whose layer they change.
        let limits = if room.publisher.picture % 2 == 1 {
            capped
        } else {
            sfu::Limits::default()
        };
        room.publisher.send_picture_with(&mut room.net, a, mid, |net| {
            let now = net.now;
            net.sfu.set_track_limits(now, bob, track, limits).unwrap();
        });
        room.net.run(FRAME - Duration::from_millis(2));
    }
    let got = room.received();
    let later = &got[mark..];
    // Gap-free numbering and a marker ending each picture, only there.
    assert_eq!(spatial_layers(later), [0, 1, 2]);
    let start = later.iter().position(|g| g.2.sid == Some(0) && g.2.begin).unwrap();
    let pictures: Vec<&[Got]> = later[start..].chunk_by(|_, b| b.2.sid != Some(0)).collect();
    for p in &pictures[..pictures.len() - 1] {
        let sids: Vec<u8> = p.iter().map(|g| g.2.sid.unwrap()).collect();
        assert_eq!(sids, [0, 1, 2], "a picture cut short: {p:?}");
        // One picture's layer frames, not the base of one and the upper
        // layers of the next.
        assert!(
            p.iter().all(|g| g.2.picture_id == p[0].2.picture_id),
            "layer frames of two pictures: {p:?}"
        );
    }
    // Some upper temporal layer pictures got through (uncapped halves)
    // and some were dropped (capped halves): 60 pictures in, fewer out.
    let tids: Vec<u8> = pictures.iter().map(|p| p[0].2.tid.unwrap()).collect();
    assert!(tids.iter().any(|&t| t > 0), "no upper temporal layer: {tids:?}");
    assert!(pictures.len() < 55, "nothing dropped: {} pictures", pictures.len());
}
