//! Unpublish, mute and media-level permissions through the router, in
//! virtual time: once a track is withdrawn, muted or unsubscribed, not one
//! more of its packets reaches the subscriber, and a participant that never
//! subscribed receives none at all.
mod common;

use std::time::Duration;

use common::{sub_mid, write_rtp, Net};
use sfu::participant::Role;
use sfu::router::{ParticipantId, SfuEvent, TrackId};
use sfu::Error;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::Event;

/// Payload tags the tests count packets by.
const AUDIO: u8 = 0xA0;
const VIDEO: u8 = 0x10;

struct Room {
    net: Net,
    alice: ParticipantId,
    bob: ParticipantId,
    carol: ParticipantId,
    /// Clients of alice (publisher), bob and carol.
    a: usize,
    b: usize,
    c: usize,
    audio: TrackId,
    video: TrackId,
    /// Next packet index (sequence numbers and payload counters).
    i: u64,
    /// The next video packet is a keyframe.
    key: bool,
    /// Keyframe requests alice's client has received.
    requests: usize,
}

impl Room {
    /// Alice publishes audio and video; bob subscribes to both, carol to
    /// the audio only.
    fn new() -> Room {
        let mut net = Net::new();
        let now = net.now;
        let alice = net.sfu.create_participant(now, "room", None).unwrap().id;
        let bob = net.sfu.create_participant(now, "room", None).unwrap().id;
        let carol = net.sfu.create_participant(now, "room", None).unwrap().id;
        let a = net.add_client("10.0.0.2:4000");
        let b = net.add_client("10.0.0.3:4000");
        let c = net.add_client("10.0.0.4:4000");
        let mut mids = Vec::new();
        net.publish_offer(a, alice, |api| {
            mids.push(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            mids.push(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
        });
        assert!(net.run_until(Duration::from_secs(5), |n| n.connected(alice, Role::Publisher)));
        let audio = TrackId {
            publisher: alice,
            mid: mids[0],
        };
        let video = TrackId {
            publisher: alice,
            mid: mids[1],
        };
        let mut room = Room {
            net,
            alice,
            bob,
            carol,
            a,
            b,
            c,
            audio,
            video,
            i: 0,
            key: true,
            requests: 0,
        };
        let now = room.net.now;
        room.net.sfu.subscribe(now, bob, audio).unwrap();
        room.net.sfu.subscribe(now, bob, video).unwrap();
        room.net.sfu.subscribe(now, carol, audio).unwrap();
        room.net.answer_offers(b, bob);
        room.net.answer_offers(c, carol);
        assert!(room
            .net
            .run_until(Duration::from_secs(5), |n| n.connected(bob, Role::Subscriber)
                && n.connected(carol, Role::Subscriber)));
        room.send_for(1000);
        room
    }

    /// Alice sends one audio and one video packet every 20 ms; video is an
    /// interframe unless a keyframe was asked for (or it is the first).
    fn send_for(&mut self, ms: u64) {
        for _ in 0..ms / 20 {
            let asked = self.net.clients[self.a]
                .events
                .drain(..)
                .filter(|e| matches!(e, Event::KeyframeRequest(_)))
                .count();
            if asked > 0 {
                self.requests += asked;
                self.key = true;
            }
            let i = self.i;
            let (a, am, vm) = (self.a, self.audio.mid, self.video.mid);
            write_rtp(
                &mut self.net,
                a,
                am,
                Codec::Opus,
                100 + i,
                960 * i as u32,
                &[AUDIO, i as u8, 1, 2],
            );
            let frame = if self.key { 0x00 } else { 0x01 };
            let payload = [VIDEO, frame, (i >> 8) as u8, i as u8, 7, 7, 7];
            write_rtp(&mut self.net, a, vm, Codec::Vp8, 5000 + i, 1800 * i as u32, &payload);
            self.key = false;
            self.i += 1;
            self.net.run(Duration::from_millis(20));
        }
    }

    /// (extended seq, payload) of the packets client `c` got with `tag`.
    fn got(&self, c: usize, tag: u8) -> Vec<(u64, Vec<u8>)> {
        self.net.clients[c]
            .rtp_packets()
            .filter(|p| p.payload.first() == Some(&tag))
            .map(|p| (*p.seq_no, p.payload.to_vec()))
            .collect()
    }
}

#[test]
fn unpublish_stops_the_mline_and_the_packets() {
    let mut r = Room::new();
    assert!(r.got(r.b, VIDEO).len() >= 30, "video flows before");
    let bob_video_mid: Mid = sub_mid(&r.net, r.b, r.video).expect("bob has the video m-line");

    // Nobody but the publisher may withdraw a track.
    let now = r.net.now;
    assert!(matches!(r.net.sfu.unpublish(now, r.bob, r.video), Err(Error::Unknown)));
    r.net.sfu.unpublish(now, r.alice, r.video).unwrap();
    // Bob, who watched it, is offered the m-line stopped; carol, who did
    // not, is offered nothing.
    r.net.collect();
    let offer = r
        .net
        .events
        .iter()
        .find_map(|e| match e {
            SfuEvent::Offer { participant, sdp } if *participant == r.bob => Some(sdp.clone()),
            _ => None,
        })
        .expect("an offer for bob");
    assert!(offer.contains("m=video 0 "), "stopped m-line (port 0):\n{offer}");
    assert!(!r
        .net
        .events
        .iter()
        .any(|e| matches!(e, SfuEvent::Offer { participant, .. } if *participant == r.carol)));
    let (b, bob) = (r.b, r.bob);
    assert_eq!(r.net.answer_offers(b, bob), 1);
    let dir = r.net.clients[b].rtc.media(bob_video_mid).map(|m| m.direction());
    assert_eq!(dir, Some(Direction::Inactive));

    let video_before = r.got(r.b, VIDEO).len();
    let audio_before = r.got(r.b, AUDIO).len();
    // Alice's client keeps sending on the m-line (it has not renegotiated):
    // the SFU drops it.
    r.send_for(1000);
    assert_eq!(r.got(r.b, VIDEO).len(), video_before, "no video after unpublish");
    assert!(r.got(r.b, AUDIO).len() >= audio_before + 40, "audio continues");
    // Gone for good: a second unpublish, a new subscription and a mute
    // find nothing.
    let now = r.net.now;
    assert!(matches!(
        r.net.sfu.unpublish(now, r.alice, r.video),
        Err(Error::Unknown)
    ));
    assert!(matches!(
        r.net.sfu.subscribe(now, r.carol, r.video),
        Err(Error::Unknown)
    ));
    assert!(matches!(
        r.net.sfu.set_muted(now, r.alice, r.video, true),
        Err(Error::Unknown)
    ));
}

#[test]
fn mute_stops_forwarding_and_unmute_asks_for_a_keyframe() {
    let mut r = Room::new();
    let before = r.got(r.b, VIDEO);
    assert!(before.len() >= 30, "video flows before: {}", before.len());
    let last_before = before.last().unwrap().0;

    let now = r.net.now;
    // Only the publisher mutes its track.
    assert!(matches!(
        r.net.sfu.set_muted(now, r.bob, r.video, true),
        Err(Error::Unknown)
    ));
    r.net.sfu.set_muted(now, r.alice, r.video, true).unwrap();
    r.send_for(1000);
    assert_eq!(r.got(r.b, VIDEO).len(), before.len(), "nothing forwarded while muted");
    let audio = r.got(r.b, AUDIO).len();

    let asked = r.requests;
    let now = r.net.now;
    r.net.sfu.set_muted(now, r.alice, r.video, false).unwrap();
    r.send_for(1000);
    assert!(r.requests > asked, "unmuting video asks the publisher for a keyframe");
    let after = &r.got(r.b, VIDEO)[before.len()..];
    assert!(after.len() >= 40, "video flows again: {}", after.len());
    // The first packet after the mute is that keyframe, and the stream goes
    // on where it stopped: the receiver sees no gap to NACK.
    assert_eq!(after[0].1[1], 0x00, "resumes on a keyframe");
    assert_eq!(after[0].0, last_before + 1, "sequence continues across the mute");
    for w in after.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1);
    }
    // Audio was never muted.
    assert!(r.got(r.b, AUDIO).len() >= audio + 40);
}

#[test]
fn muted_audio_resumes_without_a_gap() {
    let mut r = Room::new();
    let before = r.got(r.c, AUDIO);
    let now = r.net.now;
    r.net.sfu.set_muted(now, r.alice, r.audio, true).unwrap();
    r.send_for(500);
    assert_eq!(r.got(r.c, AUDIO).len(), before.len(), "muted");
    let now = r.net.now;
    r.net.sfu.set_muted(now, r.alice, r.audio, false).unwrap();
    r.send_for(500);
    let after = r.got(r.c, AUDIO);
    assert!(after.len() >= before.len() + 20);
    assert_eq!(after[before.len()].0, before.last().unwrap().0 + 1);
}

#[test]
fn never_subscribed_receives_nothing() {
    let mut r = Room::new();
    r.send_for(1000);
    // Carol subscribed to the audio only: she has no m-line for the video
    // and not one video packet reached her, while bob's flowed.
    assert!(sub_mid(&r.net, r.c, r.video).is_none());
    assert!(sub_mid(&r.net, r.c, r.audio).is_some());
    assert_eq!(r.got(r.c, VIDEO).len(), 0);
    assert!(r.got(r.c, AUDIO).len() >= 80);
    assert!(r.got(r.b, VIDEO).len() >= 80);
}

#[test]
fn unsubscribe_stops_the_packets_at_once() {
    let mut r = Room::new();
    let now = r.net.now;
    r.net.sfu.unsubscribe(now, r.bob, r.video).unwrap();
    // Not even before bob answers the offer that stops the m-line: the
    // down-track is gone the moment the subscription is.
    let video = r.got(r.b, VIDEO).len();
    let audio = r.got(r.b, AUDIO).len();
    r.send_for(500);
    assert_eq!(r.got(r.b, VIDEO).len(), video, "nothing after unsubscribe");
    let (b, bob) = (r.b, r.bob);
    assert_eq!(r.net.answer_offers(b, bob), 1);
    r.send_for(500);
    assert_eq!(r.got(r.b, VIDEO).len(), video, "nothing after renegotiation");
    assert!(r.got(r.b, AUDIO).len() >= audio + 40, "the other subscription goes on");
    // Subscribing again works: a fresh m-line and a keyframe.
    let now = r.net.now;
    r.net.sfu.subscribe(now, r.bob, r.video).unwrap();
    assert_eq!(r.net.answer_offers(b, bob), 1);
    r.send_for(1000);
    assert!(r.got(r.b, VIDEO).len() >= video + 30, "resubscribed");
}
