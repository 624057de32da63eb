//! End-to-end tests of the I/O shell over loopback: a real `Running` relay
//! (two shards), driven by blocking std sockets.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay::config::RelayConfig;
use relay::io::Running;
use relay::stun::{attr, integrity, Class, Message, MessageBuilder, Method, TransactionId};
use relay::turn::auth::rest_password;
use relay::turn::ServerConfig;

const SECRET: &[u8] = b"shell-test-secret";
const WAIT: Duration = Duration::from_secs(5);

/// Starts a relay on 127.0.0.1 port 0 (the shell resolves it once for all
/// shards, so parallel tests never share a SO_REUSEPORT group) with relay
/// ports in a random 300-port range of its own.
fn start(shards: usize) -> Running {
    let mut server = ServerConfig::for_tests(SECRET);
    let base = 40000 + (rand::random::<u16>() % 60) * 300;
    server.port_min = base;
    server.port_max = base + 299;
    let cfg = RelayConfig {
        server,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_listen: vec![],
        tls: None,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        drain_timeout: Duration::from_secs(5),
        shards,
        generated_secret: None,
    };
    Running::start(cfg).expect("relay starts")
}

fn tid() -> TransactionId {
    rand::random()
}

fn binding_request(tid: &TransactionId) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, tid)
        .unwrap()
        .finish();
    buf[..n].to_vec()
}

/// Waits for `cond` with bounded retries.
fn eventually<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s
}

/// Sends `req` until a response with the same transaction id arrives.
fn udp_transact(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> Vec<u8> {
    let want = &req[8..20];
    eventually("a UDP response", || {
        sock.send_to(req, to).unwrap();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if n >= 20 && &buf[8..20] == want => return Some(buf[..n].to_vec()),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        None
    })
}

fn xor_mapped(resp: &[u8]) -> SocketAddr {
    let m = Message::parse(resp).expect("response parses");
    assert_eq!(m.class(), Class::Success);
    m.xor_address(attr::XOR_MAPPED_ADDRESS)
        .expect("XOR-MAPPED-ADDRESS")
        .expect("valid address")
}

/// Reads one STUN/ChannelData frame from a stream.
fn read_frame(s: &mut TcpStream, pending: &mut Vec<u8>) -> Vec<u8> {
    loop {
        if let Some(n) = relay::stun::stream_frame_len(pending).expect("valid frame") {
            return pending.drain(..n).collect();
        }
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "connection closed");
        pending.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn binding_over_udp_reports_client_address() {
    let relay = start(2);
    let c = udp_client();
    let resp = udp_transact(&c, relay.udp[0], &binding_request(&tid()));
    assert_eq!(xor_mapped(&resp), c.local_addr().unwrap());
    relay.stop().unwrap();
}

#[test]
fn binding_over_tcp_reports_client_address() {
    let relay = start(2);
    let mut s = TcpStream::connect(relay.tcp[0]).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut pending = Vec::new();
    // Two requests in one write: framing must split them.
    let (t1, t2) = (tid(), tid());
    let mut both = binding_request(&t1);
    both.extend(binding_request(&t2));
    s.write_all(&both).unwrap();
    for t in [t1, t2] {
        let resp = read_frame(&mut s, &mut pending);
        assert_eq!(&resp[8..20], &t);
        assert_eq!(xor_mapped(&resp), s.local_addr().unwrap());
    }
    relay.stop().unwrap();
}

#[test]
fn garbage_does_not_stop_the_relay() {
    let relay = start(2);
    let c = udp_client();
    for i in 0..200u32 {
        let len = (i as usize * 37) % 1400 + 1;
        let junk: Vec<u8> = (0..len).map(|j| (i as usize * 131 + j * 7) as u8).collect();
        c.send_to(&junk, relay.udp[0]).unwrap();
    }
    // A STUN header claiming more than it carries, and an empty datagram.
    c.send_to(&[0, 1, 0xff, 0xfc, 0x21, 0x12, 0xa4, 0x42], relay.udp[0])
        .unwrap();
    c.send_to(&[], relay.udp[0]).unwrap();
    let resp = udp_transact(&c, relay.udp[0], &binding_request(&tid()));
    assert_eq!(xor_mapped(&resp), c.local_addr().unwrap());

    // Unframeable bytes on a stream close that connection, and only that one.
    let mut bad = TcpStream::connect(relay.tcp[0]).unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(bad.read(&mut buf), Ok(0) | Err(_)), "garbage stream is closed");
    let mut good = TcpStream::connect(relay.tcp[0]).unwrap();
    good.set_read_timeout(Some(WAIT)).unwrap();
    good.write_all(&binding_request(&tid())).unwrap();
    let resp = read_frame(&mut good, &mut Vec::new());
    assert_eq!(xor_mapped(&resp), good.local_addr().unwrap());
    relay.stop().unwrap();
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn metrics_endpoint_serves_merged_shard_counters() {
    let relay = start(2);
    let c = udp_client();
    for _ in 0..3 {
        udp_transact(&c, relay.udp[0], &binding_request(&tid()));
    }
    let metrics = relay.metrics.expect("metrics listener");
    let body = eventually("requests in metrics", || {
        let body = http_get(metrics, "/metrics");
        let n: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix("rtc_relay_requests_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)?;
        (n >= 3).then_some(body)
    });
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("rtc_relay_allocations"));
    relay.stop().unwrap();
}

/// A long-term-credential TURN client over UDP, just enough to get a relayed
/// datagram through the shell both ways.
struct Turn {
    sock: UdpSocket,
    server: SocketAddr,
    username: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
}

impl Turn {
    fn request(&self, method: Method, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let t = tid();
        let mut buf = [0u8; 1024];
        let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &t).unwrap();
        for (ty, v) in attrs {
            b.add(*ty, v).unwrap();
        }
        b.add(attr::USERNAME, self.username.as_bytes()).unwrap();
        b.add(attr::REALM, self.realm.as_bytes()).unwrap();
        b.add(attr::NONCE, self.nonce.as_bytes()).unwrap();
        b.add_message_integrity(&self.key).unwrap();
        let n = b.finish();
        udp_transact(&self.sock, self.server, &buf[..n])
    }

    fn allocate(server: SocketAddr) -> (Turn, SocketAddr) {
        let sock = udp_client();
        let transport = (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
        let t = tid();
        let mut buf = [0u8; 256];
        let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::ALLOCATE, &t).unwrap();
        b.add(transport.0, &transport.1).unwrap();
        let n = b.finish();
        let resp = udp_transact(&sock, server, &buf[..n]);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Error);
        let realm = m.str_attr(attr::REALM).unwrap().unwrap().to_string();
        let nonce = m.str_attr(attr::NONCE).unwrap().unwrap().to_string();
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        let username = format!("{expiry}:shell");
        let password = rest_password(SECRET, &username);
        let key = integrity::long_term_key_md5(&username, &realm, &password);
        let turn = Turn {
            sock,
            server,
            username,
            realm,
            nonce,
            key,
        };
        let resp = turn.request(Method::ALLOCATE, &[transport]);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Success, "allocate: {:?}", m.error_code());
        let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
        (turn, relayed)
    }

    fn peer_attr(&self, peer: SocketAddr) -> (u16, Vec<u8>) {
        // XOR-PEER-ADDRESS for IPv4: family, port ^ cookie>>16, addr ^ cookie.
        let SocketAddr::V4(p) = peer else { panic!("IPv4 peer") };
        let port = p.port() ^ 0x2112;
        let ip = u32::from(*p.ip()) ^ 0x2112_A442;
        let mut v = vec![0, 1];
        v.extend(port.to_be_bytes());
        v.extend(ip.to_be_bytes());
        (attr::XOR_PEER_ADDRESS, v)
    }

    fn expect_success(&self, method: Method, attrs: &[(u16, Vec<u8>)]) {
        let resp = self.request(method, attrs);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Success, "{method:?}: {:?}", m.error_code());
    }
}

/// Sends `segments` datagrams of `seg` bytes in one GSO call, so a receiver
/// with UDP_GRO on loopback gets them as one coalesced train.
fn send_gso(sock: &UdpSocket, to: SocketAddr, payload: &[u8], seg: usize) {
    let state = quinn_udp::UdpSocketState::new(sock.into()).unwrap();
    let segment_size = (state.max_gso_segments() > 1).then_some(seg);
    let t = quinn_udp::Transmit {
        destination: to,
        ecn: None,
        contents: payload,
        segment_size,
        src_ip: None,
    };
    if segment_size.is_some() {
        state.try_send(sock.into(), &t).unwrap();
    } else {
        for chunk in payload.chunks(seg) {
            sock.send_to(chunk, to).unwrap();
        }
    }
    sock.set_nonblocking(false).unwrap();
}

#[test]
fn udp_allocation_relays_both_ways_including_gro_trains() {
    let relay = start(2);
    let (turn, relayed) = Turn::allocate(relay.udp[0]);
    let peer = udp_client();
    let peer_addr = peer.local_addr().unwrap();
    let channel_peer = udp_client();
    let channel_peer_addr = channel_peer.local_addr().unwrap();
    turn.expect_success(Method::CREATE_PERMISSION, &[turn.peer_attr(peer_addr)]);
    turn.expect_success(
        Method::CHANNEL_BIND,
        &[
            (attr::CHANNEL_NUMBER, vec![0x40, 0x00, 0, 0]),
            turn.peer_attr(channel_peer_addr),
        ],
    );

    // Client -> peer over the channel.
    let mut cd = vec![0x40, 0x00, 0, 5];
    cd.extend(b"hello");
    let got = eventually("ChannelData reaching the peer", || {
        turn.sock.send_to(&cd, relay.udp[0]).unwrap();
        let mut buf = [0u8; 64];
        channel_peer
            .recv_from(&mut buf)
            .ok()
            .map(|(n, from)| (buf[..n].to_vec(), from))
    });
    assert_eq!(got, (b"hello".to_vec(), relayed));

    // Peer -> client: a GRO train of 10 datagrams of 101 bytes each (odd so
    // ChannelData needs no padding over UDP but Data indications do).
    let seg = 101;
    let train: Vec<u8> = (0..10 * seg).map(|i| (i / seg) as u8 ^ (i as u8)).collect();
    send_gso(&channel_peer, relayed, &train, seg);
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    turn.sock.set_read_timeout(Some(WAIT)).unwrap();
    while seen.len() < 10 {
        let (n, _) = turn
            .sock
            .recv_from(&mut buf)
            .expect("ChannelData from the peer's train");
        if buf[0] != 0x40 {
            continue; // a late duplicate response to a retried request
        }
        assert_eq!(&buf[..2], &[0x40, 0x00]);
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]) as usize, seg);
        seen.push(buf[4..n].to_vec());
    }
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(&s[..seg], &train[i * seg..(i + 1) * seg], "segment {i}");
    }

    // Same through Data indications (permission, no channel): the core
    // writes padding and attributes after each payload, which must not
    // clobber the next segment of the train.
    send_gso(&peer, relayed, &train, seg);
    let mut n_data = 0;
    while n_data < 10 {
        let (n, _) = turn
            .sock
            .recv_from(&mut buf)
            .expect("Data indication from the peer's train");
        let m = Message::parse(&buf[..n]).expect("Data indication parses");
        if m.class() != Class::Indication {
            continue;
        }
        assert_eq!(m.method(), Method::DATA);
        let data = m.attr(attr::DATA).expect("DATA");
        assert_eq!(data, &train[n_data * seg..(n_data + 1) * seg], "indication {n_data}");
        assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(), peer_addr);
        n_data += 1;
    }

    // A shard publishes its counters after a turn of its loop, so the first
    // snapshot may predate the allocation: wait for one that shows it.
    eventually("published stats showing the allocation", || {
        relay
            .snapshot()
            .filter(|(stats, allocations)| *allocations >= 1 || stats.allocations_created >= 1)
    });
    relay.stop().unwrap();
}

#[test]
fn drain_refuses_new_allocations_but_keeps_answering() {
    let relay = start(1);
    eventually("first report", || relay.snapshot());
    relay.drain();
    // Draining is applied by the shard asynchronously; bounded retries.
    let c = udp_client();
    let transport = (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
    eventually("Allocate refused while draining", || {
        let (turn, _) = (c.try_clone().ok()?, ());
        let t = tid();
        let mut buf = [0u8; 256];
        let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::ALLOCATE, &t).unwrap();
        b.add(transport.0, &transport.1).unwrap();
        let n = b.finish();
        let resp = udp_transact(&turn, relay.udp[0], &buf[..n]);
        let m = Message::parse(&resp).ok()?;
        let realm = m.str_attr(attr::REALM)?.ok()?.to_string();
        let nonce = m.str_attr(attr::NONCE)?.ok()?.to_string();
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        let username = format!("{expiry}:drain");
        let key = integrity::long_term_key_md5(&username, &realm, &rest_password(SECRET, &username));
        let t = Turn {
            sock: turn,
            server: relay.udp[0],
            username,
            realm,
            nonce,
            key,
        };
        let resp = t.request(Method::ALLOCATE, std::slice::from_ref(&transport));
        let m = Message::parse(&resp).ok()?;
        let code = m.error_code()?.ok()?.0;
        (code == 403 || code == 300).then_some(())
    });
    let resp = udp_transact(&c, relay.udp[0], &binding_request(&tid()));
    assert_eq!(xor_mapped(&resp), c.local_addr().unwrap());
    relay.stop().unwrap();
}

/// Long-term credentials learnt from a 401.
struct Auth {
    username: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
}

fn build(method: Method, attrs: &[(u16, Vec<u8>)], auth: Option<&Auth>) -> Vec<u8> {
    let t = tid();
    let mut buf = [0u8; 1024];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &t).unwrap();
    for (ty, v) in attrs {
        b.add(*ty, v).unwrap();
    }
    if let Some(a) = auth {
        b.add(attr::USERNAME, a.username.as_bytes()).unwrap();
        b.add(attr::REALM, a.realm.as_bytes()).unwrap();
        b.add(attr::NONCE, a.nonce.as_bytes()).unwrap();
        b.add_message_integrity(&a.key).unwrap();
    }
    let n = b.finish();
    buf[..n].to_vec()
}

/// A stream client; indications that arrive while waiting for a response are kept.
struct StreamClient {
    s: TcpStream,
    pending: Vec<u8>,
    indications: Vec<Vec<u8>>,
}

impl StreamClient {
    fn connect(to: SocketAddr) -> Self {
        let s = TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        StreamClient {
            s,
            pending: Vec::new(),
            indications: Vec::new(),
        }
    }

    fn transact(&mut self, req: &[u8]) -> Vec<u8> {
        self.s.write_all(req).unwrap();
        loop {
            let f = read_frame(&mut self.s, &mut self.pending);
            if f[8..20] == req[8..20] {
                return f;
            }
            self.indications.push(f);
        }
    }

    fn expect_success(&mut self, req: &[u8]) -> Vec<u8> {
        let resp = self.transact(req);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Success, "{:?}: {:?}", m.method(), m.error_code());
        resp
    }
}

fn xor_peer(peer: SocketAddr) -> (u16, Vec<u8>) {
    let SocketAddr::V4(p) = peer else { panic!("IPv4 peer") };
    let mut v = vec![0, 1];
    v.extend((p.port() ^ 0x2112).to_be_bytes());
    v.extend((u32::from(*p.ip()) ^ 0x2112_A442).to_be_bytes());
    (attr::XOR_PEER_ADDRESS, v)
}

fn connection_id(msg: &[u8]) -> Vec<u8> {
    Message::parse(msg)
        .unwrap()
        .attr(attr::CONNECTION_ID)
        .expect("CONNECTION-ID")
        .to_vec()
}

/// Binds a data connection to `cid` and checks bytes flow both ways with `peer`.
fn bind_and_pipe(relay: SocketAddr, auth: &Auth, cid: Vec<u8>, peer: &mut TcpStream, tag: u8) {
    let mut data = StreamClient::connect(relay);
    // Bytes sent right behind the ConnectionBind belong to the peer.
    let mut req = build(Method::CONNECTION_BIND, &[(attr::CONNECTION_ID, cid)], Some(auth));
    let early = [tag; 7];
    req.extend(early);
    let resp = data.transact(&req);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success, "ConnectionBind: {:?}", m.error_code());
    assert!(
        data.pending.is_empty(),
        "nothing but raw peer bytes follow the response"
    );
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = [0u8; 7];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, early);
    peer.write_all(b"from peer").unwrap();
    let mut got = [0u8; 9];
    data.s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from peer");
    // Closing the peer side ends the pipe and closes the data connection.
    peer.shutdown(std::net::Shutdown::Both).unwrap();
    let mut rest = [0u8; 1];
    assert!(matches!(data.s.read(&mut rest), Ok(0) | Err(_)));
}

#[test]
fn rfc6062_tcp_allocation_connects_accepts_and_splices() {
    let relay = start(2);
    let server = relay.tcp[0];
    let mut ctl = StreamClient::connect(server);
    let transport = (attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0]);
    let resp = ctl.transact(&build(Method::ALLOCATE, std::slice::from_ref(&transport), None));
    let m = Message::parse(&resp).unwrap();
    let realm = m.str_attr(attr::REALM).unwrap().unwrap().to_string();
    let nonce = m.str_attr(attr::NONCE).unwrap().unwrap().to_string();
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let username = format!("{expiry}:tcp");
    let key = integrity::long_term_key_md5(&username, &realm, &rest_password(SECRET, &username));
    let auth = Auth {
        username,
        realm,
        nonce,
        key,
    };
    let resp = ctl.expect_success(&build(Method::ALLOCATE, &[transport], Some(&auth)));
    let relayed = Message::parse(&resp)
        .unwrap()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();

    let peer_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer_listener.local_addr().unwrap();
    ctl.expect_success(&build(Method::CREATE_PERMISSION, &[xor_peer(peer_addr)], Some(&auth)));

    // Several client-initiated connections: data connections hash to either
    // shard, so the hand-over to the CONNECTION-ID's owner is exercised too.
    for tag in 0..4u8 {
        let resp = ctl.expect_success(&build(Method::CONNECT, &[xor_peer(peer_addr)], Some(&auth)));
        let (mut peer, from) = peer_listener.accept().unwrap();
        assert_eq!(from, relayed, "the relay connects from the relayed address");
        bind_and_pipe(server, &auth, connection_id(&resp), &mut peer, tag);
    }

    // Peer-initiated: a ConnectionAttempt indication names the connection.
    let mut peer = TcpStream::connect(relayed).unwrap();
    let attempt = loop {
        if let Some(i) = ctl.indications.iter().position(|f| f[..2] == [0x00, 0x1c]) {
            break ctl.indications.remove(i);
        }
        let f = read_frame(&mut ctl.s, &mut ctl.pending);
        ctl.indications.push(f);
    };
    bind_and_pipe(server, &auth, connection_id(&attempt), &mut peer, 9);
    relay.stop().unwrap();
}

/// The `rtc-relay` binary, killed on drop so a failed test leaves nothing behind.
struct Binary {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    fn start(extra: &[&str]) -> Binary {
        let base = 40000 + (rand::random::<u16>() % 60) * 300;
        let mut ports = format!("{base}-{}", base + 299);
        if let Some(i) = extra.iter().position(|a| *a == "--relay-ports") {
            ports = extra[i + 1].to_string();
        }
        let extra: Vec<&str> = extra
            .iter()
            .enumerate()
            .filter(|(i, a)| **a != "--relay-ports" && (*i == 0 || extra[i - 1] != "--relay-ports"))
            .map(|(_, a)| *a)
            .collect();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rtc-relay"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--auth-secret",
                "bin-secret",
                "--shards",
                "2",
            ])
            .args([
                "--relay-ports",
                &ports,
                "--allow-loopback-peers",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(&extra)
            .stdout(std::process::Stdio::piped())
            .stderr(if std::env::var_os("SHELL_TEST_LOG").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::piped()
            })
            .spawn()
            .expect("rtc-relay starts");
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        // Drained continuously: a full pipe would block the relay's logging.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Binary { child, stdout, log }
    }

    /// The address printed as `listening <proto> <addr>`.
    fn listening(&mut self, proto: &str) -> SocketAddr {
        use std::io::BufRead;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "rtc-relay exited before listening on {proto}");
            if let Some(a) = line.trim().strip_prefix(&format!("listening {proto} ")) {
                return a.parse().unwrap();
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "rtc-relay did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn binary_serves_and_exits_on_sigterm_when_idle() {
    let mut bin = Binary::start(&["--log-format", "json"]);
    let udp = bin.listening("udp");
    let metrics = bin.listening("metrics");
    let c = udp_client();
    let resp = udp_transact(&c, udp, &binding_request(&tid()));
    assert_eq!(xor_mapped(&resp), c.local_addr().unwrap());
    assert!(http_get(metrics, "/metrics").starts_with("HTTP/1.1 200"));
    bin.signal(libc::SIGTERM);
    let status = bin.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    let first = eventually("a log line", || bin.log.lock().unwrap().first().cloned());
    assert!(
        serde_json::from_str::<serde_json::Value>(&first).is_ok(),
        "JSON log line: {first}"
    );
}

#[test]
fn binary_drains_allocations_until_a_second_signal() {
    let mut bin = Binary::start(&["--drain-timeout", "60"]);
    let udp = bin.listening("udp");
    let (turn, _relayed) = {
        // Allocate with the binary's secret.
        let sock = udp_client();
        let transport = (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
        let resp = udp_transact(
            &sock,
            udp,
            &build(Method::ALLOCATE, std::slice::from_ref(&transport), None),
        );
        let m = Message::parse(&resp).unwrap();
        let realm = m.str_attr(attr::REALM).unwrap().unwrap().to_string();
        let nonce = m.str_attr(attr::NONCE).unwrap().unwrap().to_string();
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        let username = format!("{expiry}:bin");
        let key = integrity::long_term_key_md5(&username, &realm, &rest_password(b"bin-secret", &username));
        let auth = Auth {
            username,
            realm,
            nonce,
            key,
        };
        let resp = udp_transact(&sock, udp, &build(Method::ALLOCATE, &[transport], Some(&auth)));
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Success, "{:?}", m.error_code());
        (sock, m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap())
    };
    bin.signal(libc::SIGTERM);
    // Draining keeps serving: Binding still answers a while after the signal.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        bin.child.try_wait().unwrap().is_none(),
        "exited with an allocation left"
    );
    let resp = udp_transact(&turn, udp, &binding_request(&tid()));
    assert_eq!(xor_mapped(&resp), turn.local_addr().unwrap());
    bin.signal(libc::SIGTERM);
    let status = bin.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
}

#[test]
fn binding_over_tls() {
    let dir = std::env::temp_dir().join(format!("rtc-relay-tls-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();

    let mut server = ServerConfig::for_tests(SECRET);
    server.port_min = 40000;
    server.port_max = 40099;
    let cfg = RelayConfig {
        server,
        listen: vec![],
        tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Some(relay::config::TlsFiles {
            cert: cert.clone(),
            key,
        }),
        metrics_listen: None,
        drain_timeout: Duration::from_secs(1),
        shards: 2,
        generated_secret: None,
    };
    let relay = Running::start(cfg).expect("relay starts");

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cert).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "localhost".try_into().unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(relay.tls[0]).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let local = tcp.local_addr().unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&binding_request(&tid())).unwrap();
    let mut pending = Vec::new();
    let resp = loop {
        if let Some(n) = relay::stun::stream_frame_len(&pending).unwrap() {
            break pending[..n].to_vec();
        }
        let mut buf = [0u8; 2048];
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "TLS connection closed");
        pending.extend_from_slice(&buf[..n]);
    };
    assert_eq!(xor_mapped(&resp), local);
    relay.stop().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Measures resident memory per idle UDP allocation of the binary.
/// `cargo test -p relay --test shell idle_allocation_memory -- --ignored --nocapture`
#[test]
#[ignore = "measurement, opens 2 x N sockets"]
fn idle_allocation_memory() {
    let n: usize = std::env::var("ALLOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    // SAFETY: plain rlimit calls on this process.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let mut bin = Binary::start(&["--relay-ports", "20000-59999", "--unauth-rate", "1000000"]);
    let udp = bin.listening("udp");
    let transport = (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
    let probe = udp_client();
    let resp = udp_transact(
        &probe,
        udp,
        &build(Method::ALLOCATE, std::slice::from_ref(&transport), None),
    );
    let m = Message::parse(&resp).unwrap();
    let realm = m.str_attr(attr::REALM).unwrap().unwrap().to_string();
    let nonce = m.str_attr(attr::NONCE).unwrap().unwrap().to_string();
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let username = format!("{expiry}:mem");
    let key = integrity::long_term_key_md5(&username, &realm, &rest_password(b"bin-secret", &username));
    let auth = Auth {
        username,
        realm,
        nonce,
        key,
    };
    // Warm up (first allocations grow maps and buffers once).
    let mut clients = Vec::new();
    let allocate = |clients: &mut Vec<UdpSocket>| {
        if clients.len().is_multiple_of(1000) {
            eprintln!("{} allocations", clients.len());
        }
        let c = udp_client();
        let resp = udp_transact(
            &c,
            udp,
            &build(Method::ALLOCATE, std::slice::from_ref(&transport), Some(&auth)),
        );
        assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);
        clients.push(c);
    };
    for _ in 0..200 {
        allocate(&mut clients);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(bin.child.id());
    let t = Instant::now();
    for _ in 0..n {
        allocate(&mut clients);
    }
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(bin.child.id());
    println!(
        "{n} allocations in {took:?}; RSS {before} KiB -> {after} KiB: {:.2} KiB per idle allocation",
        (after - before) as f64 / n as f64
    );
}

/// SO_REUSEPORT would let a second relay on the same address silently take
/// part of the clients; it must refuse to start instead.
#[test]
fn a_second_relay_on_a_taken_address_refuses_to_start() {
    let first = start(2);
    let taken = first.udp[0];
    let mut server = ServerConfig::for_tests(SECRET);
    server.port_min = 41000;
    server.port_max = 41099;
    let cfg = RelayConfig {
        server,
        listen: vec![taken],
        tls_listen: vec![],
        tls: None,
        metrics_listen: None,
        drain_timeout: Duration::from_secs(1),
        shards: 2,
        generated_secret: None,
    };
    let err = Running::start(cfg).err().expect("the address is taken");
    assert!(err.to_string().contains("in use"), "{err}");
    first.stop().expect("first relay stops");
}
