//! Per-subscription RTP rewriting.
//!
//! A subscription forwards packets from one of several source streams (the
//! simulcast layers of a track, each with its own SSRC, sequence space and
//! timestamp base) as ONE outgoing stream with a fixed SSRC. [`DownTrack`]
//! rewrites sequence numbers and timestamps so that the receiver sees a single
//! continuous stream across layer switches, pauses and temporal-layer drops,
//! while real upstream losses still show up as gaps the receiver can NACK.
//!
//! # Sequence numbers
//! Forwarding is split into *segments*: a segment starts at a switch of source
//! (or a resume) and maps `out = in + offset - dropped_before(in)` with 64-bit
//! extended numbers, so wraparound never matters. On a switch the new offset is
//! `last_out + 1 - first_in`, which makes the first packet of the new segment
//! follow the last forwarded one; packets older than the switch point belong to
//! the previous segment and are dropped. Packets the caller flags droppable
//! (temporal layers above the target) are removed by counting them in
//! `dropped_before`; runs of them are remembered in a small fixed ring so that
//! late (reordered) packets are still mapped to the slot they would have had.
//! Packets missing between two dropped packets of the same frame (same
//! timestamp) are counted as dropped too: they belong to that frame, and a
//! gap there would make the receiver NACK what will never be sent.
//!
//! # Timestamps
//! On a switch the output timestamp continues at `last_out_ts + elapsed *
//! clock_rate`, where `elapsed` is the wall time between the arrival of the last
//! forwarded packet and the first packet of the new segment. This needs nothing
//! but arrival times: mapping the sources' timestamps through RTCP sender
//! reports would be more exact but is unavailable until the first SR and adds a
//! dependency on clock-drift estimates. The error is bounded by network jitter
//! (a few ms), which receivers absorb in their jitter buffer; the output is
//! always advanced by at least one tick so timestamps never go backwards.
//!
//! # Duplicates and NACKs
//! Every forwarded packet's extended output number is recorded in a sliding
//! bitmap ([`SentWindow`]), so a packet that arrives twice (a publisher retransmission of one
//! already received, a duplicate on the path) is sent once. NACKs from the
//! subscriber need nothing here: str0m answers them from the send stream's
//! own RTX cache of what was written (see the crate documentation).
//!
//! Nothing here allocates after [`DownTrack::new`].

use std::time::Instant;

use crate::sent_window::SentWindow;

/// How many runs of dropped packets are remembered to map reordered packets.
const DROP_RUNS: usize = 32;

/// Extended sequence numbers start here so that unwrapping a packet from
/// before the first one never underflows.
const EXT_BASE: u64 = 1 << 32;

/// The source stream a packet came from: the simulcast layer index (0 for a
/// single-stream track).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u8);

/// What the forwarding loop knows about an incoming RTP packet.
#[derive(Clone, Copy, Debug)]
pub struct PacketInfo {
    pub source: SourceId,
    pub seq: u16,
    pub ts: u32,
    /// First packet of a keyframe (the caller decides from the codec payload).
    pub keyframe: bool,
    /// The caller wants this packet dropped (e.g. a temporal layer above the
    /// subscriber's target); it leaves no gap in the output.
    pub droppable: bool,
    pub marker: bool,
    pub arrival: Instant,
}

/// Header fields to write into the forwarded packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    /// The first packet of a new segment (after a switch or resume): codec
    /// numbering rewritten per subscriber (VP8 PictureID) continues here.
    pub segment_start: bool,
}

/// Unwraps a 16-bit sequence number to the extended number closest to
/// `highest`. `highest` must be at least 2^15 (see [`EXT_BASE`]).
pub(crate) fn extend_seq(highest: u64, seq: u16) -> u64 {
    let delta = seq.wrapping_sub(highest as u16) as i16;
    highest.wrapping_add_signed(i64::from(delta))
}

/// A run `[start, end)` of consecutive incoming packets that were dropped;
/// `dropped_after` counts all drops of the segment up to `end`.
#[derive(Clone, Copy, Debug, Default)]
struct DropRun {
    start: u64,
    end: u64,
    dropped_after: u64,
}

impl DropRun {
    fn dropped_before(&self) -> u64 {
        self.dropped_after - (self.end - self.start)
    }
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    source: SourceId,
    /// The switch point: earlier packets of this source are not forwarded.
    first_in: u64,
    highest_in: u64,
    /// `out = in + seq_offset - dropped_before(in)`, wrapping: it is signed in
    /// spirit.
    seq_offset: u64,
    ts_offset: u32,
    /// Timestamp of the packet at `highest_in`, and whether it was dropped.
    highest_ts: u32,
    highest_dropped: bool,
    dropped: u64,
    runs: [DropRun; DROP_RUNS],
    /// Ring of `runs`: index of the oldest and how many are valid.
    runs_head: usize,
    runs_len: usize,
    /// Packets below this can no longer be mapped (their drop run was evicted).
    forgotten_below: u64,
}

impl Segment {
    fn new(source: SourceId, first_in: u64, seq_offset: u64, ts_offset: u32) -> Self {
        Self {
            source,
            first_in,
            highest_in: first_in,
            seq_offset,
            ts_offset,
            highest_ts: 0,
            highest_dropped: false,
            dropped: 0,
            runs: [DropRun::default(); DROP_RUNS],
            runs_head: 0,
            runs_len: 0,
            forgotten_below: first_in,
        }
    }

    fn run(&self, i: usize) -> &DropRun {
        &self.runs[(self.runs_head + i) % DROP_RUNS]
    }

    fn record_drop(&mut self, in_ext: u64) {
        self.dropped += 1;
        if self.runs_len > 0 {
            let last = (self.runs_head + self.runs_len - 1) % DROP_RUNS;
            if self.runs[last].end == in_ext {
                self.runs[last].end += 1;
                self.runs[last].dropped_after = self.dropped;
                return;
            }
        }
        if self.runs_len == DROP_RUNS {
            self.forgotten_below = self.runs[self.runs_head].end;
            self.runs_head = (self.runs_head + 1) % DROP_RUNS;
            self.runs_len -= 1;
        }
        let slot = (self.runs_head + self.runs_len) % DROP_RUNS;
        self.runs[slot] = DropRun {
            start: in_ext,
            end: in_ext + 1,
            dropped_after: self.dropped,
        };
        self.runs_len += 1;
    }

    /// How many packets before `in_ext` were dropped, or `None` if `in_ext`
    /// itself was dropped or is too old to tell.
    fn dropped_before(&self, in_ext: u64) -> Option<u64> {
        if in_ext < self.forgotten_below {
            return None;
        }
        for i in (0..self.runs_len).rev() {
            let run = self.run(i);
            if in_ext >= run.end {
                return Some(run.dropped_after);
            }
            if in_ext >= run.start {
                return None;
            }
        }
        Some(if self.runs_len > 0 {
            self.run(0).dropped_before()
        } else {
            0
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct LastOut {
    ext: u64,
    ts: u32,
    arrival: Instant,
}

/// Rewrites one subscription's packets into a continuous outgoing stream.
///
/// The router decides which layer's packets reach it (switching at the
/// target layer's keyframe); a switch or an unpause calls
/// [`DownTrack::resume`] before the next [`DownTrack::forward`].
#[derive(Debug)]
pub struct DownTrack {
    ssrc: u32,
    clock_rate: u32,
    /// Video must start every segment on a keyframe; audio can start anywhere.
    keyframe_gate: bool,
    paused: bool,
    /// The next packet starts a new segment even from the same source.
    resync: bool,
    segment: Option<Segment>,
    last_out: Option<LastOut>,
    /// Extended output numbers recently sent.
    sent: SentWindow,
}

impl DownTrack {
    /// A video down-track: every segment starts on a keyframe.
    pub fn new(out_ssrc: u32, clock_rate: u32) -> Self {
        Self {
            ssrc: out_ssrc,
            clock_rate,
            keyframe_gate: true,
            paused: false,
            resync: true,
            segment: None,
            last_out: None,
            sent: SentWindow::default(),
        }
    }

    /// An audio down-track: any packet can start a segment.
    pub fn audio(out_ssrc: u32, clock_rate: u32) -> Self {
        Self {
            keyframe_gate: false,
            ..Self::new(out_ssrc, clock_rate)
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The source currently forwarded, if any.
    pub fn current_source(&self) -> Option<SourceId> {
        self.segment.map(|s| s.source)
    }

    /// Stops forwarding until [`DownTrack::resume`].
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Forwards again, starting a new segment at the next packet (for video,
    /// the next keyframe) so the pause leaves no gap. Also the way to tell the
    /// down-track that the selector switched layers.
    pub fn resume(&mut self) {
        self.paused = false;
        self.resync = true;
    }

    /// Rewrites a packet, or `None` if it must not be sent.
    pub fn forward(&mut self, pkt: &PacketInfo) -> Option<Rewritten> {
        if self.paused {
            return None;
        }
        let switching = match &self.segment {
            None => true,
            Some(seg) => self.resync || seg.source != pkt.source,
        };
        if switching {
            if self.keyframe_gate && !pkt.keyframe {
                return None;
            }
            self.start_segment(pkt);
        }
        let seg = self.segment.as_mut()?;
        let in_ext = extend_seq(seg.highest_in, pkt.seq);
        if in_ext < seg.first_in {
            return None;
        }
        let dropped_before = if in_ext > seg.highest_in || (switching && in_ext == seg.first_in) {
            let drop = pkt.droppable && !pkt.keyframe;
            if drop && seg.highest_dropped && seg.highest_ts == pkt.ts {
                // Packets missing between two dropped packets of one frame
                // belong to that frame: dropped too, not a gap to NACK.
                for missing in seg.highest_in + 1..in_ext {
                    seg.record_drop(missing);
                }
            }
            seg.highest_in = in_ext;
            seg.highest_ts = pkt.ts;
            seg.highest_dropped = drop;
            if drop {
                seg.record_drop(in_ext);
                return None;
            }
            seg.dropped
        } else {
            // Reordered or duplicated. A late droppable packet is still sent:
            // its slot is already a visible gap the receiver would NACK.
            seg.dropped_before(in_ext)?
        };
        let out_ext = in_ext.wrapping_add(seg.seq_offset).wrapping_sub(dropped_before);
        let out_ts = pkt.ts.wrapping_add(seg.ts_offset);

        if !self.sent.insert(out_ext) {
            // Already sent (publisher retransmission or duplicate).
            return None;
        }
        if self.last_out.is_none_or(|l| out_ext > l.ext) {
            self.last_out = Some(LastOut {
                ext: out_ext,
                ts: out_ts,
                arrival: pkt.arrival,
            });
        }
        Some(Rewritten {
            ssrc: self.ssrc,
            seq: out_ext as u16,
            ts: out_ts,
            marker: pkt.marker,
            segment_start: switching,
        })
    }

    fn start_segment(&mut self, pkt: &PacketInfo) {
        self.resync = false;
        let first_in = EXT_BASE + u64::from(pkt.seq);
        let (seq_offset, ts_offset) = match self.last_out {
            // The first segment keeps the publisher's numbering.
            None => (0, 0),
            Some(last) => {
                let elapsed = pkt.arrival.saturating_duration_since(last.arrival);
                let ticks = elapsed.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000;
                let ticks = u32::try_from(ticks).unwrap_or(u32::MAX).max(1);
                let out_ts = last.ts.wrapping_add(ticks);
                ((last.ext + 1).wrapping_sub(first_in), out_ts.wrapping_sub(pkt.ts))
            }
        };
        self.segment = Some(Segment::new(pkt.source, first_in, seq_offset, ts_offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const L0: SourceId = SourceId(0);
    const L1: SourceId = SourceId(1);

    fn pkt(source: SourceId, seq: u16, ts: u32, at: Instant) -> PacketInfo {
        PacketInfo {
            source,
            seq,
            ts,
            keyframe: false,
            droppable: false,
            marker: false,
            arrival: at,
        }
    }

    fn key(source: SourceId, seq: u16, ts: u32, at: Instant) -> PacketInfo {
        PacketInfo {
            keyframe: true,
            ..pkt(source, seq, ts, at)
        }
    }

    fn seq_of(dt: &mut DownTrack, p: PacketInfo) -> Option<u16> {
        dt.forward(&p).map(|r| r.seq)
    }

    #[test]
    fn first_segment_needs_keyframe_and_keeps_numbering() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(42, 90_000);
        assert_eq!(dt.forward(&pkt(L0, 10, 1000, t0)), None);
        let r = dt.forward(&key(L0, 11, 1000, t0));
        assert_eq!(
            r,
            Some(Rewritten {
                ssrc: 42,
                seq: 11,
                ts: 1000,
                marker: false,
                segment_start: true,
            })
        );
        assert_eq!(seq_of(&mut dt, pkt(L0, 12, 1000, t0)), Some(12));
    }

    #[test]
    fn audio_starts_without_keyframe() {
        let t0 = Instant::now();
        let mut dt = DownTrack::audio(7, 48_000);
        assert_eq!(seq_of(&mut dt, pkt(L0, 5, 0, t0)), Some(5));
    }

    #[test]
    fn switch_up_and_down_is_gap_free() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        assert_eq!(seq_of(&mut dt, key(L0, 100, 0, t0)), Some(100));
        assert_eq!(seq_of(&mut dt, pkt(L0, 101, 0, t0)), Some(101));
        dt.resume();
        assert_eq!(seq_of(&mut dt, key(L1, 5000, 777, t0)), Some(102));
        assert_eq!(seq_of(&mut dt, pkt(L1, 5001, 777, t0)), Some(103));
        // Late packets of the old layer are not forwarded.
        assert_eq!(seq_of(&mut dt, pkt(L0, 102, 0, t0)), None);
        dt.resume();
        assert_eq!(seq_of(&mut dt, key(L0, 110, 3000, t0)), Some(104));
        assert_eq!(seq_of(&mut dt, pkt(L0, 111, 3000, t0)), Some(105));
    }

    #[test]
    fn source_change_without_keyframe_is_dropped() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        assert_eq!(seq_of(&mut dt, key(L0, 1, 0, t0)), Some(1));
        assert_eq!(seq_of(&mut dt, pkt(L1, 50, 0, t0)), None);
        assert_eq!(seq_of(&mut dt, pkt(L0, 2, 0, t0)), Some(2));
        assert_eq!(seq_of(&mut dt, key(L1, 51, 0, t0)), Some(3));
    }

    #[test]
    fn wraparound_in_source_and_output() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        assert_eq!(seq_of(&mut dt, key(L0, 65534, 0, t0)), Some(65534));
        assert_eq!(seq_of(&mut dt, pkt(L0, 65535, 0, t0)), Some(65535));
        assert_eq!(seq_of(&mut dt, pkt(L0, 0, 0, t0)), Some(0));
        dt.resume();
        assert_eq!(seq_of(&mut dt, key(L1, 65535, 0, t0)), Some(1));
        assert_eq!(seq_of(&mut dt, pkt(L1, 0, 0, t0)), Some(2));
        // Reordered across the wrap: still older than the switch point.
        assert_eq!(seq_of(&mut dt, pkt(L1, 65534, 0, t0)), None);
        assert_eq!(seq_of(&mut dt, pkt(L1, 1, 0, t0)), Some(3));
    }

    #[test]
    fn upstream_loss_stays_a_gap_and_late_packet_fills_it() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        dt.forward(&key(L0, 10, 0, t0));
        dt.resume();
        assert_eq!(seq_of(&mut dt, key(L1, 200, 0, t0)), Some(11));
        assert_eq!(seq_of(&mut dt, pkt(L1, 203, 0, t0)), Some(14));
        assert_eq!(seq_of(&mut dt, pkt(L1, 201, 0, t0)), Some(12));
        // Duplicates (e.g. publisher retransmissions) are sent once.
        assert_eq!(seq_of(&mut dt, pkt(L1, 201, 0, t0)), None);
    }

    #[test]
    fn droppable_packets_leave_no_gap() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        let drop = |seq| PacketInfo {
            droppable: true,
            ..pkt(L0, seq, 0, t0)
        };
        assert_eq!(seq_of(&mut dt, key(L0, 1, 0, t0)), Some(1));
        assert_eq!(seq_of(&mut dt, drop(2)), None);
        assert_eq!(seq_of(&mut dt, drop(3)), None);
        assert_eq!(seq_of(&mut dt, pkt(L0, 4, 0, t0)), Some(2));
        assert_eq!(seq_of(&mut dt, pkt(L0, 6, 0, t0)), Some(4));
        assert_eq!(seq_of(&mut dt, drop(7)), None);
        assert_eq!(seq_of(&mut dt, pkt(L0, 8, 0, t0)), Some(5));
        // Reordered packets map to the slot they would have had; a late copy
        // of a dropped packet stays dropped.
        assert_eq!(seq_of(&mut dt, pkt(L0, 5, 0, t0)), Some(3));
        assert_eq!(seq_of(&mut dt, pkt(L0, 3, 0, t0)), None);
        assert_eq!(seq_of(&mut dt, pkt(L0, 7, 0, t0)), None);
    }

    #[test]
    fn holes_inside_a_dropped_frame_are_dropped_too() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        let drop = |seq, ts| PacketInfo {
            droppable: true,
            ..pkt(L0, seq, ts, t0)
        };
        assert_eq!(seq_of(&mut dt, key(L0, 1, 0, t0)), Some(1));
        assert_eq!(seq_of(&mut dt, drop(2, 3000)), None);
        // 3 and 4 are late; 5 is the same dropped frame, so they are its own.
        assert_eq!(seq_of(&mut dt, drop(5, 3000)), None);
        assert_eq!(seq_of(&mut dt, pkt(L0, 6, 6000, t0)), Some(2));
        assert_eq!(seq_of(&mut dt, drop(3, 3000)), None);
        assert_eq!(seq_of(&mut dt, pkt(L0, 4, 3000, t0)), None);
        // A hole before a packet of another frame stays a hole (a real loss
        // the receiver must NACK).
        assert_eq!(seq_of(&mut dt, drop(7, 9000)), None);
        assert_eq!(seq_of(&mut dt, drop(9, 12000)), None);
        assert_eq!(seq_of(&mut dt, pkt(L0, 10, 15000, t0)), Some(4));
    }

    #[test]
    fn many_drop_runs_forget_only_the_oldest() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        dt.forward(&key(L0, 0, 0, t0));
        // Even numbers kept, odd dropped, with 1..=3 missing to reorder later.
        for seq in 4..200u16 {
            let p = PacketInfo {
                droppable: seq % 2 == 1,
                ..pkt(L0, seq, 0, t0)
            };
            dt.forward(&p);
        }
        // 2 is older than every remembered run: refused rather than misplaced.
        assert_eq!(seq_of(&mut dt, pkt(L0, 2, 0, t0)), None);
        // 198 kept, 199 dropped: 200 follows 198's output directly.
        let before = dt.last_out.map(|l| l.ext as u16);
        assert_eq!(seq_of(&mut dt, pkt(L0, 200, 0, t0)), before.map(|s| s.wrapping_add(1)));
    }

    #[test]
    fn pause_resume_requires_keyframe_and_is_gap_free() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        assert_eq!(seq_of(&mut dt, key(L0, 1, 0, t0)), Some(1));
        dt.pause();
        assert_eq!(seq_of(&mut dt, pkt(L0, 2, 0, t0)), None);
        assert_eq!(seq_of(&mut dt, key(L0, 3, 0, t0)), None);
        dt.resume();
        assert_eq!(seq_of(&mut dt, pkt(L0, 50, 0, t0)), None);
        assert_eq!(seq_of(&mut dt, key(L0, 51, 0, t0)), Some(2));
        assert_eq!(seq_of(&mut dt, pkt(L0, 52, 0, t0)), Some(3));
    }

    #[test]
    fn timestamps_continue_with_wall_time_across_switches() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        let r = dt.forward(&key(L0, 1, 4_000_000_000, t0)).map(|r| r.ts);
        assert_eq!(r, Some(4_000_000_000));
        dt.resume();
        // 100 ms later on a layer with an unrelated timestamp base.
        let t1 = t0 + Duration::from_millis(100);
        let r = dt.forward(&key(L1, 9, 17, t1)).map(|r| r.ts);
        assert_eq!(r, Some(4_000_009_000));
        let r = dt.forward(&pkt(L1, 10, 17 + 3000, t1)).map(|r| r.ts);
        assert_eq!(r, Some(4_000_012_000));
        // A switch with no elapsed time still advances.
        dt.resume();
        let r = dt.forward(&key(L0, 2, 0, t1)).map(|r| r.ts);
        assert_eq!(r, Some(4_000_012_001));
        // Wraps like the RTP timestamp does.
        dt.resume();
        let t2 = t1 + Duration::from_secs(4000);
        let r = dt.forward(&key(L1, 11, 0, t2)).map(|r| r.ts);
        assert_eq!(r, Some(4_000_012_001u32.wrapping_add(360_000_000)));
    }

    #[test]
    fn duplicates_are_sent_once() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, 90_000);
        assert_eq!(seq_of(&mut dt, key(L0, 100, 0, t0)), Some(100));
        assert_eq!(seq_of(&mut dt, pkt(L0, 101, 0, t0)), Some(101));
        assert_eq!(seq_of(&mut dt, pkt(L0, 101, 0, t0)), None);
        assert_eq!(seq_of(&mut dt, pkt(L0, 100, 0, t0)), None);
        // A gap filled late is still sent, once.
        assert_eq!(seq_of(&mut dt, pkt(L0, 103, 0, t0)), Some(103));
        assert_eq!(seq_of(&mut dt, pkt(L0, 102, 0, t0)), Some(102));
        assert_eq!(seq_of(&mut dt, pkt(L0, 102, 0, t0)), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Packet {
                source: u8,
                advance: u16,
                keyframe: bool,
                droppable: bool,
                ms: u8,
            },
            Switch,
            Pause,
            Resume,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                8 => (0u8..3, 1u16..4, prop::bool::weighted(0.2), prop::bool::weighted(0.2), 0u8..30)
                    .prop_map(|(source, advance, keyframe, droppable, ms)| Op::Packet {
                        source, advance, keyframe, droppable, ms
                    }),
                1 => Just(Op::Switch),
                1 => Just(Op::Pause),
                1 => Just(Op::Resume),
            ]
        }

        proptest! {
            #[test]
            fn output_is_strictly_increasing_and_gap_free_at_switches(
                starts in prop::array::uniform3(any::<u16>()),
                ops in prop::collection::vec(op(), 1..400),
            ) {
                let mut now = Instant::now();
                let mut dt = DownTrack::new(9, 90_000);
                let mut seqs = starts;
                let mut tss = [0u32, 1 << 31, u32::MAX - 10_000];
                let mut out_ext: Option<u64> = None;
                let mut out_ts: Option<u64> = None;
                // The (source, seq) of the last output, and whether a switch or
                // resume happened since: both demand exactly +1.
                let mut last_in: Option<(SourceId, u16)> = None;
                let mut resynced = false;
                for op in ops {
                    match op {
                        Op::Switch | Op::Resume => {
                            dt.resume();
                            resynced = true;
                        }
                        Op::Pause => dt.pause(),
                        Op::Packet { source, advance, keyframe, droppable, ms } => {
                            let s = usize::from(source);
                            seqs[s] = seqs[s].wrapping_add(advance);
                            tss[s] = tss[s].wrapping_add(u32::from(ms) * 90);
                            now += Duration::from_millis(u64::from(ms));
                            let p = PacketInfo {
                                source: SourceId(source), seq: seqs[s], ts: tss[s],
                                keyframe, droppable, marker: false, arrival: now,
                            };
                            let Some(r) = dt.forward(&p) else { continue };
                            let ext = out_ext.map_or((1 << 32) + u64::from(r.seq), |e| extend_seq(e, r.seq));
                            let ts = out_ts.map_or((1 << 40) + u64::from(r.ts), |e| {
                                e.wrapping_add_signed(i64::from(r.ts.wrapping_sub(e as u32) as i32))
                            });
                            if let Some(prev) = out_ext {
                                prop_assert!(ext > prev, "seq went from {} to {}", prev, ext);
                                let source_changed = last_in.is_some_and(|(src, _)| src != p.source);
                                let next_in_order = last_in == Some((p.source, p.seq.wrapping_sub(1)));
                                if resynced || source_changed || next_in_order {
                                    prop_assert_eq!(ext, prev + 1);
                                }
                            }
                            if let Some(prev) = out_ts {
                                prop_assert!(ts >= prev, "ts went back");
                            }
                            out_ext = Some(ext);
                            out_ts = Some(ts);
                            last_in = Some((p.source, p.seq));
                            resynced = false;
                        }
                    }
                }
            }
        }
    }
}
