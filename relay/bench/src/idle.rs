//! RSS per idle allocation: server RSS before and after N allocations, each
//! from its own client socket (TURN allows one allocation per 5-tuple).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{AuthCache, TurnClient};
use crate::sys;

#[derive(Clone, Debug)]
pub struct IdleArgs {
    pub server: SocketAddr,
    pub secret: String,
    pub allocations: usize,
    pub server_pid: u32,
    pub threads: usize,
    /// Pause before each RSS reading, so the server settles.
    pub settle: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct IdleReport {
    pub requested: usize,
    pub allocated: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_allocation: f64,
    pub elapsed: Duration,
}

impl IdleReport {
    pub fn print(&self, label: &str) {
        println!(
            "{label}: {} of {} allocations ({} failed{}) in {:.1} s; server RSS {} KiB -> {} KiB = {:.2} KiB per idle allocation",
            self.allocated,
            self.requested,
            self.failed,
            self.first_error.as_ref().map(|e| format!(", first: {e}")).unwrap_or_default(),
            self.elapsed.as_secs_f64(),
            self.rss_before_kib,
            self.rss_after_kib,
            self.kib_per_allocation
        );
    }
}

pub fn run(a: &IdleArgs) -> std::io::Result<IdleReport> {
    let limit = sys::raise_nofile(a.allocations as u64 + 1024);
    if limit < a.allocations as u64 + 64 {
        eprintln!(
            "idle: RLIMIT_NOFILE is {limit}, fewer than the {} sockets needed",
            a.allocations
        );
    }
    std::thread::sleep(a.settle);
    let (before, _) = sys::proc_rss_kib(a.server_pid)?;
    let t0 = Instant::now();
    let cache = Arc::new(AuthCache::default());
    let threads = a.threads.clamp(1, 64);
    let mut handles = Vec::new();
    for t in 0..threads {
        let (cache, server, secret) = (cache.clone(), a.server, a.secret.clone());
        let n = a.allocations / threads + usize::from(t < a.allocations % threads);
        handles.push(std::thread::spawn(move || {
            let mut ok = Vec::with_capacity(n);
            let mut failed = 0usize;
            let mut first_error = None;
            for i in 0..n {
                let r = TurnClient::new(server, &secret, &format!("idle{t}x{i}")).and_then(|mut c| {
                    c.allocate(&cache)?;
                    Ok(c)
                });
                match r {
                    Ok(c) => ok.push(c),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                        if failed > 50 && ok.is_empty() {
                            break;
                        }
                    }
                }
            }
            (ok, failed, first_error)
        }));
    }
    let mut clients = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for h in handles {
        if let Ok((ok, f, e)) = h.join() {
            clients.extend(ok);
            failed += f;
            if first_error.is_none() {
                first_error = e;
            }
        }
    }
    let elapsed = t0.elapsed();
    std::thread::sleep(a.settle);
    let (after, _) = sys::proc_rss_kib(a.server_pid)?;
    for c in &clients {
        c.deallocate_nowait();
    }
    let allocated = clients.len();
    Ok(IdleReport {
        requested: a.allocations,
        allocated,
        failed,
        first_error,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_allocation: if allocated > 0 {
            after.saturating_sub(before) as f64 / allocated as f64
        } else {
            0.0
        },
        elapsed,
    })
}

/// The PID of the process with a UDP socket bound to `port`, via `ss`.
pub fn pid_of_udp_port(port: u16) -> Option<u32> {
    let out = std::process::Command::new("ss")
        .args(["-Hulpn", &format!("sport = :{port}")])
        .output()
        .ok()?;
    parse_ss_pid(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_ss_pid(s: &str) -> Option<u32> {
    let i = s.find("pid=")? + 4;
    s[i..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ss_pid() {
        let s = "UNCONN 0 0 127.0.0.1:3478 0.0.0.0:* users:((\"turnserver\",pid=4242,fd=17))\n";
        assert_eq!(super::parse_ss_pid(s), Some(4242));
        assert_eq!(super::parse_ss_pid(""), None);
    }
}
