//! The browser side: the demo page and the SDK are served with the right
//! content types, and the demo's token endpoint exists in development mode
//! only, minting tokens that verify and are scoped to the room asked for.
mod common;

use std::collections::HashMap;

use common::{now_s, Client, Server, KEY, SECRET};
use serde_json::{json, Value};
use signalling::auth::ApiKeys;
use signalling::config::DEV_KEY_NAME;
use signalling::state::Settings;

const DEV_SECRET: &str = "a-generated-development-secret-0123456789";

/// A server with the given keys and development mode on or off.
async fn start(keys: &[(&str, &str)], dev_mode: bool) -> Server {
    let keys = ApiKeys::new(
        keys.iter()
            .map(|(k, s)| (k.to_string(), s.to_string()))
            .collect::<HashMap<_, _>>(),
    );
    let settings = Settings {
        dev_mode,
        ..common::settings()
    };
    common::start_with_keys(keys, settings).await
}

async fn get(s: &Server, path: &str) -> (u16, String, String) {
    let resp = s.http.get(format!("{}{path}", s.base)).send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, resp.text().await.unwrap())
}

async fn dev_token(s: &Server, body: Value) -> (u16, Value) {
    s.call("POST", "/v1/dev/token", None, Some(&body.to_string())).await
}

#[tokio::test]
async fn page_and_sdk_are_served_with_their_content_types() {
    // Served in production mode too: the page works with ?token=.
    let s = start(&[(KEY, SECRET)], false).await;

    let (status, ct, page) = get(&s, "/").await;
    assert_eq!((status, ct.as_str()), (200, "text/html; charset=utf-8"));
    assert!(page.contains("/demo.js") && page.contains("<!doctype html>"), "{page}");

    let (status, ct, js) = get(&s, "/sdk/rtc.js").await;
    assert_eq!((status, ct.as_str()), (200, "text/javascript; charset=utf-8"));
    assert!(js.contains("export class Room"), "the SDK exports Room");
    let resp = s.http.get(format!("{}/sdk/rtc.js", s.base)).send().await.unwrap();
    assert_eq!(resp.headers()["x-typescript-types"], "/sdk/rtc.d.ts");
    assert_eq!(resp.headers()["cache-control"], "no-cache");

    let (status, ct, dts) = get(&s, "/sdk/rtc.d.ts").await;
    assert_eq!((status, ct.as_str()), (200, "application/typescript; charset=utf-8"));
    assert!(dts.contains("export declare class Room"));

    let (status, ct, demo) = get(&s, "/demo.js").await;
    assert_eq!((status, ct.as_str()), (200, "text/javascript; charset=utf-8"));
    assert!(demo.contains("from \"/sdk/rtc.js\""), "the page uses the served SDK");
    let (status, ct, _) = get(&s, "/demo.css").await;
    assert_eq!((status, ct.as_str()), (200, "text/css; charset=utf-8"));

    // Nothing is loaded from elsewhere (no CDN): no absolute URLs in the page's files.
    for (name, text) in [("index.html", &page), ("demo.js", &demo), ("rtc.js", &js)] {
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{name} refers to another origin"
        );
    }

    // The API's 404 is unchanged around the new routes.
    let (status, _, body) = get(&s, "/sdk/nope.js").await;
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "not_found"
    );
}

#[tokio::test]
async fn dev_token_endpoint_exists_only_in_development_mode() {
    // Configured keys: no development mode, no endpoint, whatever the body.
    let prod = start(&[(KEY, SECRET)], false).await;
    let (status, body) = dev_token(&prod, json!({"room": "demo", "identity": "alice"})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    // Even a server whose only key happens to be named `devkey`.
    let named = start(&[(DEV_KEY_NAME, DEV_SECRET)], false).await;
    assert_eq!(
        dev_token(&named, json!({"room": "demo", "identity": "alice"})).await.0,
        404
    );
    // GET is not the endpoint either.
    let dev = start(&[(DEV_KEY_NAME, DEV_SECRET)], true).await;
    assert_eq!(get(&dev, "/v1/dev/token").await.0, 405);
}

#[tokio::test]
async fn dev_token_verifies_and_is_scoped_to_the_room() {
    let s = start(&[(DEV_KEY_NAME, DEV_SECRET)], true).await;
    let (status, body) = dev_token(&s, json!({"room": "standup", "identity": "alice", "name": "Alice"})).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_string();

    let claims = s.state.keys.verify(&token, now_s()).unwrap();
    assert_eq!(claims.iss, DEV_KEY_NAME);
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.name, "Alice");
    assert_eq!(claims.grants.room.as_deref(), Some("standup"));
    assert!(claims.grants.room_join);
    // A participant token: no administration, listing or creation of rooms.
    assert!(!claims.grants.room_admin && !claims.grants.room_list && !claims.grants.room_create);
    assert!(claims.exp > now_s() && claims.exp <= now_s() + 6 * 3600 + 1);

    // It joins that room over the WebSocket...
    let mut c: Client = s.connect(&token).await;
    c.send(json!({"v": 1, "type": "join", "id": 1})).await;
    let joined = c.expect("joined").await;
    assert_eq!(joined["room"]["name"], "standup");
    assert_eq!(joined["participant"]["identity"], "alice");
    assert_eq!(joined["participant"]["name"], "Alice");
    assert_eq!(joined["participant"]["permissions"]["can_publish"], true);

    // ...and nothing else: the REST API refuses it other rooms and admin calls.
    let (status, _) = s.call("GET", "/v1/rooms", Some(&token), None).await;
    assert_eq!(status, 403);
    let (status, _) = s.call("GET", "/v1/rooms/other/participants", Some(&token), None).await;
    assert_eq!(status, 403);

    // Names follow the room service's rules; the body is checked.
    for bad in [
        json!({"room": "", "identity": "alice"}),
        json!({"room": "a/b", "identity": "alice"}),
        json!({"room": "demo", "identity": "x".repeat(129)}),
        json!({"room": "demo"}),
        json!({"room": "demo", "identity": "bob", "grants": {"room_admin": true}}),
    ] {
        let (status, body) = dev_token(&s, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert_eq!(body["error"]["code"], "invalid_argument");
    }
}
