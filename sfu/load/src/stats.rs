//! Accounting: sequence-gap loss per received stream, latency percentiles,
//! and /proc readings of a process (CPU time, RSS) and of its threads.
use std::io;
use std::time::Duration;

/// Bits of the duplicate window: a packet older than this behind the
/// highest one seen is counted as received but not checked for duplicates.
const WINDOW: u64 = 1024;

/// Loss of one RTP stream from its (extended) sequence numbers: expected =
/// highest - first + 1, lost = expected - distinct received. Duplicates
/// (RTX repairs of packets that were not lost, str0m unwraps RTX into the
/// main SSRC) are counted apart so they do not hide loss.
#[derive(Clone, Debug, Default)]
pub struct SeqStats {
    first: Option<u64>,
    highest: u64,
    /// Every packet, duplicates included.
    pub received: u64,
    pub duplicates: u64,
    /// Ring over the last WINDOW sequence numbers; bit set = seen.
    seen: Vec<u64>,
}

impl SeqStats {
    pub fn on_packet(&mut self, seq: u64) {
        self.received += 1;
        if self.seen.is_empty() {
            self.seen = vec![0; (WINDOW / 64) as usize];
        }
        let Some(_) = self.first else {
            self.first = Some(seq);
            self.highest = seq;
            self.mark(seq);
            return;
        };
        if seq > self.highest {
            // Forget the slots the window slides past.
            let gap = seq - self.highest;
            if gap >= WINDOW {
                self.seen.iter_mut().for_each(|w| *w = 0);
            } else {
                for s in self.highest + 1..seq {
                    self.clear(s);
                }
            }
            self.highest = seq;
            self.mark(seq);
        } else if self.highest - seq < WINDOW {
            if self.is_marked(seq) {
                self.duplicates += 1;
            } else {
                self.mark(seq);
            }
        }
        if Some(seq) < self.first {
            // Reordered before the first packet seen: the stream started
            // earlier than we thought.
            self.first = Some(seq);
        }
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }
    fn mark(&mut self, seq: u64) {
        let (w, b) = Self::slot(seq);
        self.seen[w] |= b;
    }
    fn clear(&mut self, seq: u64) {
        let (w, b) = Self::slot(seq);
        self.seen[w] &= !b;
    }
    fn is_marked(&self, seq: u64) -> bool {
        let (w, b) = Self::slot(seq);
        self.seen[w] & b != 0
    }

    /// Sequence numbers the sender used so far, as far as we can tell.
    pub fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.highest - f + 1)
    }

    pub fn distinct(&self) -> u64 {
        self.received - self.duplicates
    }

    #[cfg(test)]
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.distinct())
    }
}

/// (p50, p95, max) of a set of durations; zeros when empty.
pub fn percentiles(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    if v.is_empty() {
        return Default::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), v[v.len() - 1])
}

pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime (fields 14 and 15) of a /proc/.../stat line. The command
/// name may hold spaces and parentheses, so fields count from the last ')'.
pub fn parse_stat_cpu(stat: &str, tck: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / tck.max(1)))
}

/// CPU time (user + system, all threads) of a process.
pub fn proc_cpu(pid: u32) -> io::Result<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu(&s, clk_tck()).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))
}

/// CPU time of the threads of `pid` whose name starts with `prefix` (the
/// SFU names its shard threads `sfu-shard-N`).
pub fn threads_cpu(pid: u32, prefix: &str) -> Duration {
    let tck = clk_tck();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let mut total = Duration::ZERO;
    for e in dir.flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        if let Some(c) = std::fs::read_to_string(p.join("stat"))
            .ok()
            .and_then(|s| parse_stat_cpu(&s, tck))
        {
            total += c;
        }
    }
    total
}

/// (VmRSS, VmHWM) in KiB from a /proc/PID/status text.
pub fn parse_status_rss(s: &str) -> (u64, u64) {
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

pub fn proc_rss_kib(pid: u32) -> io::Result<(u64, u64)> {
    Ok(parse_status_rss(&std::fs::read_to_string(format!(
        "/proc/{pid}/status"
    ))?))
}

/// Busy CPU time of the whole machine (everything but idle and iowait), to
/// say how much else was running during a measurement.
pub fn machine_busy() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: u64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(Duration::from_nanos(busy * 1_000_000_000 / clk_tck()))
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU of one process over an interval, with the machine's for context.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnap {
    pub server: Duration,
    pub shards: Duration,
    pub me: Duration,
    pub machine: Duration,
    pub at: std::time::Instant,
}

impl CpuSnap {
    pub fn take(server_pid: u32, shard_prefix: &str) -> CpuSnap {
        CpuSnap {
            server: proc_cpu(server_pid).unwrap_or_default(),
            shards: threads_cpu(server_pid, shard_prefix),
            me: proc_cpu(std::process::id()).unwrap_or_default(),
            machine: machine_busy().unwrap_or_default(),
            at: std::time::Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_gaps_not_duplicates() {
        let mut s = SeqStats::default();
        for q in [10, 11, 13, 14, 14, 12, 17] {
            s.on_packet(q);
        }
        // 10..=17 expected (8), distinct 10..14 and 17 (6): 15 and 16 lost;
        // the second 14 is a duplicate, 12 arrived late and filled its gap.
        assert_eq!(s.expected(), 8);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.lost(), 2);
    }

    #[test]
    fn loss_window_slides() {
        let mut s = SeqStats::default();
        s.on_packet(5);
        s.on_packet(5 + WINDOW + 3);
        // The slot of 5 was reused: a repeat of the new packet is a duplicate,
        // a packet far behind the window is just counted.
        s.on_packet(5 + WINDOW + 3);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.expected(), WINDOW + 4);
        assert_eq!(s.lost(), WINDOW + 2);
    }

    #[test]
    fn stat_and_status_parse() {
        let line = "1234 (sfu-load (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0 100 \
                    1000000 500 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_cpu(line, 100), Some(Duration::from_millis(4000)));
        assert_eq!(parse_stat_cpu("garbage", 100), None);
        let status = "Name:\tx\nVmHWM:\t  9000 kB\nVmRSS:\t  8000 kB\n";
        assert_eq!(parse_status_rss(status), (8000, 9000));
    }

    #[test]
    fn percentiles_of_durations() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let (p50, p95, max) = percentiles(&mut v);
        assert_eq!(
            (p50, p95, max),
            (
                Duration::from_millis(51),
                Duration::from_millis(95),
                Duration::from_millis(100)
            )
        );
    }
}
