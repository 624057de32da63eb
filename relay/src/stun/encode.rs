//! STUN message builder writing into a caller-provided buffer.
use std::net::{IpAddr, SocketAddr};

use super::attr;
use super::error::EncodeError;
use super::fingerprint::fingerprint;
use super::integrity::{hmac_sha1_parts, hmac_sha256_parts};
use super::message::{join_type, xor_mask};
use super::{Class, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Builds one message in `buf`. The header's length field is kept current
/// after every attribute, so integrity and fingerprint can be appended last.
///
/// A failed `add*` leaves the message as it was, so the caller may still
/// finish it (for example drop an oversized SOFTWARE and carry on).
pub struct MessageBuilder<'b> {
    buf: &'b mut [u8],
    len: usize,
}

/// The parser keeps offsets as `u16`, so the builder never produces a
/// message it would reject.
const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

impl<'b> MessageBuilder<'b> {
    /// Writes the 20-byte header.
    ///
    /// Method bits above the 12 the type field has room for are dropped.
    pub fn new(buf: &'b mut [u8], class: Class, method: Method, tid: &TransactionId) -> Result<Self, EncodeError> {
        let header = buf.get_mut(..HEADER_LEN).ok_or(EncodeError::BufferTooSmall)?;
        header[..2].copy_from_slice(&join_type(class, method).to_be_bytes());
        header[2..4].copy_from_slice(&[0, 0]);
        header[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        header[8..].copy_from_slice(tid);
        Ok(MessageBuilder { buf, len: HEADER_LEN })
    }

    /// Reserves room for an attribute with a `value_len`-byte value, writes
    /// its header, the zero padding and the new message length, and returns
    /// the value's range for the caller to fill. Nothing is written on error.
    fn reserve(&mut self, typ: u16, value_len: usize) -> Result<std::ops::Range<usize>, EncodeError> {
        let vlen = u16::try_from(value_len).map_err(|_| EncodeError::ValueTooLong)?;
        let start = self.len + 4;
        let padded_end = start + value_len.next_multiple_of(4);
        if padded_end > MAX_MESSAGE_LEN {
            // The header length field cannot describe a longer message.
            return Err(EncodeError::ValueTooLong);
        }
        let slot = self
            .buf
            .get_mut(self.len..padded_end)
            .ok_or(EncodeError::BufferTooSmall)?;
        slot[..2].copy_from_slice(&typ.to_be_bytes());
        slot[2..4].copy_from_slice(&vlen.to_be_bytes());
        slot[4 + value_len..].fill(0);
        self.set_len(padded_end);
        Ok(start..start + value_len)
    }

    fn set_len(&mut self, total: usize) {
        self.len = total;
        // `reserve` caps `total` at 65535, so the body length fits.
        let body = (total - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&body.to_be_bytes());
    }

    fn tid(&self) -> TransactionId {
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&self.buf[8..HEADER_LEN]);
        tid
    }

    /// Appends a raw attribute, padding the value to 4 bytes with zeros.
    ///
    /// `ValueTooLong` also covers a message that would outgrow the 16-bit
    /// length field.
    pub fn add(&mut self, typ: u16, value: &[u8]) -> Result<(), EncodeError> {
        let r = self.reserve(typ, value.len())?;
        self.buf[r].copy_from_slice(value);
        Ok(())
    }
    /// Appends an attribute of `len` bytes whose value `fill` writes in place
    /// (DATA without an intermediate copy).
    pub fn add_with(&mut self, typ: u16, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), EncodeError> {
        let r = self.reserve(typ, len)?;
        fill(&mut self.buf[r]);
        Ok(())
    }
    pub fn add_u32(&mut self, typ: u16, v: u32) -> Result<(), EncodeError> {
        self.add(typ, &v.to_be_bytes())
    }
    /// XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS.
    pub fn add_xor_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), EncodeError> {
        let mask = xor_mask(&self.tid());
        self.add_address_with(typ, addr, &mask)
    }
    /// MAPPED-ADDRESS, ALTERNATE-SERVER, RESPONSE-ORIGIN.
    pub fn add_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), EncodeError> {
        self.add_address_with(typ, addr, &[0; 16])
    }

    fn add_address_with(&mut self, typ: u16, addr: SocketAddr, mask: &[u8; 16]) -> Result<(), EncodeError> {
        let mut v = [0u8; 20];
        let port = addr.port() ^ u16::from_be_bytes([mask[0], mask[1]]);
        v[2..4].copy_from_slice(&port.to_be_bytes());
        let n = match addr.ip() {
            IpAddr::V4(ip) => {
                v[1] = attr::FAMILY_IPV4;
                for (i, b) in ip.octets().into_iter().enumerate() {
                    v[4 + i] = b ^ mask[i];
                }
                8
            }
            IpAddr::V6(ip) => {
                v[1] = attr::FAMILY_IPV6;
                for (i, b) in ip.octets().into_iter().enumerate() {
                    v[4 + i] = b ^ mask[i];
                }
                20
            }
        };
        self.add(typ, &v[..n])
    }
    /// ERROR-CODE with class/number split and a reason phrase.
    ///
    /// `code` should be in 300..=699; anything else is encoded as given
    /// (class truncated to 3 bits) and a peer will treat it as malformed.
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> Result<(), EncodeError> {
        let class = ((code / 100) & 0x07) as u8;
        let number = (code % 100) as u8;
        self.add_with(attr::ERROR_CODE, 4 + reason.len(), |v| {
            v[..4].copy_from_slice(&[0, 0, class, number]);
            v[4..].copy_from_slice(reason.as_bytes());
        })
    }
    /// UNKNOWN-ATTRIBUTES.
    pub fn add_unknown_attributes(&mut self, types: &[u16]) -> Result<(), EncodeError> {
        self.add_with(attr::UNKNOWN_ATTRIBUTES, types.len() * 2, |v| {
            for (chunk, t) in v.chunks_exact_mut(2).zip(types) {
                chunk.copy_from_slice(&t.to_be_bytes());
            }
        })
    }
    /// PASSWORD-ALGORITHMS with no parameters.
    pub fn add_password_algorithms(&mut self, algorithms: &[u16]) -> Result<(), EncodeError> {
        self.add_with(attr::PASSWORD_ALGORITHMS, algorithms.len() * 4, |v| {
            for (chunk, a) in v.chunks_exact_mut(4).zip(algorithms) {
                chunk[..2].copy_from_slice(&a.to_be_bytes());
                chunk[2..].copy_from_slice(&[0, 0]);
            }
        })
    }
    /// MESSAGE-INTEGRITY (HMAC-SHA1) over everything so far.
    pub fn add_message_integrity(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let covered = self.len;
        // Reserving first sets the length field to include this attribute,
        // which is what RFC 8489 §14.5 has the MAC cover.
        let r = self.reserve(attr::MESSAGE_INTEGRITY, 20)?;
        let mac = hmac_sha1_parts(key, &[&self.buf[..covered]]);
        self.buf[r].copy_from_slice(&mac);
        Ok(())
    }
    /// MESSAGE-INTEGRITY-SHA256 (full 32 bytes) over everything so far.
    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let covered = self.len;
        let r = self.reserve(attr::MESSAGE_INTEGRITY_SHA256, 32)?;
        let mac = hmac_sha256_parts(key, &[&self.buf[..covered]]);
        self.buf[r].copy_from_slice(&mac);
        Ok(())
    }
    /// FINGERPRINT; must be last.
    pub fn add_fingerprint(&mut self) -> Result<(), EncodeError> {
        let covered = self.len;
        let r = self.reserve(attr::FINGERPRINT, 4)?;
        let crc = fingerprint(&self.buf[..covered]);
        self.buf[r].copy_from_slice(&crc.to_be_bytes());
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::super::Message;
    use super::*;

    type Op = dyn Fn(&mut MessageBuilder) -> Result<(), EncodeError>;

    #[test]
    fn small_buffers_fail_cleanly() {
        let tid = [1u8; 12];
        assert_eq!(
            MessageBuilder::new(&mut [0u8; 19], Class::Request, Method::BINDING, &tid).err(),
            Some(EncodeError::BufferTooSmall)
        );
        for size in 20..64 {
            let mut buf = vec![0u8; size];
            let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, &tid).unwrap();
            let ops: [&Op; 6] = [
                &|b| b.add(attr::SOFTWARE, b"hello"),
                &|b| b.add_xor_address(attr::XOR_MAPPED_ADDRESS, "[::1]:5".parse().unwrap()),
                &|b| b.add_error_code(401, "Unauthorized"),
                &|b| b.add_message_integrity(b"key"),
                &|b| b.add_message_integrity_sha256(b"key"),
                &|b| b.add_fingerprint(),
            ];
            for op in ops {
                let before = b.len();
                match op(&mut b) {
                    Ok(()) => assert!(b.len() > before),
                    Err(e) => {
                        assert_eq!(e, EncodeError::BufferTooSmall);
                        assert_eq!(b.len(), before);
                    }
                }
            }
            let n = b.finish();
            let m = Message::parse(&buf[..n]).unwrap();
            assert_eq!(m.as_bytes().len(), n);
        }
    }

    #[test]
    fn oversized_values() {
        let mut buf = vec![0u8; 70_000];
        let mut b = MessageBuilder::new(&mut buf, Class::Indication, Method::SEND, &[0; 12]).unwrap();
        assert_eq!(b.add(attr::DATA, &[0u8; 65_536]), Err(EncodeError::ValueTooLong));
        // Fits the attribute length but not the message length field.
        assert_eq!(b.add(attr::DATA, &[0u8; 65_535]), Err(EncodeError::ValueTooLong));
        // The largest message is 65532 bytes: 65535 rounded down to 4.
        assert_eq!(b.add(attr::DATA, &[7u8; 65_509]), Err(EncodeError::ValueTooLong));
        b.add(attr::DATA, &[7u8; 65_508]).unwrap();
        assert_eq!(b.len(), 65_532);
        assert_eq!(b.add_fingerprint(), Err(EncodeError::ValueTooLong));
        let n = b.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.attr(attr::DATA).map(|d| d.len()), Some(65_508));
    }

    #[test]
    fn padding_is_zeroed_and_fill_cannot_leak() {
        let mut buf = [0xAAu8; 64];
        let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, &[0; 12]).unwrap();
        b.add(attr::USERNAME, b"abcde").unwrap();
        b.add_with(attr::REALM, 1, |v| v.fill(b'r')).unwrap();
        let n = b.finish();
        assert_eq!(n, 20 + 12 + 8);
        assert_eq!(&buf[20..32], &[0, 6, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]);
        assert_eq!(&buf[32..40], &[0, 0x14, 0, 1, b'r', 0, 0, 0]);
        assert_eq!(&buf[2..4], &[0, 20]);
    }

    #[test]
    fn error_code_layout() {
        let mut buf = [0u8; 64];
        let mut b = MessageBuilder::new(&mut buf, Class::Error, Method::ALLOCATE, &[0; 12]).unwrap();
        b.add_error_code(438, "Stale Nonce").unwrap();
        let n = b.finish();
        assert_eq!(&buf[20..28], &[0, 9, 0, 15, 0, 0, 4, 38]);
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.error_code(), Some(Ok((438, "Stale Nonce"))));
    }

    #[test]
    fn lists() {
        let mut buf = [0u8; 64];
        let mut b = MessageBuilder::new(&mut buf, Class::Error, Method::ALLOCATE, &[0; 12]).unwrap();
        b.add_unknown_attributes(&[0x0031, 0x0032, 0x0033]).unwrap();
        b.add_password_algorithms(&[attr::PASSWORD_ALGORITHM_MD5, attr::PASSWORD_ALGORITHM_SHA256])
            .unwrap();
        let n = b.finish();
        assert_eq!(&buf[20..32], &[0, 0x0A, 0, 6, 0, 0x31, 0, 0x32, 0, 0x33, 0, 0]);
        assert_eq!(&buf[32..44], &[0x80, 0x02, 0, 8, 0, 1, 0, 0, 0, 2, 0, 0]);
        let m = Message::parse(&buf[..n]).unwrap();
        let mut out = [0u16; 4];
        assert_eq!(m.password_algorithms(&mut out), Some(Ok(2)));
        assert_eq!(&out[..2], &[1, 2]);
        let mut small = [0u16; 1];
        assert_eq!(m.password_algorithms(&mut small), Some(Ok(1)));
        assert_eq!(small, [1]);
    }
}
