//! CreatePermission and ChannelBind (RFC 8656 §9, §11): peer checks and
//! installing permissions all or none.
use super::*;

impl Server {
    /// Validates the peer addresses of a CreatePermission or ChannelBind.
    pub(super) fn check_peer(&self, alloc: &Allocation, peer: SocketAddr) -> Result<(), u16> {
        if !alloc.has_family(peer.ip()) {
            return Err(443);
        }
        if !self.cfg.peer_filter.is_allowed(peer.ip()) {
            return Err(403);
        }
        Ok(())
    }

    pub(super) fn create_permission(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: &Authed,
        reply: &mut [u8],
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        let id = existing.ok_or((437, signed))?;
        let alloc = self.allocations.get(id).ok_or((437, signed))?;
        let mut peers = [IpAddr::V4(Ipv4Addr::UNSPECIFIED); 16];
        let mut n = 0;
        for peer in msg.xor_addresses(attr::XOR_PEER_ADDRESS) {
            let peer = peer.map_err(|_| (400, signed))?;
            if n == peers.len() {
                return Err((400, signed));
            }
            self.check_peer(alloc, peer).map_err(|code| (code, signed))?;
            peers[n] = peer.ip();
            n += 1;
        }
        if n == 0 {
            return Err((400, signed));
        }
        let deadline = now + self.cfg.permission_lifetime;
        self.install_permissions(now, id, &peers[..n], deadline)
            .map_err(|code| (code, signed))?;
        Ok(self.reply_success(reply, msg, authed, |_| Ok(())))
    }

    /// Installs or refreshes permissions, all or none (RFC 8656 §9.2).
    pub(super) fn install_permissions(
        &mut self,
        now: Instant,
        id: AllocId,
        ips: &[IpAddr],
        deadline: Instant,
    ) -> Result<(), u16> {
        let alloc = self.allocations.get_mut(id).ok_or(437u16)?;
        let new = ips.iter().filter(|ip| !alloc.permissions.contains_key(ip)).count();
        if alloc.permissions.len() + new > MAX_PERMISSIONS {
            return Err(508);
        }
        if new > 0 && !alloc.new_peers.try_take(now, new as u64) {
            return Err(508);
        }
        for ip in ips {
            alloc.permissions.insert(*ip, deadline);
        }
        self.stats.permissions += new as u64;
        Ok(())
    }

    pub(super) fn channel_bind(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        authed: &Authed,
        reply: &mut [u8],
    ) -> Result<Action, Reject> {
        let signed = Some((authed.key, authed.kind));
        let id = existing.ok_or((437, signed))?;
        let number = match msg.channel_number() {
            Some(Ok(n)) if (channel_data::MIN_CHANNEL..=channel_data::MAX_CHANNEL).contains(&n) => n,
            _ => return Err((400, signed)),
        };
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Some(Ok(p)) => p,
            _ => return Err((400, signed)),
        };
        let alloc = self.allocations.get(id).ok_or((437, signed))?;
        if alloc.tcp {
            return Err((400, signed));
        }
        self.check_peer(alloc, peer).map_err(|code| (code, signed))?;
        // A channel stays with its peer and a peer with its channel (RFC 8656 §11.2).
        if let Some(b) = alloc.channels.get(&number) {
            if b.peer != peer {
                return Err((400, signed));
            }
        } else if alloc.channel_by_peer.get(&peer).is_some_and(|n| *n != number) || alloc.channels.len() >= MAX_CHANNELS
        {
            return Err((400, signed));
        }
        self.install_permissions(now, id, &[peer.ip()], now + self.cfg.permission_lifetime)
            .map_err(|code| (code, signed))?;
        let expires = now + self.cfg.channel_lifetime;
        let alloc = self.allocations.get_mut(id).ok_or((437, signed))?;
        if alloc
            .channels
            .insert(number, crate::turn::allocation::ChannelBinding { peer, expires })
            .is_none()
        {
            self.stats.channels += 1;
        }
        alloc.channel_by_peer.insert(peer, number);
        Ok(self.reply_success(reply, msg, authed, |_| Ok(())))
    }
}
