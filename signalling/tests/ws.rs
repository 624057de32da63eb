//! WebSocket signalling flows with a real client.
mod common;

use common::*;
use serde_json::json;
use signalling::auth::Grants;
use signalling::model::TrackSource;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn join_announces_and_carries_ice_servers() {
    let s = start().await;
    let (mut alice, joined) = s.join("r", "alice").await;
    assert_eq!(joined["room"]["name"], "r");
    assert_eq!(joined["participant"]["identity"], "alice");
    assert_eq!(joined["participants"], json!([]));
    assert_eq!(joined["resumed"], false);
    assert_eq!(joined["resume_window_s"], 15);
    assert!(!joined["session_token"].as_str().unwrap().is_empty());
    let turn = &joined["ice_servers"][1];
    let username = turn["username"].as_str().unwrap();
    assert!(username.ends_with(":alice"));
    assert_eq!(
        turn["credential"].as_str().unwrap(),
        relay::turn::auth::rest_password(b"turn-secret", username)
    );

    let cam = alice.publish("cam", "video", "camera").await;
    let (mut bob, joined_b) = s.join("r", "bob").await;
    let others = joined_b["participants"].as_array().unwrap();
    assert_eq!(others.len(), 1);
    assert_eq!(others[0]["tracks"][0]["sid"], cam["track"]["sid"]);
    // Auto-subscription (the default) to what was already published.
    assert_eq!(joined_b["subscriptions"], json!([cam["track"]["sid"]]));
    let j = alice.expect("participant_joined").await;
    assert_eq!(j["participant"]["identity"], "bob");

    bob.send(json!({"v": 1, "type": "leave"})).await;
    let left = alice.expect("participant_left").await;
    assert_eq!(left["identity"], "bob");
    let seen = bob.closed().await;
    assert!(
        seen.iter()
            .any(|m| m["type"] == "leave" && m["reason"] == "client_left"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn publish_subscribe_settings_mute_unpublish() {
    let s = start().await;
    let (mut alice, _) = s.join("r", "alice").await;
    let (mut bob, _) = s
        .join_with(&participant("r", "bob"), json!({"auto_subscribe": false}))
        .await;
    let (mut carol, _) = s.join("r", "carol").await;

    let mic = alice.publish("mic", "audio", "microphone").await;
    let mic_sid = mic["track"]["sid"].as_str().unwrap().to_string();
    // Others hear of it; carol (auto) is subscribed, bob (manual) is not.
    let seen = bob.expect("track_published").await;
    assert_eq!(
        (&seen["participant_sid"], &seen["track"]["kind"]),
        (&mic["participant_sid"], &json!("audio"))
    );
    carol.expect("track_published").await;
    let sub = carol.expect("subscribed").await;
    assert_eq!(sub["track_sid"], mic_sid.as_str());
    assert!(bob.sync().await.iter().all(|m| m["type"] != "subscribed"));

    bob.send(json!({"v": 1, "id": 1, "type": "subscribe", "track_sid": mic_sid}))
        .await;
    bob.expect("subscribed").await;
    bob.send(
        json!({"v": 1, "id": 2, "type": "track_settings", "track_sid": mic_sid, "quality": "low", "max_width": 320}),
    )
    .await;
    bob.send(json!({"v": 1, "id": 3, "type": "track_settings", "track_sid": "TR_nope", "paused": true}))
        .await;
    let e = bob.expect("error").await;
    assert_eq!((&e["id"], &e["code"]), (&json!(3), &json!("track_not_found")));
    bob.send(json!({"v": 1, "id": 4, "type": "subscribe", "track_sid": "TR_nope"}))
        .await;
    assert_eq!(bob.expect("error").await["code"], "track_not_found");

    alice
        .send(json!({"v": 1, "type": "mute", "track_sid": mic_sid, "muted": true}))
        .await;
    for c in [&mut alice, &mut bob, &mut carol] {
        let m = c.expect("track_muted").await;
        assert_eq!((&m["track_sid"], &m["muted"]), (&json!(mic_sid), &json!(true)));
    }
    // A participant cannot mute someone else's track.
    bob.send(json!({"v": 1, "id": 5, "type": "mute", "track_sid": mic_sid, "muted": false}))
        .await;
    assert_eq!(bob.expect("error").await["code"], "track_not_found");

    bob.send(json!({"v": 1, "type": "unsubscribe", "track_sid": mic_sid}))
        .await;
    assert_eq!(bob.expect("unsubscribed").await["reason"], "requested");

    alice
        .send(json!({"v": 1, "type": "unpublish", "track_sid": mic_sid}))
        .await;
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.expect("track_unpublished").await["track_sid"], mic_sid.as_str());
    }
    let (_, p) = s
        .call("GET", "/v1/rooms/r/participants/alice", Some(&admin()), None)
        .await;
    assert_eq!(p["tracks"], json!([]));
}

#[tokio::test]
async fn join_with_offer_reaches_the_media_plane() {
    let s = start().await;
    let publish = json!([{"cid": "cam", "kind": "video", "source": "camera"}]);
    let mut c = s.connect(&participant("r", "alice")).await;
    c.send(json!({"v": 1, "id": 9, "type": "join", "publish": publish, "offer": "v=0\r\n"}))
        .await;
    assert_eq!(c.expect("joined").await["id"], 9);
    assert_eq!(c.expect("track_published").await["track"]["cid"], "cam");
    // Without an SFU the offer is refused, by name, and the session goes on.
    let e = c.expect("error").await;
    assert_eq!(
        (&e["id"], &e["code"], &e["message"]),
        (
            &json!(9),
            &json!("media_unavailable"),
            &json!("media plane not available")
        )
    );
    c.send(json!({"v": 1, "id": 10, "type": "offer", "sdp": "v=0\r\n"}))
        .await;
    assert_eq!(c.expect("error").await["code"], "media_unavailable");
    c.send(json!({"v": 1, "type": "trickle", "target": "publisher", "candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"}})).await;
    assert_eq!(c.expect("error").await["code"], "media_unavailable");
    assert!(c.sync().await.is_empty());
}

#[tokio::test]
async fn permissions_are_enforced_and_changes_apply_live() {
    let s = start().await;
    let a = admin();
    let mics_only = token(
        "alice",
        Grants {
            room: Some("r".into()),
            room_join: true,
            can_publish_sources: vec![TrackSource::Microphone],
            ..Default::default()
        },
    );
    let (mut alice, _) = s.join_with(&mics_only, json!({})).await;
    let (mut bob, _) = s.join("r", "bob").await;
    alice
        .send(json!({"v": 1, "id": 1, "type": "publish", "cid": "cam", "kind": "video", "source": "camera"}))
        .await;
    let e = alice.expect("error").await;
    assert_eq!((&e["id"], &e["code"]), (&json!(1), &json!("permission_denied")));
    assert!(e["message"].as_str().unwrap().contains("Camera"), "{e}");
    let mic = alice.publish("mic", "audio", "microphone").await;
    let mic_sid = mic["track"]["sid"].as_str().unwrap().to_string();
    bob.expect("subscribed").await;

    // Revoking can_subscribe ends bob's subscriptions at once.
    let perms = |publish: bool, subscribe: bool, data: bool| {
        json!({"permissions": {"can_publish": publish, "can_subscribe": subscribe, "can_publish_data": data}})
            .to_string()
    };
    let (st, _) = s
        .call(
            "PATCH",
            "/v1/rooms/r/participants/bob",
            Some(&a),
            Some(&perms(true, false, true)),
        )
        .await;
    assert_eq!(st, 200);
    let u = bob.expect("unsubscribed").await;
    assert_eq!(
        (&u["track_sid"], &u["reason"]),
        (&json!(mic_sid), &json!("permission_revoked"))
    );
    assert_eq!(
        bob.expect("permissions_changed").await["permissions"]["can_subscribe"],
        false
    );
    bob.send(json!({"v": 1, "id": 2, "type": "subscribe", "track_sid": mic_sid}))
        .await;
    assert_eq!(bob.expect("error").await["code"], "permission_denied");

    // Revoking can_publish unpublishes alice's tracks.
    s.call(
        "PATCH",
        "/v1/rooms/r/participants/alice",
        Some(&a),
        Some(&perms(false, true, false)),
    )
    .await;
    assert_eq!(alice.expect("track_unpublished").await["track_sid"], mic_sid.as_str());
    assert_eq!(
        alice.expect("permissions_changed").await["permissions"]["can_publish"],
        false
    );
    assert_eq!(bob.expect("track_unpublished").await["track_sid"], mic_sid.as_str());
    alice
        .send(json!({"v": 1, "id": 3, "type": "publish", "cid": "mic2", "kind": "audio", "source": "microphone"}))
        .await;
    assert_eq!(alice.expect("error").await["code"], "permission_denied");
    alice
        .send(json!({"v": 1, "id": 4, "type": "data", "payload": "hi"}))
        .await;
    assert_eq!(alice.expect("error").await["code"], "permission_denied");

    // Data from someone allowed reaches the others.
    bob.send(json!({"v": 1, "type": "data", "payload": "hello", "topic": "chat"}))
        .await;
    let d = alice.expect("data").await;
    assert_eq!(
        (&d["from_identity"], &d["payload"], &d["topic"]),
        (&json!("bob"), &json!("hello"), &json!("chat"))
    );

    // Granting can_subscribe back re-subscribes an auto-subscribing session.
    let cam_bob = bob.publish("cam", "video", "camera").await;
    s.call(
        "PATCH",
        "/v1/rooms/r/participants/bob",
        Some(&a),
        Some(&perms(true, true, true)),
    )
    .await;
    let _ = cam_bob;
    assert_eq!(
        bob.expect("permissions_changed").await["permissions"]["can_subscribe"],
        true
    );
}

#[tokio::test]
async fn hidden_participants_are_not_announced() {
    let s = start().await;
    let (mut alice, _) = s.join("r", "alice").await;
    let hidden = token(
        "rec",
        Grants {
            room: Some("r".into()),
            room_join: true,
            hidden: true,
            ..Default::default()
        },
    );
    let (mut rec, _) = s.join_with(&hidden, json!({})).await;
    let (_bob, joined) = s.join("r", "bob").await;
    let names: Vec<_> = joined["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].clone())
        .collect();
    assert_eq!(names, [json!("alice")]);
    let seen = alice.sync().await;
    assert!(seen.iter().all(|m| m["participant"]["identity"] != "rec"), "{seen:?}");
    assert!(seen.iter().any(|m| m["participant"]["identity"] == "bob"), "{seen:?}");
    // The hidden participant itself sees everyone.
    let seen = rec.sync().await;
    assert!(seen
        .iter()
        .any(|m| m["type"] == "participant_joined" && m["participant"]["identity"] == "bob"));
    // Admins still list it.
    let (_, list) = s.call("GET", "/v1/rooms/r/participants", Some(&admin()), None).await;
    assert_eq!(list["participants"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn kick_and_duplicate_identity() {
    let s = start().await;
    let (mut alice, _) = s.join("r", "alice").await;
    let (mut bob, _) = s.join("r", "bob").await;
    alice.expect("participant_joined").await;
    assert_eq!(
        s.call("DELETE", "/v1/rooms/r/participants/bob", Some(&admin()), None)
            .await
            .0,
        204
    );
    let seen = bob.closed().await;
    assert!(
        seen.iter().any(|m| m["type"] == "leave" && m["reason"] == "removed"),
        "{seen:?}"
    );
    assert_eq!(alice.expect("participant_left").await["identity"], "bob");
    assert_eq!(
        s.call("GET", "/v1/rooms/r/participants/bob", Some(&admin()), None)
            .await
            .0,
        404
    );

    // Joining again with the same identity replaces the old session.
    let (_alice2, _) = s.join("r", "alice").await;
    let seen = alice.closed().await;
    assert!(
        seen.iter()
            .any(|m| m["type"] == "leave" && m["reason"] == "duplicate_identity"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn resume_after_a_dropped_socket_keeps_subscriptions() {
    let s = start().await;
    let (mut alice, _) = s.join("r", "alice").await;
    let cam = alice.publish("cam", "video", "camera").await;
    let cam_sid = cam["track"]["sid"].clone();
    let (bob, joined) = s.join("r", "bob").await;
    let token = joined["session_token"].as_str().unwrap().to_string();
    let bob_sid = joined["participant"]["sid"].clone();
    assert_eq!(joined["subscriptions"], json!([cam_sid]));

    // Drop the TCP connection without a close handshake.
    drop(bob);
    let a = admin();
    let mut state = json!(null);
    for _ in 0..200 {
        let (_, p) = s.call("GET", "/v1/rooms/r/participants/bob", Some(&a), None).await;
        state = p["state"].clone();
        if state == "disconnected" {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(state, "disconnected");

    let bob_token = participant("r", "bob");
    let (mut bob, resumed) = s.join_with(&bob_token, json!({"resume": token})).await;
    assert_eq!(resumed["resumed"], true);
    assert_eq!(resumed["participant"]["sid"], bob_sid);
    assert_eq!(resumed["subscriptions"], json!([cam_sid]));
    // Nobody saw bob leave.
    assert!(alice.sync().await.iter().all(|m| m["type"] != "participant_left"));
    // The session works as before.
    bob.send(json!({"v": 1, "type": "track_settings", "track_sid": cam_sid, "max_width": 320, "max_height": 180}))
        .await;
    assert!(bob.sync().await.is_empty());

    // A wrong token does not resume.
    let mut c = s.connect(&bob_token).await;
    c.send(json!({"v": 1, "type": "join", "resume": "nope"})).await;
    assert_eq!(c.expect("error").await["code"], "resume_failed");

    // Past the window the session ends for good (time is passed in, not waited for).
    drop(bob);
    for _ in 0..200 {
        let (_, p) = s.call("GET", "/v1/rooms/r/participants/bob", Some(&a), None).await;
        if p["state"] == "disconnected" {
            break;
        }
        tokio::task::yield_now().await;
    }
    s.state.rooms.tick(signalling::model::now_ms() + 16_000).await.unwrap();
    assert_eq!(alice.expect("participant_left").await["identity"], "bob");
    assert_eq!(
        s.call("GET", "/v1/rooms/r/participants/bob", Some(&a), None).await.0,
        404
    );
    let mut c = s.connect(&bob_token).await;
    c.send(json!({"v": 1, "type": "join", "resume": token})).await;
    assert_eq!(c.expect("error").await["code"], "resume_failed");
    // The same connection may then join afresh.
    c.send(json!({"v": 1, "type": "join"})).await;
    let fresh = c.expect("joined").await;
    assert_eq!(fresh["resumed"], false);
}

#[tokio::test]
async fn malformed_messages_get_named_errors_and_hurt_nobody() {
    let s = start().await;
    let (mut alice, _) = s.join("r", "alice").await;
    let mut bob = s.connect(&participant("r", "bob")).await;
    // Before join, only join is understood.
    bob.send(json!({"v": 1, "type": "subscribe", "track_sid": "x"})).await;
    let e = bob.expect("error").await;
    assert_eq!(e["code"], "not_joined");
    assert!(e["message"].as_str().unwrap().contains("subscribe"), "{e}");
    bob.send(json!({"v": 1, "type": "join"})).await;
    bob.expect("joined").await;

    let cases = [
        ("not json", "not JSON"),
        (r#"{"type":"ping"}"#, "\"v\""),
        (r#"{"v":7,"type":"ping"}"#, "version 7"),
        (r#"{"v":1}"#, "\"type\""),
        (r#"{"v":1,"type":"teleport"}"#, "teleport"),
        (r#"{"v":1,"id":5,"type":"mute","track_sid":"x"}"#, "muted"),
        (r#"{"v":1,"type":"publish","cid":"c","kind":"hologram"}"#, "hologram"),
    ];
    for (text, needle) in cases {
        bob.send_raw(Message::text(text)).await;
        let e = bob.expect("error").await;
        assert_eq!(e["code"], "malformed_message", "{text}");
        assert!(e["message"].as_str().unwrap().contains(needle), "{text}: {e}");
    }
    bob.send(json!({"v": 1, "type": "join"})).await;
    assert_eq!(bob.expect("error").await["code"], "already_joined");
    bob.send_raw(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(bob.expect("error").await["code"], "unsupported_frame");
    let big = json!({"v": 1, "type": "data", "payload": "x".repeat(70 * 1024)});
    bob.send(big).await;
    let e = bob.expect("error").await;
    assert_eq!(e["code"], "message_too_large");
    // Both sessions are still fine.
    bob.send(json!({"v": 1, "type": "data", "payload": "still here"})).await;
    assert_eq!(alice.expect("data").await["payload"], "still here");
    assert!(bob.sync().await.is_empty());
}

#[tokio::test]
async fn message_rate_is_limited_per_connection() {
    let mut settings = settings();
    settings.session.burst = 5.0;
    settings.session.messages_per_s = 0.001;
    let s = start_with(settings).await;
    let (mut alice, _) = s.join("r", "alice").await;
    let (mut bob, _) = s.join("r", "bob").await;
    // join used one token; four pings fit, the rest are dropped with one error.
    for i in 0..10 {
        bob.send(json!({"v": 1, "id": i, "type": "ping"})).await;
    }
    let mut pongs = 0;
    loop {
        let m = bob.next().await.unwrap();
        if m["type"] == "pong" {
            pongs += 1;
        } else if m["type"] == "error" {
            assert_eq!(m["code"], "rate_limited");
            break;
        }
    }
    assert_eq!(pongs, 4);
    // Alice has her own budget.
    assert_eq!(alice.sync().await.len(), 1); // bob's participant_joined
}

#[tokio::test]
async fn a_slow_client_is_disconnected_without_slowing_others() {
    let mut settings = settings();
    settings.session.burst = 10_000.0;
    settings.session.messages_per_s = 10_000.0;
    settings.rooms.outbound_queue = 8;
    settings.api.burst = 1e9;
    let s = start_with(settings).await;
    let (_slow, _) = s.join("r", "slow").await; // never reads
    let (mut fast, _) = s.join("r", "fast").await;
    let payload = "x".repeat(60 * 1024);
    let a = admin();
    let mut state = json!(null);
    // Flood until the server gives up on the reader (kernel buffers absorb the first few MB).
    for _ in 0..2000 {
        fast.send(json!({"v": 1, "type": "data", "payload": payload})).await;
        let (_, p) = s.call("GET", "/v1/rooms/r/participants/slow", Some(&a), None).await;
        state = p["state"].clone();
        if state == "disconnected" {
            break;
        }
    }
    assert_eq!(state, "disconnected");
    assert!(fast.sync().await.is_empty());
}

#[tokio::test]
async fn layers_wanted_reaches_the_publishers_socket() {
    use signalling::media::{MediaEvent, ParticipantRef};
    use signalling::model::Quality;
    let s = start().await;
    let (mut alice, joined) = s.join("r", "alice").await;
    let (mut bob, _) = s.join("r", "bob").await;
    let cam = alice.publish("cam", "video", "camera").await;
    let cam_sid = cam["track"]["sid"].as_str().unwrap().to_string();
    let alice_ref = ParticipantRef {
        room: "r".into(),
        sid: joined["participant"]["sid"].as_str().unwrap().into(),
    };
    // What the media plane reports when only bob's low layer is watched.
    s.state
        .rooms
        .handle_media_event(MediaEvent::LayersWanted {
            participant: alice_ref.clone(),
            track_sid: cam_sid.clone(),
            qualities: vec![Quality::Low, Quality::High],
        })
        .await;
    let m = alice.expect("layers_wanted").await;
    assert_eq!(m["track_sid"], cam_sid.as_str());
    assert_eq!(m["qualities"], json!(["low", "high"]));
    // Nobody watches: every layer may stop.
    s.state
        .rooms
        .handle_media_event(MediaEvent::LayersWanted {
            participant: alice_ref,
            track_sid: cam_sid.clone(),
            qualities: vec![],
        })
        .await;
    assert_eq!(alice.expect("layers_wanted").await["qualities"], json!([]));
    // Only the publisher is told.
    assert!(bob.sync().await.iter().all(|m| m["type"] != "layers_wanted"));
}
