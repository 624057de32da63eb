//! RFC 6062 TCP relaying: Connect, ConnectionBind, ConnectionAttempt and
//! the lifecycle of peer connections.
use super::*;

impl Server {
    pub(super) fn new_connection_id(&mut self) -> u32 {
        loop {
            let id = (self.rng.random::<u32>() & !0xff) | self.shard as u32;
            if !self.tcp_peers.contains_key(&id) {
                return id;
            }
        }
    }

    pub(super) fn connect(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: &Authed,
        io: &mut dyn RelayIo,
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        let id = existing.ok_or((437, signed))?;
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return Err((400, signed)),
        };
        let alloc = self.allocations.get(id).ok_or((437, signed))?;
        if !alloc.tcp {
            return Err((400, signed));
        }
        self.check_peer(alloc, peer).map_err(|code| (code, signed))?;
        // RFC 6062 §5.2: one connection per peer address.
        if self.tcp_peers.values().any(|p| p.alloc == id && p.peer == peer) {
            return Err((446, signed));
        }
        let relay = alloc.relay_for(&peer).map(|r| r.relay).ok_or((443, signed))?;
        // Connect installs the permission it needs (as coturn does).
        self.install_permissions(now, id, &[peer.ip()], now + self.cfg.permission_lifetime)
            .map_err(|code| (code, signed))?;
        let cid = self.new_connection_id();
        self.tcp_peers.insert(
            cid,
            TcpPeer {
                alloc: id,
                peer,
                connecting: Some((*tuple, *msg.transaction_id(), authed.kind)),
                deadline: now + PENDING_TIMEOUT,
                bound: false,
            },
        );
        self.stats.tcp_connections = self.tcp_peers.len() as u64;
        io.tcp_connect(relay, peer, cid);
        Ok(Action::Nothing)
    }

    pub(super) fn connection_bind(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        reply: &mut [u8],
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        if tuple.transport == Transport::Udp {
            return Err((400, signed));
        }
        let cid = match msg.u32_attr(attr::CONNECTION_ID) {
            Some(Ok(c)) => c,
            _ => return Err((400, signed)),
        };
        let Some(p) = self.tcp_peers.get(&cid) else {
            return Err((400, signed));
        };
        if p.bound || p.connecting.is_some() || p.deadline <= now {
            return Err((400, signed));
        }
        let owner = self.allocations.get(p.alloc).ok_or((400, signed))?;
        if *owner.username != *authed.username {
            return Err((441, signed));
        }
        if let Some(p) = self.tcp_peers.get_mut(&cid) {
            p.bound = true;
        }
        self.events.push_back(Event::TcpBound {
            tuple: *tuple,
            connection_id: cid,
        });
        Ok(self.reply_success(reply, msg, authed, |_| Ok(())))
    }

    /// Outcome of [`RelayIo::tcp_connect`]. Queues the Connect response.
    pub fn handle_tcp_connected(&mut self, now: Instant, connection_id: u32, result: std::io::Result<()>) {
        let Some(p) = self.tcp_peers.get_mut(&connection_id) else {
            return;
        };
        let Some((tuple, tid, kind)) = p.connecting.take() else {
            return;
        };
        let alloc_id = p.alloc;
        p.deadline = now + PENDING_TIMEOUT;
        let Some(key) = self.allocations.get(alloc_id).map(|a| a.key) else {
            self.tcp_peers.remove(&connection_id);
            return;
        };
        let mut buf = [0u8; 256];
        let built = (|| {
            let ok = result.is_ok();
            let class = if ok { Class::Success } else { Class::Error };
            let mut b = MessageBuilder::new(&mut buf, class, Method::CONNECT, &tid)?;
            if ok {
                b.add_u32(attr::CONNECTION_ID, connection_id)?;
            } else {
                b.add_error_code(447, reason(447))?;
            }
            sign(&mut b, &key, kind)?;
            b.add_fingerprint()?;
            Ok::<usize, EncodeError>(b.finish())
        })();
        if result.is_err() {
            self.tcp_peers.remove(&connection_id);
            self.stats.tcp_connections = self.tcp_peers.len() as u64;
        }
        if let Ok(n) = built {
            self.events.push_back(Event::Transmit {
                tuple,
                data: buf[..n].to_vec(),
            });
        }
    }

    /// A peer opened a TCP connection to the TCP relay listener `relay`.
    /// Returns the CONNECTION-ID to keep it under (a ConnectionAttempt
    /// indication is queued), or `None` when no permission allows that peer
    /// and the shell must close it.
    pub fn handle_tcp_incoming(&mut self, now: Instant, relay: RelayId, peer: SocketAddr) -> Option<u32> {
        let id = self.allocations.by_relay(relay)?;
        let alloc = self.allocations.get(id)?;
        if !alloc.permitted(peer.ip(), now) {
            self.stats.drop(Drop::NoPermission);
            return None;
        }
        let tuple = alloc.tuple;
        let cid = self.new_connection_id();
        self.tcp_peers.insert(
            cid,
            TcpPeer {
                alloc: id,
                peer,
                connecting: None,
                deadline: now + PENDING_TIMEOUT,
                bound: false,
            },
        );
        self.stats.tcp_connections = self.tcp_peers.len() as u64;
        let mut buf = [0u8; 128];
        let tid: TransactionId = self.rng.random();
        let built = (|| {
            let mut b = MessageBuilder::new(&mut buf, Class::Indication, Method::CONNECTION_ATTEMPT, &tid)?;
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)?;
            b.add_u32(attr::CONNECTION_ID, cid)?;
            b.add_fingerprint()?;
            Ok::<usize, EncodeError>(b.finish())
        })();
        if let Ok(n) = built {
            self.events.push_back(Event::Transmit {
                tuple,
                data: buf[..n].to_vec(),
            });
        }
        Some(cid)
    }

    /// A peer TCP connection ended (either side closed, or the pipe failed).
    pub fn handle_tcp_closed(&mut self, connection_id: u32) {
        self.tcp_peers.remove(&connection_id);
        self.stats.tcp_connections = self.tcp_peers.len() as u64;
    }

    // ------------------------------------------------------------ time, life
}
