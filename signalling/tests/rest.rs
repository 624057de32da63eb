//! Every REST endpoint, each error status and each grant.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use signalling::auth::{mint, Grants, TokenRequest};

#[tokio::test]
async fn health_openapi_metrics() {
    let s = start().await;
    assert_eq!(
        s.call("GET", "/v1/healthz", None, None).await,
        (200, json!({"status": "ok"}))
    );
    let (st, doc) = s.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/rooms",
        "/v1/rooms/{room}/participants/{identity}",
        "/v1/turn/credentials",
        "/v1/rtc",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    s.call("POST", "/v1/rooms", Some(&admin()), Some(r#"{"name":"m"}"#))
        .await;
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.lines().any(|l| l == "rtc_rooms 1"), "{text}");
    assert!(text.contains("rtc_http_requests_total"), "{text}");
    let (st, body) = s.call("GET", "/v1/nope", None, None).await;
    assert_eq!((st, body["error"]["code"].clone()), (404, json!("not_found")));
}

#[tokio::test]
async fn create_get_list_delete_rooms() {
    let s = start().await;
    let a = admin();
    let body = r#"{"name":"alpha","max_participants":5,"empty_timeout_s":30,"metadata":"m"}"#;
    let (st, room) = s.call("POST", "/v1/rooms", Some(&a), Some(body)).await;
    assert_eq!(st, 200, "{room}");
    assert_eq!(room["name"], "alpha");
    assert_eq!(room["max_participants"], 5);
    assert_eq!(room["metadata"], "m");
    assert!(room["sid"].as_str().unwrap().starts_with("RM_"));
    // An existing name returns the existing room.
    let (st, again) = s.call("POST", "/v1/rooms", Some(&a), Some(r#"{"name":"alpha"}"#)).await;
    assert_eq!((st, &again["sid"]), (200, &room["sid"]));

    let (st, list) = s.call("GET", "/v1/rooms", Some(&a), None).await;
    assert_eq!(st, 200);
    assert_eq!(list["rooms"].as_array().unwrap().len(), 1);
    let (st, got) = s.call("GET", "/v1/rooms/alpha", Some(&a), None).await;
    assert_eq!((st, &got["sid"]), (200, &room["sid"]));
    assert_eq!(s.call("GET", "/v1/rooms/beta", Some(&a), None).await.0, 404);

    // Deleting disconnects everyone.
    let (mut c, _) = s.join("alpha", "alice").await;
    assert_eq!(s.call("DELETE", "/v1/rooms/alpha", Some(&a), None).await.0, 204);
    let seen = c.closed().await;
    assert!(
        seen.iter()
            .any(|m| m["type"] == "leave" && m["reason"] == "room_deleted"),
        "{seen:?}"
    );
    assert_eq!(s.call("GET", "/v1/rooms/alpha", Some(&a), None).await.0, 404);
    assert_eq!(s.call("DELETE", "/v1/rooms/alpha", Some(&a), None).await.0, 404);
}

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"))
}

#[tokio::test]
async fn malformed_bodies_are_400_and_large_ones_413() {
    let s = start().await;
    let a = admin();
    for bad in [
        "{",
        "[]",
        r#"{"name":1}"#,
        r#"{"nam":"x"}"#,
        r#"{"name":""}"#,
        r#"{"name":"a/b"}"#,
    ] {
        let (st, body) = s.call("POST", "/v1/rooms", Some(&a), Some(bad)).await;
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let huge = format!(r#"{{"name":"x","metadata":"{}"}}"#, "a".repeat(100 * 1024));
    let (st, body) = s.call("POST", "/v1/rooms", Some(&a), Some(&huge)).await;
    assert_eq!((st, code(&body)), (413, "payload_too_large"));
    s.call("POST", "/v1/rooms", Some(&a), Some(r#"{"name":"r"}"#)).await;
    let (_c, _) = s.join("r", "p").await;
    let (st, _) = s
        .call(
            "PATCH",
            "/v1/rooms/r/participants/p",
            Some(&a),
            Some(r#"{"permissions":{}}"#),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .call(
            "POST",
            "/v1/rooms/r/participants/p/tracks/TR_x/mute",
            Some(&a),
            Some(r#"{"muted":"yes"}"#),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .call("POST", "/v1/turn/credentials", Some(&a), Some(r#"{"ttl":0}"#))
        .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn tokens_missing_expired_or_badly_signed_are_401() {
    let s = start().await;
    let grants = Grants {
        room_list: true,
        ..Default::default()
    };
    let expired = mint(
        KEY,
        SECRET,
        &TokenRequest {
            ttl: Duration::from_secs(60),
            grants: grants.clone(),
            ..Default::default()
        },
        now_s() - 3600,
    )
    .unwrap();
    let wrong_secret = mint(
        KEY,
        "another-secret",
        &TokenRequest {
            ttl: Duration::from_secs(60),
            grants: grants.clone(),
            ..Default::default()
        },
        now_s(),
    )
    .unwrap();
    let unknown_key = mint(
        "other",
        SECRET,
        &TokenRequest {
            ttl: Duration::from_secs(60),
            grants,
            ..Default::default()
        },
        now_s(),
    )
    .unwrap();
    for (token, why) in [
        (None, "missing"),
        (Some(expired.as_str()), "expired"),
        (Some(wrong_secret.as_str()), "signature"),
        (Some(unknown_key.as_str()), "unknown"),
        (Some("garbage"), "malformed"),
    ] {
        let (st, body) = s.call("GET", "/v1/rooms", token, None).await;
        assert_eq!((st, code(&body)), (401, "unauthorized"), "{why}: {body}");
    }
    // The WebSocket endpoint refuses before upgrading.
    let err = tokio_tungstenite::connect_async(format!("{}/v1/rtc?access_token=garbage", s.ws))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("{other}"),
    }
}

/// Method, path, body, the grant at stake, and (token, expected status) pairs.
type Case<'a> = (&'a str, String, Option<&'a str>, &'a str, Vec<(&'a str, u16)>);

#[tokio::test]
async fn each_grant_is_required() {
    let s = start().await;
    let a = admin();
    s.call("POST", "/v1/rooms", Some(&a), Some(r#"{"name":"r"}"#)).await;
    let (mut c, joined) = s.join("r", "p").await;
    let track = c.publish("cam", "video", "camera").await;
    let track_sid = track["track"]["sid"].as_str().unwrap().to_string();
    let _ = joined;

    let none = token("x", Grants::default());
    let list_only = token(
        "x",
        Grants {
            room_list: true,
            ..Default::default()
        },
    );
    let create_only = token(
        "x",
        Grants {
            room_create: true,
            room: Some("r2".into()),
            ..Default::default()
        },
    );
    let admin_other = token(
        "x",
        Grants {
            room_admin: true,
            room: Some("other".into()),
            ..Default::default()
        },
    );
    let admin_r = token(
        "x",
        Grants {
            room_admin: true,
            room: Some("r".into()),
            ..Default::default()
        },
    );
    let mute = format!("/v1/rooms/r/participants/p/tracks/{track_sid}/mute");
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/rooms".into(),
            Some(r#"{"name":"r2"}"#),
            "room_create",
            vec![(&none, 403), (&list_only, 403), (&create_only, 200)],
        ),
        (
            "POST",
            "/v1/rooms".into(),
            Some(r#"{"name":"r3"}"#),
            "room_create for that room",
            vec![(&create_only, 403)],
        ),
        (
            "GET",
            "/v1/rooms".into(),
            None,
            "room_list",
            vec![(&none, 403), (&admin_r, 403), (&list_only, 200)],
        ),
        (
            "GET",
            "/v1/rooms/r".into(),
            None,
            "room_list or admin",
            vec![(&none, 403), (&admin_other, 403), (&admin_r, 200), (&list_only, 200)],
        ),
        (
            "GET",
            "/v1/rooms/r/participants".into(),
            None,
            "room_admin",
            vec![(&list_only, 403), (&admin_other, 403), (&admin_r, 200)],
        ),
        (
            "GET",
            "/v1/rooms/r/participants/p".into(),
            None,
            "room_admin",
            vec![(&list_only, 403), (&admin_other, 403), (&admin_r, 200)],
        ),
        (
            "PATCH",
            "/v1/rooms/r/participants/p".into(),
            Some(r#"{"metadata":"x"}"#),
            "room_admin",
            vec![(&list_only, 403), (&admin_other, 403), (&admin_r, 200)],
        ),
        (
            "POST",
            mute.clone(),
            Some(r#"{"muted":true}"#),
            "room_admin",
            vec![(&list_only, 403), (&admin_other, 403), (&admin_r, 200)],
        ),
        (
            "POST",
            "/v1/turn/credentials".into(),
            Some(r#"{"ttl":60}"#),
            "admin or participant",
            vec![(&none, 403), (&list_only, 403)],
        ),
        (
            "DELETE",
            "/v1/rooms/r/participants/p".into(),
            None,
            "room_admin",
            vec![(&list_only, 403), (&admin_other, 403), (&admin_r, 204)],
        ),
        (
            "DELETE",
            "/v1/rooms/r".into(),
            None,
            "room_admin",
            vec![(&none, 403), (&list_only, 403), (&admin_other, 403), (&admin_r, 204)],
        ),
    ];
    for (method, path, body, grant, expectations) in cases {
        for (tok, want) in expectations {
            let (st, resp) = s.call(method, &path, Some(tok), body).await;
            assert_eq!(st, want, "{method} {path} ({grant}): {resp}");
            if want == 403 {
                assert_eq!(code(&resp), "permission_denied");
            }
        }
    }
}

#[tokio::test]
async fn participants_tracks_and_404s() {
    let s = start().await;
    let a = admin();
    let (mut alice, _) = s.join("r", "alice").await;
    let (_bob, _) = s.join("r", "bob").await;
    let cam = alice.publish("cam-1", "video", "camera").await;
    let sid = cam["track"]["sid"].as_str().unwrap().to_string();

    let (st, list) = s.call("GET", "/v1/rooms/r/participants", Some(&a), None).await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = list["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob"]);
    let (st, p) = s.call("GET", "/v1/rooms/r/participants/alice", Some(&a), None).await;
    assert_eq!(st, 200);
    assert!(p["sid"].as_str().unwrap().starts_with("PA_"));
    assert_eq!(p["state"], "joined");
    assert!(p["joined_at"].as_u64().unwrap() > 0);
    assert_eq!(p["permissions"]["can_publish"], true);
    let t = &p["tracks"][0];
    assert_eq!(
        (t["sid"].as_str().unwrap(), &t["kind"], &t["source"], &t["muted"]),
        (sid.as_str(), &json!("video"), &json!("camera"), &json!(false))
    );
    assert_eq!(
        t["layers"][1],
        json!({"quality": "high", "width": 1280, "height": 720, "bitrate": 1_500_000})
    );

    for path in [
        "/v1/rooms/nope/participants",
        "/v1/rooms/nope/participants/alice",
        "/v1/rooms/r/participants/carol",
    ] {
        let (st, body) = s.call("GET", path, Some(&a), None).await;
        assert_eq!(st, 404, "{path}: {body}");
    }
    assert_eq!(
        s.call("DELETE", "/v1/rooms/r/participants/carol", Some(&a), None)
            .await
            .0,
        404
    );
    assert_eq!(
        s.call("PATCH", "/v1/rooms/r/participants/carol", Some(&a), Some("{}"))
            .await
            .0,
        404
    );
    assert_eq!(
        s.call(
            "POST",
            "/v1/rooms/r/participants/alice/tracks/TR_none/mute",
            Some(&a),
            Some(r#"{"muted":true}"#)
        )
        .await
        .0,
        404
    );

    // Admin mute reaches the publisher.
    let (st, track) = s
        .call(
            "POST",
            &format!("/v1/rooms/r/participants/alice/tracks/{sid}/mute"),
            Some(&a),
            Some(r#"{"muted":true}"#),
        )
        .await;
    assert_eq!((st, &track["muted"]), (200, &json!(true)));
    let m = alice.expect("track_muted").await;
    assert_eq!((&m["track_sid"], &m["muted"]), (&json!(sid), &json!(true)));

    // PATCH metadata and name.
    let (st, p) = s
        .call(
            "PATCH",
            "/v1/rooms/r/participants/alice",
            Some(&a),
            Some(r#"{"metadata":"hi","name":"Alice"}"#),
        )
        .await;
    assert_eq!((st, &p["metadata"], &p["name"]), (200, &json!("hi"), &json!("Alice")));
    let u = alice.expect("participant_updated").await;
    assert_eq!(u["participant"]["metadata"], "hi");
}

#[tokio::test]
async fn turn_credentials_for_admin_and_participant() {
    let s = start().await;
    for tok in [admin(), participant("r", "alice")] {
        let (st, body) = s
            .call("POST", "/v1/turn/credentials", Some(&tok), Some(r#"{"ttl":3600}"#))
            .await;
        assert_eq!(st, 200, "{body}");
        let servers = body["iceServers"].as_array().unwrap();
        assert_eq!(servers[0], json!({"urls": ["stun:turn.example.com:3478"]}));
        assert_eq!(
            servers[1]["urls"],
            json!([
                "turn:turn.example.com:3478?transport=udp",
                "turn:turn.example.com:3478?transport=tcp",
                "turns:turn.example.com:5349?transport=tcp"
            ])
        );
        let username = servers[1]["username"].as_str().unwrap();
        let (expiry, _user) = username.split_once(':').unwrap();
        let expiry: u64 = expiry.parse().unwrap();
        assert!(expiry >= now_s() + 3590 && expiry <= now_s() + 3610, "{username}");
        assert_eq!(
            servers[1]["credential"].as_str().unwrap(),
            relay::turn::auth::rest_password(b"turn-secret", username)
        );
    }
    let (st, _) = s
        .call(
            "POST",
            "/v1/turn/credentials",
            Some(&admin()),
            Some(r#"{"ttl":999999}"#),
        )
        .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn rate_limit_is_429() {
    let mut settings = settings();
    settings.api.burst = 3.0;
    settings.api.requests_per_s = 0.001;
    let s = start_with(settings).await;
    let a = admin();
    for _ in 0..3 {
        assert_eq!(s.call("GET", "/v1/rooms", Some(&a), None).await.0, 200);
    }
    let (st, body) = s.call("GET", "/v1/rooms", Some(&a), None).await;
    assert_eq!((st, code(&body)), (429, "rate_limited"));
    // Another token has its own budget.
    assert_eq!(
        s.call(
            "GET",
            "/v1/rooms",
            Some(&token(
                "y",
                Grants {
                    room_list: true,
                    ..Default::default()
                }
            )),
            None
        )
        .await
        .0,
        200
    );
    // Health checks are never limited.
    assert_eq!(s.call("GET", "/v1/healthz", None, None).await.0, 200);
}

#[tokio::test]
async fn full_room_is_409() {
    let s = start().await;
    s.call(
        "POST",
        "/v1/rooms",
        Some(&admin()),
        Some(r#"{"name":"small","max_participants":1}"#),
    )
    .await;
    let (_a, _) = s.join("small", "a").await;
    let (st, body) = s
        .call(
            "GET",
            &format!("/v1/rtc?access_token={}", participant("small", "b")),
            None,
            None,
        )
        .await;
    assert_eq!((st, code(&body)), (409, "room_full"), "{body}");
    let err = tokio_tungstenite::connect_async(format!("{}/v1/rtc?access_token={}", s.ws, participant("small", "b")))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status().as_u16(), 409),
        other => panic!("{other}"),
    }
    // The same identity may still rejoin (it replaces its old session).
    let (_a2, joined) = s.join("small", "a").await;
    assert_eq!(joined["resumed"], false);
    // Without room_join, or without a room, the upgrade is refused with 403.
    let no_join = token(
        "c",
        Grants {
            room: Some("small".into()),
            ..Default::default()
        },
    );
    assert_eq!(
        s.call("GET", &format!("/v1/rtc?access_token={no_join}"), None, None)
            .await
            .0,
        403
    );
    let no_room = token(
        "c",
        Grants {
            room_join: true,
            ..Default::default()
        },
    );
    assert_eq!(
        s.call("GET", &format!("/v1/rtc?access_token={no_room}"), None, None)
            .await
            .0,
        403
    );
}
