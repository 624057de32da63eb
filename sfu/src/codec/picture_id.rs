//! Continuous VP8 PictureID and TL0PICIDX per subscriber.
//!
//! libwebrtc's VP8 receiver (`RtpVp8RefFinder`) remembers every PictureID
//! it has not seen yet and holds back ("stashes") a frame of temporal layer
//! 1 or up while any PictureID between it and its reference is missing: it
//! cannot tell a frame an SFU dropped from one lost on the way. So when
//! temporal layers are dropped, the PictureIDs of what is forwarded must be
//! renumbered without holes (a subscriber receiving only TL0 would not
//! need it: base layer frames skip that check; but the target moves).
//! Frames lost upstream keep their hole, so the receiver still waits for
//! or gives up on them as it should. Across a simulcast switch both
//! PictureID and TL0PICIDX continue from the last values forwarded.
//!
//! The new values go out as a str0m `Vp8Patch`: str0m writes them while
//! copying the payload into the outgoing datagram (a copy it makes anyway,
//! also for retransmissions), so the shared `Arc<[u8]>` payload is never
//! copied or changed and rewriting costs no allocation.
//!
//! VP9 needs none of this: its receiver (`RtpVp9RefFinder`) tracks missing
//! frames per temporal layer and only lower layers block a frame.
use super::vp8::Vp8Descriptor;

/// Recently forwarded pictures remembered for late (reordered) packets.
const RECENT: usize = 8;

/// Whether `a` is after `b` in a number space of `modulus`.
fn newer(a: u16, b: u16, modulus: u16) -> bool {
    let d = a.wrapping_sub(b) % modulus;
    d != 0 && d < modulus / 2
}

/// The values to write into one forwarded packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub picture_id: u16,
    pub tl0_pic_idx: Option<u8>,
}

/// One down-track's PictureID / TL0PICIDX mapping.
#[derive(Clone, Debug, Default)]
pub struct PictureIdRewriter {
    /// out = in - offset, in the field's number space.
    pid_offset: u16,
    tl0_offset: u8,
    /// Newest incoming PictureID seen, forwarded or dropped: a dropped
    /// packet of a newer picture is a dropped frame, counted once.
    highest_in: Option<u16>,
    last_out: Option<(u16, Option<u8>)>,
    /// (in, out) of recent forwarded pictures.
    recent: [(u16, u16); RECENT],
    recent_len: usize,
    recent_next: usize,
}

impl PictureIdRewriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A packet the temporal filter dropped.
    pub fn dropped(&mut self, d: &Vp8Descriptor) {
        let Some(pid) = d.picture_id else { return };
        let m = pid.modulus();
        if self.highest_in.is_none_or(|h| newer(pid.value, h, m)) {
            self.highest_in = Some(pid.value);
            self.pid_offset = self.pid_offset.wrapping_add(1) % m;
        }
    }

    /// A packet being forwarded; `segment_start` when it is the first of a
    /// new segment of the down-track (after a switch or resume), from where
    /// the numbering continues the last values forwarded. `None` when the
    /// packet has no PictureID.
    pub fn forward(&mut self, d: &Vp8Descriptor, segment_start: bool) -> Option<Rewrite> {
        let pid = d.picture_id?;
        let m = pid.modulus();
        if segment_start {
            if let Some((out, tl0)) = self.last_out {
                self.pid_offset = pid.value.wrapping_sub(out.wrapping_add(1)) % m;
                if let (Some(in_tl0), Some(out_tl0)) = (d.tl0_pic_idx, tl0) {
                    self.tl0_offset = in_tl0.wrapping_sub(out_tl0.wrapping_add(1));
                }
            } else {
                // The first segment keeps the publisher's numbering.
                self.pid_offset = 0;
                self.tl0_offset = 0;
            }
            self.highest_in = Some(pid.value);
            self.recent_len = 0;
        }
        let late = self
            .highest_in
            .is_some_and(|h| !newer(pid.value, h, m) && h != pid.value);
        let out = match self.recent[..self.recent_len].iter().find(|(i, _)| *i == pid.value) {
            Some(&(_, out)) => out,
            None if late => pid.value.wrapping_sub(self.pid_offset) % m,
            None => {
                let out = pid.value.wrapping_sub(self.pid_offset) % m;
                self.recent[self.recent_next] = (pid.value, out);
                self.recent_next = (self.recent_next + 1) % RECENT;
                self.recent_len = (self.recent_len + 1).min(RECENT);
                out
            }
        };
        if !late {
            self.highest_in = Some(pid.value);
        }
        let tl0 = d.tl0_pic_idx.map(|t| t.wrapping_sub(self.tl0_offset));
        if !late {
            self.last_out = Some((out, tl0.or(self.last_out.and_then(|l| l.1))));
        }
        Some(Rewrite {
            picture_id: out,
            tl0_pic_idx: tl0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::vp8::PictureId;
    use super::*;

    fn desc(pid: u16, tl0: u8) -> Vp8Descriptor {
        Vp8Descriptor {
            picture_id: Some(PictureId { value: pid, long: true }),
            tl0_pic_idx: Some(tl0),
            ..Vp8Descriptor::default()
        }
    }

    fn out(r: Option<Rewrite>) -> (u16, Option<u8>) {
        let r = r.expect("has a picture id");
        (r.picture_id, r.tl0_pic_idx)
    }

    #[test]
    fn dropped_frames_leave_no_hole_and_lost_ones_do() {
        let mut w = PictureIdRewriter::new();
        assert_eq!(out(w.forward(&desc(100, 5), true)), (100, Some(5)));
        // Two packets of dropped picture 101 count once.
        w.dropped(&desc(101, 5));
        w.dropped(&desc(101, 5));
        assert_eq!(out(w.forward(&desc(102, 5), false)), (101, Some(5)));
        assert_eq!(out(w.forward(&desc(102, 5), false)), (101, Some(5)));
        // 103 lost upstream: its hole stays.
        assert_eq!(out(w.forward(&desc(104, 6), false)), (103, Some(6)));
        // A late packet of 102 keeps its picture's number.
        assert_eq!(out(w.forward(&desc(102, 5), false)), (101, Some(5)));
        assert_eq!(out(w.forward(&desc(105, 6), false)), (104, Some(6)));
    }

    #[test]
    fn simulcast_switch_continues_both_fields() {
        let mut w = PictureIdRewriter::new();
        w.forward(&desc(32_767, 255), true);
        // Another layer's keyframe, unrelated numbering.
        assert_eq!(out(w.forward(&desc(9, 77), true)), (0, Some(0)));
        assert_eq!(out(w.forward(&desc(10, 78), false)), (1, Some(1)));
        // Wraps in the 7-bit space too.
        let mut w = PictureIdRewriter::new();
        let short = |v| Vp8Descriptor {
            picture_id: Some(PictureId { value: v, long: false }),
            ..Vp8Descriptor::default()
        };
        w.forward(&short(127), true);
        w.dropped(&short(0));
        assert_eq!(w.forward(&short(1), false).map(|r| r.picture_id), Some(0));
        assert_eq!(w.forward(&Vp8Descriptor::default(), false), None);
    }

    proptest::proptest! {
        /// Whatever is dropped, forwarded pictures are numbered 1 apart
        /// unless pictures were lost upstream, in order.
        #[test]
        fn forwarded_pictures_are_consecutive(
            start in 0u16..0x8000,
            frames in proptest::collection::vec((proptest::bool::ANY, 1u8..4, 0u16..3), 1..200),
        ) {
            let mut w = PictureIdRewriter::new();
            let mut pid = start;
            let mut last: Option<u16> = None;
            let mut lost_since_last = 0u16;
            for (i, (drop, packets, lost)) in frames.into_iter().enumerate() {
                pid = (pid + 1 + lost) % 0x8000;
                lost_since_last += lost;
                let d = desc(pid, 0);
                for _ in 0..packets {
                    if drop && i > 0 {
                        w.dropped(&d);
                    } else {
                        let o = w.forward(&d, i == 0).unwrap().picture_id;
                        if let Some(l) = last.filter(|l| *l != o) {
                            proptest::prop_assert_eq!(o, (l + 1 + lost_since_last) % 0x8000);
                        }
                        if last != Some(o) {
                            lost_since_last = 0;
                        }
                        last = Some(o);
                    }
                }
            }
        }
    }
}
