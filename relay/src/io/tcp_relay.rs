//! RFC 6062 TCP relaying: relay listeners, connections to peers from the
//! relayed address, and the splice between a bound data connection and its
//! peer connection.
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::Instrument;

use super::relay_socket::Relay;
use super::shard::Shard;
use super::Shared;
use crate::turn::RelayId;

/// RFC 6062 §5.2: how long a Connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub enum PeerConn {
    Connecting(AbortHandle),
    /// Established, waiting for the client's ConnectionBind.
    Ready(TcpStream),
    /// Piped to a data connection; notifying ends the pipe.
    Spliced(Rc<Notify>),
}

/// A process-wide claim on a TCP relayed address. Relay listeners need
/// SO_REUSEPORT (so `tcp_connect` can bind the same address), which would
/// also let two shards listen on one port; the claim is what keeps the
/// address exclusive. Taken only when an allocation is created.
pub struct PortClaim {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl PortClaim {
    fn take(shared: &Arc<Shared>, addr: SocketAddr) -> io::Result<Self> {
        let mut set = shared
            .tcp_relay_addrs
            .lock()
            .map_err(|_| io::Error::other("poisoned claim set"))?;
        if !set.insert(addr) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        Ok(PortClaim {
            shared: shared.clone(),
            addr,
        })
    }
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        if let Ok(mut set) = self.shared.tcp_relay_addrs.lock() {
            set.remove(&self.addr);
        }
    }
}

pub fn listen_tcp(shard: &Rc<Shard>, addr: SocketAddr) -> io::Result<RelayId> {
    let claim = PortClaim::take(&shard.shared, addr)?;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    let listener = TcpListener::from_std(sock.into())?;
    let mut relays = shard.relays.borrow_mut();
    let id = relays.next_id();
    let span = tracing::debug_span!("tcp_relay", relay = id.0, %addr);
    let task = tokio::task::spawn_local(accept_peers(shard.clone(), id, listener).instrument(span)).abort_handle();
    relays.insert(
        id,
        Relay::Tcp {
            addr,
            task,
            _claim: claim,
        },
    );
    Ok(id)
}

async fn accept_peers(shard: Rc<Shard>, id: RelayId, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let s = shard.clone();
        shard.with_server(move |server, _| {
            // The stream goes into the map before the ConnectionAttempt
            // indication leaves (events drain after this closure).
            if let Some(cid) = server.handle_tcp_incoming(Instant::now(), id, peer) {
                s.peers.borrow_mut().insert(cid, PeerConn::Ready(stream));
            }
        });
    }
}

pub fn tcp_connect(shard: &Rc<Shard>, relay: RelayId, peer: SocketAddr, connection_id: u32) {
    let local = match shard.relays.borrow().get(relay) {
        Some(Relay::Tcp { addr, .. }) => Some(*addr),
        _ => None,
    };
    let s = shard.clone();
    let task = tokio::task::spawn_local(async move {
        let result = match local {
            Some(local) => match tokio::time::timeout(CONNECT_TIMEOUT, connect_from(local, peer)).await {
                Ok(r) => r,
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            },
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no TCP relay listener")),
        };
        let result = match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                s.peers.borrow_mut().insert(connection_id, PeerConn::Ready(stream));
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, %peer, connection_id, "TCP connect to peer failed");
                s.peers.borrow_mut().remove(&connection_id);
                Err(e)
            }
        };
        s.with_server(|server, _| server.handle_tcp_connected(Instant::now(), connection_id, result));
    });
    shard
        .peers
        .borrow_mut()
        .insert(connection_id, PeerConn::Connecting(task.abort_handle()));
}

async fn connect_from(local: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let sock = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // The relay listener holds this address; both carry SO_REUSEPORT so the
    // outgoing connection can share it, as RFC 6062 §5.2 requires.
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(local)?;
    sock.connect(peer).await
}

pub fn tcp_close(shard: &Rc<Shard>, connection_id: u32) {
    let entry = shard.peers.borrow_mut().remove(&connection_id);
    match entry {
        Some(PeerConn::Connecting(task)) => task.abort(),
        Some(PeerConn::Spliced(stop)) => stop.notify_one(),
        Some(PeerConn::Ready(_)) | None => {}
    }
}

/// Pipes a bound data connection and its peer connection until either side
/// ends or the core closes the connection. `early` holds bytes the client
/// sent right behind its ConnectionBind.
pub async fn splice<S: AsyncRead + AsyncWrite + Unpin>(shard: &Rc<Shard>, mut client: S, cid: u32, early: Vec<u8>) {
    let entry = shard.peers.borrow_mut().remove(&cid);
    let mut peer = match entry {
        Some(PeerConn::Ready(peer)) => peer,
        other => {
            if let Some(PeerConn::Connecting(t)) = other {
                t.abort();
            }
            tracing::debug!(connection_id = cid, "bound data connection has no peer connection");
            shard.with_server(|server, _| server.handle_tcp_closed(cid));
            return;
        }
    };
    let stop = Rc::new(Notify::new());
    shard.peers.borrow_mut().insert(cid, PeerConn::Spliced(stop.clone()));
    tracing::debug!(connection_id = cid, "splicing data connection to peer");
    let pipe = async {
        if !early.is_empty() {
            peer.write_all(&early).await?;
        }
        tokio::io::copy_bidirectional(&mut client, &mut peer).await
    };
    let ended_by_io = tokio::select! {
        r = pipe => {
            if let Err(e) = r {
                tracing::debug!(error = %e, connection_id = cid, "TCP relay pipe failed");
            }
            true
        }
        _ = stop.notified() => false,
    };
    if ended_by_io {
        shard.peers.borrow_mut().remove(&cid);
        shard.with_server(|server, _| server.handle_tcp_closed(cid));
    }
}
