//! Allocate and Refresh (RFC 8656 §7, RFC 6156 dual allocations):
//! relay port choice, EVEN-PORT reservations, lifetimes.
use super::*;

impl Server {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn allocate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: Authed,
        reply: &mut [u8],
        io: &mut dyn RelayIo,
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        if let Some(id) = existing {
            let alloc = self.allocations.get(id).ok_or((437, signed))?;
            if alloc.txid != *msg.transaction_id() {
                return Err((437, signed));
            }
            // A retransmission: answer as the first time (RFC 8656 §7.2).
            let relays = alloc.relays;
            let lifetime = alloc.expires.saturating_duration_since(now).as_secs() as u32;
            let mapped = tuple.client;
            return Ok(self.reply_success(reply, msg, &authed, |b| {
                for r in relays.iter().flatten() {
                    b.add_xor_address(attr::XOR_RELAYED_ADDRESS, r.advertised)?;
                }
                b.add_u32(attr::LIFETIME, lifetime)?;
                b.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
            }));
        }
        let tcp = match msg.requested_transport() {
            None | Some(Err(_)) => return Err((400, signed)),
            Some(Ok(attr::TRANSPORT_UDP)) => false,
            Some(Ok(attr::TRANSPORT_TCP)) => {
                // RFC 6062 §5.1: TCP allocations only over TCP or TLS control connections.
                if tuple.transport == Transport::Udp {
                    return Err((400, signed));
                }
                true
            }
            Some(Ok(_)) => return Err((442, signed)),
        };
        if self.draining {
            if let Some(alt) = self.cfg.alternate_server {
                let action = self.reply_error(reply, msg, 300, signed, |b| b.add_address(attr::ALTERNATE_SERVER, alt));
                return Ok(action);
            }
            return Err((403, signed));
        }
        let token = match msg.reservation_token() {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return Err((400, signed)),
        };
        let even_port = match msg.even_port() {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(_)) => return Err((400, signed)),
        };
        let requested = match msg.family(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(Ok(f @ (attr::FAMILY_IPV4 | attr::FAMILY_IPV6))) => Some(f),
            Some(Ok(_)) => return Err((440, signed)),
            Some(Err(_)) => return Err((400, signed)),
        };
        let additional = match msg.family(attr::ADDITIONAL_ADDRESS_FAMILY) {
            None => None,
            Some(Ok(attr::FAMILY_IPV6)) => Some(attr::FAMILY_IPV6),
            Some(_) => return Err((400, signed)),
        };
        // RFC 8656 §7.2: these combinations are contradictory.
        if (token.is_some() && (even_port.is_some() || requested.is_some() || additional.is_some()))
            || (additional.is_some() && (requested.is_some() || even_port.is_some()))
            || (tcp && (even_port.is_some() || token.is_some()))
        {
            return Err((400, signed));
        }
        if let Err(e) = self.cfg.quota.acquire(&authed.username) {
            debug!(user = %authed.username, ?e, "allocation quota exceeded");
            return Err((486, signed));
        }
        let dont_fragment = msg.has(attr::DONT_FRAGMENT);
        let mut relays: [Option<Relayed>; 2] = [None, None];
        let mut reservation_token = None;
        let mut v6_error = None;
        let bound = if let Some(token) = token {
            match io.take_reserved(token, now, dont_fragment) {
                Some((relay, bound)) => {
                    let advertised = self.advertised(bound);
                    relays[family_index(bound.ip())] = Some(Relayed {
                        relay,
                        advertised,
                        bound,
                    });
                    Ok(())
                }
                None => Err(508),
            }
        } else {
            let primary = if requested == Some(attr::FAMILY_IPV6) { 1 } else { 0 };
            match self.bind_relay(tuple, primary, tcp, even_port, dont_fragment, now, io) {
                Ok((r, tok)) => {
                    relays[primary] = Some(r);
                    reservation_token = tok;
                    if additional.is_some() {
                        match self.bind_relay(tuple, 1, false, None, dont_fragment, now, io) {
                            Ok((r6, _)) => relays[1] = Some(r6),
                            Err(code) => v6_error = Some(code),
                        }
                    }
                    Ok(())
                }
                Err(code) => Err(code),
            }
        };
        if let Err(code) = bound {
            self.cfg.quota.release(&authed.username);
            return Err((code, signed));
        }
        let lifetime = self.lifetime(msg, false).unwrap_or(self.cfg.default_lifetime);
        let bps = self.cfg.max_bps / 8;
        let pps = self.cfg.max_pps;
        let peers = self.cfg.new_peers_per_sec;
        let alloc = Allocation {
            tuple: *tuple,
            username: authed.username.clone().into_boxed_str(),
            key: authed.key,
            txid: *msg.transaction_id(),
            relays,
            tcp,
            created: now,
            expires: now + lifetime,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_by_peer: HashMap::new(),
            bytes: TokenBucket::new(bps, bps),
            packets: TokenBucket::new(pps, pps),
            new_peers: TokenBucket::new(peers, peers.saturating_mul(2)),
        };
        let id = self.allocations.insert(alloc);
        self.stats.allocations = self.allocations.len() as u64;
        self.stats.allocations_created += 1;
        self.schedule_sweep(now);
        info!(
            alloc = id.0,
            shard = self.shard,
            client = %tuple.client,
            user = %authed.username,
            relayed = ?relays.iter().flatten().map(|r| r.advertised).collect::<Vec<_>>(),
            lifetime = lifetime.as_secs(),
            "allocation created"
        );
        let mapped = tuple.client;
        Ok(self.reply_success(reply, msg, &authed, |b| {
            for r in relays.iter().flatten() {
                b.add_xor_address(attr::XOR_RELAYED_ADDRESS, r.advertised)?;
            }
            if let Some(code) = v6_error {
                b.add(attr::ADDRESS_ERROR_CODE, &address_error_code(attr::FAMILY_IPV6, code))?;
            }
            b.add_u32(attr::LIFETIME, lifetime.as_secs() as u32)?;
            if let Some(t) = reservation_token {
                b.add(attr::RESERVATION_TOKEN, &t)?;
            }
            b.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
        }))
    }

    /// The requested lifetime clamped per RFC 8656 §7.2 (Allocate) / §7.3
    /// (Refresh, where 0 deletes): below the default means the default, above
    /// the maximum means the maximum.
    pub(super) fn lifetime(&self, msg: &Message<'_>, refresh: bool) -> Option<Duration> {
        let requested = match msg.u32_attr(attr::LIFETIME) {
            Some(Ok(s)) => Duration::from_secs(s as u64),
            _ => return None,
        };
        if refresh && requested.is_zero() {
            return Some(Duration::ZERO);
        }
        Some(requested.clamp(self.cfg.default_lifetime, self.cfg.max_lifetime))
    }

    pub(super) fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        let ip = match bound.ip() {
            IpAddr::V4(ip) => IpAddr::V4(self.cfg.external_ipv4.unwrap_or(ip)),
            IpAddr::V6(ip) => IpAddr::V6(self.cfg.external_ipv6.unwrap_or(ip)),
        };
        SocketAddr::new(ip, bound.port())
    }

    /// The address relay sockets of `family` (0 = v4, 1 = v6) bind to: the
    /// configured one, else the address the client reached when it is specific.
    pub(super) fn relay_ip(&self, tuple: &FiveTuple, family: usize) -> Option<IpAddr> {
        let configured = if family == 0 {
            self.cfg.relay_ipv4.map(IpAddr::V4)
        } else {
            self.cfg.relay_ipv6.map(IpAddr::V6)
        };
        configured.or_else(|| {
            let ip = tuple.server.ip();
            (family_index(ip) == family && !ip.is_unspecified()).then_some(ip)
        })
    }

    /// Binds a relay socket on a random free port of the configured range.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bind_relay(
        &mut self,
        tuple: &FiveTuple,
        family: usize,
        tcp: bool,
        even_port: Option<bool>,
        dont_fragment: bool,
        now: Instant,
        io: &mut dyn RelayIo,
    ) -> Result<(Relayed, Option<[u8; 8]>), u16> {
        let ip = self.relay_ip(tuple, family).ok_or(440u16)?;
        let (lo, hi) = (self.cfg.port_min, self.cfg.port_max);
        // Random probes first (unpredictable ports, cheap while the range is
        // roomy); then one pass over the whole range from a random start, so
        // a nearly full range still finds its last free ports instead of
        // answering 508 while ports are free.
        let span = u32::from(hi - lo) + 1;
        let start = self.rng.random_range(0..span);
        let candidates = (0..PORT_ATTEMPTS as u32)
            .map(|_| None)
            .chain((0..span).map(|i| Some(lo as u32 + (start + i) % span)));
        for candidate in candidates {
            let mut port = match candidate {
                None => self.rng.random_range(lo..=hi),
                Some(p) => p as u16,
            };
            if even_port.is_some() {
                port &= !1;
                if port < lo || (even_port == Some(true) && port == u16::MAX) {
                    continue;
                }
            }
            let addr = SocketAddr::new(ip, port);
            let bound = if tcp {
                io.listen_tcp(addr)
            } else {
                io.bind_udp(addr, dont_fragment)
            };
            let relay = match bound {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    debug!(%addr, error = %e, "relay bind failed");
                    return Err(508);
                }
            };
            let mut token = None;
            if even_port == Some(true) {
                // Hold the next port for a later Allocate with RESERVATION-TOKEN.
                let next = SocketAddr::new(ip, port + 1);
                let t: [u8; 8] = self.rng.random();
                match io.reserve_udp(next, t, now + PENDING_TIMEOUT) {
                    Ok(()) => token = Some(t),
                    Err(_) => {
                        io.close(relay);
                        continue;
                    }
                }
            }
            return Ok((
                Relayed {
                    relay,
                    advertised: self.advertised(addr),
                    bound: addr,
                },
                token,
            ));
        }
        Err(508)
    }

    pub(super) fn refresh(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: &Authed,
        reply: &mut [u8],
        io: &mut dyn RelayIo,
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        let id = existing.ok_or((437, signed))?;
        let family = match msg.family(attr::REQUESTED_ADDRESS_FAMILY) {
            None => None,
            Some(Ok(attr::FAMILY_IPV4)) => Some(0),
            Some(Ok(attr::FAMILY_IPV6)) => Some(1),
            Some(_) => return Err((440, signed)),
        };
        let lifetime = self.lifetime(msg, true).unwrap_or(self.cfg.default_lifetime);
        let alloc = self.allocations.get_mut(id).ok_or((437, signed))?;
        if let Some(f) = family {
            if alloc.relays[f].is_none() {
                return Err((443, signed));
            }
        }
        if lifetime.is_zero() {
            let other_left = family.is_some_and(|f| alloc.relays[1 - f].is_some());
            if let (Some(f), true) = (family, other_left) {
                // Only this family of a dual allocation ends (RFC 8656 §7.3).
                if let Some(r) = alloc.relays[f].take() {
                    io.close(r.relay);
                    self.allocations.unindex_relay(r.relay);
                }
            } else {
                self.delete_allocation(now, id, io, "refreshed to zero");
            }
        } else {
            alloc.expires = now + lifetime;
        }
        let secs = lifetime.as_secs() as u32;
        Ok(self.reply_success(reply, msg, authed, |b| b.add_u32(attr::LIFETIME, secs)))
    }
}
