//! Link parameters in human units, as written in profiles and scenario
//! files (`delay_ms`, `loss_pct`, `rate_kbps`, …), and their conversion
//! into engine parameters and schedules.
//!
//! Every field is optional: a spec is a patch over whatever is in effect,
//! so a profile, a per-client override and a scheduled change are the same
//! type, applied in that order.

use std::time::Duration;

use serde::Deserialize;

use crate::engine::{BlockRule, GilbertElliott, LinkChange, LinkParams, QueueLimit, Schedule};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("{field} = {value}: must be between {min} and {max}")]
    OutOfRange {
        field: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("give at most one of queue_ms, queue_bytes, queue_packets")]
    QueueTwice,
    #[error("queue_ms needs a rate limit to be converted into bytes")]
    QueueMsWithoutRate,
    #[error("unknown profile {0:?} (see `netem profiles`)")]
    UnknownProfile(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockSpec {
    None,
    Udp,
    Tcp,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GilbertElliottSpec {
    /// Probability (0..1) per packet of entering the bad state.
    pub p: f64,
    /// Probability (0..1) per packet of leaving it: mean burst = 1/r packets.
    pub r: f64,
    #[serde(default = "one")]
    pub loss_in_bad: f64,
    #[serde(default)]
    pub loss_in_good: f64,
}

fn one() -> f64 {
    1.0
}

/// One direction of a link, every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub delay_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub loss_pct: Option<f64>,
    pub gilbert_elliott: Option<GilbertElliottSpec>,
    /// Bottleneck rate; 0 removes the limit.
    pub rate_kbps: Option<f64>,
    /// Buffer in milliseconds at the rate in effect (the usual way to say
    /// "bufferbloat": a 500 ms buffer), or in bytes, or in packets.
    pub queue_ms: Option<f64>,
    pub queue_bytes: Option<usize>,
    pub queue_packets: Option<usize>,
    pub reorder_pct: Option<f64>,
    pub reorder_extra_ms: Option<f64>,
    pub duplicate_pct: Option<f64>,
    pub block: Option<BlockSpec>,
}

fn ms(field: &'static str, v: Option<f64>) -> Result<Option<Duration>, SpecError> {
    v.map(|v| {
        check(field, v, 0.0, 3_600_000.0)?;
        Ok(Duration::from_secs_f64(v / 1000.0))
    })
    .transpose()
}

fn pct(field: &'static str, v: Option<f64>) -> Result<Option<f64>, SpecError> {
    v.map(|v| check(field, v, 0.0, 100.0).map(|_| v / 100.0)).transpose()
}

fn check(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), SpecError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(SpecError::OutOfRange { field, value, min, max })
    }
}

impl LinkSpec {
    /// The fields that are set, in human units ("rate 500 kbit/s, loss 2%").
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.rate_kbps {
            parts.push(format!("rate {v} kbit/s"));
        }
        if let Some(v) = self.delay_ms {
            parts.push(format!("delay {v} ms"));
        }
        if let Some(v) = self.jitter_ms {
            parts.push(format!("jitter ±{v} ms"));
        }
        if let Some(v) = self.loss_pct {
            parts.push(format!("loss {v}%"));
        }
        if let Some(g) = self.gilbert_elliott {
            parts.push(format!("bursts p={} r={}", g.p, g.r));
        }
        if let Some(v) = self.queue_ms {
            parts.push(format!("queue {v} ms"));
        }
        if let Some(v) = self.queue_bytes {
            parts.push(format!("queue {v} B"));
        }
        if let Some(v) = self.queue_packets {
            parts.push(format!("queue {v} pkts"));
        }
        if let Some(v) = self.reorder_pct {
            parts.push(format!("reorder {v}%"));
        }
        if let Some(v) = self.reorder_extra_ms {
            parts.push(format!("reorder +{v} ms"));
        }
        if let Some(v) = self.duplicate_pct {
            parts.push(format!("duplicate {v}%"));
        }
        if let Some(b) = self.block {
            parts.push(format!("block {}", format!("{b:?}").to_lowercase()));
        }
        parts.join(", ")
    }

    /// This spec laid over `base`: fields set here win.
    pub fn over(&self, base: &LinkSpec) -> LinkSpec {
        macro_rules! pick {
            ($($f:ident),*) => { LinkSpec { $($f: self.$f.or(base.$f)),* } };
        }
        let mut merged = pick!(
            delay_ms,
            jitter_ms,
            loss_pct,
            gilbert_elliott,
            rate_kbps,
            queue_ms,
            queue_bytes,
            queue_packets,
            reorder_pct,
            reorder_extra_ms,
            duplicate_pct,
            block
        );
        // A queue size given here replaces the base's, whatever its unit.
        if self.queue_ms.is_some() || self.queue_bytes.is_some() || self.queue_packets.is_some() {
            merged.queue_ms = self.queue_ms;
            merged.queue_bytes = self.queue_bytes;
            merged.queue_packets = self.queue_packets;
        }
        merged
    }

    /// The engine change this spec makes when `current` is in effect
    /// (`queue_ms` is converted at the rate in effect after the change).
    pub fn change(&self, current: &LinkParams) -> Result<LinkChange, SpecError> {
        let queues = [
            self.queue_ms.is_some(),
            self.queue_bytes.is_some(),
            self.queue_packets.is_some(),
        ];
        if queues.iter().filter(|q| **q).count() > 1 {
            return Err(SpecError::QueueTwice);
        }
        let rate_bps = self
            .rate_kbps
            .map(|k| {
                check("rate_kbps", k, 0.0, 100_000_000.0)?;
                Ok::<_, SpecError>(if k == 0.0 { None } else { Some((k * 1000.0) as u64) })
            })
            .transpose()?;
        let rate_after = rate_bps.unwrap_or(current.rate_bps);
        let queue = if let Some(q) = self.queue_ms {
            check("queue_ms", q, 0.0, 60_000.0)?;
            let rate = rate_after.ok_or(SpecError::QueueMsWithoutRate)?;
            // At least one full-size packet, or nothing could ever queue.
            Some(QueueLimit::Bytes(((rate as f64 * q / 8000.0) as usize).max(1500)))
        } else if let Some(b) = self.queue_bytes {
            Some(QueueLimit::Bytes(b))
        } else {
            self.queue_packets.map(QueueLimit::Packets)
        };
        let gilbert_elliott = self
            .gilbert_elliott
            .map(|g| {
                for (field, v) in [("gilbert_elliott.p", g.p), ("gilbert_elliott.r", g.r)] {
                    check(field, v, 0.0, 1.0)?;
                }
                check("gilbert_elliott.loss_in_bad", g.loss_in_bad, 0.0, 1.0)?;
                check("gilbert_elliott.loss_in_good", g.loss_in_good, 0.0, 1.0)?;
                Ok::<_, SpecError>(Some(GilbertElliott {
                    p: g.p,
                    r: g.r,
                    loss_in_bad: g.loss_in_bad,
                    loss_in_good: g.loss_in_good,
                }))
            })
            .transpose()?;
        Ok(LinkChange {
            delay: ms("delay_ms", self.delay_ms)?,
            jitter: ms("jitter_ms", self.jitter_ms)?,
            loss: pct("loss_pct", self.loss_pct)?,
            gilbert_elliott,
            rate_bps,
            queue,
            reorder: pct("reorder_pct", self.reorder_pct)?,
            reorder_extra: ms("reorder_extra_ms", self.reorder_extra_ms)?,
            duplicate: pct("duplicate_pct", self.duplicate_pct)?,
            block: self.block.map(|b| match b {
                BlockSpec::None => BlockRule::None,
                BlockSpec::Udp => BlockRule::Udp,
                BlockSpec::Tcp => BlockRule::Tcp,
                BlockSpec::All => BlockRule::All,
            }),
        })
    }
}

/// Builds a link's starting parameters and schedule from a base spec and
/// timed changes, converting each change against the parameters it will
/// find in effect.
///
/// A queue given in `queue_ms` stays a time: a later step that changes the
/// rate without giving a queue of its own resizes the queue to that many
/// milliseconds at the new rate. Left in bytes, a 200 ms queue at 3 Mbit/s
/// would hold 10 s at 60 kbit/s, a far more bloated link than the scenario
/// describes (and one on which no congestion controller keeps audio live).
pub fn build_link(base: &LinkSpec, steps: &[(Duration, LinkSpec)]) -> Result<(LinkParams, Schedule), SpecError> {
    let mut params = LinkParams::default();
    base.change(&params)?.apply(&mut params);
    let start = params;
    let mut queue_ms = base.queue_ms;
    let mut sorted: Vec<&(Duration, LinkSpec)> = steps.iter().collect();
    sorted.sort_by_key(|(at, _)| *at);
    let mut schedule = Vec::with_capacity(sorted.len());
    for (at, spec) in sorted {
        let gives_queue = spec.queue_ms.is_some() || spec.queue_bytes.is_some() || spec.queue_packets.is_some();
        let change = match (gives_queue, spec.rate_kbps, queue_ms) {
            (false, Some(rate), Some(ms)) if rate > 0.0 => LinkSpec {
                queue_ms: Some(ms),
                ..spec.clone()
            }
            .change(&params)?,
            _ => spec.change(&params)?,
        };
        if gives_queue {
            queue_ms = spec.queue_ms;
        }
        change.apply(&mut params);
        schedule.push((*at, change));
    }
    Ok((start, Schedule::new(schedule)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_convert_and_queue_ms_follows_the_rate() {
        let spec: LinkSpec =
            toml::from_str("delay_ms = 40\nloss_pct = 2.5\nrate_kbps = 1000\nqueue_ms = 200").expect("valid toml");
        let (p, _) = build_link(&spec, &[]).expect("valid spec");
        assert_eq!(p.delay, Duration::from_millis(40));
        assert!((p.loss - 0.025).abs() < 1e-12);
        assert_eq!(p.rate_bps, Some(1_000_000));
        assert_eq!(p.queue, QueueLimit::Bytes(25_000));
    }

    #[test]
    fn schedule_steps_are_patches() {
        let base = LinkSpec {
            rate_kbps: Some(3000.0),
            delay_ms: Some(20.0),
            ..Default::default()
        };
        let drop = LinkSpec {
            rate_kbps: Some(500.0),
            ..Default::default()
        };
        let back = LinkSpec {
            rate_kbps: Some(3000.0),
            ..Default::default()
        };
        let (p, s) = build_link(
            &base,
            &[(Duration::from_secs(30), back), (Duration::from_secs(10), drop)],
        )
        .expect("valid");
        assert_eq!(p.rate_bps, Some(3_000_000));
        let steps = s.steps();
        assert_eq!(steps[0].0, Duration::from_secs(10));
        assert_eq!(steps[0].1, LinkChange::rate(Some(500_000)));
        assert_eq!(steps[1].1, LinkChange::rate(Some(3_000_000)));
    }

    #[test]
    fn a_queue_in_ms_is_resized_when_a_step_changes_the_rate() {
        let base = LinkSpec {
            rate_kbps: Some(3000.0),
            queue_ms: Some(200.0),
            ..Default::default()
        };
        let rate = |kbps| LinkSpec {
            rate_kbps: Some(kbps),
            ..Default::default()
        };
        let bytes = LinkSpec {
            rate_kbps: Some(1000.0),
            queue_bytes: Some(9_000),
            ..Default::default()
        };
        let at = Duration::from_secs;
        let (p, s) = build_link(
            &base,
            &[
                (at(10), rate(500.0)),
                (at(20), rate(0.0)),
                (at(30), bytes),
                (at(40), rate(300.0)),
            ],
        )
        .expect("valid");
        assert_eq!(p.queue, QueueLimit::Bytes(75_000));
        let steps = s.steps();
        // 200 ms at 500 kbit/s.
        assert_eq!(steps[0].1.queue, Some(QueueLimit::Bytes(12_500)));
        // No rate limit: nothing to convert, and no error.
        assert_eq!(steps[1].1.queue, None);
        // A queue in bytes replaces the time and then stays in bytes.
        assert_eq!(steps[2].1.queue, Some(QueueLimit::Bytes(9_000)));
        assert_eq!(steps[3].1.queue, None);
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad = LinkSpec {
            loss_pct: Some(120.0),
            ..Default::default()
        };
        assert!(build_link(&bad, &[]).is_err());
        let bad = LinkSpec {
            queue_ms: Some(100.0),
            ..Default::default()
        };
        assert_eq!(build_link(&bad, &[]), Err(SpecError::QueueMsWithoutRate));
        assert!(toml::from_str::<LinkSpec>("delay = 5").is_err(), "typos are errors");
    }

    #[test]
    fn over_prefers_the_override() {
        let base = LinkSpec {
            delay_ms: Some(10.0),
            rate_kbps: Some(100.0),
            queue_ms: Some(50.0),
            ..Default::default()
        };
        let top = LinkSpec {
            delay_ms: Some(99.0),
            queue_packets: Some(10),
            ..Default::default()
        };
        let m = top.over(&base);
        assert_eq!((m.delay_ms, m.rate_kbps), (Some(99.0), Some(100.0)));
        assert_eq!((m.queue_ms, m.queue_packets), (None, Some(10)));
    }
}
