//! In-process harness: str0m client peers and one SFU router exchanging
//! datagrams through a virtual network, with time as an input.
#![allow(dead_code)]
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu::participant::{PeerConfig, Role};
use sfu::router::{ParticipantId, Router, RouterConfig, SfuEvent};
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

pub const SFU_ADDR: &str = "10.0.0.1:7000";

pub struct Client {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub events: Vec<Event>,
    pub next: Instant,
    pub pending: Option<SdpPendingOffer>,
}

impl Client {
    pub fn new(now: Instant, addr: &str) -> Client {
        Client::with_config(now, addr, |_| {})
    }

    /// A client whose configuration `f` adjusts first (codecs, say).
    pub fn with_config(now: Instant, addr: &str, f: impl FnOnce(&mut RtcConfig)) -> Client {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut config = RtcConfig::new()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .set_rtp_mode(true);
        f(&mut config);
        let mut rtc = config.build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Client {
            rtc,
            addr,
            events: Vec::new(),
            next: now,
            pending: None,
        }
    }

    pub fn rtp_packets(&self) -> impl Iterator<Item = &str0m::rtp::RtpPacket> {
        self.events.iter().filter_map(|e| match e {
            Event::RtpPacket(p) => Some(p),
            _ => None,
        })
    }
}

/// A datagram in flight.
pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// Decides whether a datagram is lost: (from, to, data, index of this
/// datagram on its direction).
pub type LossFn = Box<dyn FnMut(&Packet, u64) -> bool>;

/// One frame at 30 fps.
pub const FRAME: Duration = Duration::from_micros(33_333);

/// A bottleneck on the SFU -> client path to one address: packets are
/// serialised at `bps` (unlimited when `None`) behind a drop-tail queue that
/// holds at most `max_queue` of waiting time, then travel `delay`. Pure
/// arithmetic on virtual time, so runs are deterministic.
pub struct Bottleneck {
    pub to: SocketAddr,
    pub bps: Option<u64>,
    pub max_queue: Duration,
    pub delay: Duration,
    /// When the link finishes sending what is queued.
    free_at: Instant,
    /// (arrival time at the client, datagram), in arrival order.
    in_flight: VecDeque<(Instant, Packet)>,
    pub dropped: u64,
    pub delivered_bytes: u64,
}

impl Bottleneck {
    pub fn new(now: Instant, to: SocketAddr, delay: Duration, max_queue: Duration) -> Bottleneck {
        Bottleneck {
            to,
            bps: None,
            max_queue,
            delay,
            free_at: now,
            in_flight: VecDeque::new(),
            dropped: 0,
            delivered_bytes: 0,
        }
    }

    fn enqueue(&mut self, now: Instant, p: Packet) {
        let start = self.free_at.max(now);
        let Some(bps) = self.bps else {
            // Unlimited: only the propagation delay, after what is queued.
            self.free_at = start;
            self.in_flight.push_back((start + self.delay, p));
            return;
        };
        if start - now > self.max_queue {
            self.dropped += 1;
            return;
        }
        let bits = (p.data.len() as u64 + 28) * 8; // IP + UDP headers
        self.free_at = start + Duration::from_nanos(bits * 1_000_000_000 / bps.max(1));
        self.in_flight.push_back((self.free_at + self.delay, p));
    }

    fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        if self.in_flight.front().is_some_and(|(t, _)| *t <= now) {
            let p = self.in_flight.pop_front().map(|(_, p)| p)?;
            self.delivered_bytes += p.data.len() as u64;
            return Some(p);
        }
        None
    }
}

pub struct Net {
    pub now: Instant,
    pub start: Instant,
    pub sfu: Router,
    pub sfu_addr: SocketAddr,
    pub clients: Vec<Client>,
    pub events: Vec<SfuEvent>,
    /// Loss on client -> SFU datagrams.
    pub up_loss: Option<LossFn>,
    /// Loss on SFU -> client datagrams.
    pub down_loss: Option<LossFn>,
    up_count: u64,
    down_count: u64,
    pub dropped: u64,
    /// Optional bottleneck towards one client.
    pub bottleneck: Option<Bottleneck>,
    to_sfu: VecDeque<Packet>,
    to_clients: VecDeque<Packet>,
}

impl Net {
    pub fn new() -> Net {
        let now = Instant::now();
        let sfu_addr: SocketAddr = SFU_ADDR.parse().unwrap();
        let sfu = Router::new(RouterConfig {
            shard: 0,
            peer: PeerConfig {
                candidates: vec![sfu_addr],
                tcp_candidates: Vec::new(),
                initial_estimate: Bitrate::kbps(1_000),
            },
        });
        Net {
            now,
            start: now,
            sfu,
            sfu_addr,
            clients: Vec::new(),
            events: Vec::new(),
            up_loss: None,
            down_loss: None,
            up_count: 0,
            down_count: 0,
            dropped: 0,
            bottleneck: None,
            to_sfu: VecDeque::new(),
            to_clients: VecDeque::new(),
        }
    }

    pub fn add_client(&mut self, addr: &str) -> usize {
        self.add_client_with(addr, |_| {})
    }

    pub fn add_client_with(&mut self, addr: &str, f: impl FnOnce(&mut RtcConfig)) -> usize {
        self.clients.push(Client::with_config(self.now, addr, f));
        self.clients.len() - 1
    }

    fn sink(now: Instant, q: &mut VecDeque<Packet>) -> impl FnMut(&str0m::net::Transmit) + '_ {
        let _ = now;
        move |t| {
            q.push_back(Packet {
                from: t.source,
                to: t.destination,
                data: t.contents.to_vec(),
            })
        }
    }

    /// Client `c` offers its pending SDP changes to the SFU as publisher.
    pub fn publish_offer(&mut self, c: usize, pid: ParticipantId, f: impl FnOnce(&mut str0m::change::SdpApi)) {
        let now = self.now;
        let client = &mut self.clients[c];
        let mut api = client.rtc.sdp_api();
        f(&mut api);
        let (offer, pending) = api.apply().expect("changes");
        let mut q = std::mem::take(&mut self.to_clients);
        let answer = self
            .sfu
            .accept_offer(now, pid, &offer.to_sdp_string(), &mut Self::sink(now, &mut q))
            .unwrap();
        self.to_clients = q;
        let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
        self.clients[c].rtc.sdp_api().accept_answer(pending, answer).unwrap();
        self.collect();
    }

    /// Calls `send` every `every` of simulated time for `duration`, the
    /// network running in between (a publisher's frame or packet clock).
    pub fn run_paced(&mut self, duration: Duration, every: Duration, mut send: impl FnMut(&mut Net)) {
        let end = self.now + duration;
        while self.now < end {
            send(self);
            self.run(every);
        }
    }

    /// Subscribes `pid` (client `c`) to `tracks`, answers the SFU's offers
    /// and waits (5 s at most) for the subscriber connection. Returns how
    /// many offers were answered.
    pub fn subscribe_connected(&mut self, c: usize, pid: ParticipantId, tracks: &[sfu::router::TrackId]) -> usize {
        let now = self.now;
        for t in tracks {
            self.sfu.subscribe(now, pid, *t).unwrap();
        }
        let offers = self.answer_offers(c, pid);
        assert!(
            self.run_until(Duration::from_secs(5), |n| n.connected(pid, Role::Subscriber)),
            "subscriber connection up"
        );
        offers
    }

    /// Answers every SFU offer addressed to `pid` with client `c`.
    pub fn answer_offers(&mut self, c: usize, pid: ParticipantId) -> usize {
        let mut n = 0;
        loop {
            let k = self.answer_pending(c, pid);
            if k == 0 {
                return n;
            }
            n += k;
        }
    }

    fn answer_pending(&mut self, c: usize, pid: ParticipantId) -> usize {
        let mut n = 0;
        self.collect();
        let offers: Vec<String> = self
            .events
            .iter()
            .filter_map(|e| match e {
                SfuEvent::Offer { participant, sdp } if *participant == pid => Some(sdp.clone()),
                _ => None,
            })
            .collect();
        self.events
            .retain(|e| !matches!(e, SfuEvent::Offer { participant, .. } if *participant == pid));
        for sdp in offers {
            let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
            let answer = self.clients[c].rtc.sdp_api().accept_offer(offer).unwrap();
            let now = self.now;
            let mut q = std::mem::take(&mut self.to_clients);
            self.sfu
                .accept_answer(now, pid, &answer.to_sdp_string(), &mut Self::sink(now, &mut q))
                .unwrap();
            self.to_clients = q;
            self.collect();
            n += 1;
        }
        n
    }

    pub fn collect(&mut self) {
        while let Some(e) = self.sfu.poll_event() {
            self.events.push(e);
        }
    }

    /// Advances the world by `dt` in 1 ms steps.
    pub fn run(&mut self, dt: Duration) {
        let end = self.now + dt;
        while self.now < end {
            self.step();
            self.now += Duration::from_millis(1);
        }
    }

    pub fn run_until(&mut self, max: Duration, mut f: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now + max;
        while self.now < end {
            if f(self) {
                return true;
            }
            self.step();
            self.now += Duration::from_millis(1);
        }
        f(self)
    }

    pub fn step(&mut self) {
        let now = self.now;
        // Clients: timers and output.
        for c in &mut self.clients {
            if c.next <= now {
                c.rtc.handle_input(Input::Timeout(now)).unwrap();
            }
            Self::poll_client(c, now, &mut self.to_sfu);
        }
        // Client -> SFU.
        while let Some(p) = self.to_sfu.pop_front() {
            self.up_count += 1;
            if let Some(loss) = &mut self.up_loss {
                if loss(&p, self.up_count) {
                    self.dropped += 1;
                    continue;
                }
            }
            let mut q = std::mem::take(&mut self.to_clients);
            self.sfu
                .handle_datagram(now, p.from, p.to, &p.data, &mut Self::sink(now, &mut q));
            self.to_clients = q;
        }
        let mut q = std::mem::take(&mut self.to_clients);
        self.sfu.handle_timeout(now, &mut Self::sink(now, &mut q));
        self.to_clients = q;
        self.collect();
        // SFU -> clients.
        while let Some(p) = self.to_clients.pop_front() {
            self.down_count += 1;
            if let Some(loss) = &mut self.down_loss {
                if loss(&p, self.down_count) {
                    self.dropped += 1;
                    continue;
                }
            }
            if let Some(b) = self.bottleneck.as_mut().filter(|b| b.to == p.to) {
                b.enqueue(now, p);
                continue;
            }
            self.deliver(now, p);
        }
        while let Some(p) = self.bottleneck.as_mut().and_then(|b| b.pop_due(now)) {
            self.deliver(now, p);
        }
    }

    fn deliver(&mut self, now: Instant, p: Packet) {
        let Some(c) = self.clients.iter_mut().find(|c| c.addr == p.to) else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: p.from,
                destination: p.to,
                contents: (&p.data[..]).try_into().unwrap(),
            },
        );
        c.rtc.handle_input(input).unwrap();
        Self::poll_client(c, now, &mut self.to_sfu);
    }

    fn poll_client(c: &mut Client, now: Instant, to_sfu: &mut VecDeque<Packet>) {
        loop {
            match c.rtc.poll_output().unwrap() {
                Output::Timeout(t) => {
                    c.next = t.max(now);
                    return;
                }
                Output::Transmit(t) => to_sfu.push_back(Packet {
                    from: t.source,
                    to: t.destination,
                    data: t.contents.to_vec(),
                }),
                Output::Event(e) => c.events.push(e),
            }
        }
    }

    pub fn connected(&self, pid: ParticipantId, role: Role) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, SfuEvent::Connected { participant, role: r } if *participant == pid && *r == role))
    }
}

/// Writes one synthetic RTP packet on client `c`'s send stream for `mid`
/// (single stream), with the first `codec` payload type it negotiated.
pub fn write_rtp(
    net: &mut Net,
    c: usize,
    mid: str0m::media::Mid,
    codec: str0m::format::Codec,
    seq: u64,
    ts: u32,
    payload: &[u8],
) {
    let now = net.now;
    let rtc = &mut net.clients[c].rtc;
    let pt = rtc.codec_config().find(|p| p.spec().codec == codec).unwrap().pt();
    let mut api = rtc.direct_api();
    let stream = api.stream_tx_by_mid(mid, None).expect("publisher stream");
    stream.write_rtp(
        str0m::rtp::RtpWrite::new(pt, seq.into(), ts, now, payload.to_vec())
            .marker(true)
            .nackable(true),
    );
}

/// The mid under which client `c` receives `track` (the SFU names the
/// m-line's msid track after the `TrackId`).
pub fn sub_mid(net: &Net, c: usize, track: sfu::router::TrackId) -> Option<str0m::media::Mid> {
    let want = track.to_string();
    net.clients[c].events.iter().find_map(|e| match e {
        Event::MediaAdded(m) => net.clients[c]
            .rtc
            .media(m.mid)
            .filter(|media| media.track_id() == want)
            .map(|_| m.mid),
        _ => None,
    })
}

/// Alice and bob in one room, each with a client; alice publishing.
pub struct Pair {
    pub alice: ParticipantId,
    pub bob: ParticipantId,
    /// Their clients' indexes in `Net::clients`.
    pub a: usize,
    pub b: usize,
    /// Alice's m-lines, in the order of `kinds`.
    pub mids: Vec<str0m::media::Mid>,
}

/// Alice (client at 10.0.0.2:4000) offers one send-only m-line per entry
/// of `kinds` and is connected; bob (10.0.0.3:4000) is created but has
/// subscribed to nothing yet.
pub fn alice_publishes(net: &mut Net, kinds: &[str0m::media::MediaKind]) -> Pair {
    use str0m::media::Direction;
    let now = net.now;
    let alice = net.sfu.create_participant(now, "room", None).unwrap().id;
    let bob = net.sfu.create_participant(now, "room", None).unwrap().id;
    let a = net.add_client("10.0.0.2:4000");
    let b = net.add_client("10.0.0.3:4000");
    let mut mids = Vec::new();
    net.publish_offer(a, alice, |api| {
        for kind in kinds {
            mids.push(api.add_media(*kind, Direction::SendOnly, None, None, None));
        }
    });
    assert!(net.run_until(Duration::from_secs(5), |n| n.connected(alice, Role::Publisher)));
    Pair { alice, bob, a, b, mids }
}

/// Whether client `c` was asked for a keyframe since the last call (its
/// events are consumed).
pub fn keyframe_requested(net: &mut Net, c: usize) -> bool {
    net.clients[c]
        .events
        .drain(..)
        .any(|e| matches!(e, Event::KeyframeRequest(_)))
}
