//! FINGERPRINT: CRC-32 of the message XOR 0x5354554e (RFC 8489 §14.7).

pub const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// The FINGERPRINT value for `msg` (the message up to, not including, the
/// FINGERPRINT attribute, with the header length already covering it).
pub fn fingerprint(msg: &[u8]) -> u32 {
    crc32fast::hash(msg) ^ FINGERPRINT_XOR
}
