//! Publisher renegotiation through the router, in virtual time: a
//! publisher that stops sending on an m-line (direction `inactive`), stops
//! it (port 0) or adds one mid-call has its track unpublished or published
//! again, while its subscriber's other tracks flow on without a gap.
mod common;

use std::time::Duration;

use common::{sub_mid, write_rtp, Net};
use sfu::participant::Role;
use sfu::router::{ParticipantId, SfuEvent, TrackId};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};

const AUDIO: u8 = 0xA0;
const VIDEO: u8 = 0x10;

struct Call {
    net: Net,
    alice: ParticipantId,
    bob: ParticipantId,
    a: usize,
    b: usize,
    audio: TrackId,
    video: TrackId,
    i: u64,
}

impl Call {
    /// Alice publishes audio and video, bob subscribes to both.
    fn new() -> Call {
        let mut net = Net::new();
        let common::Pair { alice, bob, a, b, mids } =
            common::alice_publishes(&mut net, &[MediaKind::Audio, MediaKind::Video]);
        let audio = TrackId {
            publisher: alice,
            mid: mids[0],
        };
        let video = TrackId {
            publisher: alice,
            mid: mids[1],
        };
        // The estimate is not under test here: pinned, so the allocator
        // never pauses video for lack of it.
        let now = net.now;
        net.sfu
            .set_estimate_override(now, bob, Some(str0m::bwe::Bitrate::mbps(5)));
        let mut call = Call {
            net,
            alice,
            bob,
            a,
            b,
            audio,
            video,
            i: 0,
        };
        call.subscribe(video);
        call.subscribe(audio);
        assert!(call
            .net
            .run_until(Duration::from_secs(5), |n| n.connected(bob, Role::Subscriber)));
        call.send_for(1000, &[audio.mid, video.mid]);
        call
    }

    fn subscribe(&mut self, track: TrackId) {
        let now = self.net.now;
        self.net.sfu.subscribe(now, self.bob, track).unwrap();
        let (b, bob) = (self.b, self.bob);
        self.net.answer_offers(b, bob);
    }

    /// Alice sends one packet every 20 ms on each of `mids` (audio for the
    /// audio mid, VP8 keyframes otherwise), whatever the SFU thinks of them.
    fn send_for(&mut self, ms: u64, mids: &[Mid]) {
        for _ in 0..ms / 20 {
            let i = self.i;
            for &mid in mids {
                if mid == self.audio.mid {
                    write_rtp(
                        &mut self.net,
                        self.a,
                        mid,
                        Codec::Opus,
                        100 + i,
                        960 * i as u32,
                        &[AUDIO, i as u8],
                    );
                } else {
                    let payload = [VIDEO, 0x00, (i >> 8) as u8, i as u8, 7, 7, 7];
                    write_rtp(
                        &mut self.net,
                        self.a,
                        mid,
                        Codec::Vp8,
                        5000 + i,
                        1800 * i as u32,
                        &payload,
                    );
                }
            }
            self.i += 1;
            self.net.run(Duration::from_millis(20));
        }
    }

    /// Extended sequence numbers of bob's packets tagged `tag`.
    fn got(&self, tag: u8) -> Vec<u64> {
        self.net.clients[self.b]
            .rtp_packets()
            .filter(|p| p.payload.first() == Some(&tag))
            .map(|p| *p.seq_no)
            .collect()
    }

    /// Alice's client renegotiates with `f`'s changes.
    fn renegotiate(&mut self, f: impl FnOnce(&mut str0m::change::SdpApi)) {
        let (a, alice) = (self.a, self.alice);
        self.net.events.clear();
        self.net.publish_offer(a, alice, f);
        self.net.collect();
    }

    fn reported(&self, f: impl Fn(&SfuEvent) -> bool) -> bool {
        self.net.events.iter().any(f)
    }

    /// The SDP of the last offer the SFU sent bob, answered.
    fn answer_bob(&mut self) -> Option<String> {
        let offer = self.net.events.iter().rev().find_map(|e| match e {
            SfuEvent::Offer { participant, sdp } if *participant == self.bob => Some(sdp.clone()),
            _ => None,
        });
        let (b, bob) = (self.b, self.bob);
        self.net.answer_offers(b, bob);
        offer
    }
}

/// Audio sequence numbers bob received form one run without a gap.
fn assert_contiguous(seqs: &[u64]) {
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap in bob's audio: {seqs:?}");
    }
}

#[test]
fn inactive_then_sendonly_unpublishes_and_publishes_again() {
    let mut c = Call::new();
    let video_mid = sub_mid(&c.net, c.b, c.video).expect("bob's video m-line");
    assert!(c.got(VIDEO).len() >= 30, "video flows before");

    // Alice stops sending video (removeTrack / direction inactive).
    let vm = c.video.mid;
    c.renegotiate(|api| api.set_direction(vm, Direction::Inactive));
    let video = c.video;
    assert!(
        c.reported(|e| matches!(e, SfuEvent::TrackUnpublished { track } if *track == video)),
        "the SFU reports the withdrawn track: {:?}",
        c.net.events
    );
    let offer = c.answer_bob().expect("bob is offered the change");
    // Bob's video m-line is his first, which carries the BUNDLE transport:
    // made inactive rather than stopped (port 0), which would make Chrome
    // tear the transport down.
    assert!(
        !offer.contains("m=video 0 ") && offer.contains("a=inactive"),
        "bob's first m-line goes inactive, not stopped:\n{offer}"
    );
    assert_eq!(
        c.net.clients[c.b].rtc.media(video_mid).map(|m| m.direction()),
        Some(Direction::Inactive)
    );
    let videos = c.got(VIDEO).len();
    // Alice's client still writes video: the SFU drops it.
    let (am, vm) = (c.audio.mid, c.video.mid);
    c.send_for(1000, &[am, vm]);
    assert_eq!(c.got(VIDEO).len(), videos, "no video while withdrawn");

    // Alice sends again on the same m-line: the same track is published again.
    c.renegotiate(|api| api.set_direction(vm, Direction::SendOnly));
    assert!(
        c.reported(|e| matches!(e, SfuEvent::TrackPublished { track, kind: MediaKind::Video, .. } if *track == video)),
        "the track is published again: {:?}",
        c.net.events
    );
    c.subscribe(video);
    c.send_for(1000, &[am, vm]);
    assert!(c.got(VIDEO).len() >= videos + 30, "video flows again");
    let new_mid = c.net.clients[c.b].events.iter().rev().find_map(|e| match e {
        str0m::Event::MediaAdded(m) if m.kind == MediaKind::Video => Some(m.mid),
        _ => None,
    });
    assert_ne!(new_mid, Some(video_mid), "a fresh m-line, not the stopped one");

    // Audio never stopped: one contiguous run of sequence numbers.
    let audio = c.got(AUDIO);
    assert!(audio.len() >= 120, "audio flowed throughout: {}", audio.len());
    assert_contiguous(&audio);
}

#[test]
fn stopped_mline_unpublishes_and_a_new_one_publishes() {
    let mut c = Call::new();
    let vm = c.video.mid;
    c.renegotiate(|api| api.stop_media(vm));
    let video = c.video;
    assert!(
        c.reported(|e| matches!(e, SfuEvent::TrackUnpublished { track } if *track == video)),
        "{:?}",
        c.net.events
    );
    c.answer_bob().expect("bob is offered the change");
    let am = c.audio.mid;
    c.send_for(500, &[am]);

    // A second video track mid-call: a new m-line, published, subscribed.
    let mut added = None;
    c.renegotiate(|api| added = Some(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None)));
    let track = TrackId {
        publisher: c.alice,
        mid: added.unwrap(),
    };
    assert!(
        c.reported(|e| matches!(e, SfuEvent::TrackPublished { track: t, .. } if *t == track)),
        "{:?}",
        c.net.events
    );
    assert!(!c.reported(|e| matches!(e, SfuEvent::TrackUnpublished { .. })));
    let before = c.got(VIDEO).len();
    c.subscribe(track);
    c.send_for(1000, &[am, track.mid]);
    let started = c.reported(|e| matches!(e, SfuEvent::TrackMediaStarted { track: t } if *t == track));
    assert!(
        c.got(VIDEO).len() >= before + 30,
        "the new track reaches bob: started {started}, {} -> {}, {:?}",
        before,
        c.got(VIDEO).len(),
        c.net.events
    );
    let audio = c.got(AUDIO);
    assert!(audio.len() >= 120, "audio flowed throughout: {}", audio.len());
    assert_contiguous(&audio);
}

#[test]
fn unpublish_by_signalling_then_inactive_reports_nothing() {
    // The SDK's order: signalling unpublishes first, then the client
    // renegotiates the m-line down; the second step finds nothing to do.
    let mut c = Call::new();
    let now = c.net.now;
    let (alice, video) = (c.alice, c.video);
    c.net.sfu.unpublish(now, alice, video).unwrap();
    c.answer_bob();
    let vm = video.mid;
    c.renegotiate(|api| api.stop_media(vm));
    assert!(
        !c.reported(|e| matches!(e, SfuEvent::TrackUnpublished { .. } | SfuEvent::Offer { .. })),
        "{:?}",
        c.net.events
    );
    let am = c.audio.mid;
    c.send_for(500, &[am]);
    assert_contiguous(&c.got(AUDIO));
}
