//! Building responses: success and error answers, signing, and the
//! amplification budget for unauthenticated requests.
use super::*;

impl Server {
    pub(super) fn binding(&mut self, tuple: &FiveTuple, msg: &Message<'_>, reply: &mut [u8]) -> Action {
        let fingerprint = msg.has(attr::FINGERPRINT);
        let budget = msg.as_bytes().len();
        let built = (|| {
            let mut b = MessageBuilder::new(reply, Class::Success, Method::BINDING, msg.transaction_id())?;
            b.add_xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client)?;
            self.maybe_software(&mut b, budget, fingerprint)?;
            if fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, EncodeError>(b.finish())
        })();
        reply_or_drop(built)
    }

    /// Adds SOFTWARE only when the response stays within `budget` bytes
    /// (unauthenticated answers must not amplify).
    pub(super) fn maybe_software(
        &self,
        b: &mut MessageBuilder<'_>,
        budget: usize,
        fingerprint: bool,
    ) -> Result<(), EncodeError> {
        if let Some(sw) = &self.cfg.software {
            let after = b.len() + 4 + sw.len().div_ceil(4) * 4 + if fingerprint { 8 } else { 0 };
            if after <= budget {
                b.add(attr::SOFTWARE, sw.as_bytes())?;
            }
        }
        Ok(())
    }

    /// An error response; signed with `signed` when the request authenticated.
    pub(super) fn reply_error(
        &mut self,
        reply: &mut [u8],
        msg: &Message<'_>,
        code: u16,
        signed: Option<(Key, IntegrityKind)>,
        extra: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), EncodeError>,
    ) -> Action {
        let fingerprint = msg.has(attr::FINGERPRINT);
        let budget = msg.as_bytes().len();
        let built = (|| {
            let mut b = MessageBuilder::new(reply, Class::Error, msg.method(), msg.transaction_id())?;
            let reason = reason(code);
            let room = b.len() + 8 + reason.len().div_ceil(4) * 4 + if fingerprint { 8 } else { 0 };
            // Unauthenticated errors keep to the request's size (no amplification).
            let reason = if signed.is_some() || room <= budget { reason } else { "" };
            b.add_error_code(code, reason)?;
            extra(&mut b)?;
            if let Some((key, kind)) = signed {
                sign(&mut b, &key, kind)?;
            }
            if fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, EncodeError>(b.finish())
        })();
        reply_or_drop(built)
    }

    /// A signed success response with attributes from `fill`.
    pub(super) fn reply_success(
        &mut self,
        reply: &mut [u8],
        msg: &Message<'_>,
        authed: &Authed,
        fill: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), EncodeError>,
    ) -> Action {
        let fingerprint = msg.has(attr::FINGERPRINT);
        let built = (|| {
            let mut b = MessageBuilder::new(reply, Class::Success, msg.method(), msg.transaction_id())?;
            fill(&mut b)?;
            if let Some(sw) = &self.cfg.software {
                b.add(attr::SOFTWARE, sw.as_bytes())?;
            }
            sign(&mut b, &authed.key, authed.kind)?;
            if fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, EncodeError>(b.finish())
        })();
        reply_or_drop(built)
    }
}

pub(super) fn reply_or_drop(built: Result<usize, EncodeError>) -> Action {
    match built {
        Ok(n) => Action::Reply(n),
        Err(_) => Action::Nothing,
    }
}

pub(super) fn sign(b: &mut MessageBuilder<'_>, key: &Key, kind: IntegrityKind) -> Result<(), EncodeError> {
    match kind {
        IntegrityKind::Sha1 => b.add_message_integrity(key.as_bytes()),
        IntegrityKind::Sha256 => b.add_message_integrity_sha256(key.as_bytes()),
    }
}

pub(super) fn error_message(
    buf: &mut [u8],
    method: Method,
    tid: &TransactionId,
    code: u16,
    key: &Key,
    kind: IntegrityKind,
) -> Result<usize, EncodeError> {
    let mut b = MessageBuilder::new(buf, Class::Error, method, tid)?;
    b.add_error_code(code, reason(code))?;
    sign(&mut b, key, kind)?;
    b.add_fingerprint()?;
    Ok(b.finish())
}

/// ADDRESS-ERROR-CODE value (RFC 8656 §18.9): family, reserved, class, number.
pub(super) fn address_error_code(family: u8, code: u16) -> [u8; 4] {
    [family, 0, (code / 100) as u8, (code % 100) as u8]
}

/// Reason phrases of the error codes this server sends.
pub fn reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        446 => "Connection Already Exists",
        447 => "Connection Timeout or Failure",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}
