//! Zero-copy STUN message parser.
use std::net::SocketAddr;

use super::error::ParseError;
use super::{Class, Method, TransactionId, MAX_ATTRS};

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

impl<'a> Message<'a> {
    /// Parses and validates a whole message. `buf` may be longer than the
    /// message (trailing bytes are ignored); `as_bytes()` returns exactly the message.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let _ = buf;
        todo!()
    }

    pub fn class(&self) -> Class {
        self.class
    }
    pub fn method(&self) -> Method {
        self.method
    }
    pub fn transaction_id(&self) -> &'a TransactionId {
        todo!()
    }
    /// The message bytes, header included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
    /// All attributes in order (up to and including the integrity/fingerprint ones).
    pub fn attrs(&self) -> impl Iterator<Item = (u16, &'a [u8])> + '_ {
        self.attrs[..self.n_attrs as usize].iter().map(|a| {
            let start = a.offset as usize;
            (a.typ, &self.raw[start..start + a.len as usize])
        })
    }
    /// Value of the first attribute of type `typ`.
    pub fn attr(&self, typ: u16) -> Option<&'a [u8]> {
        let _ = typ;
        todo!()
    }
    pub fn has(&self, typ: u16) -> bool {
        self.attr(typ).is_some()
    }
    /// Comprehension-required attribute types that `known` does not accept,
    /// written into `out`; returns how many (at most `out.len()`).
    pub fn unknown_comprehension_required(&self, known: impl Fn(u16) -> bool, out: &mut [u16]) -> usize {
        let _ = (known, out);
        todo!()
    }

    // ---- typed accessors; `None` = absent, `Some(Err)` = present but malformed ----

    /// XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS (first occurrence).
    pub fn xor_address(&self, typ: u16) -> Option<Result<SocketAddr, ParseError>> {
        let _ = typ;
        todo!()
    }
    /// Every occurrence of an XOR address attribute (CreatePermission may carry several).
    pub fn xor_addresses(&self, typ: u16) -> impl Iterator<Item = Result<SocketAddr, ParseError>> + '_ {
        let _ = typ;
        std::iter::empty::<Result<SocketAddr, ParseError>>()
    }
    /// MAPPED-ADDRESS, ALTERNATE-SERVER and the other plain address attributes.
    pub fn address(&self, typ: u16) -> Option<Result<SocketAddr, ParseError>> {
        let _ = typ;
        todo!()
    }
    /// A UTF-8 attribute (USERNAME, REALM, NONCE, SOFTWARE).
    pub fn str_attr(&self, typ: u16) -> Option<Result<&'a str, ParseError>> {
        let _ = typ;
        todo!()
    }
    /// A 32-bit attribute (LIFETIME, CONNECTION-ID, PRIORITY).
    pub fn u32_attr(&self, typ: u16) -> Option<Result<u32, ParseError>> {
        let _ = typ;
        todo!()
    }
    /// CHANNEL-NUMBER's 16-bit number (the RFFU half is ignored).
    pub fn channel_number(&self) -> Option<Result<u16, ParseError>> {
        todo!()
    }
    /// REQUESTED-TRANSPORT's protocol byte.
    pub fn requested_transport(&self) -> Option<Result<u8, ParseError>> {
        todo!()
    }
    /// The family byte of REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY (`typ`).
    pub fn family(&self, typ: u16) -> Option<Result<u8, ParseError>> {
        let _ = typ;
        todo!()
    }
    /// EVEN-PORT's R bit.
    pub fn even_port(&self) -> Option<Result<bool, ParseError>> {
        todo!()
    }
    /// RESERVATION-TOKEN (8 bytes).
    pub fn reservation_token(&self) -> Option<Result<[u8; 8], ParseError>> {
        todo!()
    }
    /// ERROR-CODE as (code, reason phrase).
    pub fn error_code(&self) -> Option<Result<(u16, &'a str), ParseError>> {
        todo!()
    }
    /// PASSWORD-ALGORITHM's algorithm number (parameters ignored).
    pub fn password_algorithm(&self) -> Option<Result<u16, ParseError>> {
        todo!()
    }
    /// PASSWORD-ALGORITHMS: the algorithm numbers in order, written to `out`; returns how many.
    pub fn password_algorithms(&self, out: &mut [u16]) -> Option<Result<usize, ParseError>> {
        let _ = out;
        todo!()
    }

    /// Whether MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is present.
    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some() || self.integrity_sha256_at.is_some()
    }
    /// Checks MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY,
    /// with `key` (the long-term or short-term key), in constant time.
    /// `Err` when absent or when the MAC does not match.
    pub fn check_integrity(&self, key: &[u8]) -> Result<IntegrityKind, ParseError> {
        let _ = key;
        todo!()
    }
}
