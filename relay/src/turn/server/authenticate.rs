//! The long-term credential mechanism (RFC 8489 §9.2) on a request:
//! nonce, realm, password algorithm, username or USERHASH, integrity.
use super::*;

impl Server {
    /// Long-term credential check (RFC 8489 §9.2). On failure returns the
    /// action to take (a 400/401/438, or a silent drop when rate limited).
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        existing: Option<AllocId>,
        reply: &mut [u8],
    ) -> Result<Authed, Action> {
        let unix = self.unix(now);
        let client_ip = tuple.client.ip();
        if !msg.has_integrity() {
            return Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::Missing));
        }
        let username = match msg.str_attr(attr::USERNAME) {
            Some(Ok(u)) => Some(u.to_owned()),
            Some(Err(_)) => return Err(self.reply_error(reply, msg, 400, None, |_| Ok(()))),
            None => None,
        };
        let realm = msg.str_attr(attr::REALM);
        let nonce = msg.str_attr(attr::NONCE);
        let (Some(Ok(realm)), Some(Ok(nonce))) = (realm, nonce) else {
            return Err(self.reply_error(reply, msg, 400, None, |_| Ok(())));
        };
        if username.is_none() && !msg.has(attr::USERHASH) {
            return Err(self.reply_error(reply, msg, 400, None, |_| Ok(())));
        }
        match self.auth.check_nonce(nonce, client_ip, unix) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => return Err(self.challenge(now, tuple, msg, reply, 438, AuthFailure::StaleNonce)),
            NonceCheck::Invalid => return Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::BadNonce)),
        }
        if realm != self.auth.realm() {
            return Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::UnknownUser));
        }
        // PASSWORD-ALGORITHM(S), RFC 8489 §9.2.4: the client must echo our
        // list unchanged and pick one of it; absent both, MD5.
        let sha256 = match (msg.password_algorithm(), msg.has(attr::PASSWORD_ALGORITHMS)) {
            (None, false) => false,
            (Some(Ok(alg)), true) => {
                let mut algs = [0u16; 4];
                let ok_list = matches!(msg.password_algorithms(&mut algs), Some(Ok(2)))
                    && algs[..2] == [attr::PASSWORD_ALGORITHM_SHA256, attr::PASSWORD_ALGORITHM_MD5];
                match alg {
                    attr::PASSWORD_ALGORITHM_MD5 if ok_list => false,
                    attr::PASSWORD_ALGORITHM_SHA256 if ok_list => true,
                    _ => return Err(self.reply_error(reply, msg, 400, None, |_| Ok(()))),
                }
            }
            _ => return Err(self.reply_error(reply, msg, 400, None, |_| Ok(()))),
        };
        let username = match username {
            Some(u) => u,
            None => match self.username_from_hash(msg) {
                Some(u) => u,
                None => return Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::UnknownUser)),
            },
        };
        // An allocation's later requests reuse its key: no secret HMACs on refreshes.
        if let Some(alloc) = existing.and_then(|id| self.allocations.get(id)) {
            if *alloc.username != *username {
                self.stats.auth_failure(AuthFailure::WrongUser);
                return Err(self.reply_error(reply, msg, 441, None, |_| Ok(())));
            }
            if let Ok(kind) = msg.check_integrity(alloc.key.as_bytes()) {
                return Ok(Authed {
                    key: alloc.key,
                    kind,
                    username,
                });
            }
        }
        let passwords = match self.auth.passwords(&username, unix) {
            Ok(p) => p,
            Err(e) => {
                let why = match e {
                    AuthError::Expired => AuthFailure::Expired,
                    AuthError::Malformed => AuthFailure::MalformedUsername,
                    AuthError::UnknownUser => AuthFailure::UnknownUser,
                };
                return Err(self.challenge(now, tuple, msg, reply, 401, why));
            }
        };
        let realm = self.auth.realm().to_owned();
        for password in &passwords.items {
            let key = if sha256 {
                Key::Sha256(integrity::long_term_key_sha256(&username, &realm, password))
            } else {
                Key::Md5(integrity::long_term_key_md5(&username, &realm, password))
            };
            if let Ok(kind) = msg.check_integrity(key.as_bytes()) {
                return Ok(Authed { key, kind, username });
            }
        }
        Err(self.challenge(now, tuple, msg, reply, 401, AuthFailure::BadIntegrity))
    }

    /// USERHASH can only name static users: a REST username cannot be recovered from its hash.
    pub(super) fn username_from_hash(&self, msg: &Message<'_>) -> Option<String> {
        let hash = msg.attr(attr::USERHASH)?;
        self.cfg
            .auth
            .static_users
            .keys()
            .find(|u| crate::turn::auth::ct_eq(&integrity::userhash(u, self.auth.realm()), hash))
            .cloned()
    }

    /// 401 or 438 with REALM and a fresh NONCE, unsigned, rate limited per
    /// source address.
    pub(super) fn challenge(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        reply: &mut [u8],
        code: u16,
        why: AuthFailure,
    ) -> Action {
        self.stats.auth_failure(why);
        if self.cfg.unauth_per_ip_rate > 0 && !self.unauth_limiter.allow(tuple.client.ip(), now) {
            return self.dropped(Drop::SourceLimited);
        }
        let nonce = self.auth.make_nonce(tuple.client.ip(), self.unix(now));
        let realm = self.auth.realm().to_owned();
        let budget = msg.as_bytes().len();
        let fingerprint = msg.has(attr::FINGERPRINT);
        let built = (|| {
            let mut b = MessageBuilder::new(reply, Class::Error, msg.method(), msg.transaction_id())?;
            // The reason phrase is optional; it is dropped when it would make
            // the answer larger than the question.
            let reason = reason(code);
            let fixed = 20 + 8 + 4 + realm.len().div_ceil(4) * 4 + 4 + nonce.as_str().len().div_ceil(4) * 4;
            let fp = if fingerprint { 8 } else { 0 };
            let with_reason = fixed + reason.len().div_ceil(4) * 4 + fp;
            b.add_error_code(code, if with_reason <= budget { reason } else { "" })?;
            b.add(attr::REALM, realm.as_bytes())?;
            b.add(attr::NONCE, nonce.as_str().as_bytes())?;
            if b.len() + 12 + fp <= budget {
                b.add_password_algorithms(&[attr::PASSWORD_ALGORITHM_SHA256, attr::PASSWORD_ALGORITHM_MD5])?;
            }
            if fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, EncodeError>(b.finish())
        })();
        reply_or_drop(built)
    }
}
