//! Named link profiles: realistic starting points for scenarios.
//!
//! Figures are approximate and per direction ("up" is from the client).
//! Where a value comes from a published preset or measurement it says so;
//! the rest (jitter, residual loss, buffer depth) are our own estimates of
//! what such links typically show to a WebRTC flow, chosen to be
//! recognisable rather than exact.

use crate::spec::{GilbertElliottSpec, LinkSpec};

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: &'static str,
    pub description: &'static str,
    pub up: LinkSpec,
    pub down: LinkSpec,
}

fn link(rate_kbps: f64, delay_ms: f64, jitter_ms: f64, loss_pct: f64, queue_ms: f64) -> LinkSpec {
    LinkSpec {
        rate_kbps: Some(rate_kbps),
        delay_ms: Some(delay_ms),
        jitter_ms: Some(jitter_ms),
        loss_pct: Some(loss_pct),
        queue_ms: Some(queue_ms),
        ..LinkSpec::default()
    }
}

pub fn all() -> Vec<Profile> {
    vec![
        Profile {
            name: "wifi",
            description: "Home Wi-Fi on a good broadband line",
            // Rates: Apple Network Link Conditioner "WiFi" preset (40 Mbit/s
            // down, 33 up). A few ms of air + ISP latency with Wi-Fi's
            // contention jitter; retransmissions at the MAC layer hide most
            // radio loss, leaving ~0.1%.
            up: link(33_000.0, 5.0, 3.0, 0.1, 50.0),
            down: link(40_000.0, 5.0, 3.0, 0.1, 50.0),
        },
        Profile {
            name: "4g",
            description: "LTE with fair signal",
            // Rates near the Ookla Speedtest Global Index mobile medians of
            // recent years rounded down for fair rather than median signal;
            // ~70 ms RTT is typical of LTE to a regional server. Deep
            // (100 ms) buffers in the RAN are common.
            up: link(8_000.0, 35.0, 8.0, 0.2, 100.0),
            down: link(20_000.0, 35.0, 8.0, 0.2, 100.0),
        },
        Profile {
            name: "3g",
            description: "UMTS/HSPA, the classic 'slow mobile' case",
            // Apple Network Link Conditioner "3G" preset: 780 kbit/s down,
            // 330 kbit/s up, 100 ms delay each way. Jitter and loss added.
            up: link(330.0, 100.0, 20.0, 0.5, 200.0),
            down: link(780.0, 100.0, 20.0, 0.5, 200.0),
        },
        Profile {
            name: "congested",
            description: "Shared link at peak hour: little bandwidth, bufferbloat",
            // An oversubscribed DSL/cable segment: 1.5/0.75 Mbit/s left for
            // us, a 400 ms drop-tail buffer (bufferbloat as measured by the
            // Bufferbloat project's tests), cross-traffic jitter, 1% loss.
            up: link(750.0, 20.0, 15.0, 1.0, 400.0),
            down: link(1_500.0, 20.0, 15.0, 1.0, 400.0),
        },
        Profile {
            name: "satellite",
            description: "Geostationary satellite broadband",
            // GEO: ~36,000 km each way up and down makes ~240 ms of pure
            // propagation per direction (c = 300,000 km/s); with gateway and
            // terrestrial legs consumer services measure 550-650 ms RTT.
            // 10/2 Mbit/s is a typical consumer plan.
            up: link(2_000.0, 290.0, 10.0, 0.5, 300.0),
            down: link(10_000.0, 290.0, 10.0, 0.5, 300.0),
        },
        Profile {
            name: "lossy",
            description: "Fast enough, but losing packets in bursts (weak Wi-Fi edge)",
            // Gilbert-Elliott with p = 2%, r = 30%: bursts of ~3.3 packets,
            // ~6% long-run loss, plus 0.5% random. Burst lengths of a few
            // packets are what Wi-Fi fades produce.
            up: LinkSpec {
                gilbert_elliott: Some(GilbertElliottSpec {
                    p: 0.02,
                    r: 0.3,
                    loss_in_bad: 1.0,
                    loss_in_good: 0.0,
                }),
                ..link(5_000.0, 30.0, 5.0, 0.5, 100.0)
            },
            down: LinkSpec {
                gilbert_elliott: Some(GilbertElliottSpec {
                    p: 0.02,
                    r: 0.3,
                    loss_in_bad: 1.0,
                    loss_in_good: 0.0,
                }),
                ..link(5_000.0, 30.0, 5.0, 0.5, 100.0)
            },
        },
    ]
}

pub fn named(name: &str) -> Option<Profile> {
    all().into_iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::build_link;

    #[test]
    fn every_profile_converts() {
        for p in all() {
            for spec in [&p.up, &p.down] {
                let (params, _) = build_link(spec, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.name));
                assert!(params.rate_bps.is_some(), "{}", p.name);
            }
        }
        assert!(named("4g").is_some());
        assert!(named("5g").is_none());
    }
}
