//! A str0m client on real loopback sockets (UDP, or ICE-TCP with RFC 4571
//! framing written here rather than borrowed from the SFU, so the two are
//! checked against each other), pumped on the wall clock, for the tests
//! that run the whole SFU with its sockets.
#![allow(dead_code)]
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sfu::{ParticipantId, Sfu, SfuEvent, TrackId};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::sync::mpsc::UnboundedReceiver;

pub enum Transport {
    Udp(UdpSocket),
    /// The connection and the bytes read but not yet a whole frame.
    Tcp(TcpStream, Vec<u8>),
}

pub struct Client {
    pub rtc: Rtc,
    pub net: Transport,
    pub addr: SocketAddr,
    /// (SSRC, payload) of each RTP packet received.
    pub rtp: Vec<(u32, Vec<u8>)>,
    pub connected: bool,
    /// Datagrams sent over TCP.
    pub tcp_sent: usize,
}

fn rtc() -> Rtc {
    RtcConfig::new()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .set_rtp_mode(true)
        .build(Instant::now())
}

impl Client {
    pub fn udp() -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let addr = sock.local_addr().unwrap();
        let mut rtc = rtc();
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Client::new(rtc, Transport::Udp(sock), addr)
    }

    /// Connects to the SFU's TCP port first (an active candidate names the
    /// connection's own address, which exists only once connected).
    pub fn tcp(server: SocketAddr) -> Client {
        let stream = TcpStream::connect(server).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_nonblocking(true).unwrap();
        let addr = stream.local_addr().unwrap();
        let mut rtc = rtc();
        let c = Candidate::builder()
            .tcp()
            .host(addr)
            .tcptype(TcpType::Active)
            .build()
            .unwrap();
        rtc.add_local_candidate(c);
        Client::new(rtc, Transport::Tcp(stream, Vec::new()), addr)
    }

    fn new(rtc: Rtc, net: Transport, addr: SocketAddr) -> Client {
        Client {
            rtc,
            net,
            addr,
            rtp: Vec::new(),
            connected: false,
            tcp_sent: 0,
        }
    }

    fn input(&mut self, proto: Protocol, from: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else { return };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto,
                source: from,
                destination: self.addr,
                contents,
            },
        );
        self.rtc.handle_input(input).unwrap();
    }

    /// Feeds what arrived, fires timers, sends what is due.
    pub fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        match &mut self.net {
            Transport::Udp(sock) => {
                let mut got = Vec::new();
                while let Ok((n, from)) = sock.recv_from(&mut buf) {
                    got.push((from, buf[..n].to_vec()));
                }
                for (from, d) in got {
                    self.input(Protocol::Udp, from, &d);
                }
            }
            Transport::Tcp(stream, pending) => {
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => panic!("the SFU closed the TCP connection"),
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("TCP read: {e}"),
                    }
                }
                let from = stream.peer_addr().unwrap();
                let mut frames = Vec::new();
                while pending.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
                    if pending.len() < 2 + len {
                        break;
                    }
                    frames.push(pending[2..2 + len].to_vec());
                    pending.drain(..2 + len);
                }
                for f in frames {
                    self.input(Protocol::Tcp, from, &f);
                }
            }
        }
        self.rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(t) => match &mut self.net {
                    Transport::Udp(sock) => {
                        let _ = sock.send_to(&t.contents, t.destination);
                    }
                    Transport::Tcp(stream, _) => {
                        assert_eq!(t.proto, Protocol::Tcp, "a TCP-only client sends over TCP");
                        let mut framed = u16::try_from(t.contents.len()).unwrap().to_be_bytes().to_vec();
                        framed.extend_from_slice(&t.contents);
                        write_all(stream, &framed);
                        self.tcp_sent += 1;
                    }
                },
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::RtpPacket(p)) => self.rtp.push((*p.header.ssrc, p.payload.to_vec())),
                Output::Event(_) => {}
            }
        }
    }
}

/// A blocking write on the non-blocking stream, bounded in time.
pub fn write_all(stream: &mut TcpStream, mut data: &[u8]) {
    let end = Instant::now() + Duration::from_secs(10);
    while !data.is_empty() {
        match stream.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("TCP write: {e}"),
        }
    }
}

pub fn pump_until(clients: &mut [&mut Client], max: Duration, mut f: impl FnMut(&mut [&mut Client]) -> bool) -> bool {
    let end = Instant::now() + max;
    while Instant::now() < end {
        for c in clients.iter_mut() {
            c.pump();
        }
        if f(clients) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

pub fn next_event(events: &mut UnboundedReceiver<SfuEvent>, mut f: impl FnMut(&SfuEvent) -> bool) -> Option<SfuEvent> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match events.try_recv() {
            Ok(e) if f(&e) => return Some(e),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    None
}

/// Once `track` is published, subscribes `subscriber` (whose connection is
/// `client`) to it and answers the SFU's offer; the caller pumps until the
/// subscriber connects.
pub fn subscribe(
    rt: &tokio::runtime::Runtime,
    sfu: &Sfu,
    events: &mut UnboundedReceiver<SfuEvent>,
    subscriber: ParticipantId,
    client: &mut Client,
    track: TrackId,
) {
    assert!(
        next_event(
            events,
            |e| matches!(e, SfuEvent::TrackPublished { track: t, .. } if *t == track)
        )
        .is_some(),
        "{track} published"
    );
    rt.block_on(sfu.subscribe(subscriber, track)).unwrap();
    let Some(SfuEvent::Offer { sdp, .. }) = next_event(
        events,
        |e| matches!(e, SfuEvent::Offer { participant, .. } if *participant == subscriber),
    ) else {
        panic!("no subscriber offer");
    };
    let answer = client
        .rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&sdp).unwrap())
        .unwrap();
    rt.block_on(sfu.answer(subscriber, answer.to_sdp_string())).unwrap();
}
