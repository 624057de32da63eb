//! `sfu-load`: load generator and benchmark for the SFU (numbers, not
//! tests; results in BENCHMARKS.md).
//!
//! # Design
//! - The server runs in its **own process** (`sfu-load serve`: an
//!   `sfu::Sfu` driven by JSON lines on stdin/stdout, no signalling), so
//!   its CPU time (utime + stime of every thread, `/proc/PID/stat`) and RSS
//!   are the server's alone, not mixed with the clients'. The shard
//!   threads' share is read from `/proc/PID/task/*/stat` as well.
//! - The clients are str0m peers (RTP mode) in this process, each with its
//!   own loopback UDP socket, driven on one thread by `poll(2)`.
//!   Publishers send VP8-shaped video (frames at a bitrate split into
//!   packets of at most 1,000 bytes; optional q/h/f simulcast) and 100-byte
//!   Opus-shaped audio every 20 ms, answering keyframe requests; subscribers
//!   count packets and sequence gaps per SSRC.
//! - Forwarded packets are counted **at the subscribers**, so a packet the
//!   SFU sent but the kernel dropped does not count; loss is sequence gaps.
//! - `bare` measures a bare `recvmmsg`/`sendmmsg` fan-out forwarder (also a
//!   child process, same /proc reading) with the same packet sizes and
//!   schedule: the kernel path's floor, so the ratio says how close the SFU
//!   comes to it.
//! - All traffic is on 127.0.0.1; every loop is bounded and child processes
//!   exit when their stdin closes or after `--max-seconds`.
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod bare;
mod client;
mod control;
mod media;
mod proto;
mod run;
mod serve;
mod stats;
mod token;
mod ws;

use media::MediaSpec;
use run::ServerOpts;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("server: {0}")]
    Server(String),
    #[error("control protocol: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("WebRTC: {0}")]
    Rtc(#[from] str0m::RtcError),
    #[error("SDP: {0}")]
    Sdp(String),
}

#[derive(Parser)]
#[command(
    name = "sfu-load",
    about = "Load generator and benchmark for the SFU (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct MediaArgs {
    /// Video bitrate of the single layer (without --simulcast); 0 = no video.
    #[arg(long, default_value_t = 2500)]
    video_kbps: u32,
    /// Three simulcast layers q/h/f at --layers-kbps instead of one.
    #[arg(long)]
    simulcast: bool,
    #[arg(long, value_delimiter = ',', default_value = "150,500,2500")]
    layers_kbps: Vec<u32>,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Largest video payload per packet.
    #[arg(long, default_value_t = 1000)]
    packet_bytes: usize,
    #[arg(long)]
    no_audio: bool,
    #[arg(long, default_value_t = 100)]
    audio_bytes: usize,
    /// Unrequested keyframe interval in seconds (0 = only on request).
    #[arg(long, default_value_t = 0.0)]
    keyframe_secs: f64,
    /// Clients stamp a datagram's arrival when their (single) thread reads
    /// it, instead of with the kernel's receive time (SO_TIMESTAMPNS). On a
    /// busy machine that adds the thread's own queueing to what the
    /// receivers' transport-cc feedback reports as network delay.
    #[arg(long)]
    user_rx_time: bool,
}

impl MediaArgs {
    fn spec(&self) -> MediaSpec {
        client::set_kernel_rx_time(!self.user_rx_time);
        let layers = if self.simulcast {
            ["q", "h", "f"]
                .iter()
                .zip(&self.layers_kbps)
                .map(|(r, k)| (Some(r.to_string()), *k))
                .collect()
        } else if self.video_kbps > 0 {
            vec![(None, self.video_kbps)]
        } else {
            Vec::new()
        };
        MediaSpec {
            layers,
            fps: self.fps.max(1),
            max_packet: self.packet_bytes.clamp(100, 1400),
            audio: !self.no_audio,
            audio_bytes: self.audio_bytes.clamp(10, 1400),
            keyframe_every: Duration::from_secs_f64(self.keyframe_secs.max(0.0)),
        }
    }
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// The binary to run as `<bin> serve` (default: this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Subscriber connections' initial downlink estimate; high so the
    /// allocator does not pause video before the estimator has settled.
    #[arg(long, default_value_t = 50_000_000)]
    initial_estimate_bps: u64,
    /// The server exits by itself after this long.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

impl ServerArgs {
    fn opts(&self) -> Result<ServerOpts, LoadError> {
        Ok(ServerOpts {
            bin: match &self.server_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?,
            },
            shards: self.shards,
            initial_estimate_bps: self.initial_estimate_bps,
            max_seconds: self.max_seconds,
        })
    }
}

/// N publishers fanned out to M subscribers (`direct` and `ws`).
#[derive(Args, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    media: MediaArgs,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 30.0)]
    join_timeout: f64,
    /// Subscribers do not negotiate transport-cc: the SFU's estimate
    /// stays at its initial value, so nothing is paused for bandwidth
    /// (measures the cost of forwarding everything).
    #[arg(long)]
    no_twcc: bool,
}

impl FanoutArgs {
    fn fanout(&self) -> run::Fanout {
        run::Fanout {
            publishers: self.publishers,
            subscribers: self.subscribers,
            spec: self.media.spec(),
            warmup: secs(self.warmup),
            seconds: secs(self.seconds),
            join_timeout: secs(self.join_timeout),
            twcc: !self.no_twcc,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// The SFU alone in this process, controlled by JSON lines on stdin.
    Serve {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        shards: usize,
        #[arg(long, default_value_t = 50_000_000)]
        initial_estimate_bps: u64,
        #[arg(long, default_value_t = 600)]
        max_seconds: u64,
    },
    /// N publishers fanned out to M subscribers through `serve`.
    Direct {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        fanout: FanoutArgs,
    },
    /// The bare recvmmsg/sendmmsg fan-out forwarder with the same load.
    Bare {
        #[command(flatten)]
        media: MediaArgs,
        #[arg(long, default_value_t = 10)]
        subscribers: usize,
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 600)]
        max_seconds: u64,
    },
    /// The forwarder process `bare` starts.
    #[command(hide = true)]
    BareForward {
        #[arg(long, value_delimiter = ',')]
        subs: Vec<SocketAddrV4>,
        #[arg(long, default_value_t = 600)]
        max_seconds: u64,
    },
    /// Join/leave cycles against one resident publisher; samples RSS.
    Churn {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        media: MediaArgs,
        #[arg(long, default_value_t = 1000)]
        cycles: usize,
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        #[arg(long, default_value_t = 100)]
        sample_every: usize,
        /// Joining subscribers do not negotiate transport-cc (see `direct`).
        #[arg(long)]
        no_twcc: bool,
    },
    /// N publishers and M subscribers through `rtc-server`'s WebSocket
    /// signalling (started here on loopback unless --url is given).
    Ws {
        /// The `rtc-server` binary to start [default: next to this one].
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// A running server's HTTP address (with --api-key, --api-secret)
        /// instead of starting one.
        #[arg(long)]
        url: Option<SocketAddr>,
        #[arg(long, requires = "url")]
        api_key: Option<String>,
        #[arg(long, requires = "url")]
        api_secret: Option<String>,
        /// The running server's process id, for CPU and RSS from /proc.
        #[arg(long, requires = "url")]
        pid: Option<u32>,
        #[command(flatten)]
        fanout: FanoutArgs,
    },
    /// RSS per participant and per subscribed track.
    Memory {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        media: MediaArgs,
        #[arg(long, default_value_t = 5)]
        publishers: usize,
        #[arg(long, default_value_t = 100)]
        participants: usize,
        #[arg(long, default_value_t = 4.0)]
        settle: f64,
        /// Subscribers do not negotiate transport-cc (see `direct`).
        #[arg(long)]
        no_twcc: bool,
    },
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 3600.0))
}

fn report(v: serde_json::Value) {
    if let Some(m) = v.as_object() {
        for (k, x) in m {
            let s = match x.as_f64() {
                Some(f) if x.is_f64() => format!("{f:.3}"),
                _ => x.to_string(),
            };
            println!("{k:>50}  {s}");
        }
    }
    println!("RESULT {v}");
}

fn ws_target(
    server_bin: Option<PathBuf>,
    url: Option<SocketAddr>,
    api_key: Option<String>,
    api_secret: Option<String>,
    pid: Option<u32>,
) -> Result<ws::Target, LoadError> {
    if let Some(http) = url {
        let (Some(api_key), Some(api_secret)) = (api_key, api_secret) else {
            return Err(LoadError::Server("--url needs --api-key and --api-secret".into()));
        };
        return Ok(ws::Target::Attach {
            http,
            api_key,
            api_secret,
            pid,
        });
    }
    let bin = match server_bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("rtc-server"),
    };
    Ok(ws::Target::Spawn { bin })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Serve {
            listen,
            shards,
            initial_estimate_bps,
            max_seconds,
        } => {
            return match serve::serve(serve::ServeArgs {
                listen,
                shards,
                initial_estimate_bps,
                max_seconds,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sfu-load serve: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::BareForward { subs, max_seconds } => bare::forward(&subs, max_seconds).map(|()| serde_json::Value::Null),
        Cmd::Direct { server, fanout } => server.opts().and_then(|s| {
            run::direct(run::DirectArgs {
                server: s,
                fanout: fanout.fanout(),
            })
        }),
        Cmd::Bare {
            media,
            subscribers,
            warmup,
            seconds,
            max_seconds,
        } => bare::bare(bare::BareArgs {
            subscribers,
            spec: media.spec(),
            warmup: secs(warmup),
            seconds: secs(seconds),
            max_seconds,
        }),
        Cmd::Churn {
            server,
            media,
            cycles,
            concurrency,
            sample_every,
            no_twcc,
        } => server.opts().and_then(|s| {
            run::churn(run::ChurnArgs {
                server: s,
                cycles,
                concurrency,
                sample_every,
                spec: media.spec(),
                twcc: !no_twcc,
            })
        }),
        Cmd::Ws {
            server_bin,
            url,
            api_key,
            api_secret,
            pid,
            fanout,
        } => ws_target(server_bin, url, api_key, api_secret, pid).and_then(|target| {
            ws::ws(ws::WsArgs {
                target,
                fanout: fanout.fanout(),
            })
        }),
        Cmd::Memory {
            server,
            media,
            publishers,
            participants,
            settle,
            no_twcc,
        } => server.opts().and_then(|s| {
            run::memory(run::MemoryArgs {
                server: s,
                publishers,
                participants,
                spec: media.spec(),
                settle: secs(settle),
                twcc: !no_twcc,
            })
        }),
    };
    match r {
        Ok(serde_json::Value::Null) => ExitCode::SUCCESS,
        Ok(v) => {
            println!("load: {}", stats::loadavg());
            report(v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sfu-load: {e}");
            ExitCode::FAILURE
        }
    }
}
