//! TURN credentials from the REST API against the embedded relay of the real
//! `rtc-server` binary: an Allocate with them succeeds (with the webrtc-rs
//! `turn` client, an independent TURN stack, and with a minimal client that
//! sees the exact response codes), and once the expiry in the username has
//! passed the relay answers 401. Everything runs on 127.0.0.1 with ports the
//! OS picks; waits are bounded polls, never fixed sleeps.
#[path = "binary/mod.rs"]
mod binary;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::stun::{attr, integrity, Class, Message, MessageBuilder, Method};
use serde_json::Value;
use signalling::auth::{mint, now_unix, Grants, TokenRequest};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

const KEY: &str = "turntest";
const SECRET: &str = "a-secret-for-the-turn-credentials-test";
const WAIT: Duration = Duration::from_secs(10);

/// A running `rtc-server`; killed when dropped.
struct Server {
    _bin: binary::Binary,
    http: SocketAddr,
    turn_udp: SocketAddr,
}

/// Starts the binary on free loopback ports (HTTP, the embedded relay, and
/// the SFU on any free port: the default 7882 may be taken, or shared with
/// SO_REUSEPORT, by another test's server).
fn start_server() -> Server {
    let key = format!("{KEY}={SECRET}");
    let args = [
        "--http-listen",
        "127.0.0.1:0",
        "--turn-listen",
        "127.0.0.1:0",
        "--media-port",
        "0",
        "--api-key",
        &key,
    ];
    let (bin, addrs) = binary::start(&args, &["listening http ", "listening turn udp "], WAIT);
    Server {
        _bin: bin,
        http: addrs[0],
        turn_udp: addrs[1],
    }
}

fn token(identity: &str, grants: Grants) -> String {
    let req = TokenRequest {
        identity: identity.into(),
        ttl: Duration::from_secs(600),
        grants,
        ..Default::default()
    };
    mint(KEY, SECRET, &req, now_unix()).unwrap()
}

fn participant() -> String {
    token(
        "alice",
        Grants {
            room: Some("turn-room".into()),
            room_join: true,
            ..Default::default()
        },
    )
}

/// `POST /v1/turn/credentials` with `body`: `(status, JSON body)`.
async fn credentials(server: &Server, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/v1/turn/credentials", server.http))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = timeout(WAIT, req.send()).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The TURN server entry of an `iceServers` list: its UDP URL's address,
/// username and credential.
fn turn_entry(body: &Value) -> (SocketAddr, String, String) {
    let servers = body["iceServers"].as_array().expect("iceServers");
    let turn = servers
        .iter()
        .find(|s| s["username"].is_string())
        .expect("a TURN server with credentials");
    let url = turn["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|u| u.starts_with("turn:") && u.ends_with("?transport=udp"))
        .expect("a turn: UDP URL");
    let hostport = &url["turn:".len()..url.len() - "?transport=udp".len()];
    (
        hostport.parse().expect("URL host:port"),
        turn["username"].as_str().unwrap().to_string(),
        turn["credential"].as_str().unwrap().to_string(),
    )
}

fn expiry_of(username: &str) -> u64 {
    username.split_once(':').unwrap().0.parse().unwrap()
}

/// Sends `req` and waits for the response with the same transaction id,
/// retransmitting (UDP may drop, even on loopback under load).
async fn transact(sock: &UdpSocket, server: SocketAddr, req: &[u8]) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = vec![0u8; 1500];
    loop {
        sock.send_to(req, server).await.unwrap();
        let attempt = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(r) = tokio::time::timeout_at(attempt.min(deadline), sock.recv_from(&mut buf)).await {
            let (n, from) = r.unwrap();
            if from == server && n >= 20 && buf[8..20] == req[8..20] {
                return buf[..n].to_vec();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no response from the relay");
    }
}

fn allocate_request(auth: Option<(&str, &str, &str, &[u8; 16])>) -> Vec<u8> {
    let tid: [u8; 12] = rand::random();
    let mut buf = [0u8; 1024];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::ALLOCATE, &tid).unwrap();
    b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0])
        .unwrap();
    if let Some((username, realm, nonce, key)) = auth {
        b.add(attr::USERNAME, username.as_bytes()).unwrap();
        b.add(attr::REALM, realm.as_bytes()).unwrap();
        b.add(attr::NONCE, nonce.as_bytes()).unwrap();
        b.add_message_integrity(key).unwrap();
    }
    let n = b.finish();
    buf[..n].to_vec()
}

/// The long-term-credential Allocate round trip from a fresh socket: the
/// unauthenticated request earns a 401 with realm and nonce, then the
/// authenticated one is sent. Returns its response's class and error code.
async fn raw_allocate(server: SocketAddr, username: &str, password: &str) -> (Class, Option<u16>) {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let resp = transact(&sock, server, &allocate_request(None)).await;
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Error);
    assert_eq!(m.error_code().unwrap().unwrap().0, 401, "unauthenticated Allocate");
    let realm = m.str_attr(attr::REALM).unwrap().unwrap().to_string();
    let nonce = m.str_attr(attr::NONCE).unwrap().unwrap().to_string();
    let key = integrity::long_term_key_md5(username, &realm, password);
    let req = allocate_request(Some((username, &realm, &nonce, &key)));
    let resp = transact(&sock, server, &req).await;
    let m = Message::parse(&resp).unwrap();
    let code = m.error_code().map(|c| c.unwrap().0);
    if m.class() == Class::Success {
        assert!(
            m.xor_address(attr::XOR_RELAYED_ADDRESS).is_some(),
            "no XOR-RELAYED-ADDRESS"
        );
    }
    (m.class(), code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_credentials_allocate_on_the_embedded_relay_and_expire() {
    let server = start_server();
    let alice = participant();

    // Credentials for an hour: both clients allocate with them.
    let (status, body) = credentials(&server, Some(&alice), r#"{"ttl": 3600}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ttl"], 3600);
    let (addr, username, password) = turn_entry(&body);
    assert_eq!(addr, server.turn_udp, "the URL names the embedded relay");
    assert!(username.ends_with(":alice"), "{username}");
    let now = now_unix();
    assert!((now..=now + 3600).contains(&expiry_of(&username)), "{username}");
    assert!(
        body["iceServers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["urls"][0] == format!("stun:{addr}")),
        "a STUN entry for the relay: {body}"
    );

    let sock = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap());
    let client = Client::new(ClientConfig {
        stun_serv_addr: addr.to_string(),
        turn_serv_addr: addr.to_string(),
        username: username.clone(),
        password: password.clone(),
        // Learnt from the relay's 401.
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: sock,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let relayed = timeout(WAIT, client.allocate())
        .await
        .expect("Allocate timed out")
        .expect("Allocate with API credentials");
    let relayed_addr = relayed.local_addr().unwrap();
    assert!(relayed_addr.ip().is_loopback(), "relayed address {relayed_addr}");
    client.close().await.unwrap();

    assert_eq!(raw_allocate(addr, &username, &password).await, (Class::Success, None));
    // A wrong password is refused, so the success above is the credential's.
    assert_eq!(
        raw_allocate(addr, &username, "not-the-password").await,
        (Class::Error, Some(401))
    );

    // Credentials for one second: valid now, refused once expired.
    let (status, body) = credentials(&server, Some(&alice), r#"{"ttl": 1}"#).await;
    assert_eq!(status, 200, "{body}");
    let (_, short_user, short_pass) = turn_entry(&body);
    let expiry = expiry_of(&short_user);
    // The relay reads Unix time as whole seconds at start plus whole seconds
    // elapsed, which can lag the true clock by up to a second; waiting until
    // this clock is two seconds past the expiry puts the relay's strictly past it.
    let deadline = Instant::now() + WAIT;
    while now_unix() <= expiry + 1 {
        assert!(Instant::now() < deadline, "clock did not pass the expiry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        raw_allocate(addr, &short_user, &short_pass).await,
        (Class::Error, Some(401))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_bounds_and_validation() {
    let server = start_server();
    let alice = participant();
    let admin = token(
        "",
        Grants {
            room_admin: true,
            ..Default::default()
        },
    );
    let lister = token(
        "bob",
        Grants {
            room_list: true,
            ..Default::default()
        },
    );

    // The bounds: 1 s to a day.
    for ttl in [1, 86_400] {
        let (status, body) = credentials(&server, Some(&alice), &format!(r#"{{"ttl": {ttl}}}"#)).await;
        assert_eq!(status, 200, "ttl {ttl}: {body}");
        assert_eq!(body["ttl"], ttl);
    }
    // An admin token without identity gets credentials under "admin".
    let (status, body) = credentials(&server, Some(&admin), r#"{"ttl": 60}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(turn_entry(&body).1.ends_with(":admin"), "{body}");

    for (body, what) in [
        (r#"{"ttl": 0}"#, "zero"),
        (r#"{"ttl": 86401}"#, "above a day"),
        (r#"{"ttl": -1}"#, "negative"),
        (r#"{"ttl": "60"}"#, "a string"),
        (r#"{}"#, "missing"),
        (r#"{"ttl": 60, "user": "x"}"#, "an unknown field"),
        ("not json", "not JSON"),
    ] {
        let (status, resp) = credentials(&server, Some(&alice), body).await;
        assert_eq!(status, 400, "{what}: {resp}");
        assert_eq!(resp["error"]["code"], "invalid_argument", "{what}: {resp}");
    }

    let (status, resp) = credentials(&server, None, r#"{"ttl": 60}"#).await;
    assert_eq!(status, 401, "{resp}");
    assert_eq!(resp["error"]["code"], "unauthorized");
    let (status, resp) = credentials(&server, Some("not.a.token"), r#"{"ttl": 60}"#).await;
    assert_eq!(status, 401, "{resp}");
    // Neither room_join nor room_admin.
    let (status, resp) = credentials(&server, Some(&lister), r#"{"ttl": 60}"#).await;
    assert_eq!(status, 403, "{resp}");
    assert_eq!(resp["error"]["code"], "permission_denied");
}
