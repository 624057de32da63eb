//! `rtc-server`: the all-in-one server. Parses the configuration, starts the
//! embedded TURN/STUN relay and the SFU (media plane), then serves the REST
//! API, WebSocket signalling and `/metrics` over HTTP until SIGTERM or SIGINT
//! (or prints an access token with `rtc-server token`).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::io::Running;
use signalling::config::{self, ConfigError, Invocation, ServerConfig, TokenArgs};
use signalling::metrics::Metrics;
use signalling::sfu_media::SfuMedia;
use signalling::state::{AppState, Settings};
use signalling::webhooks::Webhooks;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Open WebSockets keep axum's graceful shutdown waiting forever; after this
/// the remaining connections are cut (clients reconnect elsewhere).
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Time queued webhook events get to go out at exit.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(5);
/// How often the relay's counters are copied into `/metrics` and a drain is checked.
const RELAY_POLL: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let invocation = match config::load() {
        Ok(i) => i,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("rtc-server: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match invocation {
        Invocation::Token(t) => print_token(&t),
        Invocation::Serve(cfg) => {
            cfg.log_format.init_tracing();
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("rtc-server: cannot start the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "rtc-server failed");
                    eprintln!("rtc-server: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn print_token(t: &TokenArgs) -> ExitCode {
    match signalling::auth::mint(&t.api_key, &t.api_secret, &t.request, signalling::auth::now_unix()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rtc-server token: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("embedded relay: {0}")]
    Relay(#[from] relay::io::IoError),
    #[error("cannot listen on HTTP {addr} (--http-listen): {source}")]
    HttpBind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Webhooks(#[from] signalling::webhooks::WebhookError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("SFU on {addr} (--media-port, --media-tcp-port, --media-ip): {source}")]
    Media { addr: SocketAddr, source: sfu::Error },
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Self, ServeError> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(ServeError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(ServeError::Signals)?,
        })
    }
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn serve(mut cfg: ServerConfig) -> Result<(), ServeError> {
    // Handlers first, so a signal during startup is not the default kill.
    let mut signals = Signals::new()?;

    // The relay binds before anything is printed, so a port conflict is the
    // first and only thing the operator sees.
    let relay = match cfg.relay.clone() {
        Some(rc) => {
            let shards = rc.shards;
            let running = Running::start(rc)?;
            cfg.update_turn_urls(&running.udp, &running.tls)?;
            Some((Arc::new(running), shards))
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new(relay.as_ref().map(|(_, shards)| *shards)));
    let (key, secret) = cfg.primary_key.clone();
    let webhooks = Webhooks::new(cfg.webhook_urls.clone(), key, secret, metrics.clone())?;

    // The SFU binds before HTTP for the same reason as the relay. It listens
    // on the HTTP listener's host, so the development default (loopback)
    // exposes nothing, and advertises --media-ip or that host.
    let media_listen = SocketAddr::new(cfg.http_listen.ip(), cfg.media_port);
    let (sfu, sfu_events) = sfu::Sfu::start(sfu::SfuConfig {
        listen: media_listen,
        tcp_listen: cfg
            .media_tcp_port
            .map(|port| SocketAddr::new(cfg.http_listen.ip(), port)),
        tcp_limits: sfu::TcpLimits {
            max_connections: cfg.media_tcp_max_connections,
            ..sfu::TcpLimits::default()
        },
        advertise_ip: cfg.media_ip,
        shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..sfu::SfuConfig::default()
    })
    .map_err(|source| ServeError::Media {
        addr: media_listen,
        source,
    })?;
    let sfu = Arc::new(sfu);
    let (media_tx, media_rx) = signalling::media::event_channel();
    let sfu_media = Arc::new(SfuMedia::new(sfu.clone(), sfu_events, media_tx));
    let media: Arc<dyn signalling::media::MediaPlane> = sfu_media.clone();

    let settings = Settings {
        turn: cfg.turn_config(),
        dev_mode: cfg.dev_mode,
        ..Settings::default()
    };
    let state = AppState::new(
        cfg.api_keys.clone(),
        settings,
        Arc::new(signalling::store::MemoryStore::new()),
        media,
        media_rx,
        Arc::new(webhooks.clone()),
        metrics.clone(),
    );
    let app = signalling::api::router(state);
    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|source| ServeError::HttpBind {
            addr: cfg.http_listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(ServeError::Http)?;

    announce(
        &cfg,
        http_addr,
        relay.as_ref().map(|(r, _)| r.as_ref()),
        sfu.local_addr(),
        sfu.tcp_addr(),
    );

    // The relay's shards publish counters on their own; copy them into the
    // shared registry so one scrape of /metrics has both.
    let draining = Arc::new(AtomicBool::new(false));
    let poller = relay.as_ref().map(|(running, _)| {
        let (running, metrics, draining) = (running.clone(), metrics.clone(), draining.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELAY_POLL);
            loop {
                tick.tick().await;
                if let Some((stats, _)) = running.snapshot() {
                    metrics.update_relay(&stats, draining.load(Ordering::Relaxed));
                }
            }
        })
    });

    // The SFU's ICE-TCP and drop counters likewise.
    let sfu_poller = {
        let (sfu, metrics) = (sfu.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELAY_POLL);
            loop {
                tick.tick().await;
                metrics.update_sfu_tcp(&sfu.tcp_stats());
                metrics.update_sfu_drops(&sfu.stats());
            }
        })
    };

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut http = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });

    let http_result = tokio::select! {
        _ = signals.recv() => None,
        r = &mut http => Some(r),
    };
    let mut result = Ok(());
    match http_result {
        // The HTTP server ended on its own: an accept error; shut down the rest.
        Some(r) => {
            result = match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Http(e)),
                Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
            }
        }
        None => {
            tracing::info!("signal received: stopping HTTP, draining the relay (a second signal exits now)");
            let _ = stop_http.send(());
            if let Some((running, _)) = &relay {
                running.drain();
                draining.store(true, Ordering::Relaxed);
            }
            let grace = tokio::time::timeout(HTTP_SHUTDOWN_GRACE, &mut http);
            tokio::select! {
                r = grace => if r.is_err() {
                    tracing::info!("open connections did not close in time; closing them");
                    http.abort();
                },
                _ = signals.recv() => http.abort(),
            }
            if let Some((running, _)) = &relay {
                let timeout = cfg.relay.as_ref().map_or(Duration::ZERO, |r| r.drain_timeout);
                drain_relay(running, timeout, &mut signals).await;
            }
        }
    }

    webhooks.shutdown(WEBHOOK_FLUSH).await;
    if let Some(p) = poller {
        p.abort();
        let _ = p.await;
    }
    if let Some((running, _)) = relay {
        match Arc::try_unwrap(running) {
            // Joining shard threads blocks; keep it off the async workers.
            Ok(running) => match tokio::task::spawn_blocking(move || running.stop()).await {
                Ok(r) => r?,
                Err(e) => tracing::error!(error = %e, "relay stop panicked"),
            },
            Err(_) => tracing::warn!("relay still referenced at exit; its threads end with the process"),
        }
    }
    // It holds a handle of the SFU, which must be the last one to stop it.
    sfu_poller.abort();
    let _ = sfu_poller.await;
    stop_sfu(&sfu_media, sfu).await;
    tracing::info!("rtc-server stopped");
    result
}

/// Stops the SFU's shards: the media adapter lets go of its handle first,
/// then the shard threads are joined off the async workers.
async fn stop_sfu(adapter: &SfuMedia, sfu: Arc<sfu::Sfu>) {
    adapter.stop().await;
    match Arc::try_unwrap(sfu) {
        Ok(sfu) => {
            if let Err(e) = tokio::task::spawn_blocking(move || sfu.shutdown()).await {
                tracing::error!(error = %e, "SFU shutdown panicked");
            }
        }
        Err(_) => tracing::warn!("SFU still referenced at exit; its threads end with the process"),
    }
}

/// Waits until the relay has no allocation left, its `--turn-drain-timeout`
/// passes, or a second signal arrives.
async fn drain_relay(running: &Running, timeout: Duration, signals: &mut Signals) {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = signals.recv() => {
                tracing::info!("second signal, exiting");
                return;
            }
            _ = tick.tick() => {
                match running.snapshot() {
                    Some((_, 0)) => {
                        tracing::info!("relay drained");
                        return;
                    }
                    Some((_, n)) if Instant::now() >= deadline => {
                        tracing::info!(allocations = n, "relay drain timeout, exiting");
                        return;
                    }
                    _ if Instant::now() >= deadline => return,
                    _ => {}
                }
            }
        }
    }
}

/// Prints every address listened on and, in development mode, how to connect.
fn announce(
    cfg: &ServerConfig,
    http: SocketAddr,
    relay: Option<&Running>,
    media: SocketAddr,
    media_tcp: Option<SocketAddr>,
) {
    println!("listening http {http} (REST /v1, WebSocket /v1/rtc, /metrics)");
    match relay {
        Some(r) => {
            for (proto, addrs) in [("udp", &r.udp), ("tcp", &r.tcp), ("tls", &r.tls)] {
                for a in addrs {
                    tracing::info!(%a, proto, "turn listening");
                    println!("listening turn {proto} {a}");
                }
            }
        }
        None => println!("turn: embedded relay disabled (--no-turn)"),
    }
    tracing::info!(%media, "sfu listening");
    println!("listening media udp {media}");
    if let Some(tcp) = media_tcp {
        tracing::info!(%tcp, "sfu listening for ICE-TCP");
        println!("listening media tcp {tcp}");
    }
    for url in &cfg.turn_urls {
        println!("advertised ice server {url}");
    }
    for url in &cfg.webhook_urls {
        println!("webhook {url}");
    }
    if cfg.dev_mode {
        let (key, secret) = &cfg.primary_key;
        // A wildcard listener is reachable on loopback from this machine.
        let host = match http.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), http.port()),
            IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), http.port()),
            _ => http,
        };
        tracing::warn!("no --api-key given: development mode with a key generated for this run");
        println!("development mode: API key {key}, API secret {secret} (this run only)");
        println!("  token: rtc-server token --api-key {key} --api-secret {secret} --room demo --identity alice");
        if cfg.dev_loopback_peers {
            println!(
                "  the loopback-only relay allows loopback peers so browsers on this machine can relay to each other"
            );
        }
        println!("demo: http://{host}/");
    }
}
