//! `relay-bench`: measures rtc-relay against coturn and a bare batched
//! forwarder on loopback. See BENCHMARKS.md at the workspace root.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod client;
mod compare;
mod forwarder;
mod idle;
mod load;
mod stun;
mod sys;

#[derive(Parser)]
#[command(name = "relay-bench", about = "Benchmarks for rtc-relay (loopback only)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Equivalent to the coturn settings in `compare`: REST secret, realm, loopback
/// peers, no TLS, no metrics, one shard per core, and 401s not rate-limited
/// (coturn has no such limit; turnutils_uclient sends a burst of them).
const DEFAULT_RTC_ARGS: &str = "--listen {listen} --realm {realm} --auth-secret {secret} --allow-loopback-peers \
     --unauth-rate 1000000 --relay-ports 20000-32767";

#[derive(Subcommand)]
enum Cmd {
    /// The floor: recvmmsg ChannelData, strip the header, sendmmsg to a fixed peer (and back).
    BareForwarder {
        #[arg(long, default_value = "127.0.0.1:3678")]
        listen: SocketAddr,
        #[arg(long)]
        peer: SocketAddr,
        #[arg(long, default_value_t = 0x4000)]
        channel: u16,
        /// Exits by itself after this long.
        #[arg(long, default_value_t = 900)]
        max_seconds: u64,
        /// Peer -> client as one UDP GSO send per batch (what rtc-relay does towards clients).
        #[arg(long)]
        gso: bool,
    },
    /// Closed-loop ChannelData load through a TURN server (or the bare forwarder with --bare).
    Load {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, default_value = "bench-secret")]
        secret: String,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// ChannelData payload bytes (>= 24).
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 1.0)]
        drain: f64,
        /// Only udp is implemented.
        #[arg(long, default_value = "udp")]
        transport: String,
        /// No TURN handshake: ChannelData straight to a bare forwarder.
        #[arg(long)]
        bare: bool,
        /// Where the echoing peer binds (the bare forwarder must be told this address).
        #[arg(long, default_value = "127.0.0.1:0")]
        peer_bind: SocketAddr,
        /// Server process to measure; default: whoever owns the server's UDP port (via `ss`).
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long, default_value_t = 100)]
        stall_ms: u64,
        /// Open loop: offered round trips per second in total (the window still caps what is in flight).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// rtc-relay vs coturn vs the bare forwarder, same loads, alternating, several rounds.
    Compare {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Open loop: offered round trips per second for `load` (default: closed loop, as fast as the window allows).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value = "bench-secret")]
        secret: String,
        #[arg(long, default_value = "bench.local")]
        realm: String,
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/rtc-relay"))]
        rtc_relay: PathBuf,
        /// rtc-relay's arguments; {listen} {port} {secret} {realm} are substituted.
        #[arg(long, default_value = DEFAULT_RTC_ARGS, allow_hyphen_values = true)]
        rtc_relay_args: String,
        #[arg(long, default_value = "turnserver")]
        turnserver: PathBuf,
        /// coturn --relay-threads (rtc-relay uses one shard per core by default).
        #[arg(long, default_value_t = 2)]
        relay_threads: usize,
        /// Messages per turnutils_uclient client; 0 skips the uclient runs.
        #[arg(long, default_value_t = 2000)]
        uclient_msgs: usize,
        #[arg(long, default_value_t = 20)]
        uclient_clients: usize,
        /// turnutils_uclient -z (ms between a session's messages).
        #[arg(long, default_value_t = 1)]
        uclient_interval_ms: u32,
        /// Also measure RSS per idle allocation (first round); 0 skips.
        #[arg(long, default_value_t = 0)]
        idle_allocations: usize,
        /// Which servers: any of bare, bare-gso, coturn, rtc-relay.
        #[arg(long, value_delimiter = ',', default_value = "bare,coturn,rtc-relay")]
        servers: Vec<String>,
        #[arg(long, default_value = "/tmp/relay-bench")]
        workdir: PathBuf,
    },
    /// RSS per idle allocation of a running server.
    Idle {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, default_value = "bench-secret")]
        secret: String,
        #[arg(long, default_value_t = 10_000)]
        allocations: usize,
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// One STUN Binding request: is the server up?
    Ping {
        #[arg(long)]
        server: SocketAddr,
    },
}

fn server_pid(given: Option<u32>, server: SocketAddr) -> Option<u32> {
    given.or_else(|| idle::pid_of_udp_port(server.port()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r: Result<(), String> = match cli.cmd {
        Cmd::BareForwarder {
            listen,
            peer,
            channel,
            max_seconds,
            gso,
        } => forwarder::run(forwarder::ForwarderArgs {
            listen,
            peer,
            channel,
            max_seconds,
            gso,
        })
        .map_err(|e| e.to_string()),
        Cmd::Load {
            server,
            secret,
            clients,
            window,
            size,
            seconds,
            warmup,
            drain,
            transport,
            bare,
            peer_bind,
            server_pid: pid,
            stall_ms,
            rate,
        } => {
            if transport != "udp" {
                return fail("only --transport udp is implemented");
            }
            let pid = server_pid(pid, server);
            if pid.is_none() {
                eprintln!("load: server PID unknown (pass --server-pid): no CPU numbers");
            }
            let a = load::LoadArgs {
                server,
                secret,
                clients,
                window,
                size,
                seconds,
                warmup,
                drain,
                bare,
                peer_bind,
                server_pid: pid,
                perf: true,
                stall_ms,
                rate,
            };
            load::run(&a)
                .map(|r| r.print(if bare { "load --bare" } else { "load" }))
                .map_err(|e| e.to_string())
        }
        Cmd::Compare {
            rounds,
            seconds,
            warmup,
            clients,
            window,
            size,
            rate,
            secret,
            realm,
            rtc_relay,
            rtc_relay_args,
            turnserver,
            relay_threads,
            uclient_msgs,
            uclient_clients,
            uclient_interval_ms,
            idle_allocations,
            servers,
            workdir,
        } => {
            let mut kinds = Vec::new();
            for s in servers {
                kinds.push(match s.as_str() {
                    "bare" => compare::Kind::Bare,
                    "bare-gso" => compare::Kind::BareGso,
                    "coturn" => compare::Kind::Coturn,
                    "rtc-relay" => compare::Kind::RtcRelay,
                    other => return fail(&format!("unknown server {other}")),
                });
            }
            let a = compare::CompareArgs {
                rounds: rounds.clamp(1, 20),
                seconds,
                warmup,
                clients,
                window,
                size,
                rate,
                secret,
                realm,
                rtc_relay,
                rtc_relay_args,
                turnserver,
                relay_threads,
                uclient_msgs,
                uclient_clients,
                uclient_interval_ms,
                idle_allocations,
                servers: kinds,
                workdir,
            };
            compare::run(&a).map(|_| ()).map_err(|e| e.to_string())
        }
        Cmd::Idle {
            server,
            secret,
            allocations,
            server_pid: pid,
            threads,
        } => match server_pid(pid, server) {
            None => Err("server PID unknown: pass --server-pid".into()),
            Some(pid) => {
                let a = idle::IdleArgs {
                    server,
                    secret,
                    allocations,
                    server_pid: pid,
                    threads,
                    settle: Duration::from_secs(1),
                };
                idle::run(&a).map(|r| r.print("idle")).map_err(|e| e.to_string())
            }
        },
        Cmd::Ping { server } => match client::binding(server, Duration::from_secs(2)) {
            Ok(mapped) => {
                println!("{server}: Binding success, mapped {mapped}");
                Ok(())
            }
            Err(e) => Err(format!("{server}: {e}")),
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("relay-bench: {msg}");
    ExitCode::FAILURE
}
