//! The whole SFU (shards, sockets, handle) over real loopback UDP, with a
//! str0m publisher and subscriber. Timeouts are generous bounds, not
//! measurements.
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu::{Sfu, SfuConfig, SfuEvent, TrackId};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::sync::mpsc::UnboundedReceiver;

struct Client {
    rtc: Rtc,
    sock: UdpSocket,
    addr: SocketAddr,
    rtp: Vec<(u32, Vec<u8>)>,
    connected: bool,
}

impl Client {
    fn new() -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let addr = sock.local_addr().unwrap();
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .set_rtp_mode(true)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Client {
            rtc,
            sock,
            addr,
            rtp: Vec::new(),
            connected: false,
        }
    }

    /// Feeds what arrived, fires timers, sends what is due.
    fn pump(&mut self) {
        let mut buf = [0u8; 2000];
        while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            let Ok(contents) = buf[..n].try_into() else { continue };
            let input = Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: from,
                    destination: self.addr,
                    contents,
                },
            );
            self.rtc.handle_input(input).unwrap();
        }
        self.rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(t) => {
                    let _ = self.sock.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::RtpPacket(p)) => self.rtp.push((*p.header.ssrc, p.payload.to_vec())),
                Output::Event(_) => {}
            }
        }
    }
}

fn pump_until(clients: &mut [&mut Client], max: Duration, mut f: impl FnMut(&mut [&mut Client]) -> bool) -> bool {
    let end = Instant::now() + max;
    while Instant::now() < end {
        for c in clients.iter_mut() {
            c.pump();
        }
        if f(clients) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn next_event(events: &mut UnboundedReceiver<SfuEvent>, mut f: impl FnMut(&SfuEvent) -> bool) -> Option<SfuEvent> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match events.try_recv() {
            Ok(e) if f(&e) => return Some(e),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    None
}

#[test]
fn video_flows_through_real_sockets() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sfu, mut events) = Sfu::start(SfuConfig {
        shards: 2,
        ..Default::default()
    })
    .unwrap();
    let alice = rt.block_on(sfu.create_participant("loop")).unwrap().id;
    let bob = rt.block_on(sfu.create_participant("loop")).unwrap().id;

    let mut a = Client::new();
    let mut b = Client::new();
    let mut api = a.rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = rt.block_on(sfu.offer(alice, offer.to_sdp_string())).unwrap();
    a.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    assert!(
        pump_until(&mut [&mut a], Duration::from_secs(10), |c| c[0].connected),
        "publisher connects"
    );

    let track = TrackId { publisher: alice, mid };
    assert!(next_event(
        &mut events,
        |e| matches!(e, SfuEvent::TrackPublished { track: t, .. } if *t == track)
    )
    .is_some());
    rt.block_on(sfu.subscribe(bob, track)).unwrap();
    let Some(SfuEvent::Offer { sdp, .. }) = next_event(
        &mut events,
        |e| matches!(e, SfuEvent::Offer { participant, .. } if *participant == bob),
    ) else {
        panic!("no subscriber offer");
    };
    let answer = b
        .rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&sdp).unwrap())
        .unwrap();
    rt.block_on(sfu.answer(bob, answer.to_sdp_string())).unwrap();
    assert!(
        pump_until(&mut [&mut a, &mut b], Duration::from_secs(10), |c| c[1].connected),
        "subscriber connects"
    );

    let pt = a
        .rtc
        .codec_config()
        .find(|p| p.spec().codec == Codec::Vp8)
        .unwrap()
        .pt();
    let pub_ssrc = *a.rtc.direct_api().stream_tx_by_mid(mid, None).unwrap().ssrc();
    let mut sent = 0u64;
    let ok = pump_until(&mut [&mut a, &mut b], Duration::from_secs(10), |c| {
        if sent < 200 {
            let mut api = c[0].rtc.direct_api();
            let s = api.stream_tx_by_mid(mid, None).unwrap();
            let payload = vec![0x10, 0, sent as u8, 7, 7, 7];
            s.write_rtp(
                RtpWrite::new(pt, (100 + sent).into(), 3000 * sent as u32, Instant::now(), payload).marker(true),
            );
            sent += 1;
        }
        c[1].rtp.len() >= 20
    });
    assert!(ok, "subscriber received {} packets", b.rtp.len());
    assert!(b.rtp.iter().all(|(ssrc, p)| *ssrc != pub_ssrc && p[0] == 0x10));
    sfu.remove_participant(alice);
    sfu.shutdown();
}
