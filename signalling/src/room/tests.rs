//! Room service logic driven with explicit times and a recording notifier.
use std::sync::{Arc, Mutex};

use super::*;
use crate::media::{MediaEvent, NoMedia};
use crate::model::{ParticipantState, Quality, TrackKind};
use crate::store::MemoryStore;
use crate::ws::protocol::{PublishTrack, ServerMessage};

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Notifier for Recorder {
    fn notify(&self, event: RoomEvent) {
        let name = match event {
            RoomEvent::RoomStarted { room } => format!("room_started {}", room.name),
            RoomEvent::RoomFinished { room } => format!("room_finished {}", room.name),
            RoomEvent::ParticipantJoined { participant, .. } => format!("participant_joined {}", participant.identity),
            RoomEvent::ParticipantLeft { participant, .. } => format!("participant_left {}", participant.identity),
            RoomEvent::TrackPublished { track, .. } => format!("track_published {}", track.cid),
            RoomEvent::TrackUnpublished { track, .. } => format!("track_unpublished {}", track.cid),
        };
        self.0.lock().unwrap().push(name);
    }
}

fn service(rec: Arc<Recorder>) -> RoomService {
    let settings = RoomSettings {
        default_empty_timeout_s: 60,
        ..Default::default()
    };
    RoomService::new(
        Arc::new(MemoryStore::new()),
        Arc::new(NoMedia),
        rec,
        settings,
        TurnConfig::default(),
        Arc::new(crate::metrics::Metrics::default()),
    )
}

fn joiner(identity: &str) -> Caller {
    Caller {
        identity: identity.into(),
        grants: Grants {
            room: Some("r".into()),
            room_join: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn mic() -> PublishTrack {
    PublishTrack {
        cid: "mic".into(),
        name: String::new(),
        kind: TrackKind::Audio,
        source: crate::model::TrackSource::Microphone,
        muted: false,
        layers: vec![],
    }
}

#[tokio::test]
async fn webhook_events_and_empty_timeout_follow_the_clock() {
    let rec = Arc::new(Recorder::default());
    let rooms = service(rec.clone());
    let t0 = 1_000_000;
    let j = rooms.join(&joiner("a"), true, None, t0).await.unwrap();
    rooms.publish(&j.handle, mic(), t0).await.unwrap();
    rooms.leave(&j.handle, t0 + 1000).await.unwrap();
    // Empty since t0 + 1 s; the room lives for its 60 s timeout.
    rooms.tick(t0 + 60_000).await.unwrap();
    assert_eq!(rooms.inner.store.list_rooms().await.unwrap().len(), 1);
    rooms.tick(t0 + 61_000).await.unwrap();
    assert!(rooms.inner.store.list_rooms().await.unwrap().is_empty());
    assert_eq!(
        *rec.0.lock().unwrap(),
        [
            "room_started r",
            "participant_joined a",
            "track_published mic",
            "track_unpublished mic",
            "participant_left a",
            "room_finished r"
        ]
    );
}

#[tokio::test]
async fn resume_window_is_measured_from_the_drop() {
    let rooms = service(Arc::new(Recorder::default()));
    let t0 = 5_000_000;
    let j = rooms.join(&joiner("a"), true, None, t0).await.unwrap();
    let ServerMessage::Joined { session_token, .. } = j.message else {
        panic!()
    };
    rooms.disconnected(&j.handle, t0 + 1000).await;
    rooms.tick(t0 + 16_000).await.unwrap();
    let again = rooms
        .join(&joiner("a"), true, Some(&session_token), t0 + 16_000)
        .await
        .unwrap();
    assert_eq!(again.handle.sid, j.handle.sid);
    // The old handle is stale now.
    assert_eq!(rooms.subscribe(&j.handle, "TR_x").await, Err(RoomError::SessionEnded));
    rooms.disconnected(&again.handle, t0 + 20_000).await;
    rooms.tick(t0 + 35_001).await.unwrap();
    assert!(matches!(
        rooms.join(&joiner("a"), true, Some(&session_token), t0 + 35_001).await,
        Err(RoomError::ResumeFailed(_))
    ));
    assert!(rooms.inner.store.get_participant("r", "a").await.unwrap().is_none());
}

#[tokio::test]
async fn media_events_reach_sessions() {
    let rooms = service(Arc::new(Recorder::default()));
    let mut j = rooms.join(&joiner("a"), true, None, 1).await.unwrap();
    let me = j.handle.media_ref();
    rooms
        .handle_media_event(MediaEvent::Connected {
            participant: me.clone(),
        })
        .await;
    let p = rooms.inner.store.get_participant("r", "a").await.unwrap().unwrap();
    assert_eq!(p.state, ParticipantState::Active);
    rooms
        .handle_media_event(MediaEvent::Offer {
            participant: me.clone(),
            sdp: "o".into(),
        })
        .await;
    rooms
        .handle_media_event(MediaEvent::Speakers {
            room: "r".into(),
            speakers: vec![crate::media::SpeakerInfo {
                participant_sid: me.sid.clone(),
                level: 0.5,
            }],
        })
        .await;
    rooms
        .handle_media_event(MediaEvent::Estimate {
            participant: me.clone(),
            bitrate: 1_250_000,
        })
        .await;
    let mut kinds = vec![];
    let mut last = serde_json::Value::Null;
    while let Ok(m) = j.events.try_recv() {
        last = serde_json::to_value(&m).unwrap();
        kinds.push(last["type"].as_str().unwrap().to_string());
    }
    assert_eq!(
        kinds,
        ["participant_updated", "offer", "speakers", "bandwidth_estimate"]
    );
    assert_eq!(
        last,
        serde_json::json!({"type": "bandwidth_estimate", "bitrate": 1_250_000})
    );
}

#[tokio::test]
async fn layers_wanted_reaches_the_publisher_and_is_replayed_on_resume() {
    let rooms = service(Arc::new(Recorder::default()));
    let mut a = rooms.join(&joiner("a"), true, None, 1).await.unwrap();
    let mut b = rooms.join(&joiner("b"), true, None, 1).await.unwrap();
    let cam = rooms.publish(&a.handle, mic(), 1).await.unwrap().sid;
    let wanted = |qualities: Vec<Quality>| MediaEvent::LayersWanted {
        participant: a.handle.media_ref(),
        track_sid: cam.clone(),
        qualities,
    };
    rooms.handle_media_event(wanted(vec![Quality::Low])).await;
    let mut got = vec![];
    while let Ok(m) = a.events.try_recv() {
        got.push(serde_json::to_value(&m).unwrap());
    }
    let got: Vec<_> = got.into_iter().filter(|m| m["type"] == "layers_wanted").collect();
    assert_eq!(
        got,
        [serde_json::json!({"type": "layers_wanted", "track_sid": cam, "qualities": ["low"]})]
    );
    // Only the publisher hears of it.
    while let Ok(m) = b.events.try_recv() {
        assert!(!matches!(m, ServerMessage::LayersWanted { .. }), "{m:?}");
    }

    // Sent while the socket is down: lost there, so replayed after `joined`.
    let ServerMessage::Joined { session_token, .. } = a.message else {
        panic!()
    };
    rooms.disconnected(&a.handle, 2).await;
    rooms
        .handle_media_event(wanted(vec![Quality::Low, Quality::High]))
        .await;
    let mut again = rooms.join(&joiner("a"), true, Some(&session_token), 3).await.unwrap();
    let mut replayed = vec![];
    while let Ok(m) = again.events.try_recv() {
        if let ServerMessage::LayersWanted { track_sid, qualities } = m {
            replayed.push((track_sid, qualities));
        }
    }
    assert_eq!(replayed, [(cam.clone(), vec![Quality::Low, Quality::High])]);

    // An unpublished track's state goes with it.
    rooms.unpublish(&again.handle, &cam, 4).await.unwrap();
    rooms.disconnected(&again.handle, 5).await;
    let mut third = rooms.join(&joiner("a"), true, Some(&session_token), 6).await.unwrap();
    while let Ok(m) = third.events.try_recv() {
        assert!(!matches!(m, ServerMessage::LayersWanted { .. }), "{m:?}");
    }
}
