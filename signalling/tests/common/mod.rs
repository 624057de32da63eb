//! Test harness: a real server on 127.0.0.1:0, a real HTTP client, a real
//! WebSocket client. Waits are bounded reads, never sleeps.
#![allow(dead_code)]
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use signalling::auth::{mint, ApiKeys, Grants, TokenRequest};
use signalling::state::{AppState, Settings};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const KEY: &str = "APIkey";
pub const SECRET: &str = "a-test-secret-of-reasonable-length";
pub const WAIT: Duration = Duration::from_secs(5);

pub struct Server {
    pub base: String,
    pub ws: String,
    pub state: AppState,
    pub http: reqwest::Client,
}

pub fn settings() -> Settings {
    let mut s = Settings::default();
    s.turn.secret = b"turn-secret".to_vec();
    s.turn.stun_urls = vec!["stun:turn.example.com:3478".into()];
    s.turn.turn_urls = vec![
        "turn:turn.example.com:3478?transport=udp".into(),
        "turn:turn.example.com:3478?transport=tcp".into(),
        "turns:turn.example.com:5349?transport=tcp".into(),
    ];
    s.turn.join_ttl_s = 600;
    s
}

pub async fn start() -> Server {
    start_with(settings()).await
}

pub async fn start_with(settings: Settings) -> Server {
    start_with_keys(
        ApiKeys::new(HashMap::from([(KEY.to_string(), SECRET.to_string())])),
        settings,
    )
    .await
}

/// A server on a free loopback port with these API keys and settings.
pub async fn start_with_keys(keys: ApiKeys, settings: Settings) -> Server {
    let state = AppState::standalone(keys, settings);
    let app = signalling::api::router(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        ws: format!("ws://{addr}"),
        state,
        http: reqwest::Client::new(),
    }
}

pub fn now_s() -> u64 {
    signalling::model::now_ms() / 1000
}

pub fn token(identity: &str, grants: Grants) -> String {
    let req = TokenRequest {
        identity: identity.into(),
        ttl: Duration::from_secs(600),
        grants,
        ..Default::default()
    };
    mint(KEY, SECRET, &req, now_s()).unwrap()
}

pub fn admin() -> String {
    token(
        "",
        Grants {
            room_admin: true,
            room_create: true,
            room_list: true,
            ..Default::default()
        },
    )
}

pub fn participant(room: &str, identity: &str) -> String {
    token(
        identity,
        Grants {
            room: Some(room.into()),
            room_join: true,
            ..Default::default()
        },
    )
}

impl Server {
    /// `(status, body as JSON or Null)`.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn connect(&self, token: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{}/v1/rtc?access_token={token}", self.ws))
            .await
            .unwrap();
        Client { ws }
    }

    /// Connects and joins; returns the client and its `joined` message.
    pub async fn join(&self, room: &str, identity: &str) -> (Client, Value) {
        self.join_with(&participant(room, identity), json!({})).await
    }

    pub async fn join_with(&self, token: &str, extra: Value) -> (Client, Value) {
        let mut c = self.connect(token).await;
        let mut msg = json!({"v": 1, "type": "join"});
        for (k, v) in extra.as_object().unwrap() {
            msg[k] = v.clone();
        }
        c.send(msg).await;
        let joined = c.expect("joined").await;
        (c, joined)
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next JSON message, or `None` when the socket closed.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message");
            match frame {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until a message of `kind` arrives (others are skipped).
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let m = self
                .next()
                .await
                .unwrap_or_else(|| panic!("socket closed while waiting for {kind}"));
            assert_eq!(m["v"], 1, "{m}");
            if m["type"] == kind {
                return m;
            }
        }
    }

    /// Reads until a message satisfying `pred` arrives.
    pub async fn expect_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = self
                .next()
                .await
                .unwrap_or_else(|| panic!("socket closed while waiting for {what}"));
            if pred(&m) {
                return m;
            }
        }
    }

    /// A round trip with `id`: everything the server queued before the pong is returned.
    pub async fn sync(&mut self) -> Vec<Value> {
        let id = 900_000 + rand_id();
        self.send(json!({"v": 1, "type": "ping", "id": id, "timestamp": 1}))
            .await;
        let mut seen = vec![];
        loop {
            let m = self.next().await.expect("socket closed during sync");
            if m["type"] == "pong" && m["id"] == id {
                return seen;
            }
            seen.push(m);
        }
    }

    /// Waits for the server to close the socket, returning what came before.
    pub async fn closed(&mut self) -> Vec<Value> {
        let mut seen = vec![];
        while let Some(m) = self.next().await {
            seen.push(m);
        }
        seen
    }

    pub async fn publish(&mut self, cid: &str, kind: &str, source: &str) -> Value {
        let mut msg = json!({"v": 1, "type": "publish", "cid": cid, "kind": kind, "source": source});
        if kind == "video" {
            msg["layers"] = json!([
                {"quality": "low", "width": 320, "height": 180},
                {"quality": "high", "width": 1280, "height": 720, "bitrate": 1_500_000}
            ]);
        }
        self.send(msg).await;
        let cid = cid.to_string();
        self.expect_where("track_published", move |m| {
            m["type"] == "track_published" && m["track"]["cid"] == cid
        })
        .await
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
