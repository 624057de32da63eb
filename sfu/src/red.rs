//! RFC 2198 redundant audio (RED), as browsers send Opus: the SFU forwards
//! RED untouched to subscribers that negotiated it, and gives the others the
//! primary block alone, which is an ordinary Opus payload.
//!
//! A RED payload is a list of block headers, then the blocks' data in the
//! same order. Every header but the last is 4 bytes (F=1, block PT,
//! 14-bit timestamp offset, 10-bit length); the last is 1 byte (F=0, PT)
//! and belongs to the primary block, whose data runs to the end.
use std::ops::Range;
use std::sync::Arc;

/// What a RED packet becomes on its way to one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedOut {
    /// Forwarded as it came (also every non-RED payload).
    AsIs,
    /// The subscriber did not negotiate RED: only the primary block goes.
    Primary,
    /// The subscriber takes RED but numbers Opus differently: the block
    /// headers are renamed from the publisher's Opus PT to its own.
    RenameBlocks { from: u8, to: u8 },
}

impl RedOut {
    /// The conversion for a packet with the publisher's Opus PT
    /// `publisher_main` (RED or not) towards a subscriber with Opus PT
    /// `main` and RED PT `red`, if negotiated.
    pub fn choose(is_red: bool, publisher_main: u8, main: u8, red: Option<u8>) -> RedOut {
        match (is_red, red) {
            (false, _) => RedOut::AsIs,
            (true, None) => RedOut::Primary,
            (true, Some(_)) if main == publisher_main => RedOut::AsIs,
            (true, Some(_)) => RedOut::RenameBlocks {
                from: publisher_main,
                to: main,
            },
        }
    }
}

/// The payloads one received packet turns into, each cut at most once
/// however many subscribers need it (a subscriber that takes the packet as
/// it came shares its buffer).
pub struct Cuts<'a> {
    payload: &'a Arc<[u8]>,
    primary: Option<Arc<[u8]>>,
    renamed: Option<(u8, Arc<[u8]>)>,
}

impl<'a> Cuts<'a> {
    pub fn new(payload: &'a Arc<[u8]>) -> Self {
        Cuts {
            payload,
            primary: None,
            renamed: None,
        }
    }

    /// The payload for `out`, or `None` when the packet is not well-formed
    /// RED and cannot be converted.
    pub fn payload_for(&mut self, out: RedOut) -> Option<Arc<[u8]>> {
        match out {
            RedOut::AsIs => Some(self.payload.clone()),
            RedOut::Primary => {
                if self.primary.is_none() {
                    self.primary = Some(Arc::from(&self.payload[primary(self.payload)?]));
                }
                self.primary.clone()
            }
            RedOut::RenameBlocks { from, to } => {
                match &self.renamed {
                    Some((t, p)) if *t == to => return Some(p.clone()),
                    _ => {}
                }
                let renamed: Arc<[u8]> = Arc::from(rename_blocks(self.payload, from, to)?);
                self.renamed = Some((to, renamed.clone()));
                Some(renamed)
            }
        }
    }
}

/// A copy of a RED payload whose block headers say `to` where they said `from`.
pub fn rename_blocks(payload: &[u8], from: u8, to: u8) -> Option<Vec<u8>> {
    primary(payload)?;
    let mut out = payload.to_vec();
    let mut at = 0;
    loop {
        let b = out[at];
        if b & 0x7F == from {
            out[at] = (b & 0x80) | (to & 0x7F);
        }
        if b & 0x80 == 0 {
            return Some(out);
        }
        at += 4;
    }
}

/// Where the primary block's data lies in `payload`, or `None` when the
/// payload is not well-formed RED (headers or lengths run past its end).
pub fn primary(payload: &[u8]) -> Option<Range<usize>> {
    let mut at = 0;
    let mut redundant_len = 0usize;
    loop {
        let first = *payload.get(at)?;
        if first & 0x80 == 0 {
            at += 1;
            break;
        }
        let header = payload.get(at..at + 4)?;
        redundant_len += usize::from(header[2] & 0x03) << 8 | usize::from(header[3]);
        at += 4;
    }
    let start = at.checked_add(redundant_len)?;
    (start <= payload.len()).then_some(start..payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RED payload with one redundant block (`old`, 960 ticks earlier)
    /// and the primary `new`.
    fn red(old: &[u8], new: &[u8]) -> Vec<u8> {
        let offset_and_len = (960u32 << 10) | old.len() as u32;
        let [_, a, b, c] = offset_and_len.to_be_bytes();
        let mut v = vec![0x80 | 111, a, b, c, 111];
        v.extend_from_slice(old);
        v.extend_from_slice(new);
        v
    }

    #[test]
    fn finds_the_primary_after_redundant_blocks() {
        let p = red(&[1, 2, 3], &[9, 8, 7, 6]);
        assert_eq!(&p[primary(&p).unwrap()], &[9, 8, 7, 6]);
        let long = vec![5u8; 300];
        let p = red(&long, &[4]);
        assert_eq!(&p[primary(&p).unwrap()], &[4]);
    }

    #[test]
    fn block_headers_are_renamed_and_the_data_kept() {
        let p = red(&[1, 2, 3], &[9, 8]);
        let r = rename_blocks(&p, 111, 100).unwrap();
        assert_eq!(r[0], 0x80 | 100);
        assert_eq!(r[4], 100);
        assert_eq!(&r[1..4], &p[1..4]);
        assert_eq!(&r[5..], &p[5..]);
        assert_eq!(rename_blocks(&[0x80, 1], 0, 1), None);
    }

    #[test]
    fn conversions_are_chosen_by_what_the_subscriber_negotiated() {
        assert_eq!(RedOut::choose(false, 111, 100, Some(63)), RedOut::AsIs);
        assert_eq!(RedOut::choose(true, 111, 111, Some(63)), RedOut::AsIs);
        assert_eq!(RedOut::choose(true, 111, 111, None), RedOut::Primary);
        assert_eq!(
            RedOut::choose(true, 111, 100, Some(63)),
            RedOut::RenameBlocks { from: 111, to: 100 }
        );
        let p: Arc<[u8]> = Arc::from(red(&[1], &[2, 3]));
        let mut cuts = Cuts::new(&p);
        let a = cuts.payload_for(RedOut::Primary).unwrap();
        let b = cuts.payload_for(RedOut::Primary).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cut once");
        assert_eq!(&a[..], &[2, 3]);
        assert!(Arc::ptr_eq(&cuts.payload_for(RedOut::AsIs).unwrap(), &p));
    }

    #[test]
    fn a_lone_primary_header_is_plain_red() {
        let p = [111, 0xAA, 0xBB];
        assert_eq!(primary(&p), Some(1..3));
        // An empty primary is allowed (DTX comfort packets can be tiny).
        assert_eq!(primary(&[111]), Some(1..1));
    }

    #[test]
    fn malformed_payloads_are_refused_not_panicked_on() {
        assert_eq!(primary(&[]), None);
        assert_eq!(primary(&[0x80 | 111, 0, 0]), None, "header cut short");
        assert_eq!(
            primary(&[0x80 | 111, 0, 0, 10, 111, 1, 2]),
            None,
            "block longer than the payload"
        );
        assert_eq!(primary(&[0x80, 0, 0, 0, 0x80, 0, 0, 0]), None, "no final header");
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + 0x81) as u8).collect();
            if let Some(r) = primary(&junk) {
                assert!(r.end == junk.len() && r.start <= r.end);
            }
        }
    }
}
