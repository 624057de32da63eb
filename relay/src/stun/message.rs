//! Zero-copy STUN message parser.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::attr;
use super::error::ParseError;
use super::fingerprint::fingerprint;
use super::integrity::{hmac_sha1_parts, hmac_sha256_parts};
use super::{Class, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE, MAX_ATTRS};

/// Where one attribute's value sits in the message buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawAttr {
    pub typ: u16,
    /// Offset of the value (after the 4-byte attribute header) from the start of the message.
    pub offset: u16,
    pub len: u16,
}

/// A parsed STUN message borrowing its bytes.
///
/// Attributes after MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 other than
/// those two and FINGERPRINT are ignored (RFC 8489 §14.5). FINGERPRINT, when
/// present, must be last and must match, or parsing fails.
///
/// Messages longer than 65535 bytes in total (header included) are rejected
/// with [`ParseError::BadLength`]: attribute offsets are kept as `u16`, and
/// only a stream transport could carry such a message anyway.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    class: Class,
    method: Method,
    attrs: [RawAttr; MAX_ATTRS],
    n_attrs: u8,
    /// Offset (from message start) of the MESSAGE-INTEGRITY attribute header, if present.
    integrity_at: Option<u16>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header, if present.
    integrity_sha256_at: Option<u16>,
}

/// Which integrity attribute a successful check used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityKind {
    Sha1,
    Sha256,
}

const ZERO_TID: TransactionId = [0; 12];

/// RFC 8489 §14.3: USERNAME is fewer than 509 bytes; RFC 5389 allowed up to
/// 512, and older clients still send that much.
const MAX_USERNAME_LEN: usize = 513;
/// REALM, NONCE, SOFTWARE and reason phrases: fewer than 128 characters,
/// which can take up to 763 bytes (RFC 8489 §14.8-14.10, §14.14).
const MAX_TEXT_LEN: usize = 763;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn pad4(len: usize) -> usize {
    (len + 3) & !3
}

/// Splits the 14-bit message type into class and method (RFC 8489 §5: the
/// class bits C0 and C1 sit at bits 4 and 8, between the method bits).
pub(crate) fn split_type(typ: u16) -> (Class, Method) {
    let class = match ((typ >> 7) & 0x2) | ((typ >> 4) & 0x1) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    let method = (typ & 0x000F) | ((typ & 0x00E0) >> 1) | ((typ & 0x3E00) >> 2);
    (class, Method(method))
}

/// Inverse of [`split_type`]; method bits above the 12 that fit are dropped.
pub(crate) fn join_type(class: Class, method: Method) -> u16 {
    let m = method.0 & 0x0FFF;
    let c = match class {
        Class::Request => 0x0000,
        Class::Indication => 0x0010,
        Class::Success => 0x0100,
        Class::Error => 0x0110,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | c
}

/// The 16-byte XOR mask of RFC 8489 §14.2: magic cookie then transaction id.
/// IPv4 and the port only use its first 4 and 2 bytes.
pub(crate) fn xor_mask(tid: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    mask
}

/// Decodes the family/port/address layout shared by MAPPED-ADDRESS and the
/// XOR variants; `mask` is all zeros for the plain ones.
fn decode_address_with(value: &[u8], mask: &[u8; 16]) -> Result<SocketAddr, ParseError> {
    let family = *value.get(1).ok_or(ParseError::BadValue)?;
    let port = be16(value, 2).ok_or(ParseError::BadValue)? ^ u16::from_be_bytes([mask[0], mask[1]]);
    let ip = match (family, value.len()) {
        (attr::FAMILY_IPV4, 8) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value[4 + i] ^ mask[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (attr::FAMILY_IPV6, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(ParseError::BadValue),
    };
    Ok(SocketAddr::new(ip, port))
}

pub(crate) fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Result<SocketAddr, ParseError> {
    decode_address_with(value, &xor_mask(tid))
}

pub(crate) fn decode_address(value: &[u8]) -> Result<SocketAddr, ParseError> {
    decode_address_with(value, &[0; 16])
}

pub(crate) fn decode_str(typ: u16, value: &[u8]) -> Result<&str, ParseError> {
    let max = match typ {
        attr::USERNAME => MAX_USERNAME_LEN,
        attr::REALM | attr::NONCE | attr::SOFTWARE => MAX_TEXT_LEN,
        _ => usize::MAX,
    };
    if value.len() > max {
        return Err(ParseError::BadValue);
    }
    std::str::from_utf8(value).map_err(|_| ParseError::BadValue)
}

pub(crate) fn decode_u32(value: &[u8]) -> Result<u32, ParseError> {
    let b: [u8; 4] = value.try_into().map_err(|_| ParseError::BadValue)?;
    Ok(u32::from_be_bytes(b))
}

pub(crate) fn decode_error_code(value: &[u8]) -> Result<(u16, &str), ParseError> {
    let (head, reason) = value.split_at_checked(4).ok_or(ParseError::BadValue)?;
    let class = u16::from(head[2] & 0x07);
    let number = u16::from(head[3]);
    if !(3..=6).contains(&class) || number > 99 || reason.len() > MAX_TEXT_LEN {
        return Err(ParseError::BadValue);
    }
    let reason = std::str::from_utf8(reason).map_err(|_| ParseError::BadValue)?;
    Ok((class * 100 + number, reason))
}

/// Walks the algorithm/parameters entries of PASSWORD-ALGORITHMS (and the
/// single entry of PASSWORD-ALGORITHM), calling `f` with each algorithm.
/// Returns how many entries there were.
fn walk_password_algorithms(value: &[u8], mut f: impl FnMut(usize, u16)) -> Result<usize, ParseError> {
    let mut at = 0;
    let mut n = 0;
    while at < value.len() {
        let alg = be16(value, at).ok_or(ParseError::BadValue)?;
        let plen = be16(value, at + 2).ok_or(ParseError::BadValue)? as usize;
        // Parameters are padded to 4 bytes inside the attribute value.
        let next = at + 4 + pad4(plen);
        if next > value.len() {
            return Err(ParseError::BadValue);
        }
        f(n, alg);
        n += 1;
        at = next;
    }
    Ok(n)
}

impl<'a> Message<'a> {
    /// Parses and validates a whole message. `buf` may be longer than the
    /// message (trailing bytes are ignored); `as_bytes()` returns exactly the message.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let header = buf.get(..HEADER_LEN).ok_or(ParseError::Truncated)?;
        let typ = u16::from_be_bytes([header[0], header[1]]);
        if typ & 0xC000 != 0 {
            return Err(ParseError::NotStun);
        }
        if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
            return Err(ParseError::NotStun);
        }
        let body_len = u16::from_be_bytes([header[2], header[3]]) as usize;
        if !body_len.is_multiple_of(4) {
            return Err(ParseError::BadLength);
        }
        let end = HEADER_LEN + body_len;
        if end > u16::MAX as usize {
            return Err(ParseError::BadLength);
        }
        let raw = buf.get(..end).ok_or(ParseError::Truncated)?;
        let (class, method) = split_type(typ);

        let mut msg = Message {
            raw,
            class,
            method,
            attrs: [RawAttr::default(); MAX_ATTRS],
            n_attrs: 0,
            integrity_at: None,
            integrity_sha256_at: None,
        };

        let mut at = HEADER_LEN;
        while at < end {
            let atyp = be16(raw, at).ok_or(ParseError::BadAttribute)?;
            let alen = be16(raw, at + 2).ok_or(ParseError::BadAttribute)?;
            let value_at = at + 4;
            let next = value_at + pad4(alen as usize);
            if next > end {
                return Err(ParseError::BadAttribute);
            }

            if atyp == attr::FINGERPRINT {
                if next != end || alen != 4 {
                    return Err(ParseError::BadFingerprint);
                }
                let got = raw.get(value_at..next).and_then(|v| decode_u32(v).ok());
                let want = raw.get(..at).map(fingerprint);
                if got.is_none() || got != want {
                    return Err(ParseError::BadFingerprint);
                }
            }

            // RFC 8489 §14.5/14.6: past an integrity attribute only
            // MESSAGE-INTEGRITY-SHA256 (after MESSAGE-INTEGRITY) and
            // FINGERPRINT still count; anything else was not covered by the MAC.
            let record = match atyp {
                attr::FINGERPRINT => true,
                attr::MESSAGE_INTEGRITY_SHA256 => msg.integrity_sha256_at.is_none(),
                _ => msg.integrity_at.is_none() && msg.integrity_sha256_at.is_none(),
            };
            if record {
                let n = msg.n_attrs as usize;
                let slot = msg.attrs.get_mut(n).ok_or(ParseError::TooManyAttributes)?;
                // `end` fits in u16 (checked above), so these casts cannot truncate.
                *slot = RawAttr {
                    typ: atyp,
                    offset: value_at as u16,
                    len: alen,
                };
                msg.n_attrs += 1;
                match atyp {
                    attr::MESSAGE_INTEGRITY => msg.integrity_at = Some(at as u16),
                    attr::MESSAGE_INTEGRITY_SHA256 => msg.integrity_sha256_at = Some(at as u16),
                    _ => {}
                }
            }
            at = next;
        }
        Ok(msg)
    }

    pub fn class(&self) -> Class {
        self.class
    }
    pub fn method(&self) -> Method {
        self.method
    }
    pub fn transaction_id(&self) -> &'a TransactionId {
        self.raw
            .get(8..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .unwrap_or(&ZERO_TID)
    }
    /// The message bytes, header included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
    /// All attributes in order (up to and including the integrity/fingerprint ones).
    pub fn attrs(&self) -> impl Iterator<Item = (u16, &'a [u8])> + '_ {
        let raw = self.raw;
        self.recorded().iter().map(move |a| (a.typ, value_of(raw, a)))
    }
    /// Value of the first attribute of type `typ`.
    pub fn attr(&self, typ: u16) -> Option<&'a [u8]> {
        self.recorded()
            .iter()
            .find(|a| a.typ == typ)
            .map(|a| value_of(self.raw, a))
    }
    pub fn has(&self, typ: u16) -> bool {
        self.attr(typ).is_some()
    }
    /// Comprehension-required attribute types that `known` does not accept,
    /// written into `out`; returns how many (at most `out.len()`).
    ///
    /// Each type is listed once even if it occurs several times, so `out`
    /// can go straight into UNKNOWN-ATTRIBUTES.
    pub fn unknown_comprehension_required(&self, known: impl Fn(u16) -> bool, out: &mut [u16]) -> usize {
        let mut n = 0;
        for a in self.recorded() {
            if n == out.len() {
                break;
            }
            if !attr::is_comprehension_required(a.typ) || known(a.typ) || out[..n].contains(&a.typ) {
                continue;
            }
            out[n] = a.typ;
            n += 1;
        }
        n
    }

    fn recorded(&self) -> &[RawAttr] {
        self.attrs.get(..self.n_attrs as usize).unwrap_or(&[])
    }

    // ---- typed accessors; `None` = absent, `Some(Err)` = present but malformed ----

    /// XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS (first occurrence).
    pub fn xor_address(&self, typ: u16) -> Option<Result<SocketAddr, ParseError>> {
        self.attr(typ).map(|v| decode_xor_address(v, self.transaction_id()))
    }
    /// Every occurrence of an XOR address attribute (CreatePermission may carry several).
    pub fn xor_addresses(&self, typ: u16) -> impl Iterator<Item = Result<SocketAddr, ParseError>> + '_ {
        let tid = self.transaction_id();
        self.attrs()
            .filter(move |(t, _)| *t == typ)
            .map(move |(_, v)| decode_xor_address(v, tid))
    }
    /// MAPPED-ADDRESS, ALTERNATE-SERVER and the other plain address attributes.
    pub fn address(&self, typ: u16) -> Option<Result<SocketAddr, ParseError>> {
        self.attr(typ).map(decode_address)
    }
    /// A UTF-8 attribute (USERNAME, REALM, NONCE, SOFTWARE).
    ///
    /// Values longer than the RFC 8489 limits for those four types are
    /// malformed (USERNAME 513 bytes, the others 763 bytes).
    pub fn str_attr(&self, typ: u16) -> Option<Result<&'a str, ParseError>> {
        self.attr(typ).map(|v| decode_str(typ, v))
    }
    /// A 32-bit attribute (LIFETIME, CONNECTION-ID, PRIORITY).
    pub fn u32_attr(&self, typ: u16) -> Option<Result<u32, ParseError>> {
        self.attr(typ).map(decode_u32)
    }
    /// CHANNEL-NUMBER's 16-bit number (the RFFU half is ignored).
    pub fn channel_number(&self) -> Option<Result<u16, ParseError>> {
        self.attr(attr::CHANNEL_NUMBER)
            .map(|v| decode_u32(v).map(|x| (x >> 16) as u16))
    }
    /// REQUESTED-TRANSPORT's protocol byte.
    pub fn requested_transport(&self) -> Option<Result<u8, ParseError>> {
        self.attr(attr::REQUESTED_TRANSPORT)
            .map(|v| decode_u32(v).map(|x| (x >> 24) as u8))
    }
    /// The family byte of REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY (`typ`).
    ///
    /// The byte is returned as sent, even if it names no known family: the
    /// server answers an unsupported one with 440, not 400.
    pub fn family(&self, typ: u16) -> Option<Result<u8, ParseError>> {
        self.attr(typ).map(|v| decode_u32(v).map(|x| (x >> 24) as u8))
    }
    /// EVEN-PORT's R bit.
    pub fn even_port(&self) -> Option<Result<bool, ParseError>> {
        self.attr(attr::EVEN_PORT).map(|v| match v {
            [b] => Ok(b & 0x80 != 0),
            _ => Err(ParseError::BadValue),
        })
    }
    /// RESERVATION-TOKEN (8 bytes).
    pub fn reservation_token(&self) -> Option<Result<[u8; 8], ParseError>> {
        self.attr(attr::RESERVATION_TOKEN)
            .map(|v| v.try_into().map_err(|_| ParseError::BadValue))
    }
    /// ERROR-CODE as (code, reason phrase).
    pub fn error_code(&self) -> Option<Result<(u16, &'a str), ParseError>> {
        self.attr(attr::ERROR_CODE).map(decode_error_code)
    }
    /// PASSWORD-ALGORITHM's algorithm number (parameters ignored).
    pub fn password_algorithm(&self) -> Option<Result<u16, ParseError>> {
        self.attr(attr::PASSWORD_ALGORITHM).map(|v| {
            let mut alg = 0;
            match walk_password_algorithms(v, |_, a| alg = a)? {
                1 => Ok(alg),
                _ => Err(ParseError::BadValue),
            }
        })
    }
    /// PASSWORD-ALGORITHMS: the algorithm numbers in order, written to `out`; returns how many.
    ///
    /// The count is of those written, so at most `out.len()`; the whole value
    /// is still validated.
    pub fn password_algorithms(&self, out: &mut [u16]) -> Option<Result<usize, ParseError>> {
        self.attr(attr::PASSWORD_ALGORITHMS).map(|v| {
            let n = walk_password_algorithms(v, |i, a| {
                if let Some(slot) = out.get_mut(i) {
                    *slot = a;
                }
            })?;
            Ok(n.min(out.len()))
        })
    }

    /// Whether MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is present.
    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some() || self.integrity_sha256_at.is_some()
    }
    /// Checks MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY,
    /// with `key` (the long-term or short-term key), in constant time.
    /// `Err` when absent or when the MAC does not match.
    ///
    /// Every failure is reported as [`ParseError::BadValue`]: absent, a MAC
    /// of the wrong size, or a mismatch all earn the same 401.
    pub fn check_integrity(&self, key: &[u8]) -> Result<IntegrityKind, ParseError> {
        if let Some(at) = self.integrity_sha256_at {
            let (at, mac) = self.integrity_value(at)?;
            // RFC 8489 §14.6: truncation down to 16 bytes, in 4-byte steps.
            if !(16..=32).contains(&mac.len()) || !mac.len().is_multiple_of(4) {
                return Err(ParseError::BadValue);
            }
            let len = self.adjusted_len(at, mac.len())?;
            let want = hmac_sha256_parts(key, &self.mac_input(at, &len)?);
            let want = want.get(..mac.len()).ok_or(ParseError::BadValue)?;
            if !ct_eq(want, mac) {
                return Err(ParseError::BadValue);
            }
            return Ok(IntegrityKind::Sha256);
        }
        if let Some(at) = self.integrity_at {
            let (at, mac) = self.integrity_value(at)?;
            if mac.len() != 20 {
                return Err(ParseError::BadValue);
            }
            let len = self.adjusted_len(at, mac.len())?;
            let want = hmac_sha1_parts(key, &self.mac_input(at, &len)?);
            if !ct_eq(&want, mac) {
                return Err(ParseError::BadValue);
            }
            return Ok(IntegrityKind::Sha1);
        }
        Err(ParseError::BadValue)
    }

    fn integrity_value(&self, at: u16) -> Result<(usize, &'a [u8]), ParseError> {
        let at = at as usize;
        let len = be16(self.raw, at + 2).ok_or(ParseError::BadValue)? as usize;
        let mac = self.raw.get(at + 4..at + 4 + len).ok_or(ParseError::BadValue)?;
        Ok((at, mac))
    }

    /// The header length field as the sender saw it when computing the MAC:
    /// covering everything up to and including the integrity attribute.
    fn adjusted_len(&self, at: usize, mac_len: usize) -> Result<[u8; 2], ParseError> {
        let len = u16::try_from(at + 4 + mac_len - HEADER_LEN).map_err(|_| ParseError::BadValue)?;
        Ok(len.to_be_bytes())
    }

    /// The MAC input as three slices: type, patched length, rest up to the
    /// integrity attribute. Avoids copying the message.
    fn mac_input<'s>(&self, at: usize, len: &'s [u8; 2]) -> Result<[&'s [u8]; 3], ParseError>
    where
        'a: 's,
    {
        let typ = self.raw.get(..2).ok_or(ParseError::BadValue)?;
        let rest = self.raw.get(4..at).ok_or(ParseError::BadValue)?;
        Ok([typ, len, rest])
    }
}

/// Compares MACs without an early exit, so timing does not reveal how many
/// leading bytes of a forged MAC were right. (ring's `verify_slices_are_equal`
/// is deprecated and `hmac::verify` cannot check a truncated tag.) Lengths are
/// public, so comparing them first leaks nothing.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn value_of<'a>(raw: &'a [u8], a: &RawAttr) -> &'a [u8] {
    let start = a.offset as usize;
    raw.get(start..start + a.len as usize).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_split_round_trips() {
        for m in 0..0x1000u16 {
            for c in [Class::Request, Class::Indication, Class::Success, Class::Error] {
                let t = join_type(c, Method(m));
                assert_eq!(t & 0xC000, 0);
                assert_eq!(split_type(t), (c, Method(m)));
            }
        }
        assert_eq!(join_type(Class::Request, Method::BINDING), 0x0001);
        assert_eq!(join_type(Class::Success, Method::BINDING), 0x0101);
        assert_eq!(join_type(Class::Error, Method::ALLOCATE), 0x0113);
        assert_eq!(join_type(Class::Indication, Method::SEND), 0x0016);
        assert_eq!(join_type(Class::Indication, Method::DATA), 0x0017);
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn error_code_bounds() {
        assert_eq!(decode_error_code(&[0, 0, 4, 20, b'x']), Ok((420, "x")));
        assert_eq!(decode_error_code(&[0, 0, 0xF8 | 4, 1]), Ok((401, "")));
        assert!(decode_error_code(&[0, 0, 2, 0]).is_err());
        assert!(decode_error_code(&[0, 0, 7, 0]).is_err());
        assert!(decode_error_code(&[0, 0, 4, 100]).is_err());
        assert!(decode_error_code(&[0, 0, 4]).is_err());
        assert!(decode_error_code(&[0, 0, 4, 0, 0xFF]).is_err());
    }

    #[test]
    fn address_lengths() {
        assert!(decode_address(&[0, 1, 0, 1, 1, 2, 3]).is_err());
        assert!(decode_address(&[0, 1, 0, 1, 1, 2, 3, 4, 5]).is_err());
        assert!(decode_address(&[0, 3, 0, 1, 1, 2, 3, 4]).is_err());
        assert!(decode_address(&[0, 2, 0, 1, 1, 2, 3, 4]).is_err());
        assert_eq!(
            decode_address(&[0, 1, 0, 80, 10, 0, 0, 1]),
            Ok("10.0.0.1:80".parse().unwrap())
        );
        assert!(decode_address(&[]).is_err());
    }

    #[test]
    fn password_algorithm_lists() {
        let mut out = [0u16; 4];
        let v = [0, 1, 0, 0, 0, 2, 0, 0];
        assert_eq!(walk_password_algorithms(&v, |i, a| out[i] = a), Ok(2));
        assert_eq!(&out[..2], &[1, 2]);
        // Parameters of 3 bytes take 4 with padding.
        let v = [0, 9, 0, 3, 1, 2, 3, 0, 0, 1, 0, 0];
        assert_eq!(walk_password_algorithms(&v, |_, _| {}), Ok(2));
        assert!(walk_password_algorithms(&[0, 9, 0, 3, 1, 2, 3], |_, _| {}).is_err());
        assert!(walk_password_algorithms(&[0, 9, 0], |_, _| {}).is_err());
    }
}
