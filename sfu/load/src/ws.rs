//! `sfu-load ws`: the load through the signalling service. Each participant
//! is a WebSocket session on `rtc-server` (PROTOCOL.md) with str0m peer
//! connections: publishers `join` with their tracks and offer in one round
//! trip; subscribers `join` with `auto_subscribe` and answer the server's
//! subscriber offers. Join latency runs from the WebSocket's TCP connect to
//! the first RTP packet at the subscriber.
//!
//! The server is either started here (`rtc-server` next to this binary,
//! loopback, no TURN, an API key made up for the run) or an already running
//! one (`--url`, `--api-key`, `--api-secret`, `--pid` for /proc readings).
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

use crate::client::{Client, Fleet, AUDIO_CID, VIDEO_CID};
use crate::media::MediaSpec;
use crate::run::{ms, pub_sent, rx_totals, secs, Fanout, SHARD_PREFIX};
use crate::stats::{percentiles, CpuSnap};
use crate::token;
use crate::LoadError;

const ROOM: &str = "load";

/// Where the server is.
pub enum Target {
    /// Start `bin` (an `rtc-server`) on loopback for the run.
    Spawn { bin: PathBuf },
    /// A running server: its HTTP address, key and (for /proc) process id.
    Attach {
        http: SocketAddr,
        api_key: String,
        api_secret: String,
        pid: Option<u32>,
    },
}

pub struct WsArgs {
    pub target: Target,
    pub fanout: Fanout,
}

/// A started `rtc-server`; killed when dropped.
struct Spawned {
    child: Child,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rtc-server` on loopback with a fresh API key and returns its
/// HTTP address.
fn spawn(bin: &PathBuf, key: &str, secret: &str) -> Result<(Spawned, SocketAddr), LoadError> {
    let mut child = Command::new(bin)
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--media-port",
            "0",
            "--no-turn",
            "--api-key",
            &format!("{key}={secret}"),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| LoadError::Server(format!("{}: {e}", bin.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| LoadError::Protocol("no stdout".into()))?;
    let spawned = Spawned { child };
    let (tx, rx) = mpsc::channel();
    // Reads stdout for the server's whole life: a closed pipe would fail its
    // next println.
    std::thread::Builder::new()
        .name("rtc-server-out".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| LoadError::Timeout("rtc-server did not print its HTTP address".into()))?;
        if let Some(rest) = line.strip_prefix("listening http ") {
            let addr = rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| LoadError::Protocol(format!("bad line from rtc-server: {line}")))?;
            return Ok((spawned, addr));
        }
    }
}

/// One participant's signalling session.
struct Session {
    ws: WebSocket<TcpStream>,
    participant: u64,
    /// Just before the TCP connect of the WebSocket.
    opened: Instant,
    joined_at: Option<Instant>,
    publisher: bool,
    /// `track_published` for this session's own tracks.
    published: usize,
    errors: u64,
    closed: bool,
}

fn ws_err(e: tungstenite::Error) -> LoadError {
    LoadError::Protocol(format!("WebSocket: {e}"))
}

impl Session {
    fn connect(http: SocketAddr, tok: &str, participant: u64, publisher: bool) -> Result<Session, LoadError> {
        let opened = Instant::now();
        let stream = TcpStream::connect(http)?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{http}/v1/rtc?access_token={tok}");
        let (ws, _) = tungstenite::client(url, stream).map_err(|e| LoadError::Protocol(format!("handshake: {e}")))?;
        // Read in the fleet's loop from here on, never waiting.
        ws.get_ref().set_nonblocking(true)?;
        Ok(Session {
            ws,
            participant,
            opened,
            joined_at: None,
            publisher,
            published: 0,
            errors: 0,
            closed: false,
        })
    }

    fn send(&mut self, v: serde_json::Value) -> Result<(), LoadError> {
        match self.ws.send(Message::text(v.to_string())) {
            Ok(()) => Ok(()),
            // Queued in tungstenite; `flush` in `pump` finishes it.
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(ws_err(e)),
        }
    }

    /// Handles every message waiting on the socket.
    fn pump(&mut self, fleet: &mut Fleet, twcc: bool) -> Result<(), LoadError> {
        if self.closed {
            return Ok(());
        }
        match self.ws.flush() {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(ws_err(e)),
        }
        loop {
            let msg = match self.ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.closed = true;
                    return Ok(());
                }
                Err(e) => return Err(ws_err(e)),
            };
            let Message::Text(text) = msg else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                self.errors += 1;
                continue;
            };
            self.on_message(&v, fleet, twcc)?;
        }
    }

    fn on_message(&mut self, v: &serde_json::Value, fleet: &mut Fleet, twcc: bool) -> Result<(), LoadError> {
        let sdp = v["sdp"].as_str();
        match v["type"].as_str().unwrap_or_default() {
            "joined" => self.joined_at = Some(Instant::now()),
            "track_published" => {
                let own = v["track"]["cid"]
                    .as_str()
                    .is_some_and(|c| c == VIDEO_CID || c == AUDIO_CID);
                if self.publisher && own {
                    self.published += 1;
                }
            }
            "answer" => {
                let p = self.participant;
                let c = fleet.clients.iter_mut().find(|c| !c.subscriber && c.participant == p);
                match (c, sdp) {
                    (Some(c), Some(sdp)) => c.accept_answer(sdp)?,
                    _ => self.errors += 1,
                }
            }
            "offer" => {
                let Some(sdp) = sdp else {
                    self.errors += 1;
                    return Ok(());
                };
                if fleet.subscriber_of(self.participant).is_none() {
                    fleet.push(Client::new(self.participant, true, self.opened, twcc)?);
                }
                let Some(c) = fleet.subscriber_of(self.participant) else {
                    return Ok(());
                };
                let answer = c.accept_offer(sdp)?;
                self.send(serde_json::json!({"v": 1, "type": "answer", "target": "subscriber", "sdp": answer}))?;
            }
            "error" => {
                self.errors += 1;
                eprintln!("participant {}: server error {v}", self.participant);
            }
            "leave" => self.closed = true,
            _ => {}
        }
        Ok(())
    }
}

fn pump_all(sessions: &mut [Session], fleet: &mut Fleet, twcc: bool) -> Result<(), LoadError> {
    for s in sessions {
        s.pump(fleet, twcc)?;
    }
    Ok(())
}

/// Steps clients and sessions until `done` or `max`.
fn drive(
    sessions: &mut [Session],
    fleet: &mut Fleet,
    twcc: bool,
    max: Duration,
    mut done: impl FnMut(&[Session], &Fleet) -> bool,
) -> Result<bool, LoadError> {
    let end = Instant::now() + max;
    loop {
        pump_all(sessions, fleet, twcc)?;
        if done(sessions, fleet) {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        // WebSockets are not in the fleet's poll set, so it waits at most
        // this long for them.
        fleet.step(Duration::from_millis(2));
    }
}

fn publish_entries(spec: &MediaSpec) -> Vec<serde_json::Value> {
    let mut v = Vec::new();
    if !spec.layers.is_empty() {
        let mut t = serde_json::json!({"cid": VIDEO_CID, "kind": "video", "source": "camera"});
        if spec.layers.len() > 1 {
            let q = ["low", "medium", "high"];
            let dims = [(320, 180), (640, 360), (1280, 720)];
            t["layers"] = spec
                .layers
                .iter()
                .zip(q.iter().zip(dims))
                .map(|((_, kbps), (q, (w, h)))| {
                    serde_json::json!({"quality": q, "width": w, "height": h, "bitrate": kbps * 1000})
                })
                .collect();
        }
        v.push(t);
    }
    if spec.audio {
        v.push(serde_json::json!({"cid": AUDIO_CID, "kind": "audio", "source": "microphone"}));
    }
    v
}

pub fn ws(WsArgs { target, fanout: a }: WsArgs) -> Result<serde_json::Value, LoadError> {
    let secret = random_secret()?;
    let (_spawned, http, key, secret, pid) = match &target {
        Target::Spawn { bin } => {
            let (s, http) = spawn(bin, "load", &secret)?;
            let pid = s.child.id();
            (Some(s), http, "load".to_string(), secret, Some(pid))
        }
        Target::Attach {
            http,
            api_key,
            api_secret,
            pid,
        } => (None, *http, api_key.clone(), api_secret.clone(), *pid),
    };
    eprintln!("rtc-server http {http} pid {pid:?}");
    let tok = |i: usize| token::mint(&key, &secret, ROOM, &format!("load-{i}"), token::now_unix(), 3600);
    let mut fleet = Fleet::default();
    fleet.twcc = a.twcc;
    let mut sessions: Vec<Session> = Vec::new();
    let t_pub = Instant::now();
    for i in 0..a.publishers {
        let mut s = Session::connect(http, &tok(i), i as u64, true)?;
        let mut c = Client::new(i as u64, false, s.opened, true)?;
        let offer = c.publish_offer(&a.spec)?;
        fleet.push(c);
        s.send(serde_json::json!({
            "v": 1, "type": "join", "auto_subscribe": false,
            "publish": publish_entries(&a.spec), "offer": offer,
        }))?;
        sessions.push(s);
    }
    let per = usize::from(!a.spec.layers.is_empty()) + usize::from(a.spec.audio);
    let ok = drive(&mut sessions, &mut fleet, a.twcc, Duration::from_secs(20), |s, f| {
        s.iter().all(|s| s.published >= per) && f.clients.iter().all(|c| c.connected_at.is_some())
    })?;
    if !ok {
        return Err(LoadError::Timeout("publishers did not connect and publish".into()));
    }
    eprintln!("{} publishers up in {:?}", a.publishers, t_pub.elapsed());
    let rss_before = pid
        .and_then(|p| crate::stats::proc_rss_kib(p).ok())
        .unwrap_or_default()
        .0;
    let subs: Vec<u64> = (a.publishers..a.publishers + a.subscribers).map(|i| i as u64).collect();
    for &i in &subs {
        let mut s = Session::connect(http, &tok(i as usize), i, false)?;
        s.send(serde_json::json!({"v": 1, "type": "join", "auto_subscribe": true}))?;
        sessions.push(s);
        // Keep the earlier sessions answered while the rest connect.
        pump_all(&mut sessions, &mut fleet, a.twcc)?;
    }
    let want_video = !a.spec.layers.is_empty();
    let got_media = |f: &Fleet| {
        f.clients
            .iter()
            .filter(|c| c.subscriber)
            .filter(|c| c.rx.first_media.is_some() && (!want_video || c.rx.first_video.is_some()))
            .count()
    };
    let joined = drive(&mut sessions, &mut fleet, a.twcc, a.join_timeout, |_, f| {
        got_media(f) == subs.len()
    })?;
    let mut join: Vec<Duration> = Vec::new();
    let mut join_video: Vec<Duration> = Vec::new();
    let mut signalled: Vec<Duration> = Vec::new();
    for s in sessions.iter().filter(|s| !s.publisher) {
        if let Some(t) = s.joined_at {
            signalled.push(t - s.opened);
        }
    }
    for c in fleet.clients.iter().filter(|c| c.subscriber) {
        if let Some(t) = c.rx.first_media {
            join.push(t.saturating_duration_since(c.created));
        }
        if let Some(t) = c.rx.first_video {
            join_video.push(t.saturating_duration_since(c.created));
        }
    }
    if !joined {
        eprintln!(
            "warning: only {} of {} subscribers got media",
            got_media(&fleet),
            subs.len()
        );
    }
    drive(&mut sessions, &mut fleet, a.twcc, a.warmup, |_, _| false)?;
    let snap = || pid.map(|p| CpuSnap::take(p, SHARD_PREFIX));
    let c0 = snap();
    let t0 = Instant::now();
    let r0 = rx_totals(&fleet, &subs);
    let s0 = pub_sent(&fleet);
    drive(&mut sessions, &mut fleet, a.twcc, a.seconds, |_, _| false)?;
    let c1 = snap();
    let wall = secs(t0.elapsed());
    let r1 = rx_totals(&fleet, &subs);
    let s1 = pub_sent(&fleet);
    let (rss, hwm) = pid.and_then(|p| crate::stats::proc_rss_kib(p).ok()).unwrap_or_default();

    let fwd = r1.packets - r0.packets;
    let expected = r1.expected - r0.expected;
    let lost = expected.saturating_sub(r1.distinct - r0.distinct);
    let (cpu, shard_cpu) = match (c0, c1) {
        (Some(a), Some(b)) => (secs(b.server - a.server), secs(b.shards - a.shards)),
        _ => (0.0, 0.0),
    };
    let (j50, j95, jmax) = percentiles(&mut join);
    let (v50, v95, vmax) = percentiles(&mut join_video);
    let (s50, s95, smax) = percentiles(&mut signalled);
    let errors: u64 =
        fleet.clients.iter().map(|c| c.errors).sum::<u64>() + sessions.iter().map(|s| s.errors).sum::<u64>();
    let out = serde_json::json!({
        "scenario": "ws",
        "publishers": a.publishers,
        "subscribers": a.subscribers,
        "twcc": a.twcc,
        "simulcast": a.spec.layers.len() > 1,
        "seconds": wall,
        "published_pps": (s1 - s0) as f64 / wall,
        "forwarded_pps": fwd as f64 / wall,
        "forwarded_mbps": (r1.bytes - r0.bytes) as f64 * 8.0 / wall / 1e6,
        "server_cpu_s": cpu,
        "server_cores": cpu / wall,
        "shard_cpu_s": shard_cpu,
        "pkts_per_cpu_s": if cpu > 0.0 { fwd as f64 / cpu } else { 0.0 },
        "loss": if expected > 0 { lost as f64 / expected as f64 } else { 0.0 },
        "lost": lost,
        "duplicates": r1.duplicates - r0.duplicates,
        "joined": join.len(),
        "joined_msg_ms_p50": ms(s50), "joined_msg_ms_p95": ms(s95), "joined_msg_ms_max": ms(smax),
        "join_ms_p50": ms(j50), "join_ms_p95": ms(j95), "join_ms_max": ms(jmax),
        "join_video_ms_p50": ms(v50), "join_video_ms_p95": ms(v95), "join_video_ms_max": ms(vmax),
        "server_rss_kib": rss,
        "server_hwm_kib": hwm,
        "server_rss_before_subscribers_kib": rss_before,
        "client_cores": match (c0, c1) { (Some(a), Some(b)) => secs(b.me - a.me) / wall, _ => 0.0 },
        "errors": errors,
    });
    for s in &mut sessions {
        let _ = s.send(serde_json::json!({"v": 1, "type": "leave"}));
        let _ = s.ws.flush();
    }
    Ok(out)
}

/// A fresh secret for the run's API key.
fn random_secret() -> Result<String, LoadError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| LoadError::Server("no system randomness".into()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
