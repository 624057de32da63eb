//! Temporal layers through the router: a publisher sends VP8 with three
//! temporal layers (L1T3, synthetic payload descriptors) and a subscriber's
//! maximum frame rate picks how many of them it gets, without keyframes,
//! with continuous sequence numbers, PictureIDs and TL0PICIDX.
mod common;

use std::time::Duration;

use common::{Net, FRAME};
use sfu::codec::vp8;
use sfu::participant::Role;
use sfu::router::TrackId;
use str0m::bwe::Bitrate;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid};
use str0m::rtp::RtpWrite;

/// 30 fps, the libwebrtc L1T3 pattern 0 2 1 2.
const PATTERN: [u8; 4] = [0, 2, 1, 2];

struct Publisher {
    seq: u64,
    frame: u64,
    picture_id: u16,
    tl0: u8,
    force_key: bool,
    keyframes: usize,
    /// Codec::Vp9: VP9 payload descriptors (non-flexible mode);
    /// Codec::Av1: AV1 aggregation and OBU extension headers; else VP8.
    codec: Codec,
    /// Mark switching points (Y, U); an encoder may mark none.
    sync: bool,
    /// A keyframe every 2 s, not only when asked.
    periodic_keyframes: bool,
}

impl Publisher {
    /// One frame of two packets. A keyframe every 2 s, or at the next base
    /// layer frame after a request; the first TL1 and TL2 frames after a
    /// base layer frame reference only it (layer sync, Y bit).
    fn send_frame(&mut self, net: &mut Net, c: usize, mid: Mid) {
        let requested = common::keyframe_requested(net, c);
        self.force_key |= requested;
        let pos = (self.frame % 4) as usize;
        let tid = PATTERN[pos];
        let key = tid == 0 && ((self.periodic_keyframes && self.frame.is_multiple_of(60)) || self.force_key);
        if key {
            self.force_key = false;
            self.keyframes += 1;
        }
        if tid == 0 {
            self.tl0 = self.tl0.wrapping_add(1);
        }
        let sync = self.sync && (pos == 1 || pos == 2);
        let now = net.now;
        let rtc = &mut net.clients[c].rtc;
        let codec = self.codec;
        let pt = rtc.codec_config().find(|p| p.spec().codec == codec).unwrap().pt();
        for k in 0..2 {
            let mut payload = vec![0xAAu8; 600];
            if codec == Codec::Av1 {
                // One OBU_FRAME over two packets: Z=0 Y=1 W=1 (N on a
                // keyframe), its header with the extension byte; then Z=1
                // Y=0 W=1, the rest.
                if k == 0 {
                    payload[0] = 0x50 | u8::from(key) << 3;
                    payload[1] = 0x34;
                    payload[2] = tid << 5;
                } else {
                    payload[0] = 0x90;
                }
            } else if codec == Codec::Vp9 {
                // I, P unless key, L, B on the first packet, E on the last.
                payload[0] = 0xa0 | u8::from(!key) << 6 | if k == 0 { 0x08 } else { 0x04 };
                payload[1] = 0x80 | (self.picture_id >> 8) as u8;
                payload[2] = self.picture_id as u8;
                payload[3] = tid << 5 | u8::from(sync) << 4; // SID 0
                payload[4] = self.tl0;
            } else {
                payload[0] = 0x80 | if k == 0 { 0x10 } else { 0 };
                payload[1] = 0xe0; // PictureID, TL0PICIDX, TID
                payload[2] = 0x80 | (self.picture_id >> 8) as u8;
                payload[3] = self.picture_id as u8;
                payload[4] = self.tl0;
                payload[5] = tid << 6 | u8::from(sync) << 5;
                payload[6] = if k == 0 && !key { 0x01 } else { 0x00 };
            }
            let mut api = rtc.direct_api();
            let stream = api.stream_tx_by_mid(mid, None).expect("publisher stream");
            stream.write_rtp(
                RtpWrite::new(pt, self.seq.into(), 3000 * self.frame as u32, now, payload)
                    .marker(k == 1)
                    .nackable(true),
            );
            self.seq += 1;
        }
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.frame += 1;
    }
}

fn run_for(net: &mut Net, p: &mut Publisher, c: usize, mid: Mid, duration: Duration) {
    net.run_paced(duration, FRAME, |net| p.send_frame(net, c, mid));
}

/// A video packet as the subscriber got it.
#[derive(Debug, Clone, Copy)]
struct Got {
    seq: u64,
    d: vp8::Vp8Descriptor,
}

fn received(net: &Net, c: usize) -> Vec<Got> {
    net.clients[c]
        .rtp_packets()
        .filter(|p| p.payload.len() == 600)
        .map(|p| Got {
            seq: *p.seq_no,
            d: vp8::parse(&p.payload).expect("a VP8 descriptor"),
        })
        .collect()
}

/// Sequence numbers without a gap, PictureIDs one apart from frame to
/// frame and TL0PICIDX one apart from base layer frame to base layer
/// frame, as libwebrtc's VP8 receiver needs them.
fn assert_continuous(got: &[Got]) {
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "sequence gap: {w:?}");
    }
    let frames: Vec<&Got> = got.iter().filter(|g| g.d.frame_start()).collect();
    for w in frames.windows(2) {
        let (a, b) = (w[0].d, w[1].d);
        let (pa, pb) = (a.picture_id.unwrap().value, b.picture_id.unwrap().value);
        assert_eq!(pb, (pa + 1) & 0x7fff, "PictureID hole: {a:?} -> {b:?}");
        let step = u8::from(b.tid == Some(0));
        assert_eq!(
            b.tl0_pic_idx,
            a.tl0_pic_idx.map(|t| t.wrapping_add(step)),
            "TL0PICIDX: {a:?} -> {b:?}"
        );
    }
}

fn tids_and_fps(got: &[Got], seconds: f64) -> (Vec<u8>, f64) {
    let mut tids: Vec<u8> = got.iter().filter_map(|g| g.d.tid).collect();
    tids.sort_unstable();
    tids.dedup();
    let frames = got.iter().filter(|g| g.d.frame_start()).count();
    (tids, frames as f64 / seconds)
}

/// Alice publishes L1T3 VP8 for 2 s, then bob subscribes; `before_answer`
/// runs between bob's subscription and his answer.
fn room(net: &mut Net, codec: Codec, before_answer: impl FnOnce(&mut Net, sfu::ParticipantId, TrackId)) -> Room {
    let common::Pair { alice, bob, a, b, mids } = common::alice_publishes(net, &[MediaKind::Video, MediaKind::Audio]);
    let (mid, audio_mid) = (mids[0], mids[1]);
    // PictureID and TL0PICIDX close to their wrap.
    let mut publisher = Publisher {
        seq: 65_000,
        frame: 0,
        picture_id: 32_700,
        tl0: 250,
        force_key: false,
        keyframes: 0,
        codec,
        sync: true,
        periodic_keyframes: true,
    };
    // Live before anyone subscribes: the SFU measures the layers' rates.
    run_for(net, &mut publisher, a, mid, Duration::from_secs(2));
    let track = TrackId { publisher: alice, mid };
    let now = net.now;
    // The audio subscription's offer goes out first, so the video's m-line
    // waits for the next offer (as when signalling subscribes to several
    // tracks at once).
    let audio = TrackId {
        publisher: alice,
        mid: audio_mid,
    };
    net.sfu.subscribe(now, bob, audio).unwrap();
    net.sfu.subscribe(now, bob, track).unwrap();
    before_answer(net, bob, track);
    net.answer_offers(b, bob);
    assert!(net.run_until(Duration::from_secs(5), |n| n.connected(bob, Role::Subscriber)));
    Room {
        bob,
        track,
        a,
        b,
        mid,
        publisher,
    }
}

struct Room {
    bob: sfu::ParticipantId,
    track: TrackId,
    a: usize,
    b: usize,
    mid: Mid,
    publisher: Publisher,
}

fn limit(max_fps: u32) -> sfu::Limits {
    sfu::Limits {
        max_fps,
        ..sfu::Limits::default()
    }
}

#[test]
fn max_fps_selects_temporal_layers_without_gaps() {
    let mut net = Net::new();
    let Room {
        bob,
        track,
        a,
        b,
        mid,
        mut publisher,
    } = room(&mut net, Codec::Vp8, |_, _, _| {});
    let now = net.now;
    net.sfu.set_estimate_override(now, bob, Some(Bitrate::mbps(10)));
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    let all = received(&net, b);
    assert!(!all.is_empty(), "video reaches the subscriber");
    assert_eq!(tids_and_fps(&all, 2.0).0, [0, 1, 2], "no limit: every layer");

    // A third of the frame rate: only the base layer (7.5 fps) fits.
    let keyframes = publisher.keyframes;
    let now = net.now;
    net.sfu.set_track_limits(now, bob, track, limit(10)).unwrap();
    let mark = received(&net, b).len();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(4));
    let got = received(&net, b);
    // The frame in flight when the limit came may finish.
    let low = &got[mark + 2..];
    let (tids, fps) = tids_and_fps(low, 4.0);
    assert_eq!(tids, [0], "TL0 only");
    assert!((6.5..=8.5).contains(&fps), "base layer frame rate: {fps}");

    // Half the frame rate: TL0 and TL1, the case where the receiver needs
    // the PictureIDs renumbered.
    let now = net.now;
    net.sfu.set_track_limits(now, bob, track, limit(15)).unwrap();
    let mark = received(&net, b).len();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(4));
    let got = received(&net, b);
    let (tids, fps) = tids_and_fps(&got[mark..], 4.0);
    assert_eq!(tids, [0, 1]);
    assert!((13.0..=16.5).contains(&fps), "two layers' frame rate: {fps}");

    // No limit: back to all layers at the next switching point.
    let now = net.now;
    net.sfu.set_track_limits(now, bob, track, limit(0)).unwrap();
    let mark = received(&net, b).len();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    let got = received(&net, b);
    let (tids, fps) = tids_and_fps(&got[mark..], 2.0);
    assert_eq!(tids, [0, 1, 2]);
    assert!(fps > 27.0, "full frame rate: {fps}");

    // Through every change: no keyframe was needed (the periodic ones
    // aside), and the receiver saw one continuous stream.
    assert!(
        publisher.keyframes <= keyframes + 6,
        "keyframes {keyframes} -> {}",
        publisher.keyframes
    );
    assert_continuous(&got);
}

/// An encoder that marks no switching points (and sends keyframes only
/// when asked): with the frame rate limit lifted, the SFU asks for a
/// keyframe rather than keep the subscriber at the base layer for good.
#[test]
fn without_switching_points_a_lifted_limit_brings_a_keyframe() {
    let mut net = Net::new();
    let Room {
        bob,
        track,
        a,
        b,
        mid,
        mut publisher,
    } = room(&mut net, Codec::Vp8, |_, _, _| {});
    publisher.sync = false;
    publisher.periodic_keyframes = false;
    let now = net.now;
    net.sfu.set_estimate_override(now, bob, Some(Bitrate::mbps(10)));
    net.sfu.set_track_limits(now, bob, track, limit(10)).unwrap();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(4));
    let mark = received(&net, b).len();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    assert_eq!(tids_and_fps(&received(&net, b)[mark..], 2.0).0, [0], "TL0 only");

    let keyframes = publisher.keyframes;
    let now = net.now;
    net.sfu.set_track_limits(now, bob, track, limit(0)).unwrap();
    // Nothing to switch up at for the first 1.5 s; then a keyframe.
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(3));
    let mark = received(&net, b).len();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    let got = received(&net, b);
    let (tids, fps) = tids_and_fps(&got[mark..], 2.0);
    assert_eq!(tids, [0, 1, 2], "every layer again");
    assert!(fps > 27.0, "full frame rate: {fps}");
    assert!(
        (1..=2).contains(&(publisher.keyframes - keyframes)),
        "one keyframe asked for, not a stream of them: {} -> {}",
        keyframes,
        publisher.keyframes
    );
    assert!(
        (1..=2).contains(&net.sfu.temporal_upswitch_keyframes()),
        "counted for the metric"
    );
    assert_continuous(&got);
}

/// Signalling sets a new subscription's preferences right after
/// subscribing, while its m-line still waits for an offer: they must not
/// be lost.
#[test]
fn max_fps_set_before_the_answer_applies() {
    let mut net = Net::new();
    let Room {
        bob,
        a,
        b,
        mid,
        mut publisher,
        ..
    } = room(&mut net, Codec::Vp8, |net, bob, track| {
        let now = net.now;
        net.sfu.set_track_limits(now, bob, track, limit(10)).unwrap();
    });
    let now = net.now;
    net.sfu.set_estimate_override(now, bob, Some(Bitrate::mbps(10)));
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(3));
    let got = received(&net, b);
    assert!(!got.is_empty(), "video reaches the subscriber");
    assert_eq!(tids_and_fps(&got, 3.0).0, [0], "TL0 only from the start");
    assert_continuous(&got);
}

/// With str0m's own downlink estimate (no override) the cap applies too.
#[test]
fn max_fps_applies_with_str0ms_own_estimate() {
    let mut net = Net::new();
    let Room {
        bob,
        track,
        a,
        b,
        mid,
        mut publisher,
    } = room(&mut net, Codec::Vp8, |_, _, _| {});
    let now = net.now;
    net.sfu.set_track_limits(now, bob, track, limit(10)).unwrap();
    let mark = received(&net, b).len();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    let got = received(&net, b);
    assert_eq!(tids_and_fps(&got[(mark + 2).min(got.len())..], 2.0).0, [0]);
    assert_continuous(&got);
    let estimated = net
        .events
        .iter()
        .any(|e| matches!(e, sfu::SfuEvent::Estimate { participant, .. } if *participant == bob));
    assert!(estimated, "str0m's estimate drove the allocation");
}

/// The allocator uses temporal layers as the steps of a single stream: an
/// estimate too low for the full rate but enough for two layers gets two
/// layers (no pause, no keyframe), and all of them again when it rises.
#[test]
fn estimate_between_temporal_layers_picks_the_ones_that_fit() {
    let mut net = Net::new();
    let Room {
        bob,
        a,
        b,
        mid,
        mut publisher,
        ..
    } = room(&mut net, Codec::Vp8, |_, _, _| {});
    // About 300 kbit/s in all: TL0 a quarter, TL0 + TL1 half.
    let now = net.now;
    net.sfu.set_estimate_override(now, bob, Some(Bitrate::kbps(200)));
    let mark = received(&net, b).len();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(3));
    let got = received(&net, b);
    let later = &got[(mark + 4).min(got.len())..];
    let (tids, fps) = tids_and_fps(later, 3.0);
    assert_eq!(tids, [0, 1], "two layers fit 200 kbit/s");
    assert!((12.0..=16.5).contains(&fps), "{fps}");

    let keyframes = publisher.keyframes;
    let now = net.now;
    net.sfu.set_estimate_override(now, bob, Some(Bitrate::mbps(10)));
    let mark = received(&net, b).len();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    let got = received(&net, b);
    assert_eq!(tids_and_fps(&got[mark..], 2.0).0, [0, 1, 2]);
    // Only the periodic keyframe (every 2 s) in between, none requested.
    assert!(publisher.keyframes <= keyframes + 1);
    assert_continuous(&got);
}

/// VP9 temporal layers (switching-up points by the U bit): the same cap,
/// gap-free; VP9 PictureIDs are left as they are (its receiver tracks
/// missing frames per temporal layer).
#[test]
fn vp9_temporal_layers_follow_max_fps() {
    let mut net = Net::new();
    let Room {
        bob,
        track,
        a,
        b,
        mid,
        mut publisher,
    } = room(&mut net, Codec::Vp9, |_, _, _| {});
    let now = net.now;
    net.sfu.set_estimate_override(now, bob, Some(Bitrate::mbps(10)));
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    let layers = |net: &Net, from: usize| {
        let got: Vec<(u64, sfu::codec::vp9::Vp9Descriptor)> = net.clients[b]
            .rtp_packets()
            .filter(|p| p.payload.len() == 600)
            .map(|p| (*p.seq_no, sfu::codec::vp9::parse(&p.payload).expect("a VP9 descriptor")))
            .collect();
        for w in got.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "sequence gap");
        }
        let mut tids: Vec<u8> = got[from.min(got.len())..].iter().filter_map(|(_, d)| d.tid).collect();
        tids.sort_unstable();
        tids.dedup();
        (got.len(), tids)
    };
    let (n, tids) = layers(&net, 0);
    assert!(n > 0 && tids == [0, 1, 2], "{tids:?}");
    let now = net.now;
    net.sfu.set_track_limits(now, bob, track, limit(10)).unwrap();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    let (m, tids) = layers(&net, n + 2);
    assert_eq!(tids, [0]);
    let now = net.now;
    net.sfu.set_track_limits(now, bob, track, limit(0)).unwrap();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    assert_eq!(layers(&net, m).1, [0, 1, 2]);
}

/// AV1 temporal layers (OBU extension headers, no dependency descriptor):
/// the same cap; a frame's second packet follows its first, both dropped or
/// both forwarded; back up one layer at a time without a keyframe.
#[test]
fn av1_temporal_layers_follow_max_fps() {
    let mut net = Net::new();
    let Room {
        bob,
        track,
        a,
        b,
        mid,
        mut publisher,
    } = room(&mut net, Codec::Av1, |_, _, _| {});
    // Keyframes only when asked: any the SFU asks for shows.
    publisher.periodic_keyframes = false;
    let now = net.now;
    net.sfu.set_estimate_override(now, bob, Some(Bitrate::mbps(10)));
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    // (seq, timestamp, tid of a frame's first packet or None for its second).
    let frames = |net: &Net| {
        let got: Vec<(u64, u32, Option<u8>)> = net.clients[b]
            .rtp_packets()
            .filter(|p| p.payload.len() == 600)
            .map(|p| {
                let h = sfu::codec::av1::parse(&p.payload).expect("an AV1 packet");
                (*p.seq_no, p.header.timestamp, h.tid)
            })
            .collect();
        for w in got.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "sequence gap");
        }
        // Heads (Z=0) carry the layer; every tail directly follows the
        // head of the same frame.
        for w in got.windows(2) {
            if w[1].2.is_none() {
                assert!(w[0].2.is_some() && w[0].1 == w[1].1, "a tail without its head: {w:?}");
            }
        }
        got
    };
    let tids = |got: &[(u64, u32, Option<u8>)]| {
        let mut t: Vec<u8> = got.iter().filter_map(|g| g.2).collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    let got = frames(&net);
    let n = got.len();
    assert!(n > 0 && tids(&got) == [0, 1, 2], "{:?}", tids(&got));
    let keyframes = publisher.keyframes;
    let now = net.now;
    net.sfu.set_track_limits(now, bob, track, limit(10)).unwrap();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    let got = frames(&net);
    let m = got.len();
    // The first frame after the change may still be of the old layers.
    assert_eq!(tids(&got[n + 2..]), [0]);
    let limited_fps = got[n + 2..].iter().filter(|g| g.2.is_some()).count() as f64 / 2.0;
    assert!((6.0..=9.0).contains(&limited_fps), "{limited_fps} fps");
    let now = net.now;
    net.sfu.set_track_limits(now, bob, track, limit(0)).unwrap();
    run_for(&mut net, &mut publisher, a, mid, Duration::from_secs(2));
    let got = frames(&net);
    assert_eq!(tids(&got[m..]), [0, 1, 2]);
    // The last second has every frame (30 fps), and no keyframe was needed.
    let last: Vec<_> = got[got.len() - 60..].iter().filter(|g| g.2.is_some()).collect();
    assert_eq!(last.len(), 30);
    assert_eq!(publisher.keyframes, keyframes);
}
