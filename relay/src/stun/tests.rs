//! Codec tests: the RFC 5769 and RFC 8489 Appendix B vectors, malformed
//! input, and property tests tying the builder and the parser together.
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::attr;
use super::channel_data::{self, ChannelData};
use super::integrity::{hmac_sha256, long_term_key_md5, long_term_key_sha256, userhash};
use super::message::{decode_address, decode_error_code, decode_str, decode_u32, decode_xor_address, IntegrityKind};
use super::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ---- RFC 5769 §2 and RFC 8489 Appendix B.1, byte for byte ----

const RFC5769_TID: TransactionId = [0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae];
const RFC5769_SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.1: sample request (short-term credentials).
const SAMPLE_REQUEST: &str = "
    00010058 2112a442 b7e7a701 bc34d686 fa87dfae
    80220010 5354554e 20746573 7420636c 69656e74
    00240004 6e0001ff
    80290008 932ff9b1 51263b36
    00060009 6576746a 3a683676 59202020
    00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
    80280004 e57a3bcf";

/// RFC 5769 §2.2: sample IPv4 response.
const SAMPLE_IPV4_RESPONSE: &str = "
    0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
    8022000b 74657374 20766563 746f7220
    00200008 0001a147 e112a643
    00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
    80280004 c07d4c96";

/// RFC 5769 §2.3: sample IPv6 response.
const SAMPLE_IPV6_RESPONSE: &str = "
    01010048 2112a442 b7e7a701 bc34d686 fa87dfae
    8022000b 74657374 20766563 746f7220
    00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
    00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
    80280004 c8fb0b4c";

/// RFC 5769 §2.4: request with long-term credentials (no FINGERPRINT).
const SAMPLE_LONG_TERM_REQUEST: &str = "
    00010060 2112a442 78ad3433 c6ad72c0 29da412e
    00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
    0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
    0014000b 6578616d 706c652e 6f726700
    00080014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666";

/// RFC 8489 Appendix B.1: long-term credentials with USERHASH,
/// PASSWORD-ALGORITHM and MESSAGE-INTEGRITY-SHA256.
const SAMPLE_SHA256_REQUEST: &str = "
    00010090 2112a442 78ad3433 c6ad72c0 29da412e
    001e0020 4a3cf38f ef6992bd a952c678 0417da0f 24819415 569e60b2 05c46e41 407f1704
    00150029 6f624d61 744a6f73 32414141 43662f2f 3439396b 39353464 364f4c33 346f4c39
             46535476 79363473 41000000
    0014000b 6578616d 706c652e 6f726700
    001d0004 00020000
    001c0020 b5c7bf00 5b6c52a2 1c51c5e8 92f81924 136296cb 927c4314 9309278c c6518e65";

/// U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9, unchanged by SASLprep/OpaqueString.
const LONG_TERM_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// "The\u{00AD}M\u{00AA}tr\u{2168}" after SASLprep/OpaqueString.
const LONG_TERM_PASSWORD: &str = "TheMatrIX";
const LONG_TERM_REALM: &str = "example.org";

fn all_vectors() -> Vec<Vec<u8>> {
    [
        SAMPLE_REQUEST,
        SAMPLE_IPV4_RESPONSE,
        SAMPLE_IPV6_RESPONSE,
        SAMPLE_LONG_TERM_REQUEST,
        SAMPLE_SHA256_REQUEST,
    ]
    .iter()
    .map(|s| unhex(s))
    .collect()
}

/// The message with every attribute's padding bytes zeroed: RFC 5769 pads
/// with spaces where the builder writes zeros.
fn zero_padding(msg: &[u8]) -> Vec<u8> {
    let mut out = msg.to_vec();
    let mut at = HEADER_LEN;
    while at + 4 <= out.len() {
        let len = u16::from_be_bytes([out[at + 2], out[at + 3]]) as usize;
        let end = at + 4 + len;
        let padded = at + 4 + len.next_multiple_of(4);
        out[end..padded].fill(0);
        at = padded;
    }
    out
}

/// Offset of the first attribute of type `typ` (its header).
fn attr_header_at(msg: &[u8], typ: u16) -> usize {
    let mut at = HEADER_LEN;
    loop {
        let t = u16::from_be_bytes([msg[at], msg[at + 1]]);
        if t == typ {
            return at;
        }
        let len = u16::from_be_bytes([msg[at + 2], msg[at + 3]]) as usize;
        at += 4 + len.next_multiple_of(4);
    }
}

#[test]
fn rfc5769_sample_request() {
    let bytes = unhex(SAMPLE_REQUEST);
    assert_eq!(bytes.len(), 108);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.transaction_id(), &RFC5769_TID);
    assert_eq!(m.as_bytes(), &bytes[..]);
    assert_eq!(m.str_attr(attr::SOFTWARE), Some(Ok("STUN test client")));
    assert_eq!(m.u32_attr(attr::PRIORITY), Some(Ok(0x6e0001ff)));
    assert_eq!(
        m.attr(attr::ICE_CONTROLLED),
        Some(&[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36][..])
    );
    assert_eq!(m.str_attr(attr::USERNAME), Some(Ok("evtj:h6vY")));
    let types: Vec<u16> = m.attrs().map(|(t, _)| t).collect();
    assert_eq!(
        types,
        [
            attr::SOFTWARE,
            attr::PRIORITY,
            attr::ICE_CONTROLLED,
            attr::USERNAME,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
    assert!(m.has_integrity());
    assert_eq!(
        m.check_integrity(RFC5769_SHORT_TERM_PASSWORD.as_bytes()),
        Ok(IntegrityKind::Sha1)
    );
    assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBu").is_err());
    assert_eq!(m.attr(attr::FINGERPRINT), Some(&[0xe5, 0x7a, 0x3b, 0xcf][..]));
    let mut unknown = [0u16; 4];
    assert_eq!(
        m.unknown_comprehension_required(attr::is_known_comprehension_required, &mut unknown),
        0
    );

    // Re-encoded, only the padding bytes (spaces in the RFC) and so the MAC
    // and CRC differ.
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, &RFC5769_TID).unwrap();
    b.add(attr::SOFTWARE, b"STUN test client").unwrap();
    b.add_u32(attr::PRIORITY, 0x6e0001ff).unwrap();
    b.add(attr::ICE_CONTROLLED, &0x932ff9b151263b36u64.to_be_bytes())
        .unwrap();
    b.add(attr::USERNAME, b"evtj:h6vY").unwrap();
    b.add_message_integrity(RFC5769_SHORT_TERM_PASSWORD.as_bytes()).unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish();
    assert_eq!(n, bytes.len());
    let mi = attr_header_at(&bytes, attr::MESSAGE_INTEGRITY);
    assert_eq!(&buf[..mi + 4], &zero_padding(&bytes)[..mi + 4]);
    let again = Message::parse(&buf[..n]).unwrap();
    assert_eq!(
        again.check_integrity(RFC5769_SHORT_TERM_PASSWORD.as_bytes()),
        Ok(IntegrityKind::Sha1)
    );
}

fn check_sample_response(hex: &str, mapped: &str) {
    let bytes = unhex(hex);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.transaction_id(), &RFC5769_TID);
    assert_eq!(m.str_attr(attr::SOFTWARE), Some(Ok("test vector")));
    let mapped: SocketAddr = mapped.parse().unwrap();
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(mapped)));
    assert_eq!(
        m.xor_addresses(attr::XOR_MAPPED_ADDRESS).collect::<Vec<_>>(),
        [Ok(mapped)]
    );
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), None);
    // Read without the XOR, the address is garbage but well-formed.
    assert!(matches!(m.address(attr::XOR_MAPPED_ADDRESS), Some(Ok(a)) if a != mapped));
    assert_eq!(
        m.check_integrity(RFC5769_SHORT_TERM_PASSWORD.as_bytes()),
        Ok(IntegrityKind::Sha1)
    );
    assert!(m.check_integrity(b"").is_err());

    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, Class::Success, Method::BINDING, &RFC5769_TID).unwrap();
    b.add(attr::SOFTWARE, b"test vector").unwrap();
    b.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped).unwrap();
    b.add_message_integrity(RFC5769_SHORT_TERM_PASSWORD.as_bytes()).unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish();
    assert_eq!(n, bytes.len());
    let mi = attr_header_at(&bytes, attr::MESSAGE_INTEGRITY);
    assert_eq!(&buf[..mi + 4], &zero_padding(&bytes)[..mi + 4]);
    assert_eq!(
        Message::parse(&buf[..n])
            .unwrap()
            .check_integrity(RFC5769_SHORT_TERM_PASSWORD.as_bytes()),
        Ok(IntegrityKind::Sha1)
    );
}

#[test]
fn rfc5769_sample_ipv4_response() {
    check_sample_response(SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853");
}

#[test]
fn rfc5769_sample_ipv6_response() {
    check_sample_response(SAMPLE_IPV6_RESPONSE, "[2001:db8:1234:5678:11:2233:4455:6677]:32853");
}

#[test]
fn rfc5769_sample_long_term_request() {
    let bytes = unhex(SAMPLE_LONG_TERM_REQUEST);
    assert_eq!(bytes.len(), 116);
    let m = Message::parse(&bytes).unwrap();
    let tid: TransactionId = [0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e];
    assert_eq!(
        (m.class(), m.method(), m.transaction_id()),
        (Class::Request, Method::BINDING, &tid)
    );
    assert_eq!(m.str_attr(attr::USERNAME), Some(Ok(LONG_TERM_USERNAME)));
    assert_eq!(m.str_attr(attr::NONCE), Some(Ok("f//499k954d6OL34oL9FSTvy64sA")));
    assert_eq!(m.str_attr(attr::REALM), Some(Ok(LONG_TERM_REALM)));
    assert!(!m.has(attr::FINGERPRINT));
    let key = long_term_key_md5(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    assert_eq!(m.check_integrity(&key), Ok(IntegrityKind::Sha1));
    // Unprepared password: a different key.
    let raw_key = long_term_key_md5(LONG_TERM_USERNAME, LONG_TERM_REALM, "The\u{00AD}M\u{00AA}tr\u{2168}");
    assert!(m.check_integrity(&raw_key).is_err());
    assert!(m
        .check_integrity(&long_term_key_sha256(
            LONG_TERM_USERNAME,
            LONG_TERM_REALM,
            LONG_TERM_PASSWORD
        ))
        .is_err());

    // This vector pads with zeros, so the builder reproduces it exactly.
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, &tid).unwrap();
    b.add(attr::USERNAME, LONG_TERM_USERNAME.as_bytes()).unwrap();
    b.add(attr::NONCE, b"f//499k954d6OL34oL9FSTvy64sA").unwrap();
    b.add(attr::REALM, LONG_TERM_REALM.as_bytes()).unwrap();
    b.add_message_integrity(&key).unwrap();
    let n = b.finish();
    assert_eq!(&buf[..n], &bytes[..]);
}

/// RFC 8489 Appendix B.1. The MAC is keyed with the key PASSWORD-ALGORITHM
/// names (SHA-256: SHA-256(username:realm:password), RFC 8489 §9.2.2), not
/// the MD5 key of RFC 5769 §2.4; the printed MESSAGE-INTEGRITY-SHA256 verifies
/// with it. (The nonce is "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA", as the
/// bytes of the vector spell it.)
#[test]
fn rfc8489_b1_sha256_request() {
    let bytes = unhex(SAMPLE_SHA256_REQUEST);
    assert_eq!(bytes.len(), 164);
    let m = Message::parse(&bytes).unwrap();
    let tid: TransactionId = [0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e];
    assert_eq!(
        (m.class(), m.method(), m.transaction_id()),
        (Class::Request, Method::BINDING, &tid)
    );
    assert_eq!(
        m.attr(attr::USERHASH),
        Some(&userhash(LONG_TERM_USERNAME, LONG_TERM_REALM)[..])
    );
    assert!(!m.has(attr::USERNAME));
    assert_eq!(
        m.str_attr(attr::NONCE),
        Some(Ok("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"))
    );
    assert_eq!(m.str_attr(attr::REALM), Some(Ok(LONG_TERM_REALM)));
    assert_eq!(m.password_algorithm(), Some(Ok(attr::PASSWORD_ALGORITHM_SHA256)));
    assert!(m.has(attr::MESSAGE_INTEGRITY_SHA256));
    assert!(!m.has(attr::MESSAGE_INTEGRITY));

    let md5_key = long_term_key_md5(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    let sha_key = long_term_key_sha256(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    assert_eq!(m.check_integrity(&sha_key), Ok(IntegrityKind::Sha256));
    assert!(m.check_integrity(&md5_key).is_err());

    // The builder reproduces the vector exactly.
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, &tid).unwrap();
    b.add(attr::USERHASH, &userhash(LONG_TERM_USERNAME, LONG_TERM_REALM))
        .unwrap();
    b.add(attr::NONCE, b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
        .unwrap();
    b.add(attr::REALM, LONG_TERM_REALM.as_bytes()).unwrap();
    b.add(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0]).unwrap();
    b.add_message_integrity_sha256(&sha_key).unwrap();
    let n = b.finish();
    assert_eq!(&buf[..n], &bytes[..]);
}

// ---- malformed input ----

#[test]
fn truncated_at_every_length() {
    for v in all_vectors() {
        for len in 0..v.len() {
            let e = Message::parse(&v[..len]).unwrap_err();
            assert_eq!(e, ParseError::Truncated, "len {len}");
        }
        // Trailing bytes are not part of the message.
        let mut longer = v.clone();
        longer.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(Message::parse(&longer).unwrap().as_bytes(), &v[..]);
    }
}

#[test]
fn header_checks() {
    let v = unhex(SAMPLE_REQUEST);
    let mut bad = v.clone();
    bad[7] ^= 1;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::NotStun);
    for top in [0x40, 0x80, 0xC0] {
        let mut bad = v.clone();
        bad[0] |= top;
        assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::NotStun);
    }
    for delta in 1..4u8 {
        let mut bad = v.clone();
        bad[3] += delta;
        assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadLength);
    }
    // A length that is a multiple of 4 but past the buffer.
    let mut bad = v.clone();
    bad[3] += 4;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::Truncated);
    // Shorter declared length: the FINGERPRINT no longer ends the message
    // and the last attribute now overruns it.
    let mut bad = v.clone();
    bad[3] -= 4;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadAttribute);
    // Header only, and an empty buffer.
    assert!(Message::parse(&v[..HEADER_LEN - 1]).is_err());
    let mut empty = v[..HEADER_LEN].to_vec();
    empty[2] = 0;
    empty[3] = 0;
    let m = Message::parse(&empty).unwrap();
    assert_eq!(m.attrs().count(), 0);
    assert!(!m.has_integrity());
    assert!(m.check_integrity(b"x").is_err());
}

fn header(body_len: u16) -> Vec<u8> {
    let mut v = vec![0, 1];
    v.extend_from_slice(&body_len.to_be_bytes());
    v.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    v.extend_from_slice(&[9; 12]);
    v
}

#[test]
fn attribute_overrun() {
    // Value runs past the end.
    let mut v = header(8);
    v.extend_from_slice(&[0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd']);
    assert_eq!(Message::parse(&v).unwrap_err(), ParseError::BadAttribute);
    // Value fits but its padding does not.
    let mut v = header(8);
    v.extend_from_slice(&[0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]);
    assert_eq!(Message::parse(&v).unwrap_err(), ParseError::BadAttribute);
    // Fixed up: fine.
    v[3] = 12;
    assert_eq!(Message::parse(&v).unwrap().str_attr(attr::SOFTWARE), Some(Ok("abcde")));
    // A header cut in half.
    let mut v = header(4);
    v.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
    assert!(Message::parse(&v).is_ok());
    let mut v = header(4);
    v.extend_from_slice(&[0x80, 0x22, 0x00, 0x04]);
    assert_eq!(Message::parse(&v).unwrap_err(), ParseError::BadAttribute);
}

#[test]
fn too_many_attributes() {
    let build = |n: usize| {
        let mut v = header((n * 4) as u16);
        for _ in 0..n {
            v.extend_from_slice(&[0x80, 0x50, 0, 0]);
        }
        v
    };
    assert_eq!(Message::parse(&build(MAX_ATTRS)).unwrap().attrs().count(), MAX_ATTRS);
    assert_eq!(
        Message::parse(&build(MAX_ATTRS + 1)).unwrap_err(),
        ParseError::TooManyAttributes
    );
    assert_eq!(Message::parse(&build(4000)).unwrap_err(), ParseError::TooManyAttributes);
}

#[test]
fn fingerprint_must_be_last_and_match() {
    let v = unhex(SAMPLE_REQUEST);
    let fp = v.len() - 4;
    for i in fp..v.len() {
        let mut bad = v.clone();
        bad[i] ^= 0x10;
        assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadFingerprint);
    }
    // Any change to the covered bytes breaks it too.
    let mut bad = v.clone();
    bad[30] ^= 1;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadFingerprint);

    // FINGERPRINT followed by another attribute.
    let mut buf = [0u8; 128];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, &[1; 12]).unwrap();
    b.add_fingerprint().unwrap();
    b.add(attr::SOFTWARE, b"late").unwrap();
    let n = b.finish();
    assert_eq!(Message::parse(&buf[..n]).unwrap_err(), ParseError::BadFingerprint);

    // FINGERPRINT with the wrong length.
    let mut v = header(12);
    v.extend_from_slice(&[0x80, 0x28, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(Message::parse(&v).unwrap_err(), ParseError::BadFingerprint);
}

#[test]
fn wrong_integrity_key_or_tampering_fails() {
    let v = unhex(SAMPLE_LONG_TERM_REQUEST);
    let key = long_term_key_md5(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    for i in 0..v.len() {
        // Byte 3 is the length (changing it breaks parsing, checked elsewhere).
        if (2..4).contains(&i) {
            continue;
        }
        let mut bad = v.clone();
        bad[i] ^= 0x01;
        if let Ok(m) = Message::parse(&bad) {
            assert!(m.check_integrity(&key).is_err(), "flip at {i} went unnoticed");
        }
    }
    let m = Message::parse(&v).unwrap();
    let mut wrong = key;
    wrong[15] ^= 1;
    assert!(m.check_integrity(&wrong).is_err());
    assert!(m.check_integrity(&[]).is_err());
}

#[test]
fn attributes_after_integrity_are_ignored() {
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::ALLOCATE, &[3; 12]).unwrap();
    b.add(attr::USERNAME, b"alice").unwrap();
    b.add_message_integrity(b"key").unwrap();
    b.add(attr::SOFTWARE, b"sneaky").unwrap();
    b.add(attr::USERNAME, b"mallory").unwrap();
    b.add(0x0031, b"unknown").unwrap();
    b.add_message_integrity(b"other").unwrap();
    b.add_message_integrity_sha256(b"key").unwrap();
    b.add(attr::REALM, b"sneaky").unwrap();
    b.add_message_integrity_sha256(b"other").unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish();
    let m = Message::parse(&buf[..n]).unwrap();
    let types: Vec<u16> = m.attrs().map(|(t, _)| t).collect();
    assert_eq!(
        types,
        [
            attr::USERNAME,
            attr::MESSAGE_INTEGRITY,
            attr::MESSAGE_INTEGRITY_SHA256,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(m.str_attr(attr::USERNAME), Some(Ok("alice")));
    assert!(!m.has(attr::SOFTWARE));
    let mut unknown = [0u16; 4];
    assert_eq!(
        m.unknown_comprehension_required(attr::is_known_comprehension_required, &mut unknown),
        0
    );
    // SHA-256 is preferred; it covers the ignored attributes between the two
    // integrity attributes, as RFC 8489 §14.6 has it.
    assert_eq!(m.check_integrity(b"key"), Ok(IntegrityKind::Sha256));
    assert!(m.check_integrity(b"other").is_err());
}

#[test]
fn truncated_sha256_macs() {
    for mac_len in [12usize, 16, 18, 20, 28, 32, 36] {
        let mut buf = [0u8; 128];
        let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::BINDING, &[5; 12]).unwrap();
        b.add(attr::USERNAME, b"bob").unwrap();
        let covered = b.len();
        b.add(attr::MESSAGE_INTEGRITY_SHA256, &vec![0; mac_len]).unwrap();
        let n = b.finish();
        // The length field already covers the MAC attribute, as the MAC requires.
        let mac = hmac_sha256(b"key", &buf[..covered]);
        let take = mac_len.min(32);
        buf[covered + 4..covered + 4 + take].copy_from_slice(&mac[..take]);
        let m = Message::parse(&buf[..n]).unwrap();
        let ok = (16..=32).contains(&mac_len) && mac_len % 4 == 0;
        assert_eq!(m.check_integrity(b"key").is_ok(), ok, "mac_len {mac_len}");
        assert!(m.check_integrity(b"kez").is_err());
    }
}

fn is_bad<T>(r: Option<Result<T, ParseError>>) -> bool {
    matches!(r, Some(Err(ParseError::BadValue)))
}

#[test]
fn malformed_values_are_errors_not_absent() {
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::ALLOCATE, &[8; 12]).unwrap();
    b.add(attr::USERNAME, &[0xff, 0xfe]).unwrap();
    b.add(attr::LIFETIME, &[0, 0, 1]).unwrap();
    b.add(attr::CHANNEL_NUMBER, &[0x40, 0x00]).unwrap();
    b.add(attr::REQUESTED_TRANSPORT, &[17]).unwrap();
    b.add(attr::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0]).unwrap();
    b.add(attr::EVEN_PORT, &[0x80, 0]).unwrap();
    b.add(attr::RESERVATION_TOKEN, &[1; 7]).unwrap();
    b.add(attr::ERROR_CODE, &[0, 0, 9, 1]).unwrap();
    b.add(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 9]).unwrap();
    b.add(attr::PASSWORD_ALGORITHMS, &[0, 1, 0]).unwrap();
    b.add(attr::XOR_PEER_ADDRESS, &[0, 3, 0, 0, 1, 2, 3, 4]).unwrap();
    b.add(attr::MAPPED_ADDRESS, &[0, 2, 0, 0, 1, 2, 3, 4]).unwrap();
    b.add(attr::REALM, &[b'r'; 764]).unwrap_err();
    let n = b.finish();
    let m = Message::parse(&buf[..n]).unwrap();
    assert!(is_bad(m.str_attr(attr::USERNAME)));
    assert!(is_bad(m.u32_attr(attr::LIFETIME)));
    assert!(is_bad(m.channel_number()));
    assert!(is_bad(m.requested_transport()));
    assert!(is_bad(m.family(attr::REQUESTED_ADDRESS_FAMILY)));
    assert!(is_bad(m.even_port()));
    assert!(is_bad(m.reservation_token()));
    assert!(is_bad(m.error_code()));
    assert!(is_bad(m.password_algorithm()));
    assert!(is_bad(m.password_algorithms(&mut [0; 2])));
    assert!(is_bad(m.xor_address(attr::XOR_PEER_ADDRESS)));
    assert_eq!(
        m.xor_addresses(attr::XOR_PEER_ADDRESS).collect::<Vec<_>>(),
        [Err(ParseError::BadValue)]
    );
    assert!(is_bad(m.address(attr::MAPPED_ADDRESS)));
    // Absent ones.
    assert_eq!(m.str_attr(attr::NONCE), None);
    assert_eq!(m.xor_address(attr::XOR_RELAYED_ADDRESS), None);
    assert_eq!(m.xor_addresses(attr::XOR_RELAYED_ADDRESS).count(), 0);
    assert_eq!(m.u32_attr(attr::CONNECTION_ID), None);
    assert_eq!(m.family(attr::ADDITIONAL_ADDRESS_FAMILY), None);

    let long = [b'r'; 764];
    let mut buf = [0u8; 4096];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::ALLOCATE, &[8; 12]).unwrap();
    b.add(attr::REALM, &long).unwrap();
    b.add(attr::NONCE, &long[..763]).unwrap();
    b.add(attr::USERNAME, &long[..514]).unwrap();
    b.add(attr::DATA, &long).unwrap();
    let n = b.finish();
    let m = Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.str_attr(attr::REALM), Some(Err(ParseError::BadValue)));
    assert_eq!(m.str_attr(attr::NONCE).map(|r| r.map(str::len)), Some(Ok(763)));
    assert_eq!(m.str_attr(attr::USERNAME), Some(Err(ParseError::BadValue)));
    assert!(matches!(m.str_attr(attr::DATA), Some(Ok(_))));
}

#[test]
fn well_formed_turn_attributes() {
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::CHANNEL_BIND, &[8; 12]).unwrap();
    b.add_u32(attr::CHANNEL_NUMBER, 0x4001_0000).unwrap();
    b.add_u32(attr::REQUESTED_TRANSPORT, 0x1100_0000).unwrap();
    b.add_u32(attr::REQUESTED_ADDRESS_FAMILY, 0x0200_0000).unwrap();
    b.add(attr::EVEN_PORT, &[0x80]).unwrap();
    b.add(attr::RESERVATION_TOKEN, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    b.add(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 3, 9, 9, 9, 0]).unwrap();
    b.add_xor_address(attr::XOR_PEER_ADDRESS, "10.0.0.1:1".parse().unwrap())
        .unwrap();
    b.add_xor_address(attr::XOR_PEER_ADDRESS, "[fe80::1]:2".parse().unwrap())
        .unwrap();
    b.add(0x0031, b"").unwrap();
    b.add(0x0031, b"").unwrap();
    b.add(0x7fff, b"").unwrap();
    b.add(0xC001, b"").unwrap();
    let n = b.finish();
    let m = Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.channel_number(), Some(Ok(0x4001)));
    assert_eq!(m.requested_transport(), Some(Ok(attr::TRANSPORT_UDP)));
    assert_eq!(m.family(attr::REQUESTED_ADDRESS_FAMILY), Some(Ok(attr::FAMILY_IPV6)));
    assert_eq!(m.even_port(), Some(Ok(true)));
    assert_eq!(m.reservation_token(), Some(Ok([1, 2, 3, 4, 5, 6, 7, 8])));
    assert_eq!(m.password_algorithm(), Some(Ok(2)));
    let peers: Vec<_> = m.xor_addresses(attr::XOR_PEER_ADDRESS).collect();
    assert_eq!(
        peers,
        [Ok("10.0.0.1:1".parse().unwrap()), Ok("[fe80::1]:2".parse().unwrap())]
    );
    let mut unknown = [0u16; 4];
    let k = m.unknown_comprehension_required(attr::is_known_comprehension_required, &mut unknown);
    assert_eq!(&unknown[..k], &[0x0031, 0x7fff]);
    let mut one = [0u16; 1];
    assert_eq!(
        m.unknown_comprehension_required(attr::is_known_comprehension_required, &mut one),
        1
    );
    assert_eq!(m.unknown_comprehension_required(|_| true, &mut unknown), 0);
}

#[test]
fn stream_framing() {
    let v = unhex(SAMPLE_REQUEST);
    for len in 0..v.len() {
        assert_eq!(stream_frame_len(&v[..len]), Ok(None));
    }
    assert_eq!(stream_frame_len(&v), Ok(Some(v.len())));
    let mut two = v.clone();
    two.extend_from_slice(&v);
    assert_eq!(stream_frame_len(&two), Ok(Some(v.len())));
    let mut bad = v.clone();
    bad[3] += 1;
    assert_eq!(stream_frame_len(&bad), Err(ParseError::BadLength));
    assert_eq!(stream_frame_len(&[0x80, 0, 0, 0]), Err(ParseError::NotStun));
    // ChannelData with 5 payload bytes takes 8 on a stream.
    let cd = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
    assert_eq!(stream_frame_len(&cd[..11]), Ok(None));
    assert_eq!(stream_frame_len(&cd), Ok(Some(12)));
    assert_eq!(
        ChannelData::parse(&cd),
        Ok(ChannelData {
            channel: 0x4000,
            data: &[1, 2, 3, 4, 5]
        })
    );
    assert_eq!(ChannelData::parse(&cd[..8]), Err(ParseError::Truncated));
    assert_eq!(ChannelData::parse(&[0x80, 0, 0, 0]), Err(ParseError::NotChannelData));
    assert_eq!(ChannelData::parse(&[0x7f, 0xff, 0, 0]).map(|c| c.channel), Ok(0x7fff));
    assert_eq!(ChannelData::parse(&[0x3f, 0xff, 0, 0]), Err(ParseError::NotChannelData));
    assert_eq!(ChannelData::parse(&[0x4f, 0xff, 0, 0]).map(|c| c.data.len()), Ok(0));
    assert_eq!(channel_data::header(0x4001, 300), [0x40, 0x01, 0x01, 0x2c]);
    assert_eq!(channel_data::stream_padding(5), 3);
    assert_eq!(channel_data::stream_padding(8), 0);
    assert_eq!(classify(&v), Kind::Stun);
    assert_eq!(classify(&cd), Kind::ChannelData);
    assert_eq!(classify(&[0x17]), Kind::Other);
    assert_eq!(classify(&[]), Kind::Other);
}

// ---- property tests ----

#[derive(Debug, Clone)]
enum TestAttr {
    XorAddr(u16, SocketAddr),
    Addr(u16, SocketAddr),
    Error(u16, String),
    Str(u16, String),
    U32(u16, u32),
    Unknown(Vec<u16>),
    PasswordAlgorithms(Vec<u16>),
    Raw(u16, Vec<u8>),
}

/// Types the typed variants use; raw attributes avoid them (and the
/// integrity and fingerprint types) so first-occurrence lookups are exact.
const TYPED: [u16; 17] = [
    attr::XOR_MAPPED_ADDRESS,
    attr::XOR_PEER_ADDRESS,
    attr::XOR_RELAYED_ADDRESS,
    attr::MAPPED_ADDRESS,
    attr::ALTERNATE_SERVER,
    attr::ERROR_CODE,
    attr::USERNAME,
    attr::REALM,
    attr::NONCE,
    attr::SOFTWARE,
    attr::LIFETIME,
    attr::PRIORITY,
    attr::UNKNOWN_ATTRIBUTES,
    attr::PASSWORD_ALGORITHMS,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::FINGERPRINT,
];

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn test_attr() -> impl Strategy<Value = TestAttr> {
    prop_oneof![
        (
            prop::sample::select(vec![
                attr::XOR_MAPPED_ADDRESS,
                attr::XOR_PEER_ADDRESS,
                attr::XOR_RELAYED_ADDRESS
            ]),
            socket_addr()
        )
            .prop_map(|(t, a)| TestAttr::XorAddr(t, a)),
        (
            prop::sample::select(vec![attr::MAPPED_ADDRESS, attr::ALTERNATE_SERVER]),
            socket_addr()
        )
            .prop_map(|(t, a)| TestAttr::Addr(t, a)),
        (300u16..700, "\\PC{0,30}").prop_map(|(c, r)| TestAttr::Error(c, r)),
        (
            prop::sample::select(vec![attr::USERNAME, attr::REALM, attr::NONCE, attr::SOFTWARE]),
            "\\PC{0,40}"
        )
            .prop_map(|(t, s)| TestAttr::Str(t, s)),
        (prop::sample::select(vec![attr::LIFETIME, attr::PRIORITY]), any::<u32>())
            .prop_map(|(t, v)| TestAttr::U32(t, v)),
        prop::collection::vec(any::<u16>(), 0..6).prop_map(TestAttr::Unknown),
        prop::collection::vec(any::<u16>(), 0..5).prop_map(TestAttr::PasswordAlgorithms),
        (
            any::<u16>().prop_filter("typed", |t| !TYPED.contains(t)),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(t, v)| TestAttr::Raw(t, v)),
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop::sample::select(vec![Class::Request, Class::Indication, Class::Success, Class::Error])
}

fn typ_of(a: &TestAttr) -> u16 {
    match a {
        TestAttr::XorAddr(t, _) | TestAttr::Addr(t, _) | TestAttr::Str(t, _) | TestAttr::U32(t, _) => *t,
        TestAttr::Raw(t, _) => *t,
        TestAttr::Error(..) => attr::ERROR_CODE,
        TestAttr::Unknown(_) => attr::UNKNOWN_ATTRIBUTES,
        TestAttr::PasswordAlgorithms(_) => attr::PASSWORD_ALGORITHMS,
    }
}

fn add(b: &mut MessageBuilder, a: &TestAttr) -> Result<(), EncodeError> {
    match a {
        TestAttr::XorAddr(t, addr) => b.add_xor_address(*t, *addr),
        TestAttr::Addr(t, addr) => b.add_address(*t, *addr),
        TestAttr::Error(code, reason) => b.add_error_code(*code, reason),
        TestAttr::Str(t, s) => b.add(*t, s.as_bytes()),
        TestAttr::U32(t, v) => b.add_u32(*t, *v),
        TestAttr::Unknown(types) => b.add_unknown_attributes(types),
        TestAttr::PasswordAlgorithms(algs) => b.add_password_algorithms(algs),
        TestAttr::Raw(t, v) => b.add(*t, v),
    }
}

/// Checks one parsed value against what was encoded.
fn check_value(a: &TestAttr, value: &[u8], tid: &TransactionId) {
    match a {
        TestAttr::XorAddr(_, addr) => assert_eq!(decode_xor_address(value, tid), Ok(*addr)),
        TestAttr::Addr(_, addr) => assert_eq!(decode_address(value), Ok(*addr)),
        TestAttr::Error(code, reason) => assert_eq!(decode_error_code(value), Ok((*code, reason.as_str()))),
        TestAttr::Str(t, s) => assert_eq!(decode_str(*t, value), Ok(s.as_str())),
        TestAttr::U32(_, v) => assert_eq!(decode_u32(value), Ok(*v)),
        TestAttr::Unknown(types) => {
            let want: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
            assert_eq!(value, &want[..]);
        }
        TestAttr::PasswordAlgorithms(algs) => {
            let want: Vec<u8> = algs.iter().flat_map(|a| [a.to_be_bytes(), [0, 0]]).flatten().collect();
            assert_eq!(value, &want[..]);
        }
        TestAttr::Raw(_, v) => assert_eq!(value, &v[..]),
    }
}

/// Checks the public accessor for the first attribute of a type.
fn check_accessor(m: &Message, a: &TestAttr) {
    match a {
        TestAttr::XorAddr(t, addr) => assert_eq!(m.xor_address(*t), Some(Ok(*addr))),
        TestAttr::Addr(t, addr) => assert_eq!(m.address(*t), Some(Ok(*addr))),
        TestAttr::Error(code, reason) => assert_eq!(m.error_code(), Some(Ok((*code, reason.as_str())))),
        TestAttr::Str(t, s) => assert_eq!(m.str_attr(*t), Some(Ok(s.as_str()))),
        TestAttr::U32(t, v) => assert_eq!(m.u32_attr(*t), Some(Ok(*v))),
        TestAttr::Unknown(_) => {}
        TestAttr::PasswordAlgorithms(algs) => {
            let mut out = [0u16; 8];
            assert_eq!(m.password_algorithms(&mut out), Some(Ok(algs.len())));
            assert_eq!(&out[..algs.len()], &algs[..]);
        }
        TestAttr::Raw(t, v) => assert_eq!(m.attr(*t), Some(&v[..])),
    }
}

/// Calls every accessor; used on arbitrary input, where only the absence of
/// panics and internal consistency matter.
fn exercise(buf: &[u8]) {
    let Ok(m) = Message::parse(buf) else { return };
    assert!(m.as_bytes().len() <= buf.len());
    assert_eq!(m.as_bytes(), &buf[..m.as_bytes().len()]);
    let _ = (m.class(), m.method(), m.transaction_id());
    for (t, v) in m.attrs() {
        assert!(m.has(t));
        let _ = (decode_str(t, v), decode_u32(v), decode_address(v), decode_error_code(v));
    }
    for t in TYPED {
        let _ = (
            m.xor_address(t),
            m.address(t),
            m.str_attr(t),
            m.u32_attr(t),
            m.family(t),
        );
        let _ = m.xor_addresses(t).count();
    }
    let _ = (
        m.channel_number(),
        m.requested_transport(),
        m.even_port(),
        m.reservation_token(),
        m.error_code(),
    );
    let _ = (m.password_algorithm(), m.password_algorithms(&mut [0; 3]));
    let mut out = [0u16; 4];
    let n = m.unknown_comprehension_required(attr::is_known_comprehension_required, &mut out);
    assert!(n <= out.len());
    let _ = m.unknown_comprehension_required(|_| false, &mut []);
    let _ = (m.has_integrity(), m.check_integrity(b"key"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn built_messages_parse_back(
        class in class(),
        method in 0u16..0x1000,
        tid in any::<[u8; 12]>(),
        attrs in prop::collection::vec(test_attr(), 0..20),
        integrity in 0u8..4,
        with_fingerprint in any::<bool>(),
        key in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut buf = [0u8; 4096];
        let mut b = MessageBuilder::new(&mut buf, class, Method(method), &tid).unwrap();
        for a in &attrs {
            add(&mut b, a).unwrap();
        }
        let mut trailer = Vec::new();
        if integrity & 1 != 0 {
            b.add_message_integrity(&key).unwrap();
            trailer.push(attr::MESSAGE_INTEGRITY);
        }
        if integrity & 2 != 0 {
            b.add_message_integrity_sha256(&key).unwrap();
            trailer.push(attr::MESSAGE_INTEGRITY_SHA256);
        }
        if with_fingerprint {
            b.add_fingerprint().unwrap();
            trailer.push(attr::FINGERPRINT);
        }
        let n = b.finish();
        prop_assert_eq!(n % 4, 0);
        prop_assert_eq!(u16::from_be_bytes([buf[2], buf[3]]) as usize, n - HEADER_LEN);
        // RFC 7983 demultiplexing only sees methods below 0x100 as STUN.
        if method < 0x100 {
            prop_assert_eq!(stream_frame_len(&buf[..n]), Ok(Some(n)));
        }

        let m = Message::parse(&buf[..n]).unwrap();
        prop_assert_eq!(m.class(), class);
        prop_assert_eq!(m.method(), Method(method));
        prop_assert_eq!(m.transaction_id(), &tid);
        prop_assert_eq!(m.attrs().count(), attrs.len() + trailer.len());
        for (a, (t, v)) in attrs.iter().zip(m.attrs()) {
            prop_assert_eq!(typ_of(a), t);
            check_value(a, v, &tid);
        }
        let tail: Vec<u16> = m.attrs().skip(attrs.len()).map(|(t, _)| t).collect();
        prop_assert_eq!(tail, trailer);
        for (i, a) in attrs.iter().enumerate() {
            if attrs[..i].iter().all(|p| typ_of(p) != typ_of(a)) {
                check_accessor(&m, a);
            }
        }

        let mut want_unknown: Vec<u16> = Vec::new();
        for a in &attrs {
            let t = typ_of(a);
            if t < 0x8000 && !attr::is_known_comprehension_required(t) && !want_unknown.contains(&t) {
                want_unknown.push(t);
            }
        }
        let mut out = [0u16; 32];
        let k = m.unknown_comprehension_required(attr::is_known_comprehension_required, &mut out);
        prop_assert_eq!(&out[..k], &want_unknown[..]);

        match integrity {
            0 => prop_assert!(m.check_integrity(&key).is_err()),
            1 => prop_assert_eq!(m.check_integrity(&key), Ok(IntegrityKind::Sha1)),
            _ => prop_assert_eq!(m.check_integrity(&key), Ok(IntegrityKind::Sha256)),
        }
        let mut wrong = key.clone();
        // Not a zero: HMAC pads short keys with zeros, so key || 0 is the same key.
        wrong.push(1);
        prop_assert!(m.check_integrity(&wrong).is_err());
    }

    #[test]
    fn parse_never_panics(buf in prop::collection::vec(any::<u8>(), 0..600)) {
        exercise(&buf);
        let _ = stream_frame_len(&buf);
        let _ = ChannelData::parse(&buf);
    }

    /// Random bodies behind a valid header reach the attribute walker, which
    /// fully random bytes almost never do.
    #[test]
    fn parse_never_panics_on_plausible_messages(
        typ in 0u16..0x4000,
        len_delta in -8i32..8,
        body in prop::collection::vec(any::<u8>(), 0..400),
        tid in any::<[u8; 12]>(),
    ) {
        let mut buf = Vec::new();
        buf.extend_from_slice(&typ.to_be_bytes());
        let len = (body.len() as i32 + len_delta).clamp(0, 0xFFFF) as u16;
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        buf.extend_from_slice(&body);
        exercise(&buf);
    }

    /// Single-byte corruptions of built messages with integrity and
    /// fingerprint: never a panic, and never a silently accepted change.
    #[test]
    fn corrupted_messages_are_caught(
        attrs in prop::collection::vec(test_attr(), 0..8),
        pos in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut buf = [0u8; 2048];
        let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::ALLOCATE, &[7; 12]).unwrap();
        for a in &attrs {
            add(&mut b, a).unwrap();
        }
        b.add_message_integrity(b"k").unwrap();
        b.add_fingerprint().unwrap();
        let n = b.finish();
        let i = pos.index(n);
        buf[i] ^= flip;
        exercise(&buf[..n]);
        if let Ok(m) = Message::parse(&buf[..n]) {
            // Only a change inside FINGERPRINT itself can hide it (it then
            // becomes an ignored attribute); the MAC still holds then.
            prop_assert!(m.check_integrity(b"k").is_err() || m.as_bytes().len() != n || !m.has(attr::FINGERPRINT));
        }
    }

    #[test]
    fn channel_data_never_panics(buf in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(cd) = ChannelData::parse(&buf) {
            prop_assert!((channel_data::MIN_CHANNEL..=channel_data::MAX_CHANNEL).contains(&cd.channel));
            prop_assert!(cd.data.len() + channel_data::HEADER_LEN <= buf.len());
        }
        if let Ok(Some(n)) = stream_frame_len(&buf) {
            prop_assert!(n <= buf.len());
        }
    }
}
