//! Engine tests with time as an input: every impairment, against its
//! definition, over enough packets for the tolerances the rig promises.

use std::time::{Duration, Instant};

use super::*;

const MS: Duration = Duration::from_millis(1);

/// An offered packet: arrival offset from the epoch, IP length, protocol.
#[derive(Clone, Copy)]
struct Offer {
    at: Duration,
    len: usize,
    proto: Proto,
}

struct Run {
    verdicts: Vec<Verdict>,
    /// (token = offer index, release offset from the epoch, delay since arrival)
    out: Vec<(usize, Duration, Duration)>,
    max_queue_bytes: u64,
    stats: LinkStats,
}

/// Drives a link the way the router does: before each arrival, release
/// everything due by then (waking at `next_deadline`), then push.
fn drive(params: LinkParams, schedule: Schedule, seed: u64, offers: &[Offer]) -> Run {
    let epoch = Instant::now();
    let mut link: Link<usize> = Link::new(params, schedule, seed, epoch);
    let mut run = Run {
        verdicts: Vec::new(),
        out: Vec::new(),
        max_queue_bytes: 0,
        stats: LinkStats::default(),
    };
    let drain = |link: &mut Link<usize>, until: Option<Instant>, run: &mut Run| {
        while let Some(d) = link.next_deadline().filter(|d| until.is_none_or(|u| *d <= u)) {
            while let Some(r) = link.poll(d) {
                let arrival = offers[r.token].at;
                run.out.push((r.token, r.at - epoch, (r.at - epoch) - arrival));
            }
        }
    };
    for (i, o) in offers.iter().enumerate() {
        let t = epoch + o.at;
        drain(&mut link, Some(t), &mut run);
        run.verdicts.push(link.push(t, o.len, o.proto, i));
        run.max_queue_bytes = run.max_queue_bytes.max(link.stats().queue_bytes);
    }
    drain(&mut link, None, &mut run);
    run.stats = link.stats();
    run
}

/// `n` UDP packets of `len` bytes, one every `gap`.
fn cbr(n: usize, len: usize, gap: Duration) -> Vec<Offer> {
    (0..n)
        .map(|i| Offer {
            at: gap * i as u32,
            len,
            proto: Proto::Udp,
        })
        .collect()
}

fn out_of_order(run: &Run) -> usize {
    let mut max = None;
    let mut n = 0;
    for (tok, _, _) in &run.out {
        if max.is_some_and(|m| *tok < m) {
            n += 1;
        }
        max = max.max(Some(*tok));
    }
    n
}

/// Bits per second released in [from, to).
fn throughput(run: &Run, offers: &[Offer], from: Duration, to: Duration) -> f64 {
    let bytes: usize = run
        .out
        .iter()
        .filter(|(_, at, _)| *at >= from && *at < to)
        .map(|(t, _, _)| offers[*t].len)
        .sum();
    bytes as f64 * 8.0 / (to - from).as_secs_f64()
}

#[test]
fn delay_is_exact() {
    let epoch = Instant::now();
    let mut link = Link::new(
        LinkParams {
            delay: 50 * MS,
            ..Default::default()
        },
        Schedule::default(),
        1,
        epoch,
    );
    assert_eq!(link.push(epoch, 100, Proto::Udp, 7u32), Verdict::Queued { copies: 1 });
    assert_eq!(link.next_deadline(), Some(epoch + 50 * MS));
    assert_eq!(link.poll(epoch + 50 * MS - Duration::from_nanos(1)), None);
    let r = link.poll(epoch + 50 * MS).expect("due");
    assert_eq!((r.token, r.len, r.at), (7, 100, epoch + 50 * MS));
    assert_eq!(link.poll(epoch + 60 * MS), None);
    assert_eq!(link.next_deadline(), None);
}

#[test]
fn no_impairment_releases_immediately() {
    let offers = cbr(100, 1200, MS);
    let run = drive(LinkParams::default(), Schedule::default(), 1, &offers);
    assert_eq!(run.out.len(), 100);
    assert!(run.out.iter().all(|(_, _, d)| d.is_zero()));
}

#[test]
fn jitter_stays_within_bounds_and_keeps_order() {
    let offers = cbr(10_000, 200, 2 * MS);
    let params = LinkParams {
        delay: 30 * MS,
        jitter: 10 * MS,
        ..Default::default()
    };
    let run = drive(params, Schedule::default(), 3, &offers);
    assert_eq!(run.out.len(), offers.len());
    let min = run.out.iter().map(|o| o.2).min().expect("packets");
    let max = run.out.iter().map(|o| o.2).max().expect("packets");
    assert!(min >= 20 * MS && max <= 40 * MS, "delay range {min:?}..{max:?}");
    // The distribution is actually spread, not pinned to one end.
    assert!(min < 23 * MS && max > 37 * MS, "delay range {min:?}..{max:?}");
    assert_eq!(out_of_order(&run), 0);
}

#[test]
fn random_loss_within_one_point_over_10k_packets() {
    let offers = cbr(10_000, 200, MS);
    for seed in [1, 2, 3, 42, 1234] {
        let run = drive(
            LinkParams {
                loss: 0.05,
                ..Default::default()
            },
            Schedule::default(),
            seed,
            &offers,
        );
        let lost = 1.0 - run.out.len() as f64 / offers.len() as f64;
        assert!((lost - 0.05).abs() < 0.01, "seed {seed}: loss {lost}");
        assert_eq!(run.stats.dropped_loss as usize, offers.len() - run.out.len());
    }
}

#[test]
fn gilbert_elliott_bursts_have_mean_length_one_over_r() {
    let ge = GilbertElliott {
        p: 0.01,
        r: 0.25,
        loss_in_bad: 1.0,
        loss_in_good: 0.0,
    };
    let offers = cbr(200_000, 100, Duration::from_micros(100));
    for seed in [5, 6] {
        let run = drive(
            LinkParams {
                gilbert_elliott: Some(ge),
                ..Default::default()
            },
            Schedule::default(),
            seed,
            &offers,
        );
        let lost: Vec<bool> = run
            .verdicts
            .iter()
            .map(|v| matches!(v, Verdict::Dropped(DropCause::Loss)))
            .collect();
        let (mut bursts, mut in_burst) = (0usize, false);
        for &l in &lost {
            if l && !in_burst {
                bursts += 1;
            }
            in_burst = l;
        }
        let n_lost = lost.iter().filter(|l| **l).count();
        let mean_burst = n_lost as f64 / bursts as f64;
        assert!((mean_burst - 4.0).abs() < 0.4, "seed {seed}: mean burst {mean_burst}");
        let rate = n_lost as f64 / lost.len() as f64;
        assert!(
            (rate - ge.mean_loss()).abs() < 0.005,
            "seed {seed}: loss {rate} vs {}",
            ge.mean_loss()
        );
    }
}

#[test]
fn rate_limit_holds_within_5_percent_and_queue_is_bounded() {
    // 3 Mbit/s offered into a 2 Mbit/s bottleneck for 10 s.
    let offers = cbr(3000, 1250, Duration::from_micros(3333));
    let queue = 50_000;
    let params = LinkParams {
        rate_bps: Some(2_000_000),
        queue: QueueLimit::Bytes(queue),
        ..Default::default()
    };
    let run = drive(params, Schedule::default(), 1, &offers);
    let bps = throughput(&run, &offers, Duration::from_secs(1), Duration::from_secs(9));
    assert!((bps / 2_000_000.0 - 1.0).abs() < 0.05, "throughput {bps}");
    assert!(run.stats.dropped_queue > 0);
    assert!(run.max_queue_bytes <= queue as u64);
    // Queueing delay is bounded by the buffer: 50 kB at 2 Mbit/s = 200 ms.
    let max_delay = run.out.iter().map(|o| o.2).max().expect("packets");
    assert!(max_delay <= 205 * MS, "max delay {max_delay:?}");
    assert_eq!(out_of_order(&run), 0);
}

#[test]
fn queue_is_drop_tail() {
    let offers: Vec<Offer> = (0..20)
        .map(|_| Offer {
            at: Duration::ZERO,
            len: 1000,
            proto: Proto::Udp,
        })
        .collect();
    let params = LinkParams {
        rate_bps: Some(1_000_000),
        queue: QueueLimit::Packets(5),
        ..Default::default()
    };
    let run = drive(params, Schedule::default(), 1, &offers);
    let accepted: Vec<usize> = run.out.iter().map(|o| o.0).collect();
    assert_eq!(accepted, vec![0, 1, 2, 3, 4]);
    assert!(run.verdicts[5..]
        .iter()
        .all(|v| *v == Verdict::Dropped(DropCause::QueueFull)));
    // Back-to-back at 1 Mbit/s: 8 ms per 1000-byte packet.
    let times: Vec<Duration> = run.out.iter().map(|o| o.1).collect();
    assert_eq!(times, (1..=5).map(|i| 8 * MS * i).collect::<Vec<_>>());
}

#[test]
fn duplication_sends_copies() {
    let offers = cbr(10_000, 200, MS);
    let run = drive(
        LinkParams {
            duplicate: 0.1,
            ..Default::default()
        },
        Schedule::default(),
        9,
        &offers,
    );
    let extra = run.out.len() - offers.len();
    assert!((extra as f64 / offers.len() as f64 - 0.1).abs() < 0.01, "extra {extra}");
    assert_eq!(run.stats.duplicated as usize, extra);
    let dups = run
        .verdicts
        .iter()
        .filter(|v| **v == Verdict::Queued { copies: 2 })
        .count();
    assert_eq!(dups, extra);
}

#[test]
fn reorder_holds_back_the_chosen_packets() {
    let offers = cbr(10_000, 200, MS);
    let params = LinkParams {
        delay: 10 * MS,
        reorder: 0.1,
        reorder_extra: 5 * MS,
        ..Default::default()
    };
    let run = drive(params, Schedule::default(), 11, &offers);
    assert_eq!(run.out.len(), offers.len());
    let late = run.out.iter().filter(|o| o.2 == 15 * MS).count();
    assert_eq!(late as u64, run.stats.reordered);
    assert!((late as f64 / offers.len() as f64 - 0.1).abs() < 0.01);
    // Each held-back packet is overtaken by the packets sent during the
    // 5 ms it was held, so the receiver sees them out of order.
    assert!(out_of_order(&run) >= late);
}

#[test]
fn block_drops_only_the_named_protocol() {
    let mut offers = cbr(10, 100, MS);
    for (i, o) in offers.iter_mut().enumerate() {
        o.proto = [Proto::Udp, Proto::Tcp, Proto::Other][i % 3];
    }
    let run = drive(
        LinkParams {
            block: BlockRule::Udp,
            ..Default::default()
        },
        Schedule::default(),
        1,
        &offers,
    );
    for (o, v) in offers.iter().zip(&run.verdicts) {
        let blocked = *v == Verdict::Dropped(DropCause::Blocked);
        assert_eq!(blocked, o.proto == Proto::Udp);
    }
    let run = drive(
        LinkParams {
            block: BlockRule::Tcp,
            ..Default::default()
        },
        Schedule::default(),
        1,
        &offers,
    );
    assert_eq!(run.stats.dropped_blocked, 3);
    let run = drive(
        LinkParams {
            block: BlockRule::All,
            ..Default::default()
        },
        Schedule::default(),
        1,
        &offers,
    );
    assert_eq!(run.stats.dropped_blocked, 10);
}

#[test]
fn schedule_changes_rate_at_the_right_time() {
    // 4 Mbit/s offered; 3 Mbit/s, 500 kbit/s at 10 s, 3 Mbit/s again at 30 s.
    let offers = cbr(20_000, 1000, 2 * MS);
    let schedule = Schedule::new(vec![
        (Duration::from_secs(10), LinkChange::rate(Some(500_000))),
        (Duration::from_secs(30), LinkChange::rate(Some(3_000_000))),
    ]);
    let params = LinkParams {
        rate_bps: Some(3_000_000),
        queue: QueueLimit::Bytes(30_000),
        ..Default::default()
    };
    let run = drive(params, schedule, 1, &offers);
    let s = Duration::from_secs;
    for (from, to, want) in [(1, 10, 3e6), (10, 30, 0.5e6), (30, 39, 3e6)] {
        let bps = throughput(&run, &offers, s(from), s(to));
        assert!((bps / want - 1.0).abs() < 0.05, "{from}..{to}s: {bps} vs {want}");
    }
}

#[test]
fn schedule_changes_delay_for_packets_arriving_after_the_change() {
    let offers = cbr(100, 100, 100 * MS);
    let change = LinkChange {
        delay: Some(100 * MS),
        ..Default::default()
    };
    let schedule = Schedule::new(vec![(Duration::from_secs(5), change)]);
    let run = drive(
        LinkParams {
            delay: 10 * MS,
            ..Default::default()
        },
        schedule,
        1,
        &offers,
    );
    for (tok, _, d) in &run.out {
        let want = if offers[*tok].at < Duration::from_secs(5) {
            10 * MS
        } else {
            100 * MS
        };
        assert_eq!(*d, want, "packet {tok}");
    }
}

#[test]
fn same_seed_replays_the_same_run() {
    let offers = cbr(5000, 500, MS);
    let params = LinkParams {
        delay: 20 * MS,
        jitter: 5 * MS,
        loss: 0.02,
        duplicate: 0.01,
        reorder: 0.01,
        reorder_extra: 10 * MS,
        ..Default::default()
    };
    let a = drive(params, Schedule::default(), 77, &offers);
    let b = drive(params, Schedule::default(), 77, &offers);
    let c = drive(params, Schedule::default(), 78, &offers);
    let times = |r: &Run| r.out.iter().map(|o| (o.0, o.2)).collect::<Vec<_>>();
    assert_eq!(times(&a), times(&b));
    assert_ne!(times(&a), times(&c));
}
