//! One direction of one link: the impairment state machine.
//!
//! A packet goes through two stages. The *bottleneck* is a FIFO drained at
//! `rate_bps`; a packet's departure is computed only when it reaches the
//! head, so a scheduled rate change also slows down packets already queued,
//! as on a real link. The *delay line* is a min-heap on release time fed by
//! the bottleneck (delay, jitter, reorder). Both stages store only the
//! caller's token (the router uses a pool slot index), never packet bytes,
//! and reuse their allocations, so steady-state forwarding does not allocate.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use super::params::{LinkChange, LinkParams, Proto, QueueLimit};
use super::rng::Rng;
use super::schedule::Schedule;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    Blocked,
    /// Random or Gilbert-Elliott loss.
    Loss,
    /// The bottleneck queue was full (drop-tail).
    QueueFull,
}

/// Outcome of [`Link::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The packet will be released `copies` times (2 when duplicated); the
    /// caller must keep its bytes until the last release.
    Queued {
        copies: u8,
    },
    Dropped(DropCause),
}

/// A packet leaving the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released<T> {
    pub token: T,
    pub len: usize,
    /// When the engine scheduled it to leave (≤ the `now` given to `poll`).
    pub at: Instant,
}

/// Counters since the link was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub dropped_blocked: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Current bottleneck backlog.
    pub queue_packets: u64,
    pub queue_bytes: u64,
}

impl LinkStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_blocked + self.dropped_loss + self.dropped_queue
    }
}

#[derive(Debug)]
struct Waiting<T> {
    arrival: Instant,
    len: usize,
    token: T,
}

#[derive(Debug)]
struct InFlight<T> {
    release: Instant,
    /// Tie-break so equal release times leave in arrival order.
    seq: u64,
    len: usize,
    token: T,
}

// BinaryHeap is a max-heap: order reversed so the earliest release is on top.
impl<T> Ord for InFlight<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.release, other.seq).cmp(&(self.release, self.seq))
    }
}
impl<T> PartialOrd for InFlight<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> PartialEq for InFlight<T> {
    fn eq(&self, other: &Self) -> bool {
        self.release == other.release && self.seq == other.seq
    }
}
impl<T> Eq for InFlight<T> {}

/// One direction of a link. `T` is the caller's handle to the packet bytes;
/// it is cloned only for duplicated packets.
#[derive(Debug)]
pub struct Link<T> {
    params: LinkParams,
    rng: Rng,
    ge_bad: bool,
    epoch: Instant,
    schedule: Schedule,
    next_change: usize,
    fifo: VecDeque<Waiting<T>>,
    fifo_bytes: usize,
    /// Departure time of the last packet that left the bottleneck.
    busy_until: Option<Instant>,
    line: BinaryHeap<InFlight<T>>,
    seq: u64,
    /// Release time of the last in-order packet: jitter never goes below it.
    last_in_order: Option<Instant>,
    stats: LinkStats,
}

/// Time to serialize `len` bytes at `rate_bps`.
fn serialization(len: usize, rate_bps: u64) -> Duration {
    if rate_bps == 0 {
        // A zero rate is treated as "no bandwidth at all": nothing drains.
        return Duration::MAX;
    }
    let nanos = (len as u128 * 8 * 1_000_000_000) / rate_bps as u128;
    Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
}

impl<T: Clone> Link<T> {
    /// `epoch` is the time schedule offsets count from (usually "now").
    pub fn new(params: LinkParams, schedule: Schedule, seed: u64, epoch: Instant) -> Self {
        let mut link = Self {
            params,
            rng: Rng::new(seed),
            ge_bad: false,
            epoch,
            schedule,
            next_change: 0,
            fifo: VecDeque::with_capacity(256),
            fifo_bytes: 0,
            busy_until: None,
            line: BinaryHeap::with_capacity(256),
            seq: 0,
            last_in_order: None,
            stats: LinkStats::default(),
        };
        // Changes at offset zero are part of the starting parameters.
        link.advance(epoch);
        link
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    pub fn stats(&self) -> LinkStats {
        LinkStats {
            queue_packets: self.fifo.len() as u64,
            queue_bytes: self.fifo_bytes as u64,
            ..self.stats
        }
    }

    /// Applies a change immediately (outside the schedule), e.g. from a
    /// control command. Packets already in the delay line keep their times.
    pub fn change(&mut self, now: Instant, change: &LinkChange) {
        self.advance(now);
        change.apply(&mut self.params);
    }

    /// Offers a packet of `len` IP bytes at `now`.
    pub fn push(&mut self, now: Instant, len: usize, proto: Proto, token: T) -> Verdict {
        self.advance(now);
        self.stats.packets_in += 1;
        self.stats.bytes_in += len as u64;
        let p = self.params;

        if p.block.blocks(proto) {
            self.stats.dropped_blocked += 1;
            return Verdict::Dropped(DropCause::Blocked);
        }
        if let Some(ge) = p.gilbert_elliott {
            self.ge_bad = if self.ge_bad {
                !self.rng.chance(ge.r)
            } else {
                self.rng.chance(ge.p)
            };
            let loss = if self.ge_bad { ge.loss_in_bad } else { ge.loss_in_good };
            if self.rng.chance(loss) {
                self.stats.dropped_loss += 1;
                return Verdict::Dropped(DropCause::Loss);
            }
        }
        if self.rng.chance(p.loss) {
            self.stats.dropped_loss += 1;
            return Verdict::Dropped(DropCause::Loss);
        }
        let duplicate = self.rng.chance(p.duplicate);

        let copy = duplicate.then(|| token.clone());
        if !self.enqueue(now, len, token) {
            self.stats.dropped_queue += 1;
            return Verdict::Dropped(DropCause::QueueFull);
        }
        let mut copies = 1;
        if let Some(copy) = copy {
            if self.enqueue(now, len, copy) {
                self.stats.duplicated += 1;
                copies = 2;
            } else {
                // The copy found the queue full: as on a real link it is lost,
                // the original still goes through.
                self.stats.dropped_queue += 1;
            }
        }
        self.drain_bottleneck(now);
        Verdict::Queued { copies }
    }

    /// Next packet due at or before `now`, in release order.
    pub fn poll(&mut self, now: Instant) -> Option<Released<T>> {
        self.advance(now);
        if self.line.peek()?.release > now {
            return None;
        }
        let f = self.line.pop()?;
        self.stats.packets_out += 1;
        self.stats.bytes_out += f.len as u64;
        Some(Released {
            token: f.token,
            len: f.len,
            at: f.release,
        })
    }

    /// When `poll` next has something to return (or the bottleneck needs to
    /// be re-evaluated because a scheduled change is due), if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let line = self.line.peek().map(|f| f.release);
        let head = self.head_departure();
        let change = if self.fifo.is_empty() {
            None
        } else {
            self.next_change_at()
        };
        [line, head, change].into_iter().flatten().min()
    }

    fn next_change_at(&self) -> Option<Instant> {
        self.schedule.get(self.next_change).map(|(at, _)| self.epoch + *at)
    }

    fn head_departure(&self) -> Option<Instant> {
        let head = self.fifo.front()?;
        let start = match self.busy_until {
            Some(b) if b > head.arrival => b,
            _ => head.arrival,
        };
        Some(match self.params.rate_bps {
            None => start,
            Some(rate) => start
                .checked_add(serialization(head.len, rate))
                .unwrap_or(far_future(start)),
        })
    }

    /// Moves time forward to `now`, applying scheduled changes at their exact
    /// instants: the bottleneck is drained up to each change with the old
    /// rate, then continues with the new one.
    fn advance(&mut self, now: Instant) {
        while let Some(at) = self.next_change_at().filter(|at| *at <= now) {
            self.drain_bottleneck(at);
            if let Some((_, change)) = self.schedule.get(self.next_change) {
                change.apply(&mut self.params);
            }
            self.next_change += 1;
        }
        self.drain_bottleneck(now);
    }

    fn enqueue(&mut self, now: Instant, len: usize, token: T) -> bool {
        let full = match self.params.queue {
            QueueLimit::Bytes(max) => self.fifo_bytes + len > max,
            QueueLimit::Packets(max) => self.fifo.len() >= max,
        };
        if full {
            return false;
        }
        self.fifo_bytes += len;
        self.fifo.push_back(Waiting {
            arrival: now,
            len,
            token,
        });
        true
    }

    fn drain_bottleneck(&mut self, until: Instant) {
        while let Some(depart) = self.head_departure().filter(|d| *d <= until) {
            let Some(w) = self.fifo.pop_front() else { break };
            self.fifo_bytes -= w.len;
            self.busy_until = Some(depart);
            self.enter_delay_line(depart, w.len, w.token);
        }
    }

    fn enter_delay_line(&mut self, depart: Instant, len: usize, token: T) {
        let p = self.params;
        let mut release = depart + p.delay;
        if !p.jitter.is_zero() {
            let j = p.jitter.as_nanos().min(u64::MAX as u128 / 2) as u64;
            let offset = self.rng.below_inclusive(2 * j);
            release = if offset >= j {
                release + Duration::from_nanos(offset - j)
            } else {
                // Never before the packet left the bottleneck.
                release
                    .checked_sub(Duration::from_nanos(j - offset))
                    .unwrap_or(depart)
                    .max(depart)
            };
        }
        if self.rng.chance(p.reorder) {
            release += p.reorder_extra;
            self.stats.reordered += 1;
        } else {
            if let Some(last) = self.last_in_order {
                release = release.max(last);
            }
            self.last_in_order = Some(release);
        }
        self.seq += 1;
        self.line.push(InFlight {
            release,
            seq: self.seq,
            len,
            token,
        });
    }
}

/// A stand-in for "never" that still compares as a time: about 30 years on.
fn far_future(from: Instant) -> Instant {
    from + Duration::from_secs(1 << 30)
}
