//! str0m clients, each with its own loopback UDP socket, and the loop that
//! drives many of them on one thread: `poll(2)` over every socket, feed what
//! arrived, fire str0m timers, send publishers' due media.
//!
//! Receive paths never unwrap: a datagram str0m refuses, or an RTP packet
//! we cannot classify, is counted in `malformed`.
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap, ExtensionValues, RtpWrite, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use crate::media::{MediaSpec, Out, Schedule};
use crate::stats::SeqStats;
use crate::LoadError;

/// Socket buffers asked for (root may exceed rmem_max with the FORCE
/// options): a subscriber that cannot keep up should not lose in its own
/// socket what the SFU delivered.
const CLIENT_BUF: i32 = 4 << 20;

/// The msid of a publisher's m-lines: signalling matches the track id to
/// the `cid` of a `publish` (see PROTOCOL.md), so `ws` announces these.
pub const STREAM_ID: &str = "load";
pub const VIDEO_CID: &str = "load-video";
pub const AUDIO_CID: &str = "load-audio";

/// Whether arrival times come from the kernel (`SO_TIMESTAMPNS`).
static KERNEL_RX_TIME: AtomicBool = AtomicBool::new(true);

/// Chooses kernel (true) or read-time (false) arrival stamps for clients
/// created afterwards.
pub fn set_kernel_rx_time(on: bool) {
    KERNEL_RX_TIME.store(on, Ordering::Relaxed);
}

/// Turns on kernel receive timestamps; false if the kernel refused.
fn enable_timestamps(fd: i32) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a pointer to a live c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// One `recvmsg`: length, sender and the kernel's receive time (wall
/// clock) if the socket reports it.
fn recv_stamped(fd: i32, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<SystemTime>)> {
    // SAFETY: every pointer handed to recvmsg points to a live local of
    // the stated size; the control buffer is aligned for cmsghdr.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        #[repr(C, align(8))]
        struct Ctrl([u8; 64]);
        let mut ctrl = Ctrl([0; 64]);
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = ctrl.0.len() as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if addr.ss_family as libc::c_int != libc::AF_INET {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let sin = &*(&addr as *const _ as *const libc::sockaddr_in);
        let from = SocketAddr::from((
            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            u16::from_be(sin.sin_port),
        ));
        let mut stamp = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
                stamp = Some(UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, from, stamp))
    }
}

/// The `Instant` of a kernel wall-clock stamp: `now` minus how long ago
/// the stamp was (never later than `now`).
fn instant_of(stamp: SystemTime, now: Instant) -> Instant {
    match SystemTime::now().duration_since(stamp) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        Err(_) => now,
    }
}

/// Per-kind receive counters of one client.
#[derive(Clone, Debug, Default)]
pub struct RxStats {
    pub video_packets: u64,
    pub audio_packets: u64,
    pub bytes: u64,
    pub streams: HashMap<Ssrc, SeqStats>,
    pub first_media: Option<Instant>,
    pub first_video: Option<Instant>,
}

impl RxStats {
    pub fn packets(&self) -> u64 {
        self.video_packets + self.audio_packets
    }
    pub fn expected(&self) -> u64 {
        self.streams.values().map(SeqStats::expected).sum()
    }
    pub fn distinct(&self) -> u64 {
        self.streams.values().map(SeqStats::distinct).sum()
    }
    pub fn duplicates(&self) -> u64 {
        self.streams.values().map(|s| s.duplicates).sum()
    }
}

/// What a publishing client sends.
pub struct Publisher {
    pub schedule: Schedule,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    vp8: Option<Pt>,
    opus: Option<Pt>,
    /// Payloads by (size, start, key), shared (`Arc`) between packets.
    payloads: HashMap<(usize, bool, bool), Arc<[u8]>>,
    out: Vec<Out>,
    pub sent: u64,
    pub keyframe_requests: u64,
}

pub struct Client {
    pub rtc: Rtc,
    sock: UdpSocket,
    addr: SocketAddr,
    /// The SFU participant this client is a connection of.
    pub participant: u64,
    /// The subscriber connection (the SFU offers); otherwise the publisher
    /// connection (we offer). A participant that does both has two clients,
    /// as a browser has two peer connections.
    pub subscriber: bool,
    pub created: Instant,
    pub connected_at: Option<Instant>,
    next_timeout: Instant,
    pub rx: RxStats,
    pub publisher: Option<Publisher>,
    pub pending: Option<SdpPendingOffer>,
    /// Datagrams or packets we could not use, and str0m errors.
    pub malformed: u64,
    pub errors: u64,
    /// Which SSRCs carry audio (learned from the payload type).
    kinds: HashMap<Ssrc, bool>,
    buf: Vec<u8>,
    /// Arrival times are the kernel's (`SO_TIMESTAMPNS`).
    stamped: bool,
}

fn set_buf(fd: i32, opt_force: libc::c_int, opt: libc::c_int) {
    let v = CLIENT_BUF;
    let p = &v as *const i32 as *const libc::c_void;
    let len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: a valid fd and a pointer to a live c_int of the given size.
    unsafe {
        if libc::setsockopt(fd, libc::SOL_SOCKET, opt_force, p, len) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, len);
        }
    }
}

impl Client {
    /// `twcc`: whether to offer/accept transport-wide congestion control.
    /// Without it the SFU gets no feedback, so its bandwidth estimate stays
    /// at the configured initial value and nothing is paused for bandwidth.
    pub fn new(participant: u64, subscriber: bool, created: Instant, twcc: bool) -> Result<Client, LoadError> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_nonblocking(true)?;
        set_buf(sock.as_raw_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        set_buf(sock.as_raw_fd(), libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
        let stamped = KERNEL_RX_TIME.load(Ordering::Relaxed) && enable_timestamps(sock.as_raw_fd());
        let addr = sock.local_addr()?;
        let now = Instant::now();
        let mut cfg = RtcConfig::new()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .set_rtp_mode(true);
        if !twcc {
            // str0m's standard map minus transport-cc (id 3).
            let mut exts = ExtensionMap::empty();
            for (id, e) in [
                (1, Extension::AudioLevel),
                (2, Extension::AbsoluteSendTime),
                (4, Extension::RtpMid),
                (10, Extension::RtpStreamId),
                (11, Extension::RepairedRtpStreamId),
                (13, Extension::VideoOrientation),
            ] {
                exts.set(id, e);
            }
            cfg = cfg.set_extension_map(exts);
        }
        let mut rtc = cfg.build(now);
        let cand = Candidate::host(addr, "udp").map_err(|e| LoadError::Sdp(e.to_string()))?;
        rtc.add_local_candidate(cand);
        Ok(Client {
            rtc,
            sock,
            addr,
            participant,
            subscriber,
            created,
            connected_at: None,
            next_timeout: now,
            rx: RxStats::default(),
            publisher: None,
            pending: None,
            malformed: 0,
            errors: 0,
            kinds: HashMap::new(),
            buf: vec![0u8; 2048],
            stamped,
        })
    }

    pub fn fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Builds the publisher offer: one video m-line (simulcast when the spec
    /// has rids) and one audio m-line; or a data channel only when the spec
    /// has neither (a joined participant that publishes nothing).
    pub fn publish_offer(&mut self, spec: &MediaSpec) -> Result<String, LoadError> {
        let mut api = self.rtc.sdp_api();
        let mut video_mid = None;
        let mut audio_mid = None;
        if !spec.layers.is_empty() {
            let sim = if spec.layers.iter().any(|(r, _)| r.is_some()) {
                let mut s = Simulcast::new();
                for (r, _) in &spec.layers {
                    s.add_send_layer(SimulcastLayer::new(r.as_deref().unwrap_or("f")));
                }
                Some(s)
            } else {
                None
            };
            video_mid = Some(api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(STREAM_ID.into()),
                Some(VIDEO_CID.into()),
                sim,
            ));
        }
        if spec.audio {
            audio_mid = Some(api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(STREAM_ID.into()),
                Some(AUDIO_CID.into()),
                None,
            ));
        }
        if video_mid.is_none() && audio_mid.is_none() {
            api.add_channel("load".into());
        }
        let (offer, pending) = api.apply().ok_or_else(|| LoadError::Sdp("nothing to offer".into()))?;
        self.pending = Some(pending);
        if video_mid.is_some() || audio_mid.is_some() {
            self.publisher = Some(Publisher {
                schedule: Schedule::new(spec.clone(), Instant::now()),
                video_mid,
                audio_mid,
                vp8: None,
                opus: None,
                payloads: HashMap::new(),
                out: Vec::new(),
                sent: 0,
                keyframe_requests: 0,
            });
        }
        Ok(offer.to_sdp_string())
    }

    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), LoadError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| LoadError::Sdp(e.to_string()))?;
        let pending = self.pending.take().ok_or(LoadError::Sdp("no pending offer".into()))?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        if let Some(p) = &mut self.publisher {
            let cc = self.rtc.codec_config();
            p.vp8 = cc.find(|c| c.spec().codec == Codec::Vp8).map(|c| c.pt());
            p.opus = cc.find(|c| c.spec().codec == Codec::Opus).map(|c| c.pt());
        }
        self.drain(Instant::now());
        Ok(())
    }

    /// A server offer (subscriber connection); returns our answer.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, LoadError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| LoadError::Sdp(e.to_string()))?;
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        self.drain(Instant::now());
        Ok(answer.to_sdp_string())
    }

    /// Reads every waiting datagram into str0m.
    fn read(&mut self) {
        loop {
            let (n, from, stamp) = if self.stamped {
                match recv_stamped(self.sock.as_raw_fd(), &mut self.buf) {
                    Ok(x) => x,
                    Err(_) => return,
                }
            } else {
                match self.sock.recv_from(&mut self.buf) {
                    Ok((n, from)) => (n, from, None),
                    Err(_) => return,
                }
            };
            let read_at = Instant::now();
            // The receive time transport-cc reports: when the datagram
            // reached the socket, not when this thread got to it.
            let now = stamp.map_or(read_at, |s| instant_of(s, read_at));
            let Ok(contents) = self.buf[..n].try_into() else {
                self.malformed += 1;
                continue;
            };
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source: from,
                    destination: self.addr,
                    contents,
                },
            );
            if self.rtc.handle_input(input).is_err() {
                self.errors += 1;
            }
            // RTP mode holds one received packet until polled.
            self.drain(now);
        }
    }

    /// Fires str0m's timer if due.
    fn tick(&mut self, now: Instant) {
        if now >= self.next_timeout {
            if self.rtc.handle_input(Input::Timeout(now)).is_err() {
                self.errors += 1;
            }
            self.drain(now);
        }
    }

    fn drain(&mut self, now: Instant) {
        loop {
            let out = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(_) => {
                    self.errors += 1;
                    self.next_timeout = now + Duration::from_millis(10);
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    return;
                }
                Output::Transmit(t) => {
                    let _ = self.sock.send_to(&t.contents, t.destination);
                }
                Output::Event(e) => self.on_event(now, e),
            }
        }
    }

    fn on_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::Connected => self.connected_at = Some(now),
            Event::RtpPacket(p) => {
                let ssrc = p.header.ssrc;
                let audio = match self.kinds.get(&ssrc) {
                    Some(a) => *a,
                    None => {
                        let pt = p.header.payload_type;
                        let Some(codec) = self.rtc.codec_config().find(|c| c.pt() == pt).map(|c| c.spec().codec) else {
                            self.malformed += 1;
                            return;
                        };
                        let a = codec == Codec::Opus;
                        self.kinds.insert(ssrc, a);
                        a
                    }
                };
                if audio {
                    self.rx.audio_packets += 1;
                } else {
                    self.rx.video_packets += 1;
                    self.rx.first_video.get_or_insert(now);
                }
                self.rx.first_media.get_or_insert(now);
                self.rx.bytes += p.payload.len() as u64;
                self.rx.streams.entry(ssrc).or_default().on_packet(*p.seq_no);
            }
            Event::KeyframeRequest(r) => {
                if let Some(p) = &mut self.publisher {
                    p.keyframe_requests += 1;
                    if Some(r.mid) == p.video_mid {
                        let layer = r
                            .rid
                            .and_then(|rid| {
                                p.schedule
                                    .spec
                                    .layers
                                    .iter()
                                    .position(|(x, _)| x.as_deref().map(Rid::from) == Some(rid))
                            })
                            .unwrap_or(0);
                        p.schedule.force_keyframe(layer);
                    }
                }
            }
            _ => {}
        }
    }

    /// Sends the publisher's due packets, if connected.
    fn send_media(&mut self, now: Instant) {
        let Some(p) = &mut self.publisher else { return };
        if self.connected_at.is_none() {
            return;
        }
        p.out.clear();
        p.schedule.due(now, &mut p.out);
        if p.out.is_empty() {
            return;
        }
        let audio_stream = p.schedule.spec.audio_stream();
        let mut api = self.rtc.direct_api();
        for o in &p.out {
            let audio = Some(o.stream) == audio_stream;
            let (mid, rid, pt) = if audio {
                (p.audio_mid, None, p.opus)
            } else {
                let rid = p.schedule.spec.layers[o.stream].0.as_deref().map(Rid::from);
                (p.video_mid, rid, p.vp8)
            };
            let (Some(mid), Some(pt)) = (mid, pt) else {
                self.errors += 1;
                continue;
            };
            let Some(stream) = api.stream_tx_by_mid(mid, rid) else {
                // Simulcast send streams appear once negotiated.
                continue;
            };
            let payload = p
                .payloads
                .entry((o.size, o.start, o.key))
                .or_insert_with(|| {
                    let mut v = vec![0u8; o.size.max(2)];
                    if !audio {
                        // VP8 payload descriptor (S bit at a frame start,
                        // partition 0), then the frame tag's P bit: 0 = key.
                        v[0] = if o.start { 0x10 } else { 0x00 };
                        v[1] = if o.key { 0x00 } else { 0x01 };
                    }
                    v.into()
                })
                .clone();
            let mut w = RtpWrite::new(pt, o.seq.into(), o.ts, now, payload).marker(o.marker);
            if audio {
                w = w.ext_vals(ExtensionValues {
                    audio_level: Some(-30),
                    voice_activity: Some(true),
                    ..Default::default()
                });
            } else {
                w = w.nackable(true);
            }
            stream.write_rtp(w);
            p.sent += 1;
        }
        self.drain(now);
    }
}

/// Drives clients on the calling thread.
pub struct Fleet {
    pub clients: Vec<Client>,
    fds: Vec<libc::pollfd>,
    /// Whether subscriber connections opened on a server offer negotiate
    /// transport-cc (see [`Client::new`]).
    pub twcc: bool,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            clients: Vec::new(),
            fds: Vec::new(),
            twcc: true,
        }
    }
}

impl Fleet {
    pub fn push(&mut self, c: Client) -> usize {
        self.fds.push(libc::pollfd {
            fd: c.fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        self.clients.push(c);
        self.clients.len() - 1
    }

    pub fn remove(&mut self, i: usize) -> Client {
        self.fds.swap_remove(i);
        self.clients.swap_remove(i)
    }

    /// The subscriber connection of `participant`.
    pub fn subscriber_of(&mut self, participant: u64) -> Option<&mut Client> {
        self.clients
            .iter_mut()
            .find(|c| c.subscriber && c.participant == participant)
    }

    /// One round: wait for input (at most `max_wait`, less if a timer or a
    /// media packet is due sooner), then handle everything that is ready.
    pub fn step(&mut self, max_wait: Duration) {
        let now = Instant::now();
        let mut wake = now + max_wait;
        for c in &self.clients {
            wake = wake.min(c.next_timeout);
            if let Some(p) = &c.publisher {
                if c.connected_at.is_some() {
                    if let Some(t) = p.schedule.next_due() {
                        wake = wake.min(t);
                    }
                }
            }
        }
        let ms = wake.saturating_duration_since(now).as_millis().min(1000) as libc::c_int;
        // SAFETY: fds is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if n > 0 {
            for (i, f) in self.fds.iter_mut().enumerate() {
                if f.revents != 0 {
                    f.revents = 0;
                    self.clients[i].read();
                }
            }
        }
        let now = Instant::now();
        for c in &mut self.clients {
            c.send_media(now);
            c.tick(now);
        }
    }
}
