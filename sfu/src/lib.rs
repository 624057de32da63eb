//! The media plane: a selective forwarding unit.
//!
//! # Design
//! Participants publish tracks; the SFU forwards their RTP to subscribers
//! without decoding it. Each core runs one shard: a loop over its UDP (and
//! ICE-TCP) sockets and its participants' `str0m::Rtc` instances (RTP mode).
//! A packet enters, is demultiplexed by a hash lookup, given to its
//! participant's `Rtc`, and the media that comes out is routed to the
//! subscribers' down-tracks and sent in batches.
//!
//! The forwarding decisions are plain code with time as an input, tested
//! without sockets:
//! - [`downtrack`] rewrites SSRC, sequence numbers and timestamps so layer
//!   switches and pauses look like one continuous stream to the receiver;
//! - [`simulcast`] caps a subscriber's layer by its preferences and
//!   throttles keyframe requests (the router switches layers at keyframes);
//! - [`temporal`] drops temporal layers above a subscriber's target (no
//!   keyframe needed) and measures each layer's bitrate and frame rate;
//!   [`codec`] reads the VP8/VP9 payload descriptors, AV1 OBU extension
//!   headers and the dependency descriptor it needs and keeps VP8
//!   PictureIDs continuous per subscriber (written by str0m's `Vp8Patch`
//!   during serialisation, so no copy of the shared payload);
//! - [`svc`] picks the spatial layers of a VP9 or AV1 SVC stream (one SSRC, a
//!   frame per spatial layer in each picture) a subscriber gets: the frames
//!   above are dropped and the marker moved to the top one kept; down at
//!   any picture, up at a keyframe; the allocator prices each spatial layer
//!   as the sum of those up to it;
//! - [`allocator`] divides a subscriber's bandwidth estimate across its
//!   down-tracks; [`estimate_recovery`] decides when an estimate that has
//!   latched below what the allocation wants (paused video, or a layer held
//!   back) is restarted;
//! - [`speaker`] detects active speakers from audio levels;
//! - [`red`] converts RFC 2198 redundant audio for subscribers without it.
//!
//! The I/O side: [`participant`] wraps one `Rtc` (panics caught per call),
//! [`mux`] routes datagrams of the shared port, [`router`] is the sans-IO
//! shard core (tracks, subscriptions, fan-out), [`shard`] the thread and
//! socket loop around it, [`udp_tx`] its batched sends (`sendmmsg`, GSO),
//! [`stats`] what the data plane dropped, [`handle`] the control plane's
//! [`Sfu`].
//!
//! # How str0m 0.25 is used
//! - `RtcConfig::new().set_ice_lite(true).set_rtp_mode(true)`: the server is
//!   ICE-lite (clients are controlling and nominate), and RTP mode skips
//!   str0m's depacketizer: received media is `Event::RtpPacket` (header,
//!   extended `seq_no`, payload as `Arc<[u8]>`), sent media is
//!   `DirectApi::stream_tx_by_mid(mid, rid)` -> `StreamTx::write_rtp(RtpWrite)`.
//!   RTX from the publisher is unwrapped into the main SSRC before the event;
//!   RED (Opus in RFC 2198, which the SFU negotiates) arrives untouched in
//!   RTP mode, with the RED PT; [`red`] forwards it as is or cuts it to the
//!   primary block for subscribers without RED. `Rtc::writer` panics in RTP
//!   mode and is never used.
//! - Each connection gets its own `Rtc`: a publisher (client offers,
//!   `sdp_api().accept_offer`) and a subscriber (we `add_media(SendOnly)`
//!   and `apply()` an offer, the client answers, `accept_answer`). The send
//!   stream's SSRC is str0m's, which is the SSRC rewrite; sequence numbers
//!   and timestamps are rebased per down-track, starting below 2^16 so the
//!   SRTP rollover counter needs no signalling.
//! - Input is `Rtc::handle_input(Input::Receive(now, Receive { proto,
//!   source, destination, contents }))` with `destination` the advertised
//!   candidate address, or `Input::Timeout(now)`; output is drained with
//!   `poll_output` until `Output::Timeout`, after every input (in RTP mode a
//!   received packet waits in a one-slot buffer for that poll).
//! - ICE-TCP ([`tcp`]): each peer also gets a passive TCP host candidate
//!   (`Candidate::builder().tcp().host(addr).tcptype(TcpType::Passive)`,
//!   which str0m writes as `tcptype passive`); frames of a connection go in
//!   as `Receive { proto: Protocol::Tcp, .. }` with the connection's remote
//!   address as `source`, and str0m answers on the same protocol, so
//!   `Transmit::proto` says whether a packet goes to the UDP batch or, framed,
//!   to the connection whose remote address is its `destination`. str0m's
//!   ICE agent pairs by protocol only (it ignores tcptype), which is all an
//!   ICE-lite server needs.
//! - Events used: `Connected`, `IceConnectionStateChange`, `MediaAdded`
//!   (mid, kind, direction, simulcast rids), `RtpPacket`, `KeyframeRequest`
//!   (PLI/FIR from a subscriber, for its mid), `EgressBitrateEstimate(
//!   BweKind::Twcc)`, `StreamPaused`, `ChannelOpen/Data/Close`, `Closed`.
//! - Keyframes upstream: `direct_api().stream_rx_by_mid(mid, rid)
//!   .request_keyframe(kind)`. NACKs upstream are generated by str0m's
//!   receive streams.
//! - NACKs from subscribers are answered by str0m, not by us, and this holds
//!   in RTP mode (checked in str0m 0.25's `streams/send.rs`): every
//!   `write_rtp(.. .nackable(true))` packet is, once sent, kept in the send
//!   stream's `RtxCache` (a clone of the `RtpPacket`, whose payload is the
//!   same `Arc<[u8]>`, so N subscribers do not multiply payload memory;
//!   str0m's default is 2000 packets / 3 s; video down-tracks get 1 s / 512
//!   through `StreamTx::set_rtx_cache`, see `Peer::size_rtx_cache`). An
//!   incoming RTCP NACK goes to `StreamTx::handle_nack`, which queues the
//!   cached packets, and `poll_packet` resends them on the RTX SSRC and PT
//!   with the original sequence number in front of the payload. str0m
//!   clears `nackable` on a PT without a negotiated RTX PT (and on RED), so
//!   a subscriber that did not negotiate RTX gets no resends: there are no
//!   plain same-SSRC retransmissions, and its losses heal by keyframe (PLI).
//!   Resends are queued and paced like media. str0m's `rtx_ratio_cap`
//!   (drop every queued resend past 15 % of sent bytes) is raised to 50 %
//!   for video down-tracks: at 15 % it left loss bursts unrepaired (see
//!   `participant::RTX_RATIO_CAP`). Hence the SFU keeps no packet cache of
//!   its own, and the down-track does not map NACKs back to source
//!   packets; the 5 %-loss and loss-burst tests in `tests/forward.rs`
//!   cover the path end to end.
//! - BWE: `RtcConfig::enable_bwe(Some(initial))` on subscriber connections
//!   (TWCC); `rtc.bwe().set_bitrate(min, desired)` steers probing. The
//!   estimator learns only from feedback on what it sends, and with nothing
//!   sent its overuse state latches (no padding, no probes), so
//!   `rtc.bwe().reset(estimate)` restarts it when video is paused for
//!   bandwidth ([`estimate_recovery`]). str0m as a *receiver* (our tests and
//!   load tool) starts each TWCC report at its next received packet, so
//!   packets lost between two reports are never reported lost; browsers
//!   report them, which is why the in-process tests step bottlenecks down.
//! - Allocations str0m forces on the forwarding path: one `Arc<[u8]>` per
//!   received packet (shared by every subscriber's write, so none per
//!   forwarded packet) and one `Vec` per outgoing datagram
//!   (`Transmit::contents`, copied into the shard's send batch).
//! - Crypto: feature `aws-lc-rs` (str0m has no ring backend); it builds here
//!   with the C compiler alone (no cmake). Default features (which pull
//!   `examples`) are off. The provider is passed per `Rtc`
//!   (`set_crypto_provider`), so nothing process-global is installed.
//!
//! # Sharding
//! A room lives on one shard (hash of its name), so fan-out never crosses
//! cores. All shards bind the media port with `SO_REUSEPORT`; the kernel
//! hashes each 5-tuple to one of them. Because that option would just as
//! well let a second SFU process join the port, start-up first probes the
//! port without it and refuses a port someone holds. Our ICE ufrags start with the owning
//! shard's tag (`sNN`), so a shard that receives a check for another
//! shard's peer hands it over and remembers the tuple, handing over that
//! tuple's DTLS/SRTP too (a copy per datagram on that path; connected
//! per-client sockets would remove it).
pub mod handle;
pub mod keyframe;
pub mod mux;
pub mod participant;
pub mod router;
pub mod shard;
pub mod stats;
pub mod tcp;
pub mod tcp_limits;
pub mod udp_tx;

pub use handle::{Sfu, SfuConfig};
pub use router::{Limits, ParticipantId, ParticipantInfo, SfuEvent, TrackId};
pub use stats::SfuStats;
pub use tcp_limits::{TcpLimits, TcpStats};

pub mod allocator;
pub mod answer_order;
pub mod codec;
pub mod downtrack;
pub mod estimate_recovery;
pub mod red;
pub mod sent_window;
pub mod simulcast;
pub mod speaker;
pub mod svc;
pub mod temporal;

/// Errors of the SFU's control operations. The packet path has none: bad
/// input is dropped and counted, never returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid SDP: {0}")]
    Sdp(String),
    #[error("invalid ICE candidate: {0}")]
    Candidate(String),
    #[error("no offer is waiting for an answer")]
    NoPendingOffer,
    #[error("unknown participant or track")]
    Unknown,
    #[error("already exists")]
    Exists,
    #[error("the participant's WebRTC session panicked and was closed")]
    Panicked,
    #[error("the SFU is shut down")]
    Closed,
    /// The media port is taken, possibly by another SFU process: joining it
    /// with `SO_REUSEPORT` would split its clients between the two.
    #[error("{proto} media port {addr} is in use: {source}")]
    PortInUse {
        proto: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
