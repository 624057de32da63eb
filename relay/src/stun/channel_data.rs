//! ChannelData messages (RFC 8656 §12.4): 2-byte channel number, 2-byte
//! length, payload, and over stream transports padding to 4 bytes.
use super::error::ParseError;

pub const HEADER_LEN: usize = 4;
pub const MIN_CHANNEL: u16 = 0x4000;
/// RFC 8656 narrowed channels to 0x4000..=0x4FFF so other protocols can share
/// a port, but RFC 5766 allowed up to 0x7FFF and deployed clients (coturn's
/// own, re's, libnice) still pick numbers there. A TURN port carries only STUN
/// and ChannelData, so accepting the old range costs nothing and keeps them working.
pub const MAX_CHANNEL: u16 = 0x7FFF;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses one ChannelData message. The declared length must fit in `buf`;
    /// bytes after it (padding) are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<ChannelData<'a>, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&channel) {
            return Err(ParseError::NotChannelData);
        }
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let data = buf.get(HEADER_LEN..HEADER_LEN + len).ok_or(ParseError::Truncated)?;
        Ok(ChannelData { channel, data })
    }
}

/// Writes the 4-byte header for a payload of `len` bytes.
pub fn header(channel: u16, len: u16) -> [u8; 4] {
    let c = channel.to_be_bytes();
    let l = len.to_be_bytes();
    [c[0], c[1], l[0], l[1]]
}

/// Padding needed after a payload of `len` bytes on stream transports.
pub fn stream_padding(len: usize) -> usize {
    (4 - len % 4) % 4
}
