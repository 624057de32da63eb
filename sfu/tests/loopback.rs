//! The whole SFU (shards, sockets, handle) over real loopback UDP, with a
//! str0m publisher and subscriber. Timeouts are generous bounds, not
//! measurements.
use std::time::{Duration, Instant};

use sfu::{Sfu, SfuConfig, TrackId};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind};
use str0m::rtp::RtpWrite;

mod sockets;
use sockets::{pump_until, subscribe, Client};

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

    let mut a = Client::udp();
    let mut b = Client::udp();
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
    subscribe(&rt, &sfu, &mut events, bob, &mut b, track);
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
