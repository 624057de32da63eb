//! Keys and MACs for MESSAGE-INTEGRITY (HMAC-SHA1) and
//! MESSAGE-INTEGRITY-SHA256, and USERHASH (RFC 8489 §9.2, §14.4-14.6).
use md5::{Digest, Md5};
use ring::{digest, hmac};

/// Long-term credential key for PASSWORD-ALGORITHM MD5 (and the default):
/// MD5(username ":" realm ":" password).
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Long-term credential key for PASSWORD-ALGORITHM SHA-256.
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    sha256_parts(&[username.as_bytes(), b":", realm.as_bytes(), b":", password.as_bytes()])
}

/// USERHASH = SHA-256(username ":" realm).
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    sha256_parts(&[username.as_bytes(), b":", realm.as_bytes()])
}

/// HMAC-SHA1 over `data`.
pub fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    hmac_sha1_parts(key, &[data])
}

/// HMAC-SHA256 over `data`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    hmac_sha256_parts(key, &[data])
}

/// HMAC-SHA1 over the concatenation of `parts`, so a MAC over a message with
/// a patched length field needs no copy of the message.
pub(crate) fn hmac_sha1_parts(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut out = [0u8; 20];
    out.copy_from_slice(hmac_parts(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key, parts).as_ref());
    out
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac_sha256_parts(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac_parts(hmac::HMAC_SHA256, key, parts).as_ref());
    out
}

fn hmac_parts(alg: hmac::Algorithm, key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    let key = hmac::Key::new(alg, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign()
}

fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn md5_key_matches_rfc5389_example() {
        // MD5("user:realm:pass") from md5sum, pinning the separator layout.
        assert_eq!(
            hex(&long_term_key_md5("user", "realm", "pass")),
            "8493fbc53ba582fb4c044c456bdc40eb"
        );
    }

    #[test]
    fn hmac_known_answers() {
        // RFC 2202 test case 2 and RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(hmac_sha1_parts(b"k", &[b"ab", b"", b"c"]), hmac_sha1(b"k", b"abc"));
        assert_eq!(hmac_sha256_parts(b"k", &[b"a", b"bc"]), hmac_sha256(b"k", b"abc"));
    }

    #[test]
    fn sha256_keys() {
        // SHA-256("abc") from FIPS 180-2, split across the separator positions.
        assert_eq!(
            hex(&sha256_parts(&[b"a", b"bc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(long_term_key_sha256("u", "r", "p"), sha256_parts(&[b"u:r:p"]));
        assert_eq!(userhash("u", "r"), sha256_parts(&[b"u:r"]));
    }
}
