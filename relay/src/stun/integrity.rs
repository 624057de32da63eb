//! Keys and MACs for MESSAGE-INTEGRITY (HMAC-SHA1) and
//! MESSAGE-INTEGRITY-SHA256, and USERHASH (RFC 8489 §9.2, §14.4-14.6).

/// Long-term credential key for PASSWORD-ALGORITHM MD5 (and the default):
/// MD5(username ":" realm ":" password).
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let _ = (username, realm, password);
    todo!()
}

/// Long-term credential key for PASSWORD-ALGORITHM SHA-256.
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let _ = (username, realm, password);
    todo!()
}

/// USERHASH = SHA-256(username ":" realm).
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let _ = (username, realm);
    todo!()
}

/// HMAC-SHA1 over `data`.
pub fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let _ = (key, data);
    todo!()
}

/// HMAC-SHA256 over `data`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let _ = (key, data);
    todo!()
}
