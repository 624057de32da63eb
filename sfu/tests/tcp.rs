//! ICE over TCP end to end, over real loopback sockets: a str0m publisher
//! whose only candidate is TCP (RFC 6544 active; the framing, RFC 4571, is
//! written in `tests/sockets` rather than borrowed from the SFU, so the two
//! are checked against each other) and a UDP subscriber. Timeouts are
//! generous bounds, not measurements.
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sfu::{Sfu, SfuConfig, SfuEvent, TrackId};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind};
use str0m::rtp::RtpWrite;

mod sockets;
use sockets::{next_event, pump_until, subscribe, Client, Transport};

#[test]
fn a_tcp_only_publisher_reaches_a_udp_subscriber() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Two shards: the kernel may hand the connection to either, and the
    // one that accepted it passes it to the room's shard.
    let (sfu, mut events) = Sfu::start(SfuConfig {
        shards: 2,
        tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    let tcp_addr = sfu.tcp_addr().expect("TCP is on");
    let alice = rt.block_on(sfu.create_participant("tcp")).unwrap().id;
    let bob = rt.block_on(sfu.create_participant("tcp")).unwrap().id;

    let mut a = Client::tcp(tcp_addr);
    let mut b = Client::udp();
    let mut api = a.rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = rt.block_on(sfu.offer(alice, offer.to_sdp_string())).unwrap();
    let tcp_line = format!("{} {} typ host tcptype passive", tcp_addr.ip(), tcp_addr.port());
    assert!(
        answer.contains(&tcp_line),
        "answer lacks the passive TCP candidate:\n{answer}"
    );
    a.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    assert!(
        pump_until(&mut [&mut a], Duration::from_secs(10), |c| c[0].connected),
        "publisher connects over TCP"
    );
    assert!(
        next_event(
            &mut events,
            |e| matches!(e, SfuEvent::Connected { participant, .. } if *participant == alice)
        )
        .is_some(),
        "the SFU sees the publisher connected"
    );

    let track = TrackId { publisher: alice, mid };
    subscribe(&rt, &sfu, &mut events, bob, &mut b, track);
    assert!(
        pump_until(&mut [&mut a, &mut b], Duration::from_secs(10), |c| c[1].connected),
        "subscriber connects over UDP"
    );

    let pt = a
        .rtc
        .codec_config()
        .find(|p| p.spec().codec == Codec::Vp8)
        .unwrap()
        .pt();
    let sent_before = a.tcp_sent;
    let mut sent = 0u64;
    let ok = pump_until(&mut [&mut a, &mut b], Duration::from_secs(10), |c| {
        if sent < 200 {
            let mut api = c[0].rtc.direct_api();
            let s = api.stream_tx_by_mid(mid, None).unwrap();
            // A VP8 keyframe descriptor start, so the subscriber's first
            // packet is decodable and the SFU forwards at once.
            let payload = vec![0x10, 0, sent as u8, 7, 7, 7];
            s.write_rtp(
                RtpWrite::new(pt, (100 + sent).into(), 3000 * sent as u32, Instant::now(), payload).marker(true),
            );
            sent += 1;
        }
        c[1].rtp.len() >= 20
    });
    assert!(ok, "subscriber received {} packets", b.rtp.len());
    assert!(b.rtp.iter().all(|(_, p)| p[0] == 0x10 && p[3..] == [7, 7, 7]));
    assert!(a.tcp_sent > sent_before, "the media went over TCP");
    sfu.remove_participant(alice);
    sfu.shutdown();
}

/// Whether the SFU closes `stream` within `max` (EOF or reset), reading
/// and discarding whatever arrives before.
fn closed_by_sfu(stream: &mut TcpStream, max: Duration) -> bool {
    let end = Instant::now() + max;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return true,
        }
    }
    false
}

fn poll_until(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + max;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

#[test]
fn connections_beyond_the_cap_are_refused_and_counted() {
    let (sfu, _events) = Sfu::start(SfuConfig {
        shards: 2,
        tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
        tcp_limits: sfu::TcpLimits {
            max_connections: 2,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let addr = sfu.tcp_addr().unwrap();
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    };
    // Two silent connections wait for their first check (up to 10 s).
    let mut first = connect();
    let mut second = connect();
    assert!(poll_until(Duration::from_secs(10), || sfu.tcp_stats().open == 2));
    let mut third = connect();
    assert!(
        closed_by_sfu(&mut third, Duration::from_secs(10)),
        "a third connection is closed at once"
    );
    assert_eq!(sfu.tcp_stats().refused, 1);
    assert_eq!(sfu.tcp_stats().open, 2);
    // The first two are still open.
    assert!(!closed_by_sfu(&mut first, Duration::from_millis(100)));
    assert!(!closed_by_sfu(&mut second, Duration::from_millis(100)));
    // Closing one frees its place.
    drop(first);
    assert!(poll_until(Duration::from_secs(10), || sfu.tcp_stats().open == 1));
    let mut fourth = connect();
    assert!(poll_until(Duration::from_secs(10), || sfu.tcp_stats().open == 2));
    assert!(!closed_by_sfu(&mut fourth, Duration::from_millis(100)));
    assert_eq!(sfu.tcp_stats().refused, 1);
    sfu.shutdown();
}

#[test]
fn a_silent_tcp_connection_is_closed_after_the_idle_timeout() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sfu, mut events) = Sfu::start(SfuConfig {
        tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
        tcp_limits: sfu::TcpLimits {
            idle_timeout: Duration::from_millis(500),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let tcp_addr = sfu.tcp_addr().unwrap();
    let alice = rt.block_on(sfu.create_participant("idle")).unwrap().id;
    let mut a = Client::tcp(tcp_addr);
    let mut api = a.rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = rt.block_on(sfu.offer(alice, offer.to_sdp_string())).unwrap();
    a.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    assert!(pump_until(&mut [&mut a], Duration::from_secs(10), |c| c[0].connected));
    assert!(next_event(&mut events, |e| matches!(e, SfuEvent::Connected { .. })).is_some());
    assert_eq!(sfu.tcp_stats().open, 1);
    // While the client sends media, the connection stays: more than two
    // timeouts of it (the client's pump panics if the SFU closes).
    let pt = a
        .rtc
        .codec_config()
        .find(|p| p.spec().codec == Codec::Opus)
        .unwrap()
        .pt();
    let mut seq = 0u64;
    let mut last = Instant::now();
    let stay = Instant::now() + Duration::from_millis(1500);
    pump_until(&mut [&mut a], Duration::from_secs(5), |c| {
        if last.elapsed() >= Duration::from_millis(20) {
            last = Instant::now();
            seq += 1;
            let mut api = c[0].rtc.direct_api();
            let s = api.stream_tx_by_mid(mid, None).unwrap();
            s.write_rtp(RtpWrite::new(
                pt,
                seq.into(),
                960 * seq as u32,
                Instant::now(),
                vec![1, 2, 3],
            ));
        }
        Instant::now() >= stay
    });
    assert!(seq > 10, "the client sent media");
    assert_eq!(sfu.tcp_stats().idle_closed, 0, "a talking connection is kept");
    // The client goes silent (gone without a FIN): closed.
    let Transport::Tcp(stream, _) = &mut a.net else {
        unreachable!()
    };
    assert!(
        closed_by_sfu(stream, Duration::from_secs(10)),
        "the silent connection is closed"
    );
    assert_eq!(sfu.tcp_stats().idle_closed, 1);
    assert!(poll_until(Duration::from_secs(5), || sfu.tcp_stats().open == 0));
    sfu.shutdown();
}
