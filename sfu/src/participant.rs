//! One peer connection: a `str0m::Rtc` in RTP mode and the glue the router
//! needs around it.
//!
//! A participant owns up to two of these (publisher and subscriber, as in
//! LiveKit), so a renegotiation on one never stalls the other. Every call into
//! the `Rtc` goes through [`Peer::guard`], which catches a panic, marks the
//! peer failed and keeps the rest of the shard (and the process) running: a
//! bug in one session's state machine must not take down everyone else's.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::crypto::CryptoProvider;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid, Rids};
use str0m::net::{Protocol, Receive, TcpType, Transmit};
use str0m::rtp::{Extension, RtpPacket, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};

use crate::codec::dd;
use crate::mux::Tuple;
use crate::Error;

/// How long a subscriber's video packets stay answerable by NACK: above a
/// round trip plus the receiver's NACK delay on any usable link (libwebrtc
/// retries about once per round trip).
pub const RTX_CACHE_AGE: std::time::Duration = std::time::Duration::from_millis(1000);
/// At most this many per send stream (1 s of ~5 Mbit/s video); str0m's
/// buffer grows only as far as the age needs, so low rates keep less.
pub const RTX_CACHE_PACKETS: usize = 512;
/// Resends stop (every queued one is dropped) once they pass half of the
/// last second's bytes, not str0m's default 15 %. At 15 % a loss burst on a
/// sudden rate drop went unrepaired, leaving holes in a keyframe and a
/// freeze until the next one: Chromium asks again for a lost packet every
/// ~100 ms, before a resend through a deep queue arrives, and those repeats
/// count too (`tests/forward.rs::a_loss_burst_on_a_long_round_trip_is_fully_recovered`).
/// Some cap stays: with none, resends kept a link too narrow for any video
/// busy enough that the paused-video test (`tests/simulcast.rs::
/// video_paused_by_a_narrow_link_resumes_when_it_widens`) failed 6 of 40
/// runs; at 50 % it passed 40 of 40. Resends go through str0m's pacer like
/// media, so they share the subscriber's estimate, and only to its own
/// ICE-verified address.
const RTX_RATIO_CAP: Option<f32> = Some(0.5);

/// The dependency descriptor's id in the SFU's own extension map (str0m's
/// standard map leaves 12 free); answers take the offer's id anyway.
const DD_EXTENSION_ID: u8 = 12;

/// Which of a participant's two peer connections this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client offers, the SFU answers and receives.
    Publisher,
    /// The SFU offers and sends.
    Subscriber,
}

/// What a peer reports after input or a timeout. Transmits are not events:
/// they go straight to the caller's sink while draining.
// `Rtp` dwarfs the rest, but boxing it would cost an allocation per packet;
// the queue these live in is reused, so the size costs nothing per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum PeerEvent {
    /// ICE and DTLS are up.
    Connected,
    IceState(IceConnectionState),
    /// The remote offered a new m-line (publisher side).
    MediaAdded {
        mid: Mid,
        kind: MediaKind,
        direction: Direction,
        /// The simulcast rids it announced (`a=simulcast:send`), highest
        /// quality last as browsers list them.
        rids: Vec<Rid>,
        /// The msid track id, which signalling matches to a track's cid.
        track_id: String,
    },
    /// A later offer changed an m-line's direction (publisher side: the
    /// client stopped or resumed sending on it; a stopped m-line, port 0,
    /// is `Inactive`).
    MediaChanged {
        mid: Mid,
        direction: Direction,
    },
    /// A received RTP packet with the m-line (and layer) it belongs to.
    Rtp {
        mid: Mid,
        rid: Option<Rid>,
        packet: RtpPacket,
    },
    /// The remote asks for a keyframe on something we send it.
    KeyframeRequest {
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
    },
    /// The TWCC downlink estimate towards this peer.
    Estimate(Bitrate),
    /// A received stream stopped or resumed.
    StreamPaused {
        mid: Mid,
        rid: Option<Rid>,
        paused: bool,
    },
    ChannelOpen {
        id: ChannelId,
        label: String,
    },
    ChannelData {
        id: ChannelId,
        binary: bool,
        data: Vec<u8>,
    },
    ChannelClose {
        id: ChannelId,
    },
    /// The session ended (DTLS close, ICE gave up, or a panic inside the
    /// `Rtc`). The router removes the participant.
    Closed {
        panicked: bool,
    },
}

/// The crypto provider every `Rtc` uses, built once per process.
fn crypto() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

/// Configuration shared by every peer of a shard.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Host candidates to advertise (the media socket's address as clients
    /// reach it).
    pub candidates: Vec<SocketAddr>,
    /// Passive ICE-TCP host candidates (RFC 6544): the TCP listener's
    /// address as clients reach it, for networks that block UDP.
    pub tcp_candidates: Vec<SocketAddr>,
    /// Start value of the TWCC estimator for subscriber connections.
    pub initial_estimate: Bitrate,
}

/// One `Rtc` and what the router remembers about it.
pub struct Peer {
    rtc: Rtc,
    pub role: Role,
    /// Our ICE ufrag: the mux routes new 5-tuples by it.
    pub ufrag: String,
    failed: bool,
    closed_reported: bool,
    pub next_timeout: Instant,
    /// SSRC -> (mid, rid) of received streams, so the packet path does not
    /// ask str0m's stream table for every packet.
    rx_streams: HashMap<Ssrc, (Mid, Option<Rid>)>,
    /// The subscriber connection's offer waiting for the client's answer.
    pub pending_offer: Option<SdpPendingOffer>,
    /// The tuples this peer was reached on (to unregister from the mux).
    pub tuples: Vec<Tuple>,
}

impl Peer {
    /// A new peer with fresh ICE credentials whose ufrag starts with
    /// `ufrag_prefix` (the shard tag the mux routes by).
    pub fn new(now: Instant, role: Role, cfg: &PeerConfig, ufrag_prefix: &str) -> Result<Peer, Error> {
        let mut creds = IceCreds::new();
        creds.ufrag = format!("{ufrag_prefix}{}", creds.ufrag);
        let mut config = RtcConfig::new()
            .set_crypto_provider(crypto())
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_local_ice_credentials(creds.clone());
        // Opus may come wrapped in RFC 2198 RED (browsers offer it): it is
        // forwarded as is to subscribers that take RED, unwrapped for the
        // others ([`crate::red`]).
        config.codec_config().enable_opus(true, true);
        if role == Role::Subscriber {
            config = config.enable_bwe(Some(cfg.initial_estimate));
        }
        // Publishers send the dependency descriptor when it is negotiated;
        // the SFU reads AV1 spatial layers from it and passes it on to the
        // subscribers of AV1 SVC streams.
        config = config.set_extension(DD_EXTENSION_ID, Extension::with_serializer(dd::URI, dd::DdSerializer));
        let mut rtc = catch_unwind(AssertUnwindSafe(|| config.build(now))).map_err(|_| Error::Panicked)?;
        for addr in &cfg.candidates {
            let c = Candidate::host(*addr, "udp").map_err(|e| Error::Candidate(e.to_string()))?;
            rtc.add_local_candidate(c);
        }
        for addr in &cfg.tcp_candidates {
            // We only accept connections: `tcptype passive` tells the client
            // to connect (the port is the real one, not RFC 6544's 9, since
            // the client needs it).
            let c = Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| Error::Candidate(e.to_string()))?;
            rtc.add_local_candidate(c);
        }
        Ok(Peer {
            rtc,
            role,
            ufrag: creds.ufrag,
            failed: false,
            closed_reported: false,
            next_timeout: now,
            rx_streams: HashMap::new(),
            pending_offer: None,
            tuples: Vec::new(),
        })
    }

    /// Sizes the RTX cache of the send stream of `mid` (a subscriber's
    /// video down-track) to what answering NACKs needs: str0m's default
    /// keeps 3 s (up to 2,000 packets) of 408-byte `RtpPacket` records per
    /// send stream, i.e. per subscribed video track, and a receiver NACKs a
    /// gap within about a round trip, so the old end of that was almost
    /// never asked for. The payloads are shared `Arc`s either way; the cost
    /// is the per-packet records.
    pub fn size_rtx_cache(&mut self, mid: Mid) {
        self.guard(|rtc| {
            if let Some(stream) = rtc.direct_api().stream_tx_by_mid(mid, None) {
                stream.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, RTX_RATIO_CAP);
            }
        });
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Runs `f` on the `Rtc`; a panic marks the peer failed instead of
    /// unwinding through the shard. `Rtc` is `UnwindSafe`, and a failed peer
    /// is never touched again, so observing broken invariants is impossible.
    pub fn guard<R>(&mut self, f: impl FnOnce(&mut Rtc) -> R) -> Option<R> {
        if self.failed {
            return None;
        }
        match catch_unwind(AssertUnwindSafe(|| f(&mut self.rtc))) {
            Ok(r) => Some(r),
            Err(_) => {
                tracing::error!(ufrag = %self.ufrag, "str0m Rtc panicked; closing this peer only");
                self.failed = true;
                None
            }
        }
    }

    /// Feeds one datagram (or ICE-TCP frame, `proto` says which). Malformed
    /// input is dropped, not an error: the network is untrusted.
    pub fn receive(&mut self, now: Instant, proto: Protocol, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        if let Some(Err(e)) = self.guard(|rtc| rtc.handle_input(input)) {
            tracing::debug!(error = %e, ufrag = %self.ufrag, "input refused");
        }
    }

    pub fn timeout(&mut self, now: Instant) {
        if let Some(Err(e)) = self.guard(|rtc| rtc.handle_input(Input::Timeout(now))) {
            tracing::debug!(error = %e, ufrag = %self.ufrag, "timeout refused");
        }
    }

    /// Polls the `Rtc` until it asks for a timeout: datagrams go to
    /// `transmit`, events are appended to `events`.
    pub fn drain(&mut self, mut transmit: impl FnMut(&Transmit), events: &mut VecDeque<PeerEvent>) {
        loop {
            let out = match self.guard(|rtc| rtc.poll_output()) {
                Some(Ok(out)) => out,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, ufrag = %self.ufrag, "poll_output failed; closing peer");
                    self.failed = true;
                    self.report_closed(false, events);
                    return;
                }
                None => {
                    self.report_closed(true, events);
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    if !self.guard(|rtc| rtc.is_alive()).unwrap_or(false) {
                        self.report_closed(false, events);
                    }
                    return;
                }
                Output::Transmit(t) => transmit(&t),
                Output::Event(ev) => self.on_event(ev, events),
            }
        }
    }

    fn report_closed(&mut self, panicked: bool, events: &mut VecDeque<PeerEvent>) {
        if !self.closed_reported {
            self.closed_reported = true;
            events.push_back(PeerEvent::Closed { panicked });
        }
    }

    fn on_event(&mut self, ev: Event, events: &mut VecDeque<PeerEvent>) {
        let out = match ev {
            Event::Connected => PeerEvent::Connected,
            Event::IceConnectionStateChange(s) => {
                if s == IceConnectionState::Disconnected {
                    // ICE-lite has no restart of its own: a disconnected
                    // client either comes back on a new tuple (consent
                    // resumes) or the session times out in str0m.
                    tracing::debug!(ufrag = %self.ufrag, "ICE disconnected");
                }
                PeerEvent::IceState(s)
            }
            Event::MediaAdded(m) => {
                let rids = m
                    .simulcast
                    .as_ref()
                    .map(|s| {
                        // str0m states it from our side: the client's
                        // `a=simulcast:send` layers are what we receive.
                        let layers = if s.recv.is_empty() { &s.send } else { &s.recv };
                        layers.iter().map(|l| l.rid).collect()
                    })
                    .unwrap_or_default();
                let track_id = self
                    .rtc
                    .media(m.mid)
                    .map(|media| media.track_id().to_string())
                    .unwrap_or_default();
                PeerEvent::MediaAdded {
                    mid: m.mid,
                    kind: m.kind,
                    direction: m.direction,
                    rids,
                    track_id,
                }
            }
            Event::MediaChanged(m) => {
                if !m.direction.is_receiving() {
                    // Its SSRCs may come back under another m-line (a
                    // recycled slot): look them up afresh then.
                    self.rx_streams.retain(|_, (mid, _)| *mid != m.mid);
                }
                PeerEvent::MediaChanged {
                    mid: m.mid,
                    direction: m.direction,
                }
            }
            Event::RtpPacket(packet) => {
                let ssrc = packet.header.ssrc;
                let (mid, rid) = match self.rx_streams.get(&ssrc) {
                    Some(v) => *v,
                    None => {
                        let found = self
                            .guard(|rtc| rtc.direct_api().stream_rx(&ssrc).map(|s| (s.mid(), s.rid())))
                            .flatten();
                        let Some(v) = found else {
                            return;
                        };
                        self.rx_streams.insert(ssrc, v);
                        v
                    }
                };
                PeerEvent::Rtp { mid, rid, packet }
            }
            Event::KeyframeRequest(r) => PeerEvent::KeyframeRequest {
                mid: r.mid,
                rid: r.rid,
                kind: r.kind,
            },
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => PeerEvent::Estimate(estimate),
            Event::EgressBitrateEstimate(_) => return,
            Event::StreamPaused(p) => PeerEvent::StreamPaused {
                mid: p.mid,
                rid: p.rid,
                paused: p.paused,
            },
            Event::ChannelOpen(id, label) => PeerEvent::ChannelOpen { id, label },
            Event::ChannelData(d) => PeerEvent::ChannelData {
                id: d.id,
                binary: d.binary,
                data: d.data,
            },
            Event::ChannelClose(id) => PeerEvent::ChannelClose { id },
            Event::Closed => {
                self.report_closed(false, events);
                return;
            }
            _ => return,
        };
        events.push_back(out);
    }

    /// What a publisher's m-line carries, as its last offer described it:
    /// kind, simulcast rids (in the offer's order) and msid track id.
    pub fn media_info(&mut self, mid: Mid) -> Option<(MediaKind, Vec<Rid>, String)> {
        self.guard(|rtc| {
            let m = rtc.media(mid)?;
            let rids = match m.rids_rx() {
                Rids::Specific(r) => r.clone(),
                _ => Vec::new(),
            };
            Some((m.kind(), rids, m.track_id().to_string()))
        })
        .flatten()
    }

    /// Accepts a client offer (publisher connection, or a client-initiated
    /// renegotiation) and returns the answer SDP.
    ///
    /// An offer with new ICE credentials is an ICE restart: str0m answers it
    /// with fresh local credentials of its own, whose ufrag lacks the shard
    /// tag the mux routes new tuples by. They are tagged here, like at
    /// creation, and `self.ufrag` follows (the caller re-registers it).
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, Error> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| Error::Sdp(e.to_string()))?;
        let old = self.ufrag.clone();
        let tag = old.get(..3).unwrap_or_default().to_string();
        let (answer, retagged) = self
            .guard(|rtc| {
                let answer = rtc.sdp_api().accept_offer(offer)?;
                let mut creds = rtc.direct_api().local_ice_credentials();
                if creds.ufrag == old {
                    return Ok((answer, None));
                }
                let fresh = creds.ufrag.clone();
                creds.ufrag = format!("{tag}{fresh}");
                rtc.direct_api().set_local_ice_credentials(creds.clone());
                Ok((answer, Some((fresh, creds.ufrag))))
            })
            .ok_or(Error::Panicked)?
            .map_err(|e: str0m::RtcError| Error::Sdp(e.to_string()))?;
        let mut answer = crate::answer_order::follow_offer(sdp, &answer.to_sdp_string());
        if let Some((fresh, tagged)) = retagged {
            answer = answer.replace(&format!("a=ice-ufrag:{fresh}"), &format!("a=ice-ufrag:{tagged}"));
            tracing::debug!(old = %old, new = %tagged, "ICE restart");
            self.ufrag = tagged;
        }
        Ok(answer)
    }

    /// Accepts the client's answer to our pending offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), Error> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| Error::Sdp(e.to_string()))?;
        let pending = self.pending_offer.take().ok_or(Error::NoPendingOffer)?;
        self.guard(|rtc| rtc.sdp_api().accept_answer(pending, answer))
            .ok_or(Error::Panicked)?
            .map_err(|e| Error::Sdp(e.to_string()))
    }

    pub fn add_remote_candidate(&mut self, candidate: &str) -> Result<(), Error> {
        let line = candidate.trim().trim_start_matches("a=");
        let c = Candidate::from_sdp_string(line).map_err(|e| Error::Candidate(e.to_string()))?;
        self.guard(|rtc| rtc.add_remote_candidate(c)).ok_or(Error::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_the_rtc_closes_only_this_peer() {
        let now = Instant::now();
        let cfg = PeerConfig {
            candidates: vec!["127.0.0.1:7000".parse().unwrap()],
            tcp_candidates: vec!["127.0.0.1:7000".parse().unwrap()],
            initial_estimate: Bitrate::kbps(500),
        };
        let mut bad = Peer::new(now, Role::Publisher, &cfg, "s00").unwrap();
        let mut good = Peer::new(now, Role::Publisher, &cfg, "s00").unwrap();
        assert_eq!(bad.guard(|_| -> u32 { panic!("bug in the state machine") }), None);
        assert!(bad.is_failed());
        // Failed peers are never entered again.
        assert_eq!(bad.guard(|_| 1), None);
        let mut events = VecDeque::new();
        bad.drain(|_| {}, &mut events);
        assert!(matches!(events.pop_front(), Some(PeerEvent::Closed { panicked: true })));
        // The other peer is untouched.
        assert_eq!(good.guard(|rtc| rtc.is_alive()), Some(true));
        assert!(good.ufrag.starts_with("s00"));
    }
}
