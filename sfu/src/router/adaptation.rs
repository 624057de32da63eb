//! Adaptation: each subscriber's downlink estimate divided across its
//! down-tracks ([`crate::allocator`]), which moves simulcast and temporal
//! targets, pauses what cannot fit, tells str0m's BWE what to probe for and
//! restarts an estimate that paused video cannot raise
//! ([`crate::estimate_recovery`]); and dynacast, which tells publishers
//! which simulcast layers some subscriber needs. Control rate (estimates,
//! layer switches, a 1 s tick), never the packet path.
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, MediaKind, Rid};

use super::{layer_of, Down, ParticipantId, Router, SfuEvent, Track, DYNACAST_DELAY};
use crate::allocator::{allocate, Allocation, AllocationState, LayerRates, TrackDemand, TrackKind, MAX_TEMPORAL};
use crate::estimate_recovery::Shortfall;
use crate::simulcast::{allowed_max_layer, LayerInfo, Preferences, MAX_LAYERS};
use crate::temporal::{layer_rates, temporal_cap, TOP};

/// How long a layer announced wanted again keeps its stopped-layer price
/// while none of its packets have arrived (see `Track::resumed_at`).
const RESUME_GRACE: Duration = Duration::from_secs(5);

/// The highest layer a subscription may get: its pinned layer, and the
/// smallest layer that covers the size it renders at (scaling a bigger
/// picture down looks better than scaling a smaller one up).
fn max_layer(t: &Track, d: &Down) -> u8 {
    let count = t.layer_count();
    let mut layers = [LayerInfo::default(); MAX_LAYERS];
    for (l, (w, h)) in layers.iter_mut().zip(t.dims) {
        l.width = w;
        l.height = h;
        l.active = true;
    }
    let prefs = Preferences {
        max_quality: match (d.pinned, d.limits.max_spatial) {
            (Some(r), _) => layer_of(&t.rids, Some(r)) as u8,
            (None, Some(s)) if t.is_svc() => s,
            _ => (MAX_LAYERS - 1) as u8,
        },
        max_width: d.limits.max_width,
        max_height: d.limits.max_height,
        paused: false,
    };
    allowed_max_layer(&layers[..count], &prefs).unwrap_or(0)
}

/// An SVC stream's table: forwarding spatial layer `s` sends every layer
/// up to it, so its price is the sum of theirs at the same temporal layer
/// (`None` where a frame rate cap removed it); a layer measured without
/// temporal layering (`layered[s]` false) counts at its full price.
fn cumulative(own: LayerRates, layered: [bool; MAX_LAYERS]) -> LayerRates {
    let mut out = [[None; MAX_TEMPORAL]; MAX_LAYERS];
    for t in 0..MAX_TEMPORAL {
        let mut sum = Some(0u64);
        for s in 0..MAX_LAYERS {
            let row = &own[s];
            let price = if layered[s] { row[t] } else { row[0] };
            sum = sum.zip(price).map(|(a, b)| a.saturating_add(b));
            // A layer that is absent ends the ladder.
            if row[0].is_none() {
                break;
            }
            out[s][t] = sum;
        }
    }
    out
}

impl Router {
    /// Pins `participant`'s downlink estimate (`None` returns to str0m's),
    /// and reallocates at once.
    pub fn set_estimate_override(&mut self, now: Instant, participant: ParticipantId, estimate: Option<Bitrate>) {
        let Some(p) = self.participants.get_mut(&participant) else {
            return;
        };
        p.estimate_override = estimate;
        if let Some(b) = estimate.or(p.estimate) {
            self.events.push_back(SfuEvent::Estimate {
                participant,
                bitrate: b.as_u64(),
            });
        }
        self.reallocate(now, participant);
    }

    /// A new downlink estimate for `participant`'s subscriber connection, as
    /// if str0m had reported it; public so tests and operators can impose
    /// one (an override set with [`Router::set_estimate_override`] still
    /// wins).
    pub fn on_estimate(&mut self, now: Instant, participant: ParticipantId, estimate: Bitrate) {
        let Some(p) = self.participants.get_mut(&participant) else {
            return;
        };
        p.estimate = Some(estimate);
        self.events.push_back(SfuEvent::Estimate {
            participant,
            bitrate: p.estimate_override.unwrap_or(estimate).as_u64(),
        });
        self.reallocate(now, participant);
    }

    /// Divides `participant`'s downlink estimate across its down-tracks
    /// (allocator), moving simulcast targets and pausing what cannot fit,
    /// and tells str0m's BWE what to probe for. Runs on every estimate, when
    /// a layer switch completes (only a settled allocation asks for a probe,
    /// and str0m's estimate does not change by itself while nothing probes,
    /// so without this a subscriber could stay on a low layer for good) and
    /// on a slow tick (layer rates drift).
    pub(super) fn reallocate(&mut self, now: Instant, participant: ParticipantId) {
        let Some(p) = self.participants.get_mut(&participant) else {
            return;
        };
        let Some(estimate) = p.estimate_override.or(p.estimate) else {
            // No estimate yet: the frame rate cap still applies.
            for d in p.downs.values_mut() {
                let Some(t) = self.tracks.get(&d.source) else { continue };
                let s = d.current.or(d.target).map_or(0, |r| layer_of(&t.rids, Some(r)));
                if t.temporal.is_layered(s) {
                    d.temporal
                        .set_target(temporal_cap(&t.temporal.rates(s), d.limits.max_fps));
                }
            }
            return;
        };
        // Control rate (one estimate every few hundred ms), so these
        // vectors are not on the packet path.
        let mut mids = Vec::with_capacity(p.downs.len());
        let mut demands = Vec::with_capacity(p.downs.len());
        for (mid, d) in &p.downs {
            let Some(t) = self.tracks.get(&d.source) else { continue };
            let kind = match t.kind {
                MediaKind::Audio => TrackKind::Audio,
                MediaKind::Video => TrackKind::Camera,
            };
            let mut layers = t.layer_bps;
            for (l, (bps, last)) in layers.iter_mut().zip(t.last_bps).enumerate() {
                // A layer told to stop is priced at its last full window:
                // the current one is partial or empty.
                if t.announced & (1 << l) == 0 {
                    *bps = last.or(*bps);
                }
            }
            // Until a layer has been measured (first second of a track), it
            // is assumed to cost what such a layer typically does, so a new
            // subscription is not paused for lack of data.
            let defaults: &[u64] = match (t.kind, t.layer_count()) {
                (MediaKind::Audio, _) => &[40_000],
                (MediaKind::Video, 0 | 1) => &[300_000],
                (MediaKind::Video, 2) => &[150_000, 600_000],
                (MediaKind::Video, _) => &[100_000, 400_000, 1_200_000],
            };
            // A layer stopped before it was ever measured (the publisher had
            // not ramped up to it yet) likewise, or nobody could want it back;
            // and one just announced wanted again whose packets have not
            // arrived yet keeps that price (`Track::resumed_at`).
            let unmeasured = t.layer_bps.iter().all(Option::is_none);
            for (i, (l, d)) in layers.iter_mut().zip(defaults).enumerate() {
                let resuming = t.resumed_at[i].is_some_and(|at| now.saturating_duration_since(at) < RESUME_GRACE);
                if l.is_none() && (unmeasured || resuming || t.announced & (1 << i) == 0) {
                    *l = Some(t.last_bps[i].unwrap_or(*d));
                }
            }
            let mut rates = layer_rates(layers, &t.temporal, d.limits.max_fps);
            if t.is_svc() {
                rates = cumulative(rates, std::array::from_fn(|s| t.temporal.is_layered(s)));
            }
            let max_layer = max_layer(t, d);
            let current = if t.is_svc() {
                d.spatial.current().filter(|_| !d.bw_paused)
            } else {
                d.current.map(|r| layer_of(&t.rids, Some(r)) as u8).or_else(|| {
                    // A single stream being forwarded is layer 0.
                    (d.current.is_none() && t.rids.is_empty() && !d.bw_paused).then_some(0)
                })
            };
            let current = current.map(|s| {
                let tl = if t.temporal.is_layered(usize::from(s)) {
                    d.temporal.current().unwrap_or(d.temporal.target())
                } else {
                    0
                };
                (s, tl)
            });
            mids.push(*mid);
            demands.push(TrackDemand {
                kind,
                priority: 0,
                layers: rates,
                max_layer,
                paused: d.paused || t.muted,
                current,
            });
        }
        let mut out = vec![Allocation::default(); demands.len()];
        let Ok(summary) = allocate(estimate.as_u64(), &demands, &mut out) else {
            return;
        };
        tracing::trace!(
            ?participant,
            estimate = estimate.as_u64(),
            ?summary,
            ?demands,
            ?out,
            "allocation"
        );
        let mut switches = Vec::new();
        for (mid, a) in mids.iter().zip(&out) {
            let Some(d) = p.downs.get_mut(mid) else { continue };
            let Some(t) = self.tracks.get(&d.source) else { continue };
            match a.state {
                AllocationState::Forwarding => {
                    let was_paused = d.bw_paused;
                    d.bw_paused = false;
                    if was_paused {
                        d.dt.resume();
                    }
                    if let Some(l) = a.layer {
                        // A layer without measured temporal layering (yet)
                        // forwards all it has.
                        let layered = t.temporal.is_layered(usize::from(l));
                        let temporal = if layered { a.temporal } else { TOP };
                        if temporal != d.temporal.target() {
                            tracing::debug!(?participant, track = ?d.source, temporal, estimate = estimate.as_u64(), allocated = summary.allocated_bps, probe = ?summary.probe_bps, "temporal target");
                        }
                        d.temporal.set_target(temporal);
                        if t.is_svc() && l != d.spatial.target() {
                            tracing::debug!(?participant, track = ?d.source, spatial = l, estimate = estimate.as_u64(), probe = ?summary.probe_bps, "spatial target");
                            d.spatial.set_target(l);
                            if d.spatial.wants_keyframe() {
                                switches.push((d.source, None));
                            }
                        }
                        let rid = t.rids.get(usize::from(l)).copied();
                        if rid != d.target || was_paused {
                            tracing::debug!(?participant, track = ?d.source, ?rid, estimate = estimate.as_u64(), probe = ?summary.probe_bps, "layer target");
                            d.target = rid;
                            switches.push((d.source, rid));
                        }
                    }
                }
                AllocationState::PausedByBandwidth => {
                    if !d.bw_paused {
                        d.bw_paused = true;
                        d.current = None;
                        d.dt.pause();
                    }
                }
                AllocationState::PausedByPreference => {}
            }
        }
        let sid = p.subscriber;
        // An operator's override is the estimate: nothing to recover.
        let shortfall = if p.estimate_override.is_some() {
            Shortfall::None
        } else if p.downs.values().any(|d| d.bw_paused) {
            Shortfall::Paused
        } else if summary.probe_bps.is_some() {
            Shortfall::HeldBack
        } else {
            Shortfall::None
        };
        let reset = p.recovery.poll(now, shortfall);
        for (source, rid) in switches {
            self.request_keyframe(now, source, rid, KeyframeRequestKind::Pli);
        }
        if let Some(peer) = sid.and_then(|s| self.peer_mut(s)) {
            // Padding up to the next upgrade's rate is how the estimator
            // learns whether it fits; with nothing to upgrade, no padding.
            // The desired rate is everything the subscriber would take:
            // str0m probes toward it (exponentially, as soon as it rises
            // above the estimate), so an estimate that sank while little
            // was wanted (a frame rate or size cap just lifted) climbs back
            // in a few probes instead of one layer per settled step.
            let min = summary.probe_bps.unwrap_or(0);
            let desired = min.max(summary.allocated_bps).max(summary.wanted_bps);
            let (min, desired) = (Bitrate::bps(min), Bitrate::bps(desired));
            peer.guard(|rtc| rtc.bwe().set_bitrate(min, desired));
            if reset {
                peer.guard(|rtc| rtc.bwe().reset(estimate));
                tracing::debug!(
                    ?participant,
                    estimate = estimate.as_u64(),
                    ?shortfall,
                    "estimate latched below the allocation: restarted to probe the link"
                );
                self.estimate_resets += 1;
            }
        }
    }

    /// Dynacast: for each simulcast track, the layers some subscriber is
    /// forwarded or headed for, and those below them. A layer nobody needed for
    /// [`DYNACAST_DELAY`] is announced unwanted (the publisher can stop
    /// encoding it); a layer needed again is announced on the next tick.
    /// Control rate, not the packet path.
    pub(super) fn dynacast(&mut self, now: Instant) {
        for (id, t) in self.tracks.iter_mut() {
            let n = t.rids.len().min(MAX_LAYERS);
            if n == 0 {
                continue;
            }
            let mut want = 0u8;
            for &(sub, mid) in &t.subscribers {
                let Some(d) = self.participants.get(&sub).and_then(|p| p.downs.get(&mid)) else {
                    continue;
                };
                if t.muted || d.paused || d.bw_paused {
                    continue;
                }
                // The subscriber's explicit preference too, even above what
                // it is allocated: a stopped layer has no measured rate and
                // sends no packets, so without this the allocator's probe
                // toward it could only succeed on the default price and the
                // publisher would restart it only once allocated.
                for rid in [d.target, d.current, d.pinned].into_iter().flatten() {
                    // That layer and every one below it: the lower ones
                    // cost the publisher little, and a subscriber whose
                    // link drops can move down to one at its next keyframe
                    // instead of waiting for the publisher to restart it
                    // (or starving on the top layer's base frame rate).
                    let l = layer_of(&t.rids, Some(rid));
                    want |= ((1u16 << (l + 1)) - 1) as u8;
                }
            }
            let mut next = t.announced;
            for (l, since) in t.unwanted_since.iter_mut().enumerate().take(n) {
                if want & (1 << l) != 0 {
                    *since = None;
                    if next & (1 << l) == 0 {
                        t.resumed_at[l] = Some(now);
                    }
                    next |= 1 << l;
                } else if now.saturating_duration_since(*since.get_or_insert(now)) >= DYNACAST_DELAY {
                    next &= !(1 << l);
                }
            }
            if next != t.announced {
                t.announced = next;
                let rids: Vec<Rid> = (0..n).filter(|l| next & (1 << l) != 0).map(|l| t.rids[l]).collect();
                tracing::debug!(track = ?id, ?rids, layer_bps = ?t.layer_bps, last_bps = ?t.last_bps, "layers wanted");
                self.events.push_back(SfuEvent::LayersWanted { track: *id, rids });
            }
        }
    }
}
