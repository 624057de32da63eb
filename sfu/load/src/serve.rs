//! `sfu-load serve`: an `sfu::Sfu` in its own process, driven over
//! stdin/stdout (see [`crate::proto`]). It exits when stdin closes (the load
//! generator ended or died) or after `max_seconds`, whichever comes first.
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::Duration;

use sfu::participant::Role;
use sfu::{ParticipantId, Sfu, SfuConfig, SfuEvent, TrackId};
use str0m::media::{MediaKind, Mid};

use crate::proto::{Request, RequestLine, ServerMsg};
use crate::LoadError;

pub struct ServeArgs {
    pub listen: SocketAddr,
    pub shards: usize,
    pub initial_estimate_bps: u64,
    pub max_seconds: u64,
}

fn emit(msg: &ServerMsg) {
    // One write per line under the stdout lock, so replies (main thread) and
    // events (event thread) never interleave within a line.
    if let Ok(line) = serde_json::to_string(msg) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn event_msg(ev: SfuEvent) -> Option<ServerMsg> {
    Some(match ev {
        SfuEvent::TrackPublished { track, kind, rids, .. } => ServerMsg::TrackPublished {
            publisher: track.publisher.0,
            mid: track.mid.to_string(),
            video: kind == MediaKind::Video,
            rids: rids.iter().map(|r| r.to_string()).collect(),
        },
        SfuEvent::Offer { participant, sdp } => ServerMsg::Offer {
            participant: participant.0,
            sdp,
        },
        SfuEvent::Connected { participant, role } => ServerMsg::Connected {
            participant: participant.0,
            subscriber: role == Role::Subscriber,
        },
        SfuEvent::Disconnected { participant, .. } => ServerMsg::Disconnected {
            participant: participant.0,
        },
        // Speakers, estimates, data, media-started: not needed by the load
        // generator, and not worth the pipe traffic.
        _ => return None,
    })
}

pub fn serve(args: ServeArgs) -> Result<(), LoadError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (sfu, mut events) = Sfu::start(SfuConfig {
        listen: args.listen,
        advertise_ip: None,
        shards: args.shards,
        initial_estimate_bps: args.initial_estimate_bps,
        // Fields added later (e.g. ICE-TCP) keep their defaults.
        ..SfuConfig::default()
    })
    .map_err(|e| LoadError::Server(e.to_string()))?;
    let max = Duration::from_secs(args.max_seconds);
    std::thread::Builder::new().name("watchdog".into()).spawn(move || {
        std::thread::sleep(max);
        eprintln!("sfu-load serve: max-seconds reached, exiting");
        std::process::exit(0);
    })?;
    emit(&ServerMsg::Ready {
        media: sfu.local_addr().to_string(),
    });
    let ev_thread = std::thread::Builder::new().name("events".into()).spawn(move || {
        // Ends when the SFU's shards are gone (every sender dropped).
        let debug = std::env::var_os("SFU_LOAD_DEBUG").is_some();
        while let Some(ev) = events.blocking_recv() {
            if debug {
                eprintln!("serve: {ev:?}");
            }
            if let Some(m) = event_msg(ev) {
                emit(&m);
            }
        }
    })?;
    let stdin = std::io::stdin();
    let mut malformed = 0u64;
    for line in stdin.lock().lines() {
        let line = line?;
        let Ok(RequestLine { id, req }) = serde_json::from_str::<RequestLine>(&line) else {
            malformed += 1;
            emit(&ServerMsg::Reply {
                id: 0,
                ok: None,
                err: Some(format!("malformed request line ({malformed} so far)")),
            });
            continue;
        };
        let result: Result<String, sfu::Error> = match req {
            Request::Create { room } => rt
                .block_on(sfu.create_participant(&room))
                .map(|info| info.id.0.to_string()),
            Request::Offer { participant, sdp } => rt.block_on(sfu.offer(ParticipantId(participant), sdp)),
            Request::Answer { participant, sdp } => rt
                .block_on(sfu.answer(ParticipantId(participant), sdp))
                .map(|()| String::new()),
            Request::Subscribe {
                participant,
                publisher,
                mid,
            } => {
                let track = TrackId {
                    publisher: ParticipantId(publisher),
                    mid: Mid::from(mid.as_str()),
                };
                rt.block_on(sfu.subscribe(ParticipantId(participant), track))
                    .map(|()| String::new())
            }
            Request::Remove { participant } => {
                sfu.remove_participant(ParticipantId(participant));
                Ok(String::new())
            }
        };
        let (ok, err) = match result {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e.to_string())),
        };
        emit(&ServerMsg::Reply { id, ok, err });
    }
    // What the data plane dropped (send queues full, socket buffers full).
    eprintln!("sfu-load serve: {:?}", sfu.stats());
    sfu.shutdown();
    let _ = ev_thread.join();
    Ok(())
}
