//! STUN message builder writing into a caller-provided buffer.
use std::net::SocketAddr;

use super::error::EncodeError;
use super::{Class, Method, TransactionId};

/// Builds one message in `buf`. The header's length field is kept current
/// after every attribute, so integrity and fingerprint can be appended last.
pub struct MessageBuilder<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> MessageBuilder<'b> {
    /// Writes the 20-byte header.
    pub fn new(buf: &'b mut [u8], class: Class, method: Method, tid: &TransactionId) -> Result<Self, EncodeError> {
        let _ = (class, method, tid);
        let _ = &buf;
        todo!()
    }
    /// Appends a raw attribute, padding the value to 4 bytes with zeros.
    pub fn add(&mut self, typ: u16, value: &[u8]) -> Result<(), EncodeError> {
        let _ = (typ, value);
        todo!()
    }
    /// Appends an attribute of `len` bytes whose value `fill` writes in place
    /// (DATA without an intermediate copy).
    pub fn add_with(&mut self, typ: u16, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), EncodeError> {
        let _ = (typ, len, fill);
        todo!()
    }
    pub fn add_u32(&mut self, typ: u16, v: u32) -> Result<(), EncodeError> {
        self.add(typ, &v.to_be_bytes())
    }
    /// XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS.
    pub fn add_xor_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), EncodeError> {
        let _ = (typ, addr);
        todo!()
    }
    /// MAPPED-ADDRESS, ALTERNATE-SERVER, RESPONSE-ORIGIN.
    pub fn add_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), EncodeError> {
        let _ = (typ, addr);
        todo!()
    }
    /// ERROR-CODE with class/number split and a reason phrase.
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> Result<(), EncodeError> {
        let _ = (code, reason);
        todo!()
    }
    /// UNKNOWN-ATTRIBUTES.
    pub fn add_unknown_attributes(&mut self, types: &[u16]) -> Result<(), EncodeError> {
        let _ = types;
        todo!()
    }
    /// PASSWORD-ALGORITHMS with no parameters.
    pub fn add_password_algorithms(&mut self, algorithms: &[u16]) -> Result<(), EncodeError> {
        let _ = algorithms;
        todo!()
    }
    /// MESSAGE-INTEGRITY (HMAC-SHA1) over everything so far.
    pub fn add_message_integrity(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let _ = key;
        todo!()
    }
    /// MESSAGE-INTEGRITY-SHA256 (full 32 bytes) over everything so far.
    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let _ = key;
        todo!()
    }
    /// FINGERPRINT; must be last.
    pub fn add_fingerprint(&mut self) -> Result<(), EncodeError> {
        todo!()
    }
    /// Length written so far (header included).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Total length of the finished message.
    pub fn finish(self) -> usize {
        self.len
    }
}
