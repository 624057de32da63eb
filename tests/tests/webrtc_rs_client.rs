//! The webrtc-rs `turn` crate (an independent TURN client stack) against the
//! relay: long-term credentials from `rtc-relay credentials`, Allocate,
//! CreatePermission, ChannelBind, and data both ways with a UDP peer on
//! 127.0.0.1. The client's socket is wrapped so the test sees which framing
//! actually went over the wire (Send indication vs ChannelData).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use e2e::{rtc_relay_credentials, unix_now, Credentials, Impl, RunningServer, ServerOpts};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

/// A UDP socket that counts ChannelData and STUN datagrams in each direction.
struct Recording {
    inner: UdpSocket,
    sent_channel_data: AtomicU64,
    sent_stun: AtomicU64,
    recv_channel_data: AtomicU64,
}

impl Recording {
    fn count_sent(&self, buf: &[u8]) {
        match buf.first() {
            Some(0x40..=0x4f) => self.sent_channel_data.fetch_add(1, Ordering::SeqCst),
            Some(0..=3) => self.sent_stun.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
    }
}

#[async_trait]
impl Conn for Recording {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.inner.connect(addr).await?)
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.inner.recv(buf).await?)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (n, from) = self.inner.recv_from(buf).await?;
        if matches!(buf.first(), Some(0x40..=0x4f)) {
            self.recv_channel_data.fetch_add(1, Ordering::SeqCst);
        }
        Ok((n, from))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.count_sent(buf);
        Ok(self.inner.send(buf).await?)
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.count_sent(buf);
        Ok(self.inner.send_to(buf, target).await?)
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.inner.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

const SECRET: &str = "webrtc-rs-secret";

async fn relay_both_ways(imp: Impl) {
    let opts = ServerOpts {
        secret: Some(SECRET.into()),
        ..ServerOpts::default()
    };
    let server = RunningServer::start(imp, opts);
    let creds = match imp {
        Impl::RtcRelay => {
            let c = rtc_relay_credentials(SECRET, "webrtc-rs", 600, &[]);
            assert_eq!(c.ttl, 600);
            let expiry: u64 = c
                .username
                .split(':')
                .next()
                .unwrap()
                .parse()
                .expect("REST username starts with expiry");
            let now = unix_now();
            assert!(
                (now + 590..=now + 610).contains(&expiry),
                "expiry {expiry} is not now+600 ({now})"
            );
            assert!(c.username.ends_with(":webrtc-rs"), "username {}", c.username);
            // The CLI and the scheme every client computes must agree.
            assert_eq!(Credentials::rest(SECRET, "webrtc-rs", expiry).password, c.credential);
            Credentials {
                username: c.username,
                password: c.credential,
            }
        }
        Impl::Coturn => Credentials::rest(SECRET, "webrtc-rs", unix_now() + 600),
    };

    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let rec = Arc::new(Recording {
        inner: sock,
        sent_channel_data: AtomicU64::new(0),
        sent_stun: AtomicU64::new(0),
        recv_channel_data: AtomicU64::new(0),
    });
    let addr = server.addr().to_string();
    let client = Client::new(ClientConfig {
        stun_serv_addr: addr.clone(),
        turn_serv_addr: addr,
        username: creds.username.clone(),
        password: creds.password.clone(),
        realm: server.opts.realm.clone(),
        software: String::new(),
        rto_in_ms: 0,
        conn: rec.clone(),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();

    let mapped = timeout(Duration::from_secs(10), client.send_binding_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        mapped,
        rec.inner.local_addr().unwrap(),
        "XOR-MAPPED-ADDRESS is not our address"
    );

    let relay_conn = timeout(Duration::from_secs(10), client.allocate())
        .await
        .expect("Allocate timed out")
        .unwrap();
    let relayed = relay_conn.local_addr().unwrap();
    assert_eq!(
        relayed.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "relayed address {relayed}"
    );
    assert!(
        (server.relay_ports.0..=server.relay_ports.1).contains(&relayed.port()),
        "relayed port {} outside the configured range {:?}",
        relayed.port(),
        server.relay_ports
    );

    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = vec![0u8; 2048];

    // Client -> peer. The first sends go as Send indications while the crate's
    // ChannelBind is in flight; keep going until ChannelData carried one.
    let mut delivered_via_channel = false;
    for i in 0..100 {
        let msg = format!("client->peer #{i}");
        let channel_before = rec.sent_channel_data.load(Ordering::SeqCst);
        relay_conn.send_to(msg.as_bytes(), peer_addr).await.unwrap();
        let used_channel = rec.sent_channel_data.load(Ordering::SeqCst) > channel_before;
        let (n, from) = timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("peer never received {msg:?} (via channel: {used_channel})"))
            .unwrap();
        assert_eq!(from, relayed, "peer got data from {from}, not from the relayed address");
        assert_eq!(&buf[..n], msg.as_bytes());
        if used_channel {
            delivered_via_channel = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        delivered_via_channel,
        "the client never got a channel bound (ChannelBind failed?)"
    );
    // A burst over the channel, each one checked.
    for i in 0..20 {
        let msg = format!("channel burst #{i} {}", "x".repeat(i * 37));
        relay_conn.send_to(msg.as_bytes(), peer_addr).await.unwrap();
        let (n, from) = timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, relayed);
        assert_eq!(&buf[..n], msg.as_bytes());
    }

    // Peer -> client, through the permission the sends installed.
    let mut rbuf = vec![0u8; 2048];
    for i in 0..20 {
        let msg = format!("peer->client #{i} {}", "y".repeat(i * 41));
        peer.send_to(msg.as_bytes(), relayed).await.unwrap();
        let (n, from) = timeout(Duration::from_secs(5), relay_conn.recv_from(&mut rbuf))
            .await
            .unwrap_or_else(|_| panic!("client never received {msg:?}"))
            .unwrap();
        assert_eq!(from, peer_addr);
        assert_eq!(&rbuf[..n], msg.as_bytes());
    }
    assert!(
        rec.recv_channel_data.load(Ordering::SeqCst) >= 20,
        "the server did not use the bound channel towards the client (ChannelData received: {})",
        rec.recv_channel_data.load(Ordering::SeqCst)
    );

    // A peer without a permission is not relayed: the client must see nothing from it.
    let stranger = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).await;
    if let Ok(stranger) = stranger {
        stranger.send_to(b"no permission", relayed).await.unwrap();
        // Then a permitted datagram; it must be the next thing the client reads.
        peer.send_to(b"after stranger", relayed).await.unwrap();
        let (n, from) = timeout(Duration::from_secs(5), relay_conn.recv_from(&mut rbuf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (from, &rbuf[..n]),
            (peer_addr, &b"after stranger"[..]),
            "a peer without permission got through"
        );
    }

    relay_conn.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_allocate_permission_channel_data_both_ways() {
    relay_both_ways(Impl::under_test()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_sanity_webrtc_rs_client() {
    if !e2e::require_tool("turnserver") {
        return;
    }
    relay_both_ways(Impl::Coturn).await;
}
