//! `compare`: rtc-relay, coturn and the bare forwarder under the same loads,
//! in alternating order over several rounds. Every server is started fresh
//! for each round (so its peak RSS belongs to that round) and stopped after.
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::idle::{self, IdleArgs};
use crate::load::{self, LoadArgs, LoadReport};
use crate::sys;

/// Equivalent to the coturn settings in `compare`: REST secret, realm, loopback
/// peers, no TLS, no metrics, one shard per core, and 401s not rate-limited
/// (coturn has no such limit; turnutils_uclient sends a burst of them).
const DEFAULT_RTC_ARGS: &str = "--listen {listen} --realm {realm} --auth-secret {secret} --allow-loopback-peers \
     --unauth-rate 1000000 --relay-ports 20000-32767";

#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=20))]
    pub rounds: usize,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Open loop: offered round trips per second for `load` (default: closed loop, as fast as the window allows).
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, default_value = "bench-secret")]
    pub secret: String,
    #[arg(long, default_value = "bench.local")]
    pub realm: String,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/rtc-relay"))]
    pub rtc_relay: PathBuf,
    /// rtc-relay's arguments; {listen} {port} {secret} {realm} are substituted.
    #[arg(long, default_value = DEFAULT_RTC_ARGS, allow_hyphen_values = true)]
    pub rtc_relay_args: String,
    #[arg(long, default_value = "turnserver")]
    pub turnserver: PathBuf,
    /// coturn --relay-threads (rtc-relay uses one shard per core by default).
    #[arg(long, default_value_t = 2)]
    pub relay_threads: usize,
    /// Messages per turnutils_uclient client; 0 skips the uclient runs.
    #[arg(long, default_value_t = 2000)]
    pub uclient_msgs: usize,
    #[arg(long, default_value_t = 20)]
    pub uclient_clients: usize,
    /// turnutils_uclient -z: per-session send interval in ms (0 bursts everything at once and overflows socket buffers).
    #[arg(long, default_value_t = 1)]
    pub uclient_interval_ms: u32,
    /// Also measure RSS per idle allocation (first round); 0 skips.
    #[arg(long, default_value_t = 0)]
    pub idle_allocations: usize,
    /// Which servers: any of bare, bare-gso, coturn, rtc-relay.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bare,coturn,rtc-relay")]
    pub servers: Vec<Kind>,
    #[arg(long, default_value = "/tmp/relay-bench")]
    pub workdir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    Bare,
    /// The bare forwarder sending peer -> client as UDP GSO.
    BareGso,
    Coturn,
    RtcRelay,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bare => "bare",
            Kind::BareGso => "bare-gso",
            Kind::Coturn => "coturn",
            Kind::RtcRelay => "rtc-relay",
        }
    }
    fn is_bare(self) -> bool {
        matches!(self, Kind::Bare | Kind::BareGso)
    }
    fn port(self) -> u16 {
        match self {
            Kind::Bare | Kind::BareGso => 3678,
            Kind::Coturn => 3478,
            Kind::RtcRelay => 3578,
        }
    }
    fn addr(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }
}

const BARE_PEER_PORT: u16 = 3690;
const UCLIENT_PEER_PORT: u16 = 3691;

/// One measured run.
#[derive(Clone, Debug)]
pub struct Row {
    pub round: usize,
    pub server: Kind,
    pub load: &'static str,
    pub rt_per_s: f64,
    pub loss_pct: f64,
    pub lost: u64,
    pub us_per_dgram: f64,
    pub cycles_per_dgram: Option<f64>,
    pub peak_rss_kib: u64,
    pub note: String,
}

struct Server {
    child: Child,
    kind: Kind,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn stop(mut self) {
        // rtc-relay drains on the first SIGTERM and exits on the second.
        for _ in 0..2 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(200));
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_file(a: &CompareArgs, name: &str) -> std::io::Result<(File, File)> {
    let f = File::create(a.workdir.join(name))?;
    Ok((f.try_clone()?, f))
}

fn start(a: &CompareArgs, kind: Kind, round: usize) -> Result<Server, String> {
    // rtc-relay binds with SO_REUSEPORT: a stale server on the port would
    // silently take part of the traffic while we measure the new one.
    if let Some(pid) = idle::pid_of_udp_port(kind.port()) {
        return Err(format!("UDP port {} is already in use by pid {pid}", kind.port()));
    }
    let (out, err) = log_file(a, &format!("{}-round{round}.log", kind.name())).map_err(|e| e.to_string())?;
    let mut cmd = match kind {
        Kind::Bare | Kind::BareGso => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut c = Command::new(exe);
            c.args(["bare-forwarder", "--listen", &kind.addr().to_string()]);
            c.args(["--peer", &format!("127.0.0.1:{BARE_PEER_PORT}"), "--max-seconds", "900"]);
            if kind == Kind::BareGso {
                c.arg("--gso");
            }
            c
        }
        Kind::Coturn => {
            let mut c = Command::new(&a.turnserver);
            c.args([
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "-n",
                "--log-file",
                "stdout",
                "--simple-log",
            ]);
            c.args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"]);
            c.args(["--listening-port", &kind.port().to_string()]);
            c.args([
                "--use-auth-secret",
                "--static-auth-secret",
                &a.secret,
                "--realm",
                &a.realm,
            ]);
            c.args(["--allow-loopback-peers", "--no-multicast-peers"]);
            c.args(["--relay-threads", &a.relay_threads.to_string()]);
            c.args(["--min-port", "8000", "--max-port", "19999"]);
            c.args(["--pidfile", &a.workdir.join("turnserver.pid").to_string_lossy()]);
            c
        }
        Kind::RtcRelay => {
            let mut c = Command::new(&a.rtc_relay);
            let args = a
                .rtc_relay_args
                .replace("{listen}", &kind.addr().to_string())
                .replace("{port}", &kind.port().to_string())
                .replace("{secret}", &a.secret)
                .replace("{realm}", &a.realm);
            c.args(args.split_whitespace());
            c
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", kind.name()))?;
    let mut s = Server { child, kind };
    let ready = match kind {
        Kind::Bare | Kind::BareGso => {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        }
        _ => crate::client::binding(kind.addr(), Duration::from_secs(8))
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    if let Ok(Some(st)) = s.child.try_wait() {
        return Err(format!("{} exited at start: {st}", kind.name()));
    }
    if let Err(e) = ready {
        let k = s.kind;
        s.stop();
        return Err(format!("{} not answering a Binding request: {e}", k.name()));
    }
    Ok(s)
}

/// Final totals of a `turnutils_uclient` run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Uclient {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub lost_pct: f64,
    pub transmit_s: f64,
    pub avg_rtt_ms: f64,
}

fn num_after<T: std::str::FromStr>(s: &str, key: &str) -> Option<T> {
    let i = s.rfind(key)? + key.len();
    let t: String = s[i..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    t.parse().ok()
}

/// Parses the summary `turnutils_uclient` prints at exit.
pub fn parse_uclient(out: &str) -> Option<Uclient> {
    // The final totals line has no "msz=" and comes after the per-tick ones.
    let totals = out
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
    let lost_line = out.lines().rev().find(|l| l.contains("Total lost packets"))?;
    Some(Uclient {
        sent: num_after(totals, "tot_send_msgs=")?,
        received: num_after(totals, "tot_recv_msgs=")?,
        lost: num_after(lost_line, "Total lost packets")?,
        lost_pct: lost_line
            .find('(')
            .and_then(|i| {
                num_after(
                    &lost_line[..lost_line[i..].find(')').map_or(lost_line.len(), |j| i + j)],
                    "(",
                )
            })
            .unwrap_or(0.0),
        transmit_s: num_after(out, "Total transmit time is").unwrap_or(0.0),
        avg_rtt_ms: num_after(out, "Average round trip delay").unwrap_or(0.0),
    })
}

fn run_uclient(a: &CompareArgs, s: &Server, round: usize) -> Result<Row, String> {
    let (pout, perr) =
        log_file(a, &format!("turnutils_peer-{}-{round}.log", s.kind.name())).map_err(|e| e.to_string())?;
    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &UCLIENT_PEER_PORT.to_string()])
        .stdout(pout)
        .stderr(perr)
        .spawn()
        .map_err(|e| format!("turnutils_peer: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = sys::proc_cpu(s.pid()).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut child = Command::new("turnutils_uclient")
        .args(["-e", "127.0.0.1", "-r", &UCLIENT_PEER_PORT.to_string()])
        .args(["-n", &a.uclient_msgs.to_string(), "-m", &a.uclient_clients.to_string()])
        .args([
            "-l",
            &a.size.to_string(),
            "-W",
            &a.secret,
            "-c",
            "-z",
            &a.uclient_interval_ms.to_string(),
        ])
        .args(["-p", &s.kind.port().to_string(), "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("turnutils_uclient: {e}"))?;
    // Bounded: read the output on a thread, kill the client after 120 s.
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let until = t0 + Duration::from_secs(120);
    let mut timed_out = false;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = t0.elapsed();
    let cpu = sys::proc_cpu(s.pid()).map_err(|e| e.to_string())?.saturating_sub(cpu0);
    let _ = peer.kill();
    let _ = peer.wait();
    let out = reader.join().unwrap_or_default();
    let _ = std::fs::write(a.workdir.join(format!("uclient-{}-{round}.log", s.kind.name())), &out);
    let u = parse_uclient(&out)
        .ok_or_else(|| format!("could not parse turnutils_uclient output (timed out: {timed_out})"))?;
    let (_, hwm) = sys::proc_rss_kib(s.pid()).unwrap_or((0, 0));
    Ok(Row {
        round,
        server: s.kind,
        load: "turnutils_uclient",
        // The uclient reports its transmit time in whole seconds; the wall clock
        // includes its setup and 1-2 s of lingering, so both are rough.
        rt_per_s: u.received as f64
            / if u.transmit_s > 0.0 {
                u.transmit_s
            } else {
                wall.as_secs_f64()
            },
        loss_pct: u.lost_pct,
        lost: u.lost,
        us_per_dgram: cpu.as_nanos() as f64 / 1000.0 / (2 * u.received).max(1) as f64,
        cycles_per_dgram: None,
        peak_rss_kib: hwm,
        note: format!(
            "sent {} recv {} in {:.2} s wall ({} s transmit), avg rtt {:.3} ms{}",
            u.sent,
            u.received,
            wall.as_secs_f64(),
            u.transmit_s,
            u.avg_rtt_ms,
            if timed_out { ", TIMED OUT" } else { "" }
        ),
    })
}

fn row_from_load(round: usize, kind: Kind, load: &'static str, r: &LoadReport) -> Row {
    let s = r.server.clone().unwrap_or_default();
    Row {
        round,
        server: kind,
        load,
        rt_per_s: r.rt_per_s,
        loss_pct: r.loss_pct,
        lost: r.lost,
        us_per_dgram: s.ns_per_datagram / 1000.0,
        cycles_per_dgram: s.cycles_per_datagram,
        peak_rss_kib: s.peak_rss_kib,
        note: format!(
            "{} rt, rtt p50/p99 {}/{} us, stalls {}, malformed {}, {} server threads, cores: server {:.2} gen {:.2} other {:.2}",
            r.round_trips,
            r.rtt_p50_us,
            r.rtt_p99_us,
            r.stalls,
            r.malformed,
            s.threads,
            s.cpu.as_secs_f64() / r.elapsed.as_secs_f64().max(1e-9),
            r.generator_cpu.as_secs_f64() / r.elapsed.as_secs_f64().max(1e-9),
            r.machine_cpu.saturating_sub(s.cpu + r.generator_cpu).as_secs_f64() / r.elapsed.as_secs_f64().max(1e-9)
        ),
    }
}

fn print_row(r: &Row) {
    println!(
        "round {} {:<9} {:<18} {:>9.0} rt/s  loss {:>7.4}% ({:>5})  {:>6.3} us/dgram  cycles/dgram {:>6}  peak RSS {:>7} KiB  [{}]",
        r.round,
        r.server.name(),
        r.load,
        r.rt_per_s,
        r.loss_pct,
        r.lost,
        r.us_per_dgram,
        r.cycles_per_dgram.map(|c| format!("{c:.0}")).unwrap_or_else(|| "n/a".into()),
        r.peak_rss_kib,
        r.note
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn run(a: &CompareArgs) -> std::io::Result<Vec<Row>> {
    std::fs::create_dir_all(&a.workdir)?;
    sys::raise_nofile(65536);
    let cycles = load::cycles_supported();
    println!(
        "compare: {} rounds x {} s (+{} s warmup), {} clients x window {}, payload {} B, {}; cycles counter: {}; logs in {}",
        a.rounds,
        a.seconds,
        a.warmup,
        a.clients,
        a.window,
        a.size,
        a.rate.map(|r| format!("open loop at {r:.0} round trips/s")).unwrap_or_else(|| "closed loop".into()),
        if cycles { "perf stat" } else { "n/a (perf stat -e cycles not supported here)" },
        a.workdir.display()
    );
    println!("load average at the start: {}", loadavg());
    let mut rows = Vec::new();
    let mut idle_rows: Vec<(Kind, f64, usize)> = Vec::new();
    for round in 1..=a.rounds {
        let mut order = a.servers.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for &kind in &order {
            let s = match start(a, kind, round) {
                Ok(s) => s,
                Err(e) => {
                    println!("round {round} {}: skipped: {e}", kind.name());
                    continue;
                }
            };
            let la = LoadArgs {
                server: kind.addr(),
                secret: a.secret.clone(),
                clients: a.clients,
                window: a.window,
                size: a.size,
                seconds: a.seconds,
                warmup: a.warmup,
                drain: 1.0,
                bare: kind.is_bare(),
                peer_bind: if kind.is_bare() {
                    SocketAddr::from(([127, 0, 0, 1], BARE_PEER_PORT))
                } else {
                    SocketAddr::from(([127, 0, 0, 1], 0))
                },
                server_pid: Some(s.pid()),
                perf: true,
                stall_ms: 100,
                rate: a.rate,
            };
            let label = if kind.is_bare() { "load --bare" } else { "load" };
            match load::run(&la) {
                Ok(r) => {
                    let row = row_from_load(round, kind, label, &r);
                    print_row(&row);
                    rows.push(row);
                }
                Err(e) => println!("round {round} {} {label}: failed: {e}", kind.name()),
            }
            if !kind.is_bare() && a.uclient_msgs > 0 {
                match run_uclient(a, &s, round) {
                    Ok(row) => {
                        print_row(&row);
                        rows.push(row);
                    }
                    Err(e) => println!("round {round} {} turnutils_uclient: failed: {e}", kind.name()),
                }
            }
            s.stop();
            if !kind.is_bare() && a.idle_allocations > 0 && round == 1 {
                // A fresh server for the idle measurement.
                match start(a, kind, 0) {
                    Ok(s) => {
                        let ia = IdleArgs {
                            server: kind.addr(),
                            secret: a.secret.clone(),
                            allocations: a.idle_allocations,
                            server_pid: s.pid(),
                            threads: 4,
                            settle: Duration::from_secs(1),
                        };
                        match idle::run(&ia) {
                            Ok(r) => {
                                r.print(&format!("idle {}", kind.name()));
                                idle_rows.push((kind, r.kib_per_allocation, r.allocated));
                            }
                            Err(e) => println!("idle {}: failed: {e}", kind.name()),
                        }
                        s.stop();
                    }
                    Err(e) => println!("idle {}: skipped: {e}", kind.name()),
                }
            }
        }
    }
    summarize(&rows, &idle_rows);
    println!("load average at the end: {}", loadavg());
    Ok(rows)
}

fn summarize(rows: &[Row], idle_rows: &[(Kind, f64, usize)]) {
    println!("\nsummary (median over rounds):");
    let pick = |k: Kind, load: &str, f: fn(&Row) -> f64| {
        median(rows.iter().filter(|r| r.server == k && r.load == load).map(f).collect())
    };
    let loads = ["load", "load --bare", "turnutils_uclient"];
    for k in [Kind::Bare, Kind::BareGso, Kind::Coturn, Kind::RtcRelay] {
        for l in loads {
            let Some(rt) = pick(k, l, |r| r.rt_per_s) else { continue };
            let us = pick(k, l, |r| r.us_per_dgram).unwrap_or(0.0);
            let loss = pick(k, l, |r| r.loss_pct).unwrap_or(0.0);
            let rss = pick(k, l, |r| r.peak_rss_kib as f64).unwrap_or(0.0);
            println!(
                "  {:<9} {:<18} {:>9.0} rt/s  loss {:>7.4}%  {:>6.3} us/dgram  peak RSS {:>7.0} KiB",
                k.name(),
                l,
                rt,
                loss,
                us,
                rss
            );
        }
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    };
    let us = |k, l| pick(k, l, |r| r.us_per_dgram);
    let rt = |k, l| pick(k, l, |r| r.rt_per_s);
    println!(
        "  cpu/dgram ratio rtc-relay/coturn: {} (load), {} (turnutils_uclient); rtc-relay/bare: {} (load vs load --bare)",
        ratio(us(Kind::RtcRelay, "load"), us(Kind::Coturn, "load")),
        ratio(us(Kind::RtcRelay, "turnutils_uclient"), us(Kind::Coturn, "turnutils_uclient")),
        ratio(us(Kind::RtcRelay, "load"), us(Kind::Bare, "load --bare"))
    );
    println!(
        "  cpu/dgram ratio rtc-relay/bare-gso: {} (load vs load --bare)",
        ratio(us(Kind::RtcRelay, "load"), us(Kind::BareGso, "load --bare"))
    );
    println!(
        "  throughput ratio rtc-relay/coturn: {} (load); rtc-relay/bare: {}; coturn/bare cpu: {}",
        ratio(rt(Kind::RtcRelay, "load"), rt(Kind::Coturn, "load")),
        ratio(rt(Kind::RtcRelay, "load"), rt(Kind::Bare, "load --bare")),
        ratio(us(Kind::Coturn, "load"), us(Kind::Bare, "load --bare"))
    );
    for (k, kib, n) in idle_rows {
        println!("  idle {:<9} {:.2} KiB per allocation ({n} allocations)", k.name(), kib);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
0: : Total connect time is 1
1: : start_mclient: msz=10, tot_send_msgs=0, tot_recv_msgs=0, tot_send_bytes ~ 0, tot_recv_bytes ~ 0
3: : start_mclient: msz=10, tot_send_msgs=2800, tot_recv_msgs=2750, tot_send_bytes ~ 280000, tot_recv_bytes ~ 275000
6: : start_mclient: tot_send_msgs=10000, tot_recv_msgs=9990
6: : start_mclient: tot_send_bytes ~ 1000000, tot_recv_bytes ~ 999000
6: : Total transmit time is 6
6: : Total lost packets 10 (0.100000%), total send dropped 0 (0.000000%)
6: : Average round trip delay 0.058000 ms; min = 0 ms, max = 4 ms
6: : Average jitter 0.076400 ms; min = 0 ms, max = 9 ms
";

    #[test]
    fn parses_uclient_summary() {
        let u = parse_uclient(SAMPLE).unwrap();
        assert_eq!(
            u,
            Uclient {
                sent: 10000,
                received: 9990,
                lost: 10,
                lost_pct: 0.1,
                transmit_s: 6.0,
                avg_rtt_ms: 0.058
            }
        );
    }

    #[test]
    fn uclient_without_summary_is_none() {
        assert_eq!(parse_uclient("0: : Total connect time is 1\n"), None);
        let cut = &SAMPLE[..SAMPLE.find("6: : Total lost").unwrap()];
        assert_eq!(parse_uclient(cut), None);
    }

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
