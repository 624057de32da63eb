//! Spatial layers inside one stream (VP9 SVC, AV1 SVC): which of a
//! picture's layer frames one subscription forwards. The router reads each
//! packet's layer and frame boundaries from VP9's payload descriptor or
//! AV1's dependency descriptor.
//!
//! An SVC picture is sent as one frame per spatial layer, lowest first,
//! all on the same SSRC (and RTP timestamp); the RTP marker ends the
//! picture. Forwarding layers `0..=S` means dropping the frames above `S`
//! and setting the marker on the last packet of layer `S`, so the receiver
//! sees a complete picture.
//!
//! Lower layers never reference higher ones, so moving down can happen at
//! any picture. Moving up needs a keyframe: in the structures browsers use
//! (`L3T3_KEY`, K-SVC) a layer above the base references its own earlier
//! frames, which a subscriber that did not get them lacks, and the
//! keyframe is the picture where every layer starts over.

/// Spatial layer selection of one subscription.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpatialFilter {
    /// Highest layer forwarded; `None` until the first keyframe.
    current: Option<u8>,
    /// Highest layer wanted (the allocator's choice).
    target: u8,
}

impl SpatialFilter {
    pub fn set_target(&mut self, target: u8) {
        self.target = target;
    }

    pub fn target(&self) -> u8 {
        self.target
    }

    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// Whether only a keyframe lets the filter reach its target.
    pub fn wants_keyframe(&self) -> bool {
        self.current.is_none_or(|c| self.target > c)
    }

    /// Called for each packet of the stream in order: `sid` its spatial
    /// layer, `picture_start` the first packet of a picture (layer 0, B),
    /// `keyframe` that of a keyframe, `end` the last packet of its layer
    /// frame (E). `None` drops the packet; `Some(marker)` forwards it,
    /// `marker` saying it now ends the picture.
    pub fn accept(&mut self, sid: u8, picture_start: bool, keyframe: bool, end: bool) -> Option<bool> {
        if picture_start {
            self.current = match self.current {
                None if keyframe => Some(self.target),
                Some(c) if self.target < c || keyframe => Some(self.target),
                other => other,
            };
        }
        let current = self.current?;
        if sid > current {
            return None;
        }
        Some(sid == current && end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One picture of three layers, one packet each: what passes, and the
    /// marker on what passes.
    fn picture(f: &mut SpatialFilter, keyframe: bool) -> Vec<(u8, bool)> {
        (0..3)
            .filter_map(|sid| f.accept(sid, sid == 0, keyframe && sid == 0, true).map(|m| (sid, m)))
            .collect()
    }

    #[test]
    fn starts_at_a_keyframe_with_the_marker_on_the_top_layer_kept() {
        let mut f = SpatialFilter::default();
        f.set_target(1);
        assert!(picture(&mut f, false).is_empty(), "nothing before a keyframe");
        assert_eq!(picture(&mut f, true), [(0, false), (1, true)]);
        assert_eq!(picture(&mut f, false), [(0, false), (1, true)]);
        assert!(!f.wants_keyframe());
    }

    #[test]
    fn down_at_any_picture_up_at_a_keyframe() {
        let mut f = SpatialFilter::default();
        f.set_target(2);
        assert_eq!(picture(&mut f, true).len(), 3);
        f.set_target(0);
        assert_eq!(picture(&mut f, false), [(0, true)]);
        f.set_target(2);
        assert!(f.wants_keyframe());
        assert_eq!(picture(&mut f, false), [(0, true)], "no upswitch without a keyframe");
        assert_eq!(picture(&mut f, true), [(0, false), (1, false), (2, true)]);
        assert_eq!(f.current(), Some(2));
    }

    #[test]
    fn a_switch_waits_for_the_next_picture() {
        let mut f = SpatialFilter::default();
        f.set_target(2);
        picture(&mut f, true);
        // Layer 0 of a picture went out; the target drops mid-picture: the
        // rest of this picture still follows the old choice.
        assert_eq!(f.accept(0, true, false, true), Some(false));
        f.set_target(0);
        assert_eq!(f.accept(1, false, false, true), Some(false));
        assert_eq!(f.accept(2, false, false, true), Some(true));
        assert_eq!(f.accept(0, true, false, true), Some(true));
        assert_eq!(f.accept(1, false, false, true), None);
    }

    #[test]
    fn marker_only_on_the_last_packet_of_the_top_layer() {
        let mut f = SpatialFilter::default();
        f.set_target(1);
        assert_eq!(f.accept(0, true, true, false), Some(false));
        assert_eq!(f.accept(0, false, false, true), Some(false));
        assert_eq!(f.accept(1, false, false, false), Some(false));
        assert_eq!(f.accept(1, false, false, true), Some(true));
        assert_eq!(f.accept(2, false, false, true), None);
    }
}
