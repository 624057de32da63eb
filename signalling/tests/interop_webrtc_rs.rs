//! Interoperability with an independent WebRTC stack: webrtc-rs peers
//! publish and subscribe through the real `rtc-server` binary (signalling
//! over the WebSocket protocol, media through its SFU).
//!
//! - `webrtc_rs_publishes_and_subscribes_through_the_sfu`: a publisher sends
//!   a VP8 video track and an Opus audio track (synthetic frames); a
//!   subscriber that joined first (so its subscriptions wait for the
//!   publisher's offer) answers the server's offers and receives RTP on
//!   both tracks.
//! - `permissions_are_enforced_on_media` (the publisher offers before it
//!   announces its tracks, the other order): a participant without
//!   `can_subscribe` is never offered anything while another receives the
//!   media; revoking the publisher's `can_publish` over REST ends the tracks
//!   at the subscriber (their m-lines are stopped and the receivers end).
//!
//! Everything stays on 127.0.0.1: webrtc-rs gathers only loopback host
//! candidates (IP and interface filters, no mDNS, no STUN), the server binds
//! loopback with ports the OS picks. Waits are bounded polls; nothing
//! asserts on elapsed time.
#[path = "binary/mod.rs"]
mod binary;
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::Client;
use futures_util::StreamExt;
use serde_json::{json, Value};
use signalling::auth::{mint, now_unix, Grants, TokenRequest};
use tokio_tungstenite::tungstenite::Message;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTPCodecType};
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

const KEY: &str = "interop";
const SECRET: &str = "a-secret-for-the-webrtc-rs-interop-test";
/// Bound on every wait (server start, ICE/DTLS, first packets).
const WAIT: Duration = Duration::from_secs(20);
/// Packets per track that count as "flowing".
const ENOUGH: u64 = 25;

/// A running `rtc-server`; killed when dropped.
struct Server {
    _bin: binary::Binary,
    http: SocketAddr,
    media: SocketAddr,
}

/// Starts the binary on loopback with OS-picked ports (HTTP and media) and
/// no TURN relay.
fn start_server() -> Server {
    let key = format!("{KEY}={SECRET}");
    let args = [
        "--http-listen",
        "127.0.0.1:0",
        "--media-port",
        "0",
        "--no-turn",
        "--api-key",
        &key,
    ];
    let (bin, addrs) = binary::start(&args, &["listening http ", "listening media udp "], WAIT);
    let (http, media) = (addrs[0], addrs[1]);
    assert!(media.ip().is_loopback(), "media must stay on loopback: {media}");
    Server { _bin: bin, http, media }
}

fn token(identity: &str, grants: Grants) -> String {
    let req = TokenRequest {
        identity: identity.into(),
        ttl: Duration::from_secs(600),
        grants,
        ..Default::default()
    };
    mint(KEY, SECRET, &req, now_unix()).unwrap()
}

fn grants(room: &str) -> Grants {
    Grants {
        room: Some(room.into()),
        room_join: true,
        ..Default::default()
    }
}

fn admin() -> String {
    token(
        "",
        Grants {
            room_admin: true,
            room_create: true,
            room_list: true,
            ..Default::default()
        },
    )
}

impl Server {
    async fn connect(&self, token: &str) -> Client {
        let url = format!("ws://{}/v1/rtc?access_token={token}", self.http);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket connect");
        Client { ws }
    }

    async fn patch_permissions(&self, room: &str, identity: &str, permissions: Value) {
        let resp = reqwest::Client::new()
            .patch(format!("http://{}/v1/rooms/{room}/participants/{identity}", self.http))
            .bearer_auth(admin())
            .header("content-type", "application/json")
            .body(json!({ "permissions": permissions }).to_string())
            .send()
            .await
            .expect("PATCH participant");
        assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    }
}

/// A webrtc-rs peer connection that can only ever use loopback: host
/// candidates from 127.0.0.1 on `lo`, no mDNS, no STUN/TURN servers.
async fn loopback_peer() -> Arc<RTCPeerConnection> {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let registry = register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
    let mut s = SettingEngine::default();
    s.set_include_loopback_candidate(true);
    s.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    s.set_interface_filter(Box::new(|name| name == "lo"));
    s.set_network_types(vec![NetworkType::Udp4]);
    s.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(s)
        .build();
    Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .expect("peer connection"),
    )
}

/// The local description once gathering is complete (the server is
/// ICE-lite and takes candidates from the SDP; no trickle needed).
async fn local_sdp(pc: &RTCPeerConnection, desc: RTCSessionDescription) -> String {
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(desc).await.expect("set local description");
    tokio::time::timeout(WAIT, gathered.recv())
        .await
        .expect("ICE gathering timed out");
    let sdp = pc.local_description().await.expect("local description").sdp;
    for line in sdp.lines().filter(|l| l.starts_with("a=candidate")) {
        assert!(line.contains(" 127.0.0.1 "), "non-loopback candidate: {line}");
    }
    sdp
}

/// The publisher's tracks (msid track id = the signalling cid).
struct Publisher {
    pc: Arc<RTCPeerConnection>,
    ws: Client,
    stop: tokio::sync::watch::Sender<bool>,
}

/// How the publisher announces its tracks relative to its offer.
#[derive(Clone, Copy, PartialEq)]
enum Order {
    /// `publish` entries and the offer in `join` (the tracks are announced
    /// first, so signalling's `publish` reaches the SFU adapter before the
    /// m-lines do).
    WithJoin,
    /// `join`, then the offer, then one `publish` per track once the answer
    /// is back (the m-lines reach the adapter first).
    OfferFirst,
}

/// Joins as `identity` publishing a VP8 camera track `cam` and an Opus
/// microphone track `mic`, answers the offer and starts writing synthetic
/// samples on both.
async fn publish(server: &Server, room: &str, identity: &str, order: Order) -> (Publisher, Value) {
    let pc = loopback_peer().await;
    let video = Arc::new(TrackLocalStaticSample::new(
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_VP8.into(),
            clock_rate: 90_000,
            ..Default::default()
        },
        "cam".into(),
        "alice-stream".into(),
    ));
    let audio = Arc::new(TrackLocalStaticSample::new(
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_OPUS.into(),
            clock_rate: 48_000,
            channels: 2,
            ..Default::default()
        },
        "mic".into(),
        "alice-stream".into(),
    ));
    for t in [video.clone() as Arc<dyn TrackLocal + Send + Sync>, audio.clone()] {
        let sender = pc.add_track(t).await.expect("add track");
        // RTCP from the server (PLI, receiver reports) is consumed by the
        // interceptors only while someone reads it.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while sender.read(&mut buf).await.is_ok() {}
        });
    }
    let offer = pc.create_offer(None).await.expect("offer");
    let sdp = local_sdp(&pc, offer).await;

    let mut ws = server.connect(&token(identity, grants(room))).await;
    let tracks = json!([
        {"cid": "cam", "kind": "video", "source": "camera"},
        {"cid": "mic", "kind": "audio", "source": "microphone"},
    ]);
    let (joined, answer) = match order {
        Order::WithJoin => {
            ws.send(json!({"v": 1, "id": 1, "type": "join", "publish": tracks, "offer": sdp}))
                .await;
            let joined = ws.expect("joined").await;
            (joined, ws.expect("answer").await)
        }
        Order::OfferFirst => {
            ws.send(json!({"v": 1, "type": "join"})).await;
            let joined = ws.expect("joined").await;
            ws.send(json!({"v": 1, "id": 2, "type": "offer", "target": "publisher", "sdp": sdp}))
                .await;
            let answer = ws.expect("answer").await;
            for t in tracks.as_array().into_iter().flatten() {
                let mut msg = t.clone();
                msg["v"] = json!(1);
                msg["type"] = json!("publish");
                ws.send(msg).await;
                let cid = t["cid"].clone();
                ws.expect_where("own track_published", |m| {
                    m["type"] == "track_published" && m["track"]["cid"] == cid
                })
                .await;
            }
            (joined, answer)
        }
    };
    assert_eq!(answer["target"], "publisher", "{answer}");
    let answer_sdp = answer["sdp"].as_str().expect("answer sdp");
    assert!(answer_sdp.contains("a=ice-lite"), "{answer_sdp}");
    pc.set_remote_description(RTCSessionDescription::answer(answer_sdp.into()).unwrap())
        .await
        .expect("set answer");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(write_samples(video, audio, stopped));
    (Publisher { pc, ws, stop }, joined)
}

/// Writes a 30 fps VP8 stream (a keyframe every 10 frames) and a 50 fps
/// Opus stream until stopped. The payloads are not decodable media, only
/// well-formed enough for the SFU's keyframe detection: the VP8 frame tag's
/// P bit and the key frame start code.
async fn write_samples(
    video: Arc<TrackLocalStaticSample>,
    audio: Arc<TrackLocalStaticSample>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        let _ = audio
            .write_sample(&Sample {
                data: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
                duration: Duration::from_millis(20),
                ..Default::default()
            })
            .await;
        // Every third audio tick, roughly 30 fps.
        if n.is_multiple_of(3) {
            let frame = n / 3;
            let mut data = vec![0u8; 600];
            // Frame tag: bit 0 = 0 for a key frame; show_frame (bit 4) set.
            data[0] = if frame.is_multiple_of(10) { 0x10 } else { 0x11 };
            data[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
            data[6..8].copy_from_slice(&320u16.to_le_bytes());
            data[8..10].copy_from_slice(&180u16.to_le_bytes());
            let _ = video
                .write_sample(&Sample {
                    data: Bytes::from(data),
                    duration: Duration::from_millis(33),
                    ..Default::default()
                })
                .await;
        }
        n += 1;
    }
}

/// What a subscriber received, per track kind.
#[derive(Default)]
struct Received {
    packets: HashMap<&'static str, u64>,
    /// Tracks whose receiver ended (m-line stopped or connection closed).
    ended: HashMap<&'static str, u64>,
}

type Shared = Arc<Mutex<Received>>;

/// A webrtc-rs peer for the subscriber connection that counts RTP per track.
async fn subscriber_peer() -> (Arc<RTCPeerConnection>, Shared) {
    let pc = loopback_peer().await;
    let received: Shared = Arc::default();
    let r = received.clone();
    pc.on_track(Box::new(move |track, _, _| {
        let r = r.clone();
        tokio::spawn(async move {
            let kind = match track.kind() {
                RTPCodecType::Audio => "audio",
                RTPCodecType::Video => "video",
                _ => "other",
            };
            while track.read_rtp().await.is_ok() {
                *r.lock().unwrap().packets.entry(kind).or_default() += 1;
            }
            *r.lock().unwrap().ended.entry(kind).or_default() += 1;
        });
        Box::pin(async {})
    }));
    (pc, received)
}

/// Answers a server `offer` message on the subscriber connection.
async fn answer_offer(pc: &RTCPeerConnection, ws: &mut Client, offer: &Value) {
    assert_eq!(offer["target"], "subscriber", "{offer}");
    let sdp = offer["sdp"].as_str().expect("offer sdp");
    pc.set_remote_description(RTCSessionDescription::offer(sdp.into()).unwrap())
        .await
        .expect("set server offer");
    let answer = pc.create_answer(None).await.expect("answer");
    let sdp = local_sdp(pc, answer).await;
    ws.send(json!({"v": 1, "type": "answer", "target": "subscriber", "sdp": sdp}))
        .await;
}

/// Serves `ws` (answering offers, keeping the other messages) until
/// `done(received, messages)` holds; panics after [`WAIT`].
async fn serve_until(
    pc: &RTCPeerConnection,
    ws: &mut Client,
    received: &Shared,
    seen: &mut Vec<Value>,
    what: &str,
    done: impl Fn(&Received, &[Value]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        if done(&received.lock().unwrap(), seen) {
            return;
        }
        tokio::select! {
            frame = ws.ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let m: Value = serde_json::from_str(t.as_str()).expect("JSON from the server");
                    if m["type"] == "offer" {
                        answer_offer(pc, ws, &m).await;
                    }
                    seen.push(m);
                }
                Some(Ok(_)) => {}
                other => panic!("signalling closed while waiting for {what}: {other:?}"),
            },
            _ = poll.tick() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let r = received.lock().unwrap();
                panic!(
                    "timed out waiting for {what}: packets {:?}, ended {:?}, messages {seen:?}",
                    r.packets, r.ended
                );
            }
        }
    }
}

fn flowing(r: &Received) -> bool {
    ["audio", "video"]
        .iter()
        .all(|k| r.packets.get(k).copied().unwrap_or(0) >= ENOUGH)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_publishes_and_subscribes_through_the_sfu() {
    let server = start_server();
    // The subscriber joins first: its automatic subscriptions arrive before
    // the publisher's offer, so the SFU applies them when the m-lines do.
    let (sub_pc, received) = subscriber_peer().await;
    let mut bob = server.connect(&token("bob", grants("interop"))).await;
    bob.send(json!({"v": 1, "type": "join"})).await;
    bob.expect("joined").await;

    let (alice, _) = publish(&server, "interop", "alice", Order::WithJoin).await;

    let mut seen = Vec::new();
    serve_until(&sub_pc, &mut bob, &received, &mut seen, "RTP on both tracks", |r, _| {
        flowing(r)
    })
    .await;
    let subscribed: Vec<&Value> = seen.iter().filter(|m| m["type"] == "subscribed").collect();
    assert_eq!(subscribed.len(), 2, "{seen:?}");
    assert!(seen.iter().any(|m| m["type"] == "offer"), "{seen:?}");

    // The media plane reported both connections: alice and bob are active.
    serve_until(&sub_pc, &mut bob, &received, &mut seen, "alice active", |_, seen| {
        seen.iter().any(|m| {
            m["type"] == "participant_updated"
                && m["participant"]["identity"] == "alice"
                && m["participant"]["state"] == "active"
        })
    })
    .await;

    let _ = alice.stop.send(true);
    let _ = alice.pc.close().await;
    let _ = sub_pc.close().await;
    drop(alice.ws);
    let _ = server.media;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_are_enforced_on_media() {
    let server = start_server();
    // Dave may not subscribe: his session never gets a subscription, so the
    // SFU never offers him anything.
    let (dave_pc, dave_received) = subscriber_peer().await;
    let mut dave = server
        .connect(&token(
            "dave",
            Grants {
                can_subscribe: Some(false),
                ..grants("perm")
            },
        ))
        .await;
    dave.send(json!({"v": 1, "type": "join"})).await;
    dave.expect("joined").await;

    let (mut alice, _) = publish(&server, "perm", "alice", Order::OfferFirst).await;
    let (carol_pc, carol_received) = subscriber_peer().await;
    let mut carol = server.connect(&token("carol", grants("perm"))).await;
    carol.send(json!({"v": 1, "type": "join"})).await;
    let joined = carol.expect("joined").await;
    assert_eq!(joined["subscriptions"].as_array().map(Vec::len), Some(2), "{joined}");

    let mut carol_seen = Vec::new();
    serve_until(
        &carol_pc,
        &mut carol,
        &carol_received,
        &mut carol_seen,
        "RTP at carol",
        |r, _| flowing(r),
    )
    .await;

    // Media is flowing to carol; everything queued for dave so far (up to a
    // ping round trip) has no subscription and no offer, and he has no RTP.
    let dave_seen = dave.sync().await;
    assert!(
        dave_seen
            .iter()
            .all(|m| m["type"] != "offer" && m["type"] != "subscribed"),
        "{dave_seen:?}"
    );
    assert!(dave_received.lock().unwrap().packets.is_empty());
    let track_sid = joined["subscriptions"][0].clone();
    dave.send(json!({"v": 1, "id": 5, "type": "subscribe", "track_sid": track_sid}))
        .await;
    let e = dave.expect("error").await;
    assert_eq!((&e["id"], &e["code"]), (&json!(5), &json!("permission_denied")));

    // Revoking alice's can_publish unpublishes her tracks: carol is told,
    // and the SFU offers her both m-lines ended: the first one (the BUNDLE
    // transport's, which browsers must not see stopped) inactive, the other
    // stopped, which ends its receiver.
    server
        .patch_permissions(
            "perm",
            "alice",
            json!({"can_publish": false, "can_subscribe": true, "can_publish_data": true}),
        )
        .await;
    serve_until(
        &carol_pc,
        &mut carol,
        &carol_received,
        &mut carol_seen,
        "both tracks unpublished and ended",
        |r, seen| {
            let last_offer = seen
                .iter()
                .rev()
                .find(|m| m["type"] == "offer")
                .and_then(|m| m["sdp"].as_str())
                .unwrap_or_default();
            // Per m-line: stopped (port 0) or inactive.
            let ended_lines = last_offer
                .split("\r\nm=")
                .skip(1)
                .filter(|m| m.split_whitespace().nth(1) == Some("0") || m.contains("a=inactive"))
                .count();
            seen.iter().filter(|m| m["type"] == "track_unpublished").count() == 2
                && ended_lines == 2
                && r.ended.get("audio").copied().unwrap_or(0) >= 1
        },
    )
    .await;
    // Alice is told too; her offers are refused from now on.
    let un = alice.ws.expect("permissions_changed").await;
    assert_eq!(un["permissions"]["can_publish"], false);

    let _ = alice.stop.send(true);
    for pc in [&alice.pc, &carol_pc, &dave_pc] {
        let _ = pc.close().await;
    }
}
