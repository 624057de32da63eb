//! The sans-IO core of one shard: participants, their peers, published
//! tracks and the down-tracks that forward them.
//!
//! Time and datagrams are inputs; datagrams to send go to a caller's sink.
//! The shard's I/O loop wraps one `Router`, and the tests drive it directly
//! with str0m clients and a virtual clock.
//!
//! A room lives on one shard, so fan-out never crosses cores: a publisher's
//! packet becomes, for each subscriber, one `StreamTx::write_rtp` that shares
//! the received payload (`Arc<[u8]>` clone, no copy).
//!
//! This file holds the state (participants, tracks, down-tracks, peers) and
//! the entry points (signalling calls, datagrams, timeouts, peer events);
//! the jobs on that state are submodules: `router/forward.rs` (the
//! per-packet fan-out), `router/adaptation.rs` (allocation, probing,
//! dynacast), `router/keyframes.rs` (requests upstream), `router/data.rs`
//! (data channels) and `router/publication.rs` (m-lines coming and going
//! over renegotiations).
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::channel::ChannelId;
use str0m::format::PayloadParams;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Transmit};

use crate::codec::av1::Av1Frames;
use crate::codec::dd::DdStream;
use crate::codec::picture_id::PictureIdRewriter;
use crate::downtrack::DownTrack;
use crate::estimate_recovery::EstimateRecovery;
use crate::mux::{shard_prefix, Mux, PeerId, Route};
use crate::participant::{Peer, PeerConfig, PeerEvent, Role};
use crate::red::RedOut;
use crate::simulcast::{KeyframeRequester, MAX_LAYERS};
use crate::speaker::{SpeakerConfig, SpeakerDetector};
use crate::svc::SpatialFilter;
use crate::temporal::{TemporalFilter, TemporalStats};
use crate::Error;

mod adaptation;
mod data;
mod forward;
mod keyframes;
mod publication;

/// Identifies a participant across the whole SFU (assigned by the handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

impl std::fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PA_{}", self.0)
    }
}

/// A published track: its publisher and the m-line it arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrackId {
    pub publisher: ParticipantId,
    pub mid: Mid,
}

impl std::fmt::Display for TrackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TR_{}_{}", self.publisher.0, self.mid)
    }
}

/// What the router tells the control plane.
#[derive(Clone, Debug, PartialEq)]
pub enum SfuEvent {
    /// A publisher's m-line appeared (answer to its offer).
    TrackPublished {
        track: TrackId,
        kind: MediaKind,
        /// Simulcast rids; empty for a single stream.
        rids: Vec<Rid>,
        /// The msid track id of the m-line (the client's track cid).
        msid_track: String,
    },
    /// A publisher's renegotiation withdrew a track (its m-line stopped or
    /// no longer sends): forwarding stopped and subscribers' m-lines are
    /// stopped, as after [`Router::unpublish`], which does not report this.
    TrackUnpublished {
        track: TrackId,
    },
    /// The first packet of a track arrived.
    TrackMediaStarted {
        track: TrackId,
    },
    /// A server offer for the participant's subscriber connection.
    Offer {
        participant: ParticipantId,
        sdp: String,
    },
    Connected {
        participant: ParticipantId,
        role: Role,
    },
    /// A peer closed or failed; the participant is gone.
    Disconnected {
        participant: ParticipantId,
        panicked: bool,
    },
    /// The room's active speakers changed (loudest first; empty = silence).
    Speakers {
        room: String,
        speakers: Vec<(ParticipantId, f32)>,
    },
    /// The subscriber connection's downlink estimate changed.
    Estimate {
        participant: ParticipantId,
        bitrate: u64,
    },
    /// Dynacast: the simulcast layers of `track` that some subscriber needs
    /// (lowest first; empty = none). Sent when a layer has been unneeded for
    /// [`DYNACAST_DELAY`] and within 200 ms when one is needed again; signalling
    /// tells the publisher to stop or restart encoding the others.
    LayersWanted {
        track: TrackId,
        rids: Vec<Rid>,
    },
    /// A data channel message from a participant (already relayed to the
    /// rest of the room).
    Data {
        from: ParticipantId,
        label: String,
        binary: bool,
        data: Vec<u8>,
    },
}

/// Credentials a new participant's publisher connection answers with.
#[derive(Clone, Debug)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub ufrag: String,
}

/// The longest the router asks to sleep when no peer has a timer sooner.
const MAX_SLEEP: Duration = Duration::from_millis(100);

struct PeerSlot {
    peer: Peer,
    owner: ParticipantId,
    /// In `Router::dirty`, with this many packets written since its last
    /// drive (each needs one str0m timeout to leave the pacer).
    dirty: bool,
    writes: u32,
}

/// Packets a subscriber's send stream may hold in str0m before more are
/// dropped: about a second of 2.5 Mbit/s video in 1,000-byte packets. With
/// every written packet timed out at once (`Router::drive_peer`), only a
/// pacer held far below the forwarded rate or a stalled shard reaches it.
pub const MAX_QUEUED_PACKETS: usize = 300;

/// Outcome of one write to a subscriber's send stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    Written,
    NoStream,
    QueueFull,
}

/// str0m's leaky-bucket pacer releases one packet per `handle_timeout` and
/// then asks for the next timeout this much after the last one; a peer
/// whose timeout is no later than `now` plus this is answered at once.
const PACER_GATE: Duration = Duration::from_micros(1);
/// Most timeouts given to one peer in one drive: a bound on the work one
/// peer can take from the others in one turn of the shard loop.
const MAX_ROUNDS: u32 = 256;

struct Participant {
    room: String,
    publisher: PeerId,
    subscriber: Option<PeerId>,
    /// Down-tracks by the subscriber connection's mid.
    downs: HashMap<Mid, Down>,
    /// Subscriptions waiting for the next subscriber offer.
    pending_adds: Vec<TrackId>,
    /// Limits set for subscriptions that have no down-track yet (their
    /// m-line waits for the next offer); applied when it is created.
    pending_limits: Vec<(TrackId, Limits)>,
    /// Subscriber mids to stop in the next offer.
    pending_stops: Vec<Mid>,
    /// The subscriber connection's first m-line, which carries the BUNDLE
    /// transport: it is made inactive, never stopped, when its track goes
    /// (Chrome tears the transport down, DTLS included, when the tagged
    /// m-line of a BUNDLE group is stopped).
    bundle_tag: Option<Mid>,
    /// Data channels open on the publisher connection, by label.
    channels: HashMap<String, ChannelId>,
    /// The SFU relays this participant's messages to the whole room.
    relay_data: bool,
    estimate: Option<Bitrate>,
    /// Replaces str0m's estimate when set (operator cap, tests).
    estimate_override: Option<Bitrate>,
    /// When to restart an estimate that has latched below what the
    /// allocation wants.
    recovery: EstimateRecovery,
}

struct Track {
    kind: MediaKind,
    rids: Vec<Rid>,
    /// (subscriber, its mid for this track).
    subscribers: Vec<(ParticipantId, Mid)>,
    /// Payload parameters of the publisher's PTs, learned on first use.
    params: Vec<(Pt, PayloadParams)>,
    /// Coalesces subscribers' keyframe requests, per layer.
    keyframes: KeyframeRequester,
    started: bool,
    /// Muted by its publisher: nothing is forwarded and the allocator
    /// reserves nothing for it.
    muted: bool,
    /// Picture size of each layer as the publisher declared it, in the
    /// order of `rids` (one entry for a single stream); 0 = unknown.
    dims: [(u32, u32); MAX_LAYERS],
    /// Bytes per layer in the current window, and the last window's rates
    /// (what the allocator weighs layers by).
    layer_bytes: [u64; MAX_LAYERS],
    layer_bps: [Option<u64>; MAX_LAYERS],
    /// The last rate each layer was measured at, for layers the publisher
    /// stopped at our request (dynacast): the allocator must still be able
    /// to pick them, or nobody would ever want them back.
    last_bps: [Option<u64>; MAX_LAYERS],
    window_start: Option<Instant>,
    /// Dynacast: the layers (bit per index of `rids`) the control plane was
    /// last told are wanted, and since when each has been unwanted.
    announced: u8,
    unwanted_since: [Option<Instant>; MAX_LAYERS],
    /// When each layer was last announced wanted again after being
    /// stopped: until its packets arrive (the publisher's encoder takes a
    /// while, seconds under CPU load) it keeps its stopped-layer price, or
    /// the allocator would drop the subscriber that asked for it back to a
    /// lower layer and dynacast would stop it again (flapping forever).
    resumed_at: [Option<Instant>; MAX_LAYERS],
    /// The msid (stream id, track id) subscribers' m-lines carry, as the
    /// control plane named the track; `PA_<n>`/`TR_<n>_<mid>` until then.
    msid: Option<(String, String)>,
    /// Bitrate and frame rate per (simulcast, temporal) layer.
    temporal: TemporalStats,
    /// AV1 frame attribution from the OBU headers, per simulcast layer.
    av1: [Av1Frames; MAX_LAYERS],
    /// The dependency descriptor's structure, per simulcast layer (AV1).
    dd: [DdStream; MAX_LAYERS],
    /// Spatial layers inside the stream (VP9 SVC, AV1 SVC), from the
    /// scalability structure of its keyframes (VP9's payload descriptor,
    /// the dependency descriptor); 0 or 1 for none. A track with them
    /// has no rids: its layer indices above are spatial layer ids.
    spatial_layers: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DownState {
    /// In an offer the client has not answered.
    Negotiating,
    Open,
}

/// One subscription. str0m's send stream gives it its own SSRC; the
/// [`DownTrack`] rebases sequence numbers and timestamps across layer
/// switches and pauses.
struct Down {
    source: TrackId,
    state: DownState,
    /// The layer forwarded now and the one wanted; they differ until the
    /// wanted layer's next keyframe.
    current: Option<Rid>,
    target: Option<Rid>,
    /// The subscriber's own choice of layer, a cap for the allocator.
    pinned: Option<Rid>,
    /// The size the subscriber renders at and the frame rate it wants
    /// (0 = no limit): layers bigger than needed are not sent.
    limits: Limits,
    /// Paused by the subscriber.
    paused: bool,
    /// Paused by the allocator: not even the lowest layer fits.
    bw_paused: bool,
    /// Publisher PT -> subscriber PT, and what becomes of a RED payload.
    pts: Vec<(Pt, Pt, RedOut)>,
    dt: DownTrack,
    /// Which temporal layers are forwarded (the allocator's choice).
    temporal: TemporalFilter,
    /// Which spatial layers of an SVC stream are forwarded.
    spatial: SpatialFilter,
    /// VP8 PictureID/TL0PICIDX continuity across dropped frames and switches.
    pictures: PictureIdRewriter,
    /// Highest extended output sequence number written (str0m wants
    /// extended numbers; the down-track gives 16 bits).
    out_ext: Option<u64>,
    /// Video lost a packet to a full send queue: forwarding waits for the
    /// next keyframe of the current layer.
    await_keyframe: bool,
    /// Since when the temporal filter has forwarded fewer layers than its
    /// target (see [`Router::unstick_temporal_upswitches`]).
    temporal_below_target_since: Option<Instant>,
}

/// A subscriber's rendering limits for one video subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_width: u32,
    pub max_height: u32,
    /// Acted on through temporal layers (VP8, VP9): the highest whose
    /// measured frame rate fits; a stream without them is not capped.
    pub max_fps: u32,
    /// The highest spatial layer of a VP9 SVC stream (0 = the lowest); a
    /// simulcast track's preferred layer is pinned by rid instead.
    pub max_spatial: Option<u8>,
}

/// Extends a 16-bit sequence number to the extended number nearest `last`.
fn extend_seq(last: u64, seq: u16) -> u64 {
    let delta = seq.wrapping_sub(last as u16) as i16;
    last.saturating_add_signed(i64::from(delta))
}

/// Index of a simulcast layer: its position in the publisher's rid list,
/// which clients order from lowest to highest quality (`q;h;f`).
fn layer_of(rids: &[Rid], rid: Option<Rid>) -> usize {
    rid.and_then(|r| rids.iter().position(|x| *x == r))
        .unwrap_or(0)
        .min(MAX_LAYERS - 1)
}

/// Window over which layer bitrates are measured.
const RATE_WINDOW: Duration = Duration::from_millis(500);

/// Construction parameters of a router.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub shard: usize,
    pub peer: PeerConfig,
}

pub struct Router {
    shard: usize,
    peer_cfg: PeerConfig,
    mux: Mux,
    peers: Vec<Option<PeerSlot>>,
    free: Vec<u32>,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<String, Vec<ParticipantId>>,
    tracks: HashMap<TrackId, Track>,
    events: VecDeque<SfuEvent>,
    /// Reused queue of one peer's events (keeps its capacity).
    scratch: VecDeque<PeerEvent>,
    /// Peers written to since their last drive (each once: `PeerSlot::dirty`).
    dirty: Vec<PeerId>,
    /// Inside a receive batch: `settle` waits for `end_batch`.
    batching: bool,
    /// Media packets dropped because a subscriber's send queue was full.
    queue_full_drops: u64,
    /// Subscribers' estimates restarted because paused video could not
    /// raise them ([`crate::estimate_recovery`]).
    estimate_resets: u64,
    /// Keyframes asked for because a temporal upswitch found no switching
    /// point (`Router::unstick_temporal_upswitches`).
    temporal_upswitch_keyframes: u64,
    next_id: u64,
    /// Active speaker detection per room.
    speakers: HashMap<String, SpeakerDetector>,
    next_speaker_tick: Option<Instant>,
    next_keyframe_tick: Option<Instant>,
    /// Subscribers to reallocate before the next poll (a layer switch
    /// completed). Keeps its capacity.
    realloc: Vec<ParticipantId>,
    next_realloc_tick: Option<Instant>,
    next_dynacast_tick: Option<Instant>,
}

/// How often rooms' speaker rankings are recomputed.
const SPEAKER_TICK: Duration = Duration::from_millis(200);
/// How often owed (throttled) keyframe requests are looked for.
const KEYFRAME_TICK: Duration = Duration::from_millis(100);

/// How long no subscriber may need a simulcast layer before the publisher
/// is told it can stop sending it (dynacast). Long enough that a dip of the
/// estimate or a subscriber switching tiles does not toggle the encoder.
pub const DYNACAST_DELAY: Duration = Duration::from_secs(3);

/// How often the layers wanted of each track are recomputed.
const DYNACAST_TICK: Duration = Duration::from_millis(200);

/// How often every subscriber is reallocated even without a new estimate.
const REALLOC_TICK: Duration = Duration::from_secs(1);

impl Router {
    pub fn new(cfg: RouterConfig) -> Self {
        Router {
            shard: cfg.shard,
            peer_cfg: cfg.peer,
            mux: Mux::new(cfg.shard),
            peers: Vec::new(),
            free: Vec::new(),
            participants: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            events: VecDeque::new(),
            scratch: VecDeque::new(),
            dirty: Vec::new(),
            batching: false,
            queue_full_drops: 0,
            estimate_resets: 0,
            temporal_upswitch_keyframes: 0,
            next_id: 1,
            speakers: HashMap::new(),
            next_speaker_tick: None,
            next_keyframe_tick: None,
            realloc: Vec::new(),
            next_realloc_tick: None,
            next_dynacast_tick: None,
        }
    }

    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// Media packets dropped since start because a subscriber's send queue
    /// held [`MAX_QUEUED_PACKETS`].
    pub fn queue_full_drops(&self) -> u64 {
        self.queue_full_drops
    }

    /// Subscribers' downlink estimates restarted so far because video paused
    /// for bandwidth could not raise them ([`crate::estimate_recovery`]).
    pub fn estimate_resets(&self) -> u64 {
        self.estimate_resets
    }

    /// Keyframes asked for so far because a subscriber's temporal upswitch
    /// found no switching point in the stream in time.
    pub fn temporal_upswitch_keyframes(&self) -> u64 {
        self.temporal_upswitch_keyframes
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// The earliest time any peer wants a timeout.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        let mut t = now + MAX_SLEEP;
        for slot in self.peers.iter().flatten() {
            t = t.min(slot.peer.next_timeout);
        }
        t
    }

    fn insert_peer(&mut self, peer: Peer, owner: ParticipantId) -> PeerId {
        let slot = Some(PeerSlot {
            peer,
            owner,
            dirty: false,
            writes: 0,
        });
        let id = match self.free.pop() {
            Some(i) => {
                self.peers[i as usize] = slot;
                PeerId(i)
            }
            None => {
                self.peers.push(slot);
                PeerId(self.peers.len() as u32 - 1)
            }
        };
        if let Some(s) = &self.peers[id.0 as usize] {
            self.mux.add_peer(&s.peer.ufrag, id);
        }
        id
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id.0 as usize)?.as_mut().map(|s| &mut s.peer)
    }

    fn remove_peer(&mut self, id: PeerId) {
        if let Some(slot) = self.peers.get_mut(id.0 as usize).and_then(Option::take) {
            self.mux.remove_peer(&slot.peer.ufrag, id, &slot.peer.tuples);
            self.free.push(id.0);
        }
    }

    /// Creates a participant with its publisher connection. `id` is chosen
    /// by the caller (the handle numbers participants across shards); `None`
    /// numbers it locally.
    pub fn create_participant(
        &mut self,
        now: Instant,
        room: &str,
        id: Option<ParticipantId>,
    ) -> Result<ParticipantInfo, Error> {
        let id = id.unwrap_or_else(|| {
            self.next_id += 1;
            ParticipantId(self.next_id)
        });
        if self.participants.contains_key(&id) {
            return Err(Error::Exists);
        }
        let peer = Peer::new(now, Role::Publisher, &self.peer_cfg, &shard_prefix(self.shard))?;
        let ufrag = peer.ufrag.clone();
        let publisher = self.insert_peer(peer, id);
        self.participants.insert(
            id,
            Participant {
                room: room.to_string(),
                publisher,
                subscriber: None,
                downs: HashMap::new(),
                pending_adds: Vec::new(),
                pending_limits: Vec::new(),
                pending_stops: Vec::new(),
                bundle_tag: None,
                channels: HashMap::new(),
                relay_data: true,
                estimate: None,
                estimate_override: None,
                recovery: EstimateRecovery::default(),
            },
        );
        self.rooms.entry(room.to_string()).or_default().push(id);
        self.speakers
            .entry(room.to_string())
            .or_insert_with(|| SpeakerDetector::new(SpeakerConfig::default()));
        Ok(ParticipantInfo { id, ufrag })
    }

    /// A client offer on the publisher connection; returns the answer.
    pub fn accept_offer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: &str,
        tx: &mut dyn FnMut(&Transmit),
    ) -> Result<String, Error> {
        let pid = self.participants.get(&id).ok_or(Error::Unknown)?.publisher;
        let peer = self.peer_mut(pid).ok_or(Error::Unknown)?;
        let old = peer.ufrag.clone();
        let answer = peer.accept_offer(sdp)?;
        let new = peer.ufrag.clone();
        if new != old {
            // ICE restart: new tuples now come with checks for the new ufrag.
            self.mux.remove_peer(&old, pid, &[]);
            self.mux.add_peer(&new, pid);
        }
        self.drain_peer(now, pid, tx);
        self.settle(now, tx);
        Ok(answer)
    }

    /// The client's answer to our subscriber offer.
    pub fn accept_answer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: &str,
        tx: &mut dyn FnMut(&Transmit),
    ) -> Result<(), Error> {
        let p = self.participants.get(&id).ok_or(Error::Unknown)?;
        let sid = p.subscriber.ok_or(Error::NoPendingOffer)?;
        self.peer_mut(sid).ok_or(Error::Unknown)?.accept_answer(sdp)?;
        let mut opened = Vec::new();
        if let Some(p) = self.participants.get_mut(&id) {
            for (mid, d) in p.downs.iter_mut() {
                if d.state == DownState::Negotiating {
                    d.state = DownState::Open;
                    opened.push((*mid, d.source, d.target));
                }
            }
        }
        let video: Vec<Mid> = opened
            .iter()
            .filter(|(_, source, _)| self.tracks.get(source).is_some_and(|t| t.kind == MediaKind::Video))
            .map(|(mid, _, _)| *mid)
            .collect();
        if let Some(peer) = self.peer_mut(sid) {
            for mid in video {
                peer.size_rtx_cache(mid);
            }
        }
        for (_, source, rid) in opened {
            // A new subscriber can decode nothing until the next keyframe.
            self.request_keyframe(now, source, rid, KeyframeRequestKind::Pli);
        }
        self.drain_peer(now, sid, tx);
        // Subscriptions that arrived while the offer was out.
        self.negotiate(now, id)?;
        self.settle(now, tx);
        Ok(())
    }

    pub fn add_remote_candidate(&mut self, id: ParticipantId, role: Role, candidate: &str) -> Result<(), Error> {
        let p = self.participants.get(&id).ok_or(Error::Unknown)?;
        let pid = match role {
            Role::Publisher => p.publisher,
            Role::Subscriber => p.subscriber.ok_or(Error::Unknown)?,
        };
        self.peer_mut(pid)
            .ok_or(Error::Unknown)?
            .add_remote_candidate(candidate)
    }

    /// Starts forwarding `track` to `subscriber`: a new m-line in the next
    /// subscriber offer (sent now unless one is already out).
    pub fn subscribe(&mut self, now: Instant, subscriber: ParticipantId, track: TrackId) -> Result<(), Error> {
        if !self.tracks.contains_key(&track) {
            return Err(Error::Unknown);
        }
        let p = self.participants.get_mut(&subscriber).ok_or(Error::Unknown)?;
        if p.downs.values().any(|d| d.source == track) || p.pending_adds.contains(&track) {
            return Ok(());
        }
        p.pending_adds.push(track);
        if p.subscriber.is_none() {
            let peer = Peer::new(now, Role::Subscriber, &self.peer_cfg, &shard_prefix(self.shard))?;
            let sid = self.insert_peer(peer, subscriber);
            if let Some(p) = self.participants.get_mut(&subscriber) {
                p.subscriber = Some(sid);
            }
        }
        self.negotiate(now, subscriber)
    }

    pub fn unsubscribe(&mut self, now: Instant, subscriber: ParticipantId, track: TrackId) -> Result<(), Error> {
        let p = self.participants.get_mut(&subscriber).ok_or(Error::Unknown)?;
        p.pending_adds.retain(|t| *t != track);
        p.pending_limits.retain(|(t, _)| *t != track);
        let mids: Vec<Mid> = p
            .downs
            .iter()
            .filter(|(_, d)| d.source == track)
            .map(|(m, _)| *m)
            .collect();
        for mid in &mids {
            p.downs.remove(mid);
            p.pending_stops.push(*mid);
        }
        if let Some(t) = self.tracks.get_mut(&track) {
            t.subscribers.retain(|(s, _)| *s != subscriber);
        }
        self.negotiate(now, subscriber)
    }

    /// Pauses or resumes one subscription, and picks its simulcast layer.
    pub fn set_track_settings(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        track: TrackId,
        paused: bool,
        rid: Option<Rid>,
    ) -> Result<(), Error> {
        let p = self.participants.get_mut(&subscriber).ok_or(Error::Unknown)?;
        let mut resumed = None;
        for d in p.downs.values_mut().filter(|d| d.source == track) {
            let was_paused = d.paused;
            d.paused = paused;
            if paused && !was_paused {
                d.dt.pause();
            } else if !paused && was_paused {
                d.dt.resume();
            }
            d.pinned = rid;
            if rid.is_some() && rid != d.target {
                d.target = rid;
                resumed = Some(rid);
            } else if was_paused && !paused {
                resumed = Some(d.target);
            }
        }
        if let Some(rid) = resumed {
            self.request_keyframe(now, track, rid, KeyframeRequestKind::Pli);
        }
        Ok(())
    }

    /// The picture size of each layer of `track`, as its publisher declared
    /// it (signalling's track info): what subscribers' size limits are
    /// matched against. Unlisted rids stay unknown (never capped by size).
    pub fn set_track_layers(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        track: TrackId,
        layers: &[(Option<Rid>, u32, u32)],
    ) -> Result<(), Error> {
        if track.publisher != publisher {
            return Err(Error::Unknown);
        }
        let t = self.tracks.get_mut(&track).ok_or(Error::Unknown)?;
        for &(rid, w, h) in layers {
            // A single stream has no rid; a simulcast layer must name one
            // of the publisher's.
            let i = match rid {
                None if t.rids.is_empty() => 0,
                Some(r) => match t.rids.iter().position(|x| *x == r) {
                    Some(i) if i < MAX_LAYERS => i,
                    _ => continue,
                },
                None => continue,
            };
            t.dims[i] = (w, h);
        }
        let subs: Vec<ParticipantId> = t.subscribers.iter().map(|(s, _)| *s).collect();
        for s in subs {
            self.reallocate(now, s);
        }
        Ok(())
    }

    /// The msid stream and track ids of `track` in subscribers' offers
    /// from now on (signalling passes its participant and track sids, so
    /// clients map m-lines to tracks by msid).
    pub fn set_track_msid(
        &mut self,
        publisher: ParticipantId,
        track: TrackId,
        stream_id: String,
        track_id: String,
    ) -> Result<(), Error> {
        if track.publisher != publisher {
            return Err(Error::Unknown);
        }
        self.tracks.get_mut(&track).ok_or(Error::Unknown)?.msid = Some((stream_id, track_id));
        Ok(())
    }

    /// The size a subscriber renders `track` at and the frame rate it
    /// wants (0 = no limit), so no layer bigger than needed is sent.
    pub fn set_track_limits(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        track: TrackId,
        limits: Limits,
    ) -> Result<(), Error> {
        let p = self.participants.get_mut(&subscriber).ok_or(Error::Unknown)?;
        let mut found = false;
        for d in p.downs.values_mut().filter(|d| d.source == track) {
            d.limits = limits;
            found = true;
        }
        if !found {
            // Signalling sets a new subscription's preferences right after
            // subscribing, possibly while an offer is out.
            if !p.pending_adds.contains(&track) {
                return Err(Error::Unknown);
            }
            p.pending_limits.retain(|(t, _)| *t != track);
            p.pending_limits.push((track, limits));
            return Ok(());
        }
        self.reallocate(now, subscriber);
        Ok(())
    }

    /// Removes a participant, its tracks and its subscriptions.
    pub fn remove_participant(&mut self, now: Instant, id: ParticipantId) {
        let Some(p) = self.participants.remove(&id) else {
            return;
        };
        self.remove_peer(p.publisher);
        if let Some(s) = p.subscriber {
            self.remove_peer(s);
        }
        if let Some(members) = self.rooms.get_mut(&p.room) {
            members.retain(|m| *m != id);
            if members.is_empty() {
                self.rooms.remove(&p.room);
                self.speakers.remove(&p.room);
            }
        }
        if let Some(det) = self.speakers.get_mut(&p.room) {
            det.remove(id.0);
        }
        for d in p.downs.values() {
            if let Some(t) = self.tracks.get_mut(&d.source) {
                t.subscribers.retain(|(s, _)| *s != id);
            }
        }
        let gone: Vec<TrackId> = self.tracks.keys().filter(|t| t.publisher == id).copied().collect();
        let mut touched = Vec::new();
        for t in gone {
            self.drop_track(t, &mut touched);
        }
        for p in self.participants.values_mut() {
            p.pending_adds.retain(|t| t.publisher != id);
        }
        touched.sort_unstable();
        touched.dedup();
        for sub in touched {
            let _ = self.negotiate(now, sub);
        }
    }

    /// Forgets a published track: its down-tracks go at once (so not one
    /// more packet is written to them) and their m-lines are stopped in each
    /// subscriber's next offer. Subscribers with a stop queued are added to
    /// `touched`.
    fn drop_track(&mut self, track: TrackId, touched: &mut Vec<ParticipantId>) {
        let Some(t) = self.tracks.remove(&track) else {
            return;
        };
        for (sub, mid) in t.subscribers {
            if let Some(sp) = self.participants.get_mut(&sub) {
                sp.downs.remove(&mid);
                sp.pending_stops.push(mid);
                touched.push(sub);
            }
        }
        for p in self.participants.values_mut() {
            p.pending_adds.retain(|a| *a != track);
        }
    }

    /// The publisher withdraws `track`: forwarding stops now and every
    /// subscriber is offered the m-line stopped (port 0), so the client's
    /// transceiver ends. `publisher` must own the track: a participant
    /// cannot withdraw someone else's.
    pub fn unpublish(&mut self, now: Instant, publisher: ParticipantId, track: TrackId) -> Result<(), Error> {
        if track.publisher != publisher || !self.tracks.contains_key(&track) {
            return Err(Error::Unknown);
        }
        let mut touched = Vec::new();
        self.drop_track(track, &mut touched);
        touched.sort_unstable();
        touched.dedup();
        for sub in touched {
            self.negotiate(now, sub)?;
        }
        Ok(())
    }

    /// Mutes or unmutes a published track. While muted nothing of it is
    /// forwarded (whatever the publisher still sends: browsers keep sending
    /// black frames or silence) and the allocator gives its bandwidth to
    /// other tracks. On unmute each down-track starts a new segment, so the
    /// receiver sees no sequence gap, and a video track asks its publisher
    /// for a keyframe of every layer being watched, since no subscriber can
    /// decode before one.
    pub fn set_muted(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        track: TrackId,
        muted: bool,
    ) -> Result<(), Error> {
        if track.publisher != publisher {
            return Err(Error::Unknown);
        }
        let t = self.tracks.get_mut(&track).ok_or(Error::Unknown)?;
        if t.muted == muted {
            return Ok(());
        }
        t.muted = muted;
        let mut wanted: Vec<Option<Rid>> = Vec::new();
        let mut subscribers = Vec::with_capacity(t.subscribers.len());
        for &(sub, mid) in &t.subscribers {
            let Some(d) = self.participants.get_mut(&sub).and_then(|p| p.downs.get_mut(&mid)) else {
                continue;
            };
            subscribers.push(sub);
            if muted || d.paused || d.bw_paused {
                continue;
            }
            d.dt.resume();
            if !wanted.contains(&d.target) {
                wanted.push(d.target);
            }
        }
        for rid in wanted {
            self.request_keyframe(now, track, rid, KeyframeRequestKind::Pli);
        }
        // The track's share of each subscriber's estimate changes.
        for sub in subscribers {
            if let Some(b) = self
                .participants
                .get(&sub)
                .and_then(|p| p.estimate_override.or(p.estimate))
            {
                self.on_estimate(now, sub, b);
            }
        }
        Ok(())
    }

    /// Sends a subscriber offer with the pending changes, unless one is
    /// already waiting for its answer (then they ride the next one).
    fn negotiate(&mut self, _now: Instant, id: ParticipantId) -> Result<(), Error> {
        let Some(p) = self.participants.get_mut(&id) else {
            return Err(Error::Unknown);
        };
        let Some(sid) = p.subscriber else {
            return Ok(());
        };
        if p.pending_adds.is_empty() && p.pending_stops.is_empty() {
            return Ok(());
        }
        let Some(slot) = self.peers.get_mut(sid.0 as usize).and_then(Option::as_mut) else {
            return Err(Error::Unknown);
        };
        if slot.peer.pending_offer.is_some() {
            return Ok(());
        }
        let adds = std::mem::take(&mut p.pending_adds);
        let stops = std::mem::take(&mut p.pending_stops);
        let mut added = Vec::new();
        let tracks = &self.tracks;
        let tag = p.bundle_tag;
        let result = slot.peer.guard(|rtc| {
            let mut change = rtc.sdp_api();
            for t in &adds {
                let Some(track) = tracks.get(t) else { continue };
                let (stream_id, track_id) = track
                    .msid
                    .clone()
                    .unwrap_or_else(|| (t.publisher.to_string(), t.to_string()));
                let mid = change.add_media(track.kind, Direction::SendOnly, Some(stream_id), Some(track_id), None);
                added.push((mid, *t));
            }
            for mid in &stops {
                if Some(*mid) == tag {
                    change.set_direction(*mid, Direction::Inactive);
                } else {
                    change.stop_media(*mid);
                }
            }
            change.apply()
        });
        let Some(result) = result else {
            return Err(Error::Panicked);
        };
        let Some((offer, pending)) = result else {
            return Ok(());
        };
        slot.peer.pending_offer = Some(pending);
        if p.bundle_tag.is_none() {
            p.bundle_tag = added.first().map(|(mid, _)| *mid);
        }
        for (mid, source) in added {
            let Some(track) = self.tracks.get(&source) else {
                continue;
            };
            // Start on the best layer; the first estimate moves it down if
            // it does not fit.
            let rid = track.rids.last().copied();
            let dt = match track.kind {
                MediaKind::Audio => DownTrack::audio(0, 48_000),
                MediaKind::Video => DownTrack::new(0, 90_000),
            };
            if let Some(t) = self.tracks.get_mut(&source) {
                t.subscribers.push((id, mid));
            }
            let limits = match p.pending_limits.iter().position(|(t, _)| *t == source) {
                Some(i) => p.pending_limits.swap_remove(i).1,
                None => Limits::default(),
            };
            p.downs.insert(
                mid,
                Down {
                    source,
                    state: DownState::Negotiating,
                    current: None,
                    target: rid,
                    pinned: None,
                    limits,
                    paused: false,
                    bw_paused: false,
                    pts: Vec::new(),
                    dt,
                    temporal: TemporalFilter::new(),
                    spatial: SpatialFilter::default(),
                    pictures: PictureIdRewriter::new(),
                    out_ext: None,
                    await_keyframe: false,
                    temporal_below_target_since: None,
                },
            );
        }
        self.events.push_back(SfuEvent::Offer {
            participant: id,
            sdp: offer.to_sdp_string(),
        });
        Ok(())
    }

    /// One datagram from the network.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        data: &[u8],
        tx: &mut dyn FnMut(&Transmit),
    ) -> Route {
        self.handle_packet(now, Protocol::Udp, remote, local, data, tx)
    }

    /// One RFC 4571 frame (length prefix removed) of an ICE-TCP connection
    /// from `remote` to our TCP candidate `local`. Never routes to another
    /// shard: the acceptor gave the connection to its owner.
    pub fn handle_tcp_frame(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: SocketAddr,
        data: &[u8],
        tx: &mut dyn FnMut(&Transmit),
    ) -> Route {
        self.handle_packet(now, Protocol::Tcp, remote, local, data, tx)
    }

    /// An ICE-TCP connection closed: its tuple no longer names a peer (a
    /// new connection may reuse the remote port).
    pub fn tcp_closed(&mut self, remote: SocketAddr, local: SocketAddr) {
        let tuple = (Protocol::Tcp, remote, local);
        if let Some(peer) = self.mux.peer_of(&tuple) {
            self.mux.forget(&tuple, peer);
            if let Some(p) = self.peer_mut(peer) {
                p.tuples.retain(|t| *t != tuple);
            }
        }
    }

    fn handle_packet(
        &mut self,
        now: Instant,
        proto: Protocol,
        remote: SocketAddr,
        local: SocketAddr,
        data: &[u8],
        tx: &mut dyn FnMut(&Transmit),
    ) -> Route {
        let route = self.mux.route(proto, remote, local, data);
        if let Route::Local { peer, new_tuple } = route {
            let Some(p) = self.peer_mut(peer) else {
                return Route::Drop;
            };
            if new_tuple {
                p.tuples.push((proto, remote, local));
            }
            p.receive(now, proto, remote, local, data);
            self.drain_peer(now, peer, tx);
            if !self.batching {
                self.settle(now, tx);
            }
        }
        route
    }

    /// Starts a receive batch: the datagrams handled until
    /// [`Router::end_batch`] only queue media on subscribers' send streams,
    /// and `end_batch` sends it peer by peer, so that several packets to one
    /// subscriber cost one drive of its `Rtc` and leave back to back (one
    /// GSO send).
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Sends what the batch queued.
    pub fn end_batch(&mut self, now: Instant, tx: &mut dyn FnMut(&Transmit)) {
        self.batching = false;
        self.settle(now, tx);
    }

    /// Fires every peer timer that is due.
    pub fn handle_timeout(&mut self, now: Instant, tx: &mut dyn FnMut(&Transmit)) {
        for i in 0..self.peers.len() {
            let due = matches!(&self.peers[i], Some(s) if s.peer.next_timeout <= now);
            if due {
                self.drive_peer(now, PeerId(i as u32), tx);
            }
        }
        if self.next_realloc_tick.is_none_or(|t| t <= now) {
            self.next_realloc_tick = Some(now + REALLOC_TICK);
            self.realloc.extend(
                self.participants
                    .iter()
                    .filter(|(_, p)| p.subscriber.is_some())
                    .map(|(id, _)| *id),
            );
        }
        self.settle(now, tx);
        if self.next_dynacast_tick.is_none_or(|t| t <= now) {
            self.next_dynacast_tick = Some(now + DYNACAST_TICK);
            self.dynacast(now);
        }
        if self.next_keyframe_tick.is_none_or(|t| t <= now) {
            self.next_keyframe_tick = Some(now + KEYFRAME_TICK);
            self.unstick_temporal_upswitches(now);
            self.send_owed_keyframe_requests(now);
        }
        if self.next_speaker_tick.is_none_or(|t| t <= now) {
            self.next_speaker_tick = Some(now + SPEAKER_TICK);
            for (room, det) in self.speakers.iter_mut() {
                if let Some(list) = det.tick(now) {
                    let speakers = list
                        .iter()
                        .map(|s| (ParticipantId(s.participant), s.loudness))
                        .collect();
                    self.events.push_back(SfuEvent::Speakers {
                        room: room.clone(),
                        speakers,
                    });
                }
            }
        }
    }

    /// Sends what commands queued on peers (data channel writes) now rather
    /// than at their next timer.
    pub fn flush(&mut self, now: Instant, tx: &mut dyn FnMut(&Transmit)) {
        self.settle(now, tx);
    }

    /// Drains peers written to until nothing is left to do.
    fn settle(&mut self, now: Instant, tx: &mut dyn FnMut(&Transmit)) {
        loop {
            while let Some(sub) = self.realloc.pop() {
                self.reallocate(now, sub);
            }
            let Some(id) = self.dirty.pop() else { break };
            self.drive_peer(now, id, tx);
        }
    }

    /// Gives a peer timeouts at `now` and drains it until str0m has nothing
    /// more to send now. Written media only leaves str0m after a timeout
    /// (which stamps it into the send queue), and the pacer then releases
    /// one packet per timeout: answering at once sends a peer's queue back
    /// to back, with send times (TWCC) taken when the packets really leave,
    /// instead of one packet per turn of the shard loop.
    fn drive_peer(&mut self, now: Instant, id: PeerId, tx: &mut dyn FnMut(&Transmit)) {
        let Some(slot) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        // One per packet written, and a few for what the pacer or RTCP had
        // waiting; the gate check below ends the drive sooner when str0m
        // has nothing due.
        let rounds = slot.writes.saturating_add(8).min(MAX_ROUNDS);
        // Written to: what was written needs a timeout whatever str0m
        // answered last.
        let mut force = slot.dirty;
        slot.dirty = false;
        slot.writes = 0;
        for _ in 0..rounds {
            match self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) {
                Some(s) if force || s.peer.next_timeout <= now + PACER_GATE => s.peer.timeout(now),
                _ => break,
            }
            force = false;
            self.drain_peer(now, id, tx);
        }
    }

    /// Notes that `id` was given something to send; `settle` drives it.
    fn mark_dirty(&mut self, id: PeerId, writes: u32) {
        if let Some(slot) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) {
            slot.writes = slot.writes.saturating_add(writes);
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    fn drain_peer(&mut self, now: Instant, id: PeerId, tx: &mut dyn FnMut(&Transmit)) {
        let mut q = std::mem::take(&mut self.scratch);
        let owner = match self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) {
            Some(slot) => {
                slot.peer.drain(&mut *tx, &mut q);
                slot.owner
            }
            None => {
                self.scratch = q;
                return;
            }
        };
        while let Some(ev) = q.pop_front() {
            self.on_peer_event(now, id, owner, ev);
        }
        self.scratch = q;
    }

    fn on_peer_event(&mut self, now: Instant, peer: PeerId, owner: ParticipantId, ev: PeerEvent) {
        let role = match self.peers.get(peer.0 as usize).and_then(Option::as_ref) {
            Some(s) => s.peer.role,
            None => return,
        };
        match ev {
            PeerEvent::Rtp { mid, rid, packet } => self.forward(now, TrackId { publisher: owner, mid }, rid, packet),
            PeerEvent::MediaAdded {
                mid,
                kind,
                direction,
                rids,
                track_id,
            } => {
                if role == Role::Publisher && direction.is_receiving() {
                    self.publish_track(TrackId { publisher: owner, mid }, kind, rids, track_id);
                }
            }
            PeerEvent::MediaChanged { mid, direction } => self.on_media_changed(now, peer, owner, role, mid, direction),
            PeerEvent::KeyframeRequest { mid, kind, .. } => {
                let Some(d) = self.participants.get(&owner).and_then(|p| p.downs.get(&mid)) else {
                    return;
                };
                let (source, rid) = (d.source, d.target);
                self.request_keyframe(now, source, rid, kind);
            }
            PeerEvent::Estimate(b) => {
                let Some(p) = self.participants.get_mut(&owner) else {
                    return;
                };
                p.estimate = Some(b);
                let effective = p.estimate_override.unwrap_or(b);
                self.events.push_back(SfuEvent::Estimate {
                    participant: owner,
                    bitrate: effective.as_u64(),
                });
                self.reallocate(now, owner);
            }
            PeerEvent::Connected => self.events.push_back(SfuEvent::Connected {
                participant: owner,
                role,
            }),
            PeerEvent::Closed { panicked } => {
                tracing::debug!(participant = %owner, ?role, panicked, "peer closed; participant removed");
                self.events.push_back(SfuEvent::Disconnected {
                    participant: owner,
                    panicked,
                });
                self.remove_participant(now, owner);
            }
            PeerEvent::ChannelOpen { id, label } => {
                if let Some(p) = self.participants.get_mut(&owner) {
                    p.channels.insert(label, id);
                }
            }
            PeerEvent::ChannelClose { id } => {
                if let Some(p) = self.participants.get_mut(&owner) {
                    p.channels.retain(|_, c| *c != id);
                }
            }
            PeerEvent::ChannelData { id, binary, data } => self.relay_data(now, owner, id, binary, data),
            PeerEvent::IceState(_) | PeerEvent::StreamPaused { .. } => {}
        }
    }
}
