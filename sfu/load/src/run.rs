//! The scenarios against `sfu-load serve`: fan-out throughput (`direct`),
//! join/leave churn and memory per participant and per subscribed track.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::client::{Client, Fleet};
use crate::control::{Server, TrackRef};
use crate::media::MediaSpec;
use crate::proto::ServerMsg;
use crate::stats::{percentiles, CpuSnap};
use crate::LoadError;

pub const ROOM: &str = "bench";
/// Thread-name prefix of the SFU's shards (see `sfu::handle`).
pub const SHARD_PREFIX: &str = "sfu-shard";

#[derive(Clone, Debug)]
pub struct ServerOpts {
    pub bin: PathBuf,
    pub shards: usize,
    pub initial_estimate_bps: u64,
    pub max_seconds: u64,
}

impl ServerOpts {
    pub fn spawn(&self) -> Result<Server, LoadError> {
        let args = vec![
            "--shards".to_string(),
            self.shards.to_string(),
            "--initial-estimate-bps".into(),
            self.initial_estimate_bps.to_string(),
            "--max-seconds".into(),
            self.max_seconds.to_string(),
        ];
        Server::spawn(&self.bin, &args)
    }
}

/// Handles what the server reported: records published tracks and answers
/// subscriber offers for the clients they are addressed to.
pub fn pump_events(server: &mut Server, fleet: &mut Fleet, tracks: &mut Vec<TrackRef>) -> Result<(), LoadError> {
    while let Some(ev) = server.poll_event() {
        match ev {
            ServerMsg::TrackPublished {
                publisher,
                mid,
                video,
                rids,
            } => tracks.push(TrackRef {
                publisher,
                mid,
                video,
                rids,
            }),
            ServerMsg::Offer { participant, sdp } => {
                if fleet.subscriber_of(participant).is_none() {
                    // The first offer opens the participant's subscriber
                    // connection; a participant that already left has no
                    // publisher client either and is skipped.
                    let Some(created) = fleet
                        .clients
                        .iter()
                        .find(|c| c.participant == participant)
                        .map(|c| c.created)
                    else {
                        continue;
                    };
                    let twcc = fleet.twcc;
                    fleet.push(Client::new(participant, true, created, twcc)?);
                }
                let Some(c) = fleet.subscriber_of(participant) else {
                    continue;
                };
                match c.accept_offer(&sdp) {
                    Ok(answer) => server.answer(participant, answer)?,
                    Err(e) => {
                        c.errors += 1;
                        eprintln!("offer for {participant} refused: {e}");
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Steps the fleet and the control channel until `done` or `max`.
pub fn drive_until(
    server: &mut Server,
    fleet: &mut Fleet,
    tracks: &mut Vec<TrackRef>,
    max: Duration,
    mut done: impl FnMut(&Fleet, &[TrackRef]) -> bool,
) -> Result<bool, LoadError> {
    let end = Instant::now() + max;
    loop {
        pump_events(server, fleet, tracks)?;
        if done(fleet, tracks) {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        fleet.step(Duration::from_millis(5));
    }
}

/// Creates a participant whose client offers `spec` (media, or a data
/// channel when the spec has none) and adds it to the fleet.
pub fn add_publisher(server: &mut Server, fleet: &mut Fleet, spec: &MediaSpec) -> Result<u64, LoadError> {
    let t0 = Instant::now();
    let id = server.create(ROOM)?;
    let mut c = Client::new(id, false, t0, true)?;
    let offer = c.publish_offer(spec)?;
    let answer = server.offer(id, offer)?;
    c.accept_answer(&answer)?;
    fleet.push(c);
    Ok(id)
}

/// Creates a participant that subscribes to `tracks` (no publisher
/// connection: a receive-only client).
pub fn add_subscriber(
    server: &mut Server,
    fleet: &mut Fleet,
    tracks: &[TrackRef],
    twcc: bool,
) -> Result<u64, LoadError> {
    let t0 = Instant::now();
    let id = server.create(ROOM)?;
    fleet.push(Client::new(id, true, t0, twcc)?);
    for t in tracks {
        server.subscribe(id, t)?;
    }
    Ok(id)
}

/// Starts `publishers` and waits until all their tracks are published.
fn start_publishers(
    server: &mut Server,
    fleet: &mut Fleet,
    tracks: &mut Vec<TrackRef>,
    publishers: usize,
    spec: &MediaSpec,
) -> Result<Vec<u64>, LoadError> {
    let mut ids = Vec::new();
    for _ in 0..publishers {
        ids.push(add_publisher(server, fleet, spec)?);
    }
    let per = usize::from(!spec.layers.is_empty()) + usize::from(spec.audio);
    let want = per * publishers;
    let ok = drive_until(server, fleet, tracks, Duration::from_secs(20), |f, t| {
        t.len() >= want && f.clients.iter().all(|c| c.connected_at.is_some())
    })?;
    if !ok {
        return Err(LoadError::Timeout(format!(
            "publishers: {} of {want} tracks published",
            tracks.len()
        )));
    }
    Ok(ids)
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub struct DirectArgs {
    pub server: ServerOpts,
    pub fanout: Fanout,
}

/// N publishers fanned out to M subscribers: what `direct` and `ws` share.
pub struct Fanout {
    pub publishers: usize,
    pub subscribers: usize,
    pub spec: MediaSpec,
    pub warmup: Duration,
    pub seconds: Duration,
    pub join_timeout: Duration,
    /// Subscribers negotiate transport-cc (the SFU then estimates their
    /// bandwidth and may pause or lower video).
    pub twcc: bool,
}

/// Totals over the subscribing clients.
#[derive(Clone, Copy, Default, Debug)]
pub struct RxTotals {
    pub packets: u64,
    pub expected: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub bytes: u64,
}

pub fn rx_totals(fleet: &Fleet, subs: &[u64]) -> RxTotals {
    let mut t = RxTotals::default();
    for c in fleet
        .clients
        .iter()
        .filter(|c| c.subscriber && subs.contains(&c.participant))
    {
        t.packets += c.rx.packets();
        t.expected += c.rx.expected();
        t.distinct += c.rx.distinct();
        t.duplicates += c.rx.duplicates();
        t.bytes += c.rx.bytes;
    }
    t
}

pub fn pub_sent(fleet: &Fleet) -> u64 {
    fleet
        .clients
        .iter()
        .filter_map(|c| c.publisher.as_ref())
        .map(|p| p.sent)
        .sum()
}

/// N publishers fanned out to M subscribers through the SFU.
pub fn direct(
    DirectArgs {
        server: opts,
        fanout: a,
    }: DirectArgs,
) -> Result<serde_json::Value, LoadError> {
    let mut server = opts.spawn()?;
    let mut fleet = Fleet::default();
    let mut tracks = Vec::new();
    eprintln!("server pid {} media {}", server.pid, server.media);
    start_publishers(&mut server, &mut fleet, &mut tracks, a.publishers, &a.spec)?;
    let published = tracks.clone();
    let rss_before = server.rss_kib().0;
    let mut subs = Vec::new();
    for _ in 0..a.subscribers {
        subs.push(add_subscriber(&mut server, &mut fleet, &published, a.twcc)?);
    }
    let want_video = published.iter().any(|t| t.video);
    let joined = drive_until(&mut server, &mut fleet, &mut tracks, a.join_timeout, |f, _| {
        f.clients
            .iter()
            .filter(|c| c.subscriber && subs.contains(&c.participant))
            .all(|c| c.rx.first_media.is_some() && (!want_video || c.rx.first_video.is_some()))
    })?;
    let mut join: Vec<Duration> = Vec::new();
    let mut join_video: Vec<Duration> = Vec::new();
    for c in fleet
        .clients
        .iter()
        .filter(|c| c.subscriber && subs.contains(&c.participant))
    {
        if let Some(t) = c.rx.first_media {
            join.push(t.saturating_duration_since(c.created));
        }
        if let Some(t) = c.rx.first_video {
            join_video.push(t.saturating_duration_since(c.created));
        }
    }
    let joined_count = join.len();
    if !joined {
        eprintln!("warning: only {joined_count} of {} subscribers got media", subs.len());
    }
    drive_until(&mut server, &mut fleet, &mut tracks, a.warmup, |_, _| false)?;
    let c0 = CpuSnap::take(server.pid, SHARD_PREFIX);
    let r0 = rx_totals(&fleet, &subs);
    let s0 = pub_sent(&fleet);
    drive_until(&mut server, &mut fleet, &mut tracks, a.seconds, |_, _| false)?;
    let c1 = CpuSnap::take(server.pid, SHARD_PREFIX);
    let r1 = rx_totals(&fleet, &subs);
    let s1 = pub_sent(&fleet);
    let (rss, hwm) = server.rss_kib();

    let wall = secs(c1.at - c0.at);
    let cpu = secs(c1.server - c0.server);
    let shard_cpu = secs(c1.shards - c0.shards);
    let fwd = r1.packets - r0.packets;
    let expected = r1.expected - r0.expected;
    let distinct = r1.distinct - r0.distinct;
    let lost = expected.saturating_sub(distinct);
    let (j50, j95, jmax) = percentiles(&mut join);
    let (v50, v95, vmax) = percentiles(&mut join_video);
    let malformed: u64 = fleet.clients.iter().map(|c| c.malformed).sum();
    let errors: u64 = fleet.clients.iter().map(|c| c.errors).sum();
    let kreq: u64 = fleet
        .clients
        .iter()
        .filter_map(|c| c.publisher.as_ref())
        .map(|p| p.keyframe_requests)
        .sum();
    let out = serde_json::json!({
        "scenario": "direct",
        "publishers": a.publishers,
        "subscribers": a.subscribers,
        "tracks": published.len(),
        "shards": opts.shards,
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
        "us_per_pkt": if fwd > 0 { cpu * 1e6 / fwd as f64 } else { 0.0 },
        "loss": if expected > 0 { lost as f64 / expected as f64 } else { 0.0 },
        "lost": lost,
        "duplicates": r1.duplicates - r0.duplicates,
        "joined": joined_count,
        "join_ms_p50": ms(j50), "join_ms_p95": ms(j95), "join_ms_max": ms(jmax),
        "join_video_ms_p50": ms(v50), "join_video_ms_p95": ms(v95), "join_video_ms_max": ms(vmax),
        "server_rss_kib": rss,
        "server_hwm_kib": hwm,
        "server_rss_before_subscribers_kib": rss_before,
        "client_cores": secs(c1.me - c0.me) / wall,
        "other_cores": (secs(c1.machine - c0.machine) - cpu - secs(c1.me - c0.me)) / wall,
        "keyframe_requests": kreq,
        "client_malformed": malformed,
        "client_errors": errors,
        "control_malformed": server.malformed,
    });
    for c in &fleet.clients {
        let _ = server.remove(c.participant);
    }
    Ok(out)
}

pub struct ChurnArgs {
    pub server: ServerOpts,
    pub cycles: usize,
    pub concurrency: usize,
    pub sample_every: usize,
    /// What the resident publisher sends (the churning participants
    /// subscribe to it and publish audio themselves).
    pub spec: MediaSpec,
    pub twcc: bool,
}

/// Participants join (publish audio, subscribe to a resident publisher,
/// wait for media) and leave, `concurrency` at a time; the server's RSS is
/// sampled every `sample_every` cycles.
pub fn churn(a: ChurnArgs) -> Result<serde_json::Value, LoadError> {
    let mut server = a.server.spawn()?;
    let mut fleet = Fleet::default();
    fleet.twcc = a.twcc;
    let mut tracks = Vec::new();
    start_publishers(&mut server, &mut fleet, &mut tracks, 1, &a.spec)?;
    let anchor = tracks.clone();
    let audio_only = MediaSpec {
        layers: Vec::new(),
        audio: true,
        ..a.spec.clone()
    };
    let settle = |server: &mut Server, fleet: &mut Fleet, tracks: &mut Vec<TrackRef>| {
        drive_until(server, fleet, tracks, Duration::from_millis(500), |_, _| false)
    };
    settle(&mut server, &mut fleet, &mut tracks)?;
    let mut samples = vec![(0usize, server.rss_kib().0)];
    let mut done = 0usize;
    let mut failed = 0usize;
    let mut join: Vec<Duration> = Vec::new();
    let started = Instant::now();
    while done < a.cycles {
        let k = a.concurrency.clamp(1, a.cycles - done);
        let mut ids = Vec::new();
        for _ in 0..k {
            let id = add_publisher(&mut server, &mut fleet, &audio_only)?;
            for t in &anchor {
                server.subscribe(id, t)?;
            }
            ids.push(id);
        }
        tracks.clear();
        let n_anchor = anchor.len();
        drive_until(&mut server, &mut fleet, &mut tracks, Duration::from_secs(5), |f, _| {
            ids.iter().all(|id| {
                f.clients
                    .iter()
                    .any(|c| c.subscriber && c.participant == *id && c.rx.streams.len() >= n_anchor)
            })
        })?;
        for id in &ids {
            let sub = fleet.subscriber_of(*id).map(|c| {
                (
                    c.rx.first_media,
                    c.rx.streams.len(),
                    c.created,
                    c.rx.first_video.is_some(),
                )
            });
            match sub {
                Some((Some(t), n, created, _)) if n >= n_anchor => join.push(t.saturating_duration_since(created)),
                other => {
                    failed += 1;
                    let publisher_connected = fleet
                        .clients
                        .iter()
                        .any(|c| !c.subscriber && c.participant == *id && c.connected_at.is_some());
                    // (got media, streams, got video)
                    eprintln!(
                        "churn: participant {id} did not get every track: subscriber {:?}, publisher connected {publisher_connected}",
                        other.map(|(f, n, _, c)| (f.is_some(), n, c))
                    );
                }
            }
            // Both connections of the participant leave.
            while let Some(i) = fleet.clients.iter().position(|c| c.participant == *id) {
                drop(fleet.remove(i));
            }
            server.remove(*id)?;
        }
        done += k;
        if done.is_multiple_of(a.sample_every.max(1)) || done == a.cycles {
            settle(&mut server, &mut fleet, &mut tracks)?;
            let rss = server.rss_kib().0;
            eprintln!("churn: {done} cycles, server RSS {rss} KiB, {failed} failed");
            samples.push((done, rss));
        }
    }
    let (j50, j95, jmax) = percentiles(&mut join);
    Ok(serde_json::json!({
        "scenario": "churn",
        "cycles": done,
        "concurrency": a.concurrency,
        "twcc": a.twcc,
        "failed": failed,
        "seconds": started.elapsed().as_secs_f64(),
        "rss_samples_kib": samples,
        "join_ms_p50": ms(j50), "join_ms_p95": ms(j95), "join_ms_max": ms(jmax),
        "server_hwm_kib": server.rss_kib().1,
    }))
}

pub struct MemoryArgs {
    pub server: ServerOpts,
    pub publishers: usize,
    pub participants: usize,
    pub spec: MediaSpec,
    /// Time to let caches and buffers reach their steady size before a
    /// reading (str0m's RTX cache spans up to 3 s).
    pub settle: Duration,
    /// Subscribers negotiate transport-cc (see [`Fanout::twcc`]).
    pub twcc: bool,
}

/// RSS per participant and per subscribed track: `publishers` publish
/// audio + video; `participants` join with a data channel (phase A), each
/// subscribes to one track (B1: the subscriber connection appears), then to
/// every other track (B2).
pub fn memory(a: MemoryArgs) -> Result<serde_json::Value, LoadError> {
    let mut server = a.server.spawn()?;
    let mut fleet = Fleet::default();
    fleet.twcc = a.twcc;
    let mut tracks = Vec::new();
    start_publishers(&mut server, &mut fleet, &mut tracks, a.publishers, &a.spec)?;
    let published = tracks.clone();
    let t = published.len();
    let idle = |s: &mut Server, f: &mut Fleet, tr: &mut Vec<TrackRef>, d| drive_until(s, f, tr, d, |_, _| false);
    idle(&mut server, &mut fleet, &mut tracks, a.settle)?;
    let base = server.rss_kib().0;

    let data_only = MediaSpec {
        layers: Vec::new(),
        audio: false,
        ..a.spec.clone()
    };
    let mut ids = Vec::new();
    for _ in 0..a.participants {
        ids.push(add_publisher(&mut server, &mut fleet, &data_only)?);
    }
    let ok_a = drive_until(&mut server, &mut fleet, &mut tracks, Duration::from_secs(30), |f, _| {
        f.clients.iter().all(|c| c.connected_at.is_some())
    })?;
    idle(&mut server, &mut fleet, &mut tracks, a.settle)?;
    let rss_a = server.rss_kib().0;

    for id in &ids {
        server.subscribe(*id, &published[0])?;
    }
    let got = |f: &Fleet, n: usize| {
        f.clients
            .iter()
            .filter(|c| c.subscriber && ids.contains(&c.participant))
            .filter(|c| c.rx.streams.len() >= n)
            .count()
    };
    drive_until(&mut server, &mut fleet, &mut tracks, Duration::from_secs(30), |f, _| {
        got(f, 1) == ids.len()
    })?;
    let ok_b1 = got(&fleet, 1);
    idle(&mut server, &mut fleet, &mut tracks, a.settle)?;
    let rss_b1 = server.rss_kib().0;

    for id in &ids {
        for tr in &published[1..] {
            server.subscribe(*id, tr)?;
        }
    }
    drive_until(&mut server, &mut fleet, &mut tracks, Duration::from_secs(60), |f, _| {
        got(f, t) == ids.len()
    })?;
    let ok_b2 = got(&fleet, t);
    idle(&mut server, &mut fleet, &mut tracks, a.settle)?;
    let rss_b2 = server.rss_kib().0;
    let n = a.participants.max(1) as f64;
    let extra_tracks = (a.participants * t.saturating_sub(1)).max(1) as f64;
    let out = serde_json::json!({
        "scenario": "memory",
        "twcc": a.twcc,
        "publishers": a.publishers,
        "tracks": t,
        "participants": a.participants,
        "connected_phase_a": ok_a,
        "with_first_track": ok_b1,
        "with_all_tracks": ok_b2,
        "rss_base_kib": base,
        "rss_joined_kib": rss_a,
        "rss_one_track_kib": rss_b1,
        "rss_all_tracks_kib": rss_b2,
        "kib_per_participant_joined": (rss_a as f64 - base as f64) / n,
        "kib_per_participant_with_subscriber_pc_and_1_track": (rss_b1 as f64 - base as f64) / n,
        "kib_per_subscribed_track": (rss_b2 as f64 - rss_b1 as f64) / extra_tracks,
        "server_hwm_kib": server.rss_kib().1,
    });
    Ok(out)
}
