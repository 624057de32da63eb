//! Message::parse on arbitrary bytes, then every accessor and an integrity
//! check: none may panic, and what parse accepts must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::stun::{attr, Message, MessageBuilder, HEADER_LEN};

/// Every attribute type some accessor gives meaning to.
const TYPES: [u16; 20] = [
    attr::MAPPED_ADDRESS,
    attr::USERNAME,
    attr::ERROR_CODE,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::XOR_RELAYED_ADDRESS,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::XOR_MAPPED_ADDRESS,
    attr::PRIORITY,
    attr::CONNECTION_ID,
    attr::ADDITIONAL_ADDRESS_FAMILY,
    attr::SOFTWARE,
    attr::ALTERNATE_SERVER,
    attr::RESPONSE_ORIGIN,
    attr::USERHASH,
    attr::OTHER_ADDRESS,
];

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(data) else { return };
    let raw = m.as_bytes();
    assert!(raw.len() >= HEADER_LEN && raw.len() % 4 == 0);
    assert_eq!(raw, &data[..raw.len()]);
    let _ = (m.class(), m.method(), m.transaction_id());

    let mut n = 0;
    for (typ, value) in m.attrs() {
        n += 1;
        let start = value.as_ptr() as usize - raw.as_ptr() as usize;
        assert!(start + value.len() <= raw.len());
        assert!(m.has(typ));
    }
    assert!(n <= relay::stun::MAX_ATTRS);

    for t in TYPES {
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
    );
    let _ = (
        m.error_code(),
        m.password_algorithm(),
        m.password_algorithms(&mut [0u16; 4]),
    );
    let mut unknown = [0u16; 8];
    let k = m.unknown_comprehension_required(attr::is_known_comprehension_required, &mut unknown);
    assert!(k <= unknown.len());
    let _ = m.unknown_comprehension_required(|_| false, &mut []);
    let verified = m.check_integrity(b"fuzz-key").is_ok();
    assert!(!verified || m.has_integrity());

    // Re-encoding the recorded attributes (integrity and fingerprint
    // recomputed) must give a message that parses back to the same values.
    let mut buf = vec![0u8; raw.len() + 64];
    let mut b = MessageBuilder::new(&mut buf, m.class(), m.method(), m.transaction_id()).unwrap();
    let mut copied = Vec::new();
    for (typ, value) in m.attrs() {
        match typ {
            attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT => {}
            _ if b.add(typ, value).is_ok() => copied.push((typ, value)),
            _ => return,
        }
    }
    if copied.len() + 2 > relay::stun::MAX_ATTRS {
        return;
    }
    if b.add_message_integrity(b"fuzz-key").is_err() || b.add_fingerprint().is_err() {
        return;
    }
    let len = b.finish();
    let again = Message::parse(&buf[..len]).expect("re-encoded message parses");
    assert_eq!((again.class(), again.method()), (m.class(), m.method()));
    assert_eq!(again.transaction_id(), m.transaction_id());
    let mut it = again.attrs();
    for (typ, value) in copied {
        assert_eq!(it.next(), Some((typ, value)));
    }
    assert!(again.check_integrity(b"fuzz-key").is_ok());
});
