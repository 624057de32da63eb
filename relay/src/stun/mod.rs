//! STUN codec (RFC 8489), no I/O.
//!
//! Parsing borrows the input: [`Message::parse`] validates the header and the
//! attribute layout once and records where each attribute sits, so lookups
//! afterwards are index scans over at most [`MAX_ATTRS`] entries and never
//! allocate. Encoding writes into a caller-provided buffer through
//! [`MessageBuilder`], so a reply costs no heap allocation either.
//!
//! ChannelData framing (RFC 8656 §12) lives in [`channel_data`] because it
//! shares the first-byte demultiplexing with STUN.

pub mod attr;
pub mod channel_data;
pub mod encode;
pub mod error;
pub mod fingerprint;
pub mod integrity;
pub mod message;

#[cfg(test)]
mod tests;

pub use channel_data::ChannelData;
pub use encode::MessageBuilder;
pub use error::{EncodeError, ParseError};
pub use message::Message;

/// The fixed magic cookie of RFC 5389 and later.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;
/// Most attributes a message we accept may carry. Anything with more is
/// dropped as malformed: no legitimate TURN or ICE message comes close.
pub const MAX_ATTRS: usize = 32;

pub type TransactionId = [u8; 12];

/// The message class, from the C1/C0 bits of the type field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// A STUN method (12 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    pub const CONNECT: Method = Method(0x00a);
    pub const CONNECTION_BIND: Method = Method(0x00b);
    pub const CONNECTION_ATTEMPT: Method = Method(0x00c);
}

/// What the first bytes of a datagram or stream frame say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

/// Demultiplexes by the first byte (RFC 7983 ranges): 0..=3 is STUN,
/// 0x40..=0x7F is ChannelData (channel numbers 0x4000..=0x7FFF, see
/// [`channel_data::MAX_CHANNEL`]).
pub fn classify(buf: &[u8]) -> Kind {
    match buf.first() {
        Some(0..=3) => Kind::Stun,
        Some(0x40..=0x7F) => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// For stream transports: the length of the next complete frame at the start
/// of `buf` (a STUN message, or a ChannelData message including its padding to
/// a multiple of 4), `Ok(None)` when more bytes are needed, or an error when
/// the bytes can never form a valid frame (the connection should be closed).
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let total = match classify(buf) {
        Kind::Stun => {
            if !len.is_multiple_of(4) {
                return Err(ParseError::BadLength);
            }
            HEADER_LEN + len
        }
        Kind::ChannelData => 4 + len.div_ceil(4) * 4,
        Kind::Other => return Err(ParseError::NotStun),
    };
    Ok(if buf.len() >= total { Some(total) } else { None })
}
