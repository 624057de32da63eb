//! A subscriber whose send queue does not drain loses packets at the SFU
//! instead of growing memory, and its video resumes at a keyframe.
mod common;

use std::time::Duration;

use common::Net;
use sfu::participant::Role;
use sfu::router::{TrackId, MAX_QUEUED_PACKETS};
use str0m::bwe::Bitrate;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::rtp::{RtpWrite, SeqNo};

fn write_video(net: &mut Net, c: usize, mid: Mid, seq: u64, ts: u32, payload: Vec<u8>) {
    let now = net.now;
    let rtc = &mut net.clients[c].rtc;
    let pt = rtc.codec_config().find(|p| p.spec().codec == Codec::Vp8).unwrap().pt();
    let mut api = rtc.direct_api();
    let stream = api.stream_tx_by_mid(mid, None).expect("publisher stream");
    let seq: SeqNo = seq.into();
    stream.write_rtp(RtpWrite::new(pt, seq, ts, now, payload).marker(true).nackable(true));
}

/// VP8 payload: descriptor with S=1, then the frame tag (P bit 0 = key
/// frame), a marker byte to find it at the subscriber, and padding.
fn vp8(key: bool, mark: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0x10, if key { 0x00 } else { 0x01 }, mark];
    p.resize(len, 0xEE);
    p
}

fn received(net: &Net, c: usize, mark: u8) -> usize {
    net.clients[c]
        .rtp_packets()
        .filter(|p| p.payload.first() == Some(&0x10) && p.payload.get(2) == Some(&mark))
        .count()
}

#[test]
fn a_flooded_subscriber_queue_drops_at_the_bound_and_video_resumes_at_a_keyframe() {
    let mut net = Net::new();
    let now = net.now;
    let alice = net.sfu.create_participant(now, "room", None).unwrap().id;
    let bob = net.sfu.create_participant(now, "room", None).unwrap().id;
    let a = net.add_client("10.0.0.2:4000");
    let b = net.add_client("10.0.0.3:4000");
    let mut mid = None;
    net.publish_offer(a, alice, |api| {
        mid = Some(api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("s".into()),
            Some("cam".into()),
            None,
        ));
    });
    let mid = mid.unwrap();
    assert!(net.run_until(Duration::from_secs(5), |n| n.connected(alice, Role::Publisher)));
    let mut seq = 1000u64;
    let mut ts = 0u32;
    let mut send = |net: &mut Net, key: bool, mark: u8, len: usize| {
        write_video(net, a, mid, seq, ts, vp8(key, mark, len));
        seq += 1;
        ts += 3000;
    };
    for _ in 0..20 {
        send(&mut net, true, 1, 100);
        net.run(Duration::from_millis(33));
    }
    assert_eq!(net.subscribe_connected(b, bob, &[TrackId { publisher: alice, mid }]), 1);
    // The allocator must not pause the flood: only str0m's pacer (twice
    // its own 1 Mbit/s start estimate) limits what leaves for bob.
    let now = net.now;
    net.sfu
        .set_estimate_override(now, bob, Some(Bitrate::bps(1_000_000_000_000)));
    for _ in 0..10 {
        send(&mut net, true, 2, 200);
        net.run(Duration::from_millis(33));
    }
    assert!(received(&net, b, 2) >= 5, "media flows before the flood");
    assert_eq!(net.sfu.queue_full_drops(), 0);

    // 2,000 packets of 1,000 bytes within 10 ms: far above what the
    // pacer releases.
    let flood = 2000;
    for _ in 0..10 {
        for _ in 0..flood / 10 {
            send(&mut net, true, 3, 1000);
        }
        net.run(Duration::from_millis(1));
    }
    // The publisher client sends what it was given one step later.
    net.run(Duration::from_millis(2));
    let drops = net.sfu.queue_full_drops() as usize;
    assert!(drops > 0, "no packet dropped");
    // What was neither dropped nor delivered yet is queued in str0m: at
    // most the bound (the last drive before a full check may add one).
    let queued = flood - drops - received(&net, b, 3);
    assert!(
        queued <= MAX_QUEUED_PACKETS + 1,
        "{queued} queued ({drops} dropped of {flood})"
    );

    // Let the queue drain, then: a delta frame is held back (the stream
    // lost packets, so it waits for a keyframe), a keyframe and what
    // follows it flow again.
    net.run(Duration::from_secs(5));
    let drops = net.sfu.queue_full_drops();
    let delivered = received(&net, b, 3);
    assert!(
        delivered + drops as usize <= flood,
        "{delivered} delivered + {drops} dropped > {flood}"
    );
    send(&mut net, false, 4, 200);
    net.run(Duration::from_millis(100));
    send(&mut net, true, 5, 200);
    net.run(Duration::from_millis(33));
    send(&mut net, false, 6, 200);
    net.run(Duration::from_millis(200));
    assert_eq!(
        received(&net, b, 4),
        0,
        "a delta frame before the keyframe is not forwarded"
    );
    assert_eq!(received(&net, b, 5), 1, "the keyframe is forwarded");
    assert_eq!(received(&net, b, 6), 1, "so is the delta frame after it");
    assert_eq!(net.sfu.queue_full_drops(), drops, "no drops once drained");
}
