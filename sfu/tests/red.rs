//! Opus in RFC 2198 RED through the router, in virtual time: a subscriber
//! that negotiated RED gets the publisher's RED payloads untouched, one that
//! did not gets only the primary blocks as plain Opus, and plain Opus from a
//! publisher without RED reaches both as plain Opus.
mod common;

use std::time::Duration;

use common::{sub_mid, Net};
use sfu::participant::Role;
use sfu::router::TrackId;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::rtp::RtpWrite;

/// One redundant block (the previous frame, 960 ticks back) and the primary.
fn red_payload(prev: &[u8], cur: &[u8], opus_pt: u8) -> Vec<u8> {
    let [_, a, b, c] = ((960u32 << 10) | prev.len() as u32).to_be_bytes();
    let mut v = vec![0x80 | opus_pt, a, b, c, opus_pt];
    v.extend_from_slice(prev);
    v.extend_from_slice(cur);
    v
}

fn opus_pts(net: &mut Net, c: usize) -> (Pt, Option<Pt>) {
    let p = net.clients[c]
        .rtc
        .codec_config()
        .find(|p| p.spec().codec == Codec::Opus)
        .copied()
        .expect("opus");
    (p.pt(), p.red())
}

fn frame(i: u64) -> Vec<u8> {
    vec![0xF0, i as u8, (i >> 8) as u8, 0x55]
}

/// Runs one room: a publisher (RED or not) and two subscribers, one with
/// RED and one without. Returns (payload type, payload) of every audio
/// packet each subscriber received, and the subscribers' (opus, red) PTs.
#[allow(clippy::type_complexity)]
fn run(publisher_red: bool) -> [(Vec<(Pt, Vec<u8>)>, (Pt, Option<Pt>)); 2] {
    let mut net = Net::new();
    let now = net.now;
    let alice = net.sfu.create_participant(now, "room", None).unwrap().id;
    let bob = net.sfu.create_participant(now, "room", None).unwrap().id;
    let carol = net.sfu.create_participant(now, "room", None).unwrap().id;
    let a = net.add_client_with("10.0.0.2:4000", |c| c.codec_config().enable_opus(true, publisher_red));
    let b = net.add_client_with("10.0.0.3:4000", |c| c.codec_config().enable_opus(true, true));
    let c = net.add_client("10.0.0.4:4000");
    let mut mid: Option<Mid> = None;
    net.publish_offer(a, alice, |api| {
        mid = Some(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
    });
    let mid = mid.unwrap();
    assert!(net.run_until(Duration::from_secs(5), |n| n.connected(alice, Role::Publisher)));
    let track = TrackId { publisher: alice, mid };
    let now = net.now;
    net.sfu.subscribe(now, bob, track).unwrap();
    net.sfu.subscribe(now, carol, track).unwrap();
    net.answer_offers(b, bob);
    net.answer_offers(c, carol);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.connected(bob, Role::Subscriber)
            && n.connected(carol, Role::Subscriber))
    );

    let (opus, red) = opus_pts(&mut net, a);
    assert_eq!(red.is_some(), publisher_red, "the publisher's RED negotiation");
    for i in 0..40u64 {
        let (pt, payload) = match red {
            Some(red) => (red, red_payload(&frame(i.wrapping_sub(1)), &frame(i), *opus)),
            None => (opus, frame(i)),
        };
        let now = net.now;
        let mut api = net.clients[a].rtc.direct_api();
        let stream = api.stream_tx_by_mid(mid, None).expect("publisher stream");
        stream.write_rtp(RtpWrite::new(pt, (100 + i).into(), 960 * i as u32, now, payload).marker(i == 0));
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_millis(200));
    [b, c].map(|s| {
        // The track is the subscriber's only m-line, so every packet is its.
        sub_mid(&net, s, track).expect("subscriber m-line");
        let got = net.clients[s]
            .rtp_packets()
            .map(|p| (p.header.payload_type, p.payload.to_vec()))
            .collect();
        (got, opus_pts(&mut net, s))
    })
}

#[test]
fn red_is_forwarded_to_red_subscribers_and_unwrapped_for_the_others() {
    let [(bob, (bob_opus, bob_red)), (carol, (carol_opus, carol_red))] = run(true);
    let bob_red = bob_red.expect("bob negotiated RED");
    assert_eq!(carol_red, None, "carol did not");
    assert!(bob.len() >= 35, "bob got {} of 40 packets", bob.len());
    assert!(carol.len() >= 35, "carol got {} of 40 packets", carol.len());
    for (pt, payload) in &bob {
        assert_eq!(*pt, bob_red, "bob's packets are RED");
        // Untouched: the redundant block is still there, and the block
        // headers name bob's own Opus payload type.
        let i = u64::from(payload[payload.len() - 3]);
        assert_eq!(payload, &red_payload(&frame(i.wrapping_sub(1)), &frame(i), *bob_opus));
    }
    let carol_frames: Vec<&Vec<u8>> = carol.iter().map(|(_, p)| p).collect();
    for (pt, payload) in &carol {
        assert_eq!(*pt, carol_opus, "carol's packets are plain Opus");
        assert_eq!(payload.len(), 4, "only the primary block: {payload:?}");
        assert_eq!(payload[0], 0xF0);
    }
    // The primaries arrive in order, each frame once.
    let idx: Vec<u8> = carol_frames.iter().map(|p| p[1]).collect();
    assert!(idx.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{idx:?}");
}

#[test]
fn plain_opus_reaches_red_and_plain_subscribers_as_opus() {
    let [(bob, (bob_opus, _)), (carol, (carol_opus, _))] = run(false);
    assert!(
        bob.len() >= 35 && carol.len() >= 35,
        "{} and {}",
        bob.len(),
        carol.len()
    );
    assert!(bob.iter().all(|(pt, p)| *pt == bob_opus && p.len() == 4));
    assert!(carol.iter().all(|(pt, p)| *pt == carol_opus && p.len() == 4));
}
