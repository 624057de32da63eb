//! Codec errors. Every parse error means "drop the packet and count it".
use thiserror::Error;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    #[error("not a STUN message")]
    NotStun,
    #[error("message shorter than its header or its declared length")]
    Truncated,
    #[error("length field is not a multiple of 4 or exceeds the buffer")]
    BadLength,
    #[error("attribute runs past the end of the message")]
    BadAttribute,
    #[error("more than the allowed number of attributes")]
    TooManyAttributes,
    #[error("FINGERPRINT is not the last attribute or does not match")]
    BadFingerprint,
    #[error("malformed attribute value")]
    BadValue,
    #[error("not a ChannelData message")]
    NotChannelData,
}

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("attribute value longer than 65535 bytes")]
    ValueTooLong,
}
