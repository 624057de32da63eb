//! `relay-bench`: measures rtc-relay against coturn and a bare batched
//! forwarder on loopback. See BENCHMARKS.md at the workspace root.
use std::net::SocketAddr;
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

#[derive(Subcommand)]
enum Cmd {
    /// The floor: recvmmsg ChannelData, strip the header, sendmmsg to a fixed peer (and back).
    BareForwarder(forwarder::ForwarderArgs),
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
    Compare(compare::CompareArgs),
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
        Cmd::BareForwarder(a) => forwarder::run(a).map_err(|e| e.to_string()),
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
        Cmd::Compare(a) => compare::run(&a).map(|_| ()).map_err(|e| e.to_string()),
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
