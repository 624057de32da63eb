//! What one direction of a link does to packets, and changes to it.
//!
//! Plain data in engine units (`Duration`, bits per second, probabilities in
//! [0, 1]). Human units and TOML live in `crate::spec`, so the engine has no
//! serde and its tests state exactly what they mean.

use std::time::Duration;

/// Transport protocol of a packet, as far as blocking rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
    /// ICMP, IPv6 extension headers we do not walk, anything else.
    Other,
}

/// Drop every packet of a protocol, e.g. to model a network that blocks UDP
/// and forces ICE onto TURN/TCP or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockRule {
    #[default]
    None,
    Udp,
    Tcp,
    /// Everything: a full outage of the link.
    All,
}

impl BlockRule {
    pub fn blocks(self, proto: Proto) -> bool {
        match self {
            BlockRule::None => false,
            BlockRule::Udp => proto == Proto::Udp,
            BlockRule::Tcp => proto == Proto::Tcp,
            BlockRule::All => true,
        }
    }
}

/// Two-state Markov loss model (Gilbert-Elliott), evaluated per packet.
///
/// Before each packet the state may flip (good→bad with `p`, bad→good with
/// `r`), then the packet is lost with the loss probability of the state it is
/// in. With `loss_in_bad = 1` and `loss_in_good = 0` (the Gilbert model) loss
/// bursts have a mean length of `1/r` packets and the long-run loss rate is
/// `p / (p + r)`. Same parameters as Linux netem's `loss gemodel p r 1-h 1-k`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    pub p: f64,
    pub r: f64,
    pub loss_in_bad: f64,
    pub loss_in_good: f64,
}

impl GilbertElliott {
    /// Long-run fraction of packets lost.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r == 0.0 {
            return self.loss_in_good;
        }
        let bad = self.p / (self.p + self.r);
        bad * self.loss_in_bad + (1.0 - bad) * self.loss_in_good
    }
}

/// Bound of the bottleneck queue in front of the rate limiter (drop-tail).
///
/// Counted over packets waiting for or in serialization, not over packets in
/// the delay line: propagation delay does not consume router buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    Bytes(usize),
    Packets(usize),
}

impl Default for QueueLimit {
    /// Linux netem's default `limit 1000`.
    fn default() -> Self {
        QueueLimit::Packets(1000)
    }
}

/// Impairments of one direction of one link, applied in this order:
/// block → Gilbert-Elliott loss → random loss → duplication → bottleneck
/// (rate limit, bounded FIFO) → delay + jitter (+ reorder extra delay).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkParams {
    /// Fixed one-way delay added after the bottleneck.
    pub delay: Duration,
    /// Uniform jitter in [-jitter, +jitter] around `delay`. Packets are kept
    /// in order (a packet never leaves before the one ahead of it) unless
    /// `reorder` picks them, like a real path whose delay varies but which
    /// does not reorder; this biases the mean delay up at high packet rates.
    pub jitter: Duration,
    /// Independent (Bernoulli) loss probability.
    pub loss: f64,
    pub gilbert_elliott: Option<GilbertElliott>,
    /// Bottleneck rate in bits per second of IP packet bytes; `None` = unlimited.
    pub rate_bps: Option<u64>,
    pub queue: QueueLimit,
    /// Probability that a packet is held back by `reorder_extra` and
    /// exempted from the in-order rule, so later packets overtake it.
    pub reorder: f64,
    pub reorder_extra: Duration,
    /// Probability that a packet is sent twice.
    pub duplicate: f64,
    pub block: BlockRule,
}

/// A partial update of [`LinkParams`]: `None` leaves a field unchanged.
/// Fields that are themselves optional are doubly wrapped, so "remove the
/// rate limit" (`Some(None)`) differs from "leave it" (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkChange {
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    pub loss: Option<f64>,
    pub gilbert_elliott: Option<Option<GilbertElliott>>,
    pub rate_bps: Option<Option<u64>>,
    pub queue: Option<QueueLimit>,
    pub reorder: Option<f64>,
    pub reorder_extra: Option<Duration>,
    pub duplicate: Option<f64>,
    pub block: Option<BlockRule>,
}

impl LinkChange {
    /// A change that sets every field, i.e. replaces the parameters.
    pub fn replace(p: LinkParams) -> Self {
        Self {
            delay: Some(p.delay),
            jitter: Some(p.jitter),
            loss: Some(p.loss),
            gilbert_elliott: Some(p.gilbert_elliott),
            rate_bps: Some(p.rate_bps),
            queue: Some(p.queue),
            reorder: Some(p.reorder),
            reorder_extra: Some(p.reorder_extra),
            duplicate: Some(p.duplicate),
            block: Some(p.block),
        }
    }

    /// Only the rate: the most common scheduled change.
    pub fn rate(rate_bps: Option<u64>) -> Self {
        Self {
            rate_bps: Some(rate_bps),
            ..Self::default()
        }
    }

    pub fn apply(&self, p: &mut LinkParams) {
        fn set<T: Copy>(dst: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *dst = v;
            }
        }
        set(&mut p.delay, self.delay);
        set(&mut p.jitter, self.jitter);
        set(&mut p.loss, self.loss);
        set(&mut p.gilbert_elliott, self.gilbert_elliott);
        set(&mut p.rate_bps, self.rate_bps);
        set(&mut p.queue, self.queue);
        set(&mut p.reorder, self.reorder);
        set(&mut p.reorder_extra, self.reorder_extra);
        set(&mut p.duplicate, self.duplicate);
        set(&mut p.block, self.block);
    }
}
