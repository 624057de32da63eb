//! Command line, environment and TOML configuration of `rtc-server`.
//!
//! Precedence: command-line flag, then environment variable `RTC_<FLAG>`
//! (`--http-listen` is `RTC_HTTP_LISTEN`; repeatable flags take a
//! comma-separated list), then the `--config` TOML file (keys are the long
//! flag names, `-` or `_`), then the default. Everything is validated here,
//! once, into a [`ServerConfig`].
//!
//! The embedded relay's flags are rtc-relay's with a `turn-` prefix. They
//! are not validated here a second time: they are layered like every other
//! flag, translated back into an rtc-relay command line and handed to
//! [`relay::config::load_from`], so both binaries accept exactly the same
//! values; its error messages are rewritten to name the `--turn-` flag.
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use relay::config::layers::{self, nonempty, LayerError};
use relay::config::{LogFormat, RelayConfig};
use thiserror::Error;

use crate::auth::{ApiKeys, Grants, TokenRequest};

/// Default HTTP, REST and WebSocket listener: this machine only.
pub const DEFAULT_HTTP_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// Default embedded relay listener (UDP and TCP), loopback like HTTP so that
/// the no-flag server exposes nothing to the network.
pub const DEFAULT_TURN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3478);
/// Default SFU media port (UDP, ICE-multiplexed).
pub const DEFAULT_MEDIA_PORT: u16 = 7882;
/// Name of the API key generated in development mode.
pub const DEV_KEY_NAME: &str = "devkey";
/// A shorter HS256 secret can be brute-forced offline from any one token.
pub const MIN_SECRET_LEN: usize = 32;
/// Lifetime of the TURN credentials put in a join answer: a day, the relay's
/// own credential default, so a call never loses its relay mid-way.
pub const TURN_CREDENTIAL_TTL_S: u64 = 86_400;
/// `rtc-server token` without `--ttl`.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

/// rtc-relay flags the server exposes with a `turn-` prefix: (rtc-server
/// flag, rtc-relay flag, kind). `--turn-listen` and `--turn-secret` are
/// handled apart because the server has its own defaults for them.
const RELAY_FLAGS: &[(&str, &str, Kind)] = &[
    ("turn-tls-listen", "tls-listen", Kind::List),
    ("turn-tls-cert", "tls-cert", Kind::Scalar),
    ("turn-tls-key", "tls-key", Kind::Scalar),
    ("turn-relay-ip", "relay-ip", Kind::List),
    ("turn-external-ip", "external-ip", Kind::List),
    ("turn-relay-ports", "relay-ports", Kind::Scalar),
    ("turn-realm", "realm", Kind::Scalar),
    ("turn-nonce-key", "nonce-key", Kind::Scalar),
    ("turn-allow-peer", "allow-peer", Kind::List),
    ("turn-deny-peer", "deny-peer", Kind::List),
    ("turn-allow-loopback-peers", "allow-loopback-peers", Kind::Switch),
    ("turn-user-quota", "user-quota", Kind::Scalar),
    ("turn-total-quota", "total-quota", Kind::Scalar),
    ("turn-max-bps", "max-bps", Kind::Scalar),
    ("turn-max-pps", "max-pps", Kind::Scalar),
    ("turn-new-peers-per-sec", "new-peers-per-sec", Kind::Scalar),
    ("turn-unauth-rate", "unauth-rate", Kind::Scalar),
    ("turn-default-lifetime", "default-lifetime", Kind::Scalar),
    ("turn-max-lifetime", "max-lifetime", Kind::Scalar),
    ("turn-drain-timeout", "drain-timeout", Kind::Scalar),
    ("turn-shards", "shards", Kind::Scalar),
    ("turn-software", "software", Kind::Scalar),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Scalar,
    List,
    Switch,
}

/// The validated configuration of the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// HTTP, REST and WebSocket listener.
    pub http_listen: SocketAddr,
    pub api_keys: ApiKeys,
    /// The first configured key (or the generated one): signs webhooks and is
    /// what development mode prints.
    pub primary_key: (String, String),
    /// No `--api-key` was given: a key was generated for this run.
    pub dev_mode: bool,
    /// The embedded relay; `None` with `--no-turn`.
    pub relay: Option<RelayConfig>,
    /// Development mode opened loopback peers on the loopback-only relay
    /// (see [`ServerConfig::relay`]); printed at start so it is never a surprise.
    pub dev_loopback_peers: bool,
    /// TURN URLs handed to clients.
    pub turn_urls: Vec<String>,
    /// STUN URLs handed to clients (the `turn:` URLs' hosts).
    pub stun_urls: Vec<String>,
    /// `turn_urls` came from `--turn-url`; otherwise they describe the
    /// embedded relay and are recomputed from its bound ports (port 0).
    pub turn_urls_explicit: bool,
    /// TURN REST secrets; the first signs credentials.
    pub turn_secrets: Vec<String>,
    /// The SFU's UDP port, bound on the HTTP listener's host (0 = any).
    pub media_port: u16,
    /// The SFU's ICE-TCP port (passive TCP candidates, for clients whose
    /// network blocks UDP), on the same host; 0 = any, `None` = off.
    pub media_tcp_port: Option<u16>,
    /// ICE-TCP connections open at once; more are refused (and counted).
    pub media_tcp_max_connections: usize,
    /// The address advertised in ICE candidates; `None` = the bind address
    /// (which must then be specific).
    pub media_ip: Option<IpAddr>,
    pub webhook_urls: Vec<String>,
    pub log_format: LogFormat,
}

/// The validated arguments of `rtc-server token`.
#[derive(Clone, Debug)]
pub struct TokenArgs {
    pub api_key: String,
    pub api_secret: String,
    pub request: TokenRequest,
}

/// What the command line asks the binary to do.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once and matched at once
pub enum Invocation {
    Serve(ServerConfig),
    /// Print an access token and exit.
    Token(TokenArgs),
}

/// Says which environment variables (`RTC_*`) feed rtc-server's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerEnv;

impl layers::EnvPrefix for ServerEnv {
    const PREFIX: &'static str = "RTC_";
    const EXAMPLE_KEYS: &'static str = "http-listen, api-key";
}

/// Where a setting came from, so an error points at the line to fix.
pub type Source = layers::Source<ServerEnv>;

/// One flag as given by one source.
pub type Setting = layers::Setting<ServerEnv>;

#[derive(Debug, Error)]
pub enum ConfigError {
    /// Clap's own output: `--help`, `--version` and usage errors. Call `e.exit()`.
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// The config file or a setting's type, as the shared layering found it.
    #[error(transparent)]
    Layer(LayerError<ServerEnv>),
    #[error("{at}: invalid value {value:?}, expected {expected}")]
    Invalid {
        at: Setting,
        value: String,
        expected: &'static str,
    },
    #[error("{at}: expected NAME=SECRET with a non-empty name and secret")]
    BadApiKey { at: Setting },
    #[error("{at}: the secret of API key {name:?} is shorter than {MIN_SECRET_LEN} characters; it signs access tokens, and a short one can be guessed offline from any token (try: openssl rand -hex 32)")]
    WeakApiSecret { at: Setting, name: String },
    #[error("{at}: API key {name:?} is given twice")]
    DuplicateApiKey { at: Setting, name: String },
    #[error("no --api-key given and --http-listen {addr} is not a loopback address: configure API keys (--api-key NAME=SECRET or RTC_API_KEY), or add --dev to run development mode with a generated key on this address")]
    KeysRequired { addr: SocketAddr },
    #[error("{at}: a secret must not be empty")]
    EmptySecret { at: Setting },
    #[error("{at}: {url:?} is not a TURN URL (turn:HOST:PORT or turns:HOST:PORT, optionally ?transport=udp|tcp)")]
    BadTurnUrl { at: Setting, url: String },
    #[error("--turn-url is given but the relay it points to has no secret here: add --turn-secret with that relay's --auth-secret")]
    TurnUrlWithoutSecret,
    #[error("{at} is set but --no-turn disables the embedded relay")]
    NoTurnConflict { at: Setting },
    #[error("--turn-listen {addr} is a wildcard address: clients need a specific one, so give --turn-url, --turn-external-ip or --media-ip")]
    NoAdvertisedHost { addr: SocketAddr },
    #[error("--http-listen {addr} is a wildcard address and the SFU listens on the same host: give --media-ip, the address clients reach it at")]
    NoMediaIp { addr: SocketAddr },
    #[error("{at}: {value:?} is not an http:// or https:// URL")]
    BadWebhookUrl { at: Setting, value: String },
    /// rtc-relay's validation of the `--turn-*` flags, its flag names rewritten.
    #[error("{0}")]
    Turn(String),
    #[error("token: {0}")]
    Token(String),
}

impl From<LayerError<ServerEnv>> for ConfigError {
    fn from(e: LayerError<ServerEnv>) -> Self {
        match e {
            // A bad value reads the same whichever layer gave it.
            LayerError::Invalid { at, value, expected } => ConfigError::Invalid { at, value, expected },
            other => ConfigError::Layer(other),
        }
    }
}

const SOURCES_HELP: &str = "\
Every option can also be set with an environment variable RTC_<OPTION> \
(e.g. RTC_HTTP_LISTEN; repeatable options take a comma-separated list) \
or a key in the --config TOML file (e.g. http-listen = \"0.0.0.0:8080\", \
api-key = [\"main=...\"]). A flag beats the environment, which beats the file, \
which beats the default. The embedded relay takes rtc-relay's options with a \
turn- prefix: --turn-allow-peer, --turn-user-quota, --turn-external-ip, ...";

#[derive(Parser, Debug)]
#[command(
    name = "rtc-server",
    version,
    about = "All-in-one real-time communications server: signalling, REST API, TURN/STUN relay",
    args_conflicts_with_subcommands = true,
    after_help = SOURCES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print an access token (JWT) for a participant.
    Token(TokenCli),
}

#[derive(Args, Debug)]
struct TokenCli {
    /// API key name [default: the first of RTC_API_KEY or the config file's api-key].
    #[arg(long, value_name = "NAME")]
    api_key: Option<String>,
    /// API secret [default: RTC_API_SECRET, else the configured secret of --api-key].
    #[arg(long, value_name = "SECRET")]
    api_secret: Option<String>,
    /// TOML file to take api-key from.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Room the token is for (required to join).
    #[arg(long, value_name = "ROOM")]
    room: Option<String>,
    /// Participant identity (required to join).
    #[arg(long, value_name = "IDENTITY")]
    identity: Option<String>,
    /// Display name.
    #[arg(long, value_name = "NAME", default_value = "")]
    name: String,
    /// Participant metadata (opaque to the server).
    #[arg(long, value_name = "TEXT", default_value = "")]
    metadata: String,
    /// Grant (repeatable): room_join, room_create, room_list, room_admin, can_publish
    /// (publish), can_subscribe (subscribe), can_publish_data (data), hidden, admin
    /// [default: room_join, which includes publish, subscribe and data].
    #[arg(long = "grant", value_name = "GRANT")]
    grants: Vec<String>,
    /// Lifetime: seconds, or a number with s, m, h or d [default: 6h].
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
}

/// Raw strings: the environment and the file give strings too, and parsing
/// all of them in one place gives one set of error messages.
#[derive(Args, Debug)]
struct RunArgs {
    /// TOML configuration file (keys are the option names below).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// HTTP, REST and WebSocket listener [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// API key (repeatable, for rotation); without any, development mode with a
    /// generated key printed at start.
    #[arg(long, value_name = "NAME=SECRET")]
    api_key: Vec<String>,
    /// Allow development mode (a generated API key) on a non-loopback --http-listen.
    #[arg(long)]
    dev: bool,
    /// Embedded TURN/STUN relay listener, UDP and TCP (repeatable) [default: 127.0.0.1:3478].
    #[arg(long, value_name = "ADDR")]
    turn_listen: Vec<String>,
    /// Do not run the embedded relay.
    #[arg(long)]
    no_turn: bool,
    /// TURN REST secret (repeatable: the first signs, all verify), as rtc-relay's
    /// --auth-secret [default: generated per run].
    #[arg(long, value_name = "SECRET")]
    turn_secret: Vec<String>,
    /// TURN URL advertised to clients (repeatable) [default: the embedded relay's].
    #[arg(long, value_name = "URL")]
    turn_url: Vec<String>,
    /// SFU media port (UDP), on the --http-listen host; 0 = any free port [default: 7882].
    #[arg(long, value_name = "PORT")]
    media_port: Option<String>,
    /// SFU ICE-TCP port, for networks that block UDP; 0 = any free port, off = no TCP
    /// [default: the --media-port number].
    #[arg(long, value_name = "PORT")]
    media_tcp_port: Option<String>,
    /// ICE-TCP connections open at once; more are refused [default: 4096].
    #[arg(long, value_name = "N")]
    media_tcp_max_connections: Option<String>,
    /// Address advertised in the SFU's ICE candidates [default: the --http-listen IP, if specific].
    #[arg(long, value_name = "IP")]
    media_ip: Option<String>,
    /// Webhook receiver (repeatable).
    #[arg(long, value_name = "URL")]
    webhook_url: Vec<String>,
    /// text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

/// The `--turn-*` pass-through flags, added to the derived parser so their
/// list lives in one table ([`RELAY_FLAGS`]).
fn command() -> clap::Command {
    Cli::command().args(RELAY_FLAGS.iter().map(|&(ours, relay, kind)| {
        let help = format!("rtc-relay's --{relay}, for the embedded relay");
        let arg = Arg::new(ours).long(ours).help(help);
        match kind {
            Kind::Scalar => arg.value_name("VALUE").action(ArgAction::Set),
            Kind::List => arg.value_name("VALUE").action(ArgAction::Append),
            Kind::Switch => arg.action(ArgAction::SetTrue),
        }
    }))
}

/// Reads the real command line and environment.
pub fn load() -> Result<Invocation, ConfigError> {
    load_from(std::env::args_os(), &|name| std::env::var(name).ok())
}

/// [`load`] with the command line (`args[0]` is the program name) and the
/// environment given, for tests.
pub fn load_from(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Invocation, ConfigError> {
    let matches = command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        Some(Command::Token(t)) => token_args(t, env).map(Invocation::Token),
        None => build(cli.run, &matches, env).map(Invocation::Serve),
    }
}

fn env_var(flag: &str) -> String {
    layers::env_var::<ServerEnv>(flag)
}

/// The non-flag sources, consulted in order for each flag.
type Layers<'a> = layers::Layers<'a, ServerEnv>;

fn read_toml(path: PathBuf, known: &HashSet<String>) -> Result<(PathBuf, toml::Table), ConfigError> {
    Ok(layers::read_toml(path, known)?)
}

/// The server's long flags, which are exactly the accepted TOML keys.
fn known_keys() -> HashSet<String> {
    layers::known_keys(&command())
}

fn parse_addr(v: &str, at: &Setting) -> Result<SocketAddr, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::Invalid {
        at: at.clone(),
        value: v.to_string(),
        expected: "IP:PORT such as 127.0.0.1:8080 or [::]:8080",
    })
}

/// `NAME=SECRET` entries into keys, in the order given.
fn parse_api_keys(raw: &[String], at: &Setting) -> Result<Vec<(String, String)>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in raw {
        let (name, secret) = entry
            .split_once('=')
            .map(|(n, s)| (n.trim(), s.trim()))
            .filter(|(n, s)| !n.is_empty() && !s.is_empty())
            .ok_or_else(|| ConfigError::BadApiKey { at: at.clone() })?;
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(ConfigError::WeakApiSecret {
                at: at.clone(),
                name: name.to_string(),
            });
        }
        if !seen.insert(name.to_string()) {
            return Err(ConfigError::DuplicateApiKey {
                at: at.clone(),
                name: name.to_string(),
            });
        }
        out.push((name.to_string(), secret.to_string()));
    }
    Ok(out)
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

fn build(
    args: RunArgs,
    matches: &ArgMatches,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServerConfig, ConfigError> {
    let config_path = args
        .config
        .or_else(|| nonempty(env(&env_var("config"))).map(PathBuf::from));
    let file = config_path.map(|p| read_toml(p, &known_keys())).transpose()?;
    let mut l = Layers::new(env, file);

    let http_listen = match l.scalar("http-listen", args.http_listen)? {
        Some((v, at)) => parse_addr(&v, &at)?,
        None => DEFAULT_HTTP_LISTEN,
    };

    // API keys and development mode.
    let (raw, key_at) = l.list("api-key", args.api_key)?;
    let mut keys = parse_api_keys(&raw, &key_at)?;
    let dev_flag = l.switch("dev", args.dev)?.is_some();
    let dev_mode = keys.is_empty();
    if dev_mode {
        // The generated key is random, so dev mode is not an open door; it
        // stays on loopback unless asked, because nothing else about a dev
        // setup (printed secrets, loopback peers) belongs on a network.
        if !http_listen.ip().is_loopback() && !dev_flag {
            return Err(ConfigError::KeysRequired { addr: http_listen });
        }
        keys.push((DEV_KEY_NAME.to_string(), random_hex(MIN_SECRET_LEN)));
    }
    let primary_key = keys[0].clone();
    let api_keys = ApiKeys::new(keys.into_iter().collect::<HashMap<_, _>>());

    // TURN.
    let no_turn = l.switch("no-turn", args.no_turn)?.is_some();
    let (raw_listen, listen_at) = l.list("turn-listen", args.turn_listen)?;
    let (turn_secrets, secret_at) = l.list("turn-secret", args.turn_secret)?;
    if turn_secrets.iter().any(|s| s.trim().is_empty()) {
        return Err(ConfigError::EmptySecret { at: secret_at });
    }
    let (turn_urls, url_at) = l.list("turn-url", args.turn_url)?;
    for url in &turn_urls {
        if parse_turn_url(url).is_none() {
            return Err(ConfigError::BadTurnUrl {
                at: url_at.clone(),
                url: url.clone(),
            });
        }
    }
    let mut relay_args: Vec<(&'static str, Vec<String>, Setting)> = Vec::new();
    for &(ours, theirs, kind) in RELAY_FLAGS {
        let (values, at) = match kind {
            Kind::Scalar => match l.scalar(ours, matches.get_one::<String>(ours).cloned())? {
                Some((v, at)) => (vec![v], at),
                None => continue,
            },
            Kind::List => {
                let cli = matches
                    .get_many::<String>(ours)
                    .map(|v| v.cloned().collect())
                    .unwrap_or_default();
                match l.list(ours, cli)? {
                    (v, _) if v.is_empty() => continue,
                    (v, at) => (v, at),
                }
            }
            Kind::Switch => match l.switch(ours, matches.get_flag(ours))? {
                Some(at) => (Vec::new(), at),
                None => continue,
            },
        };
        relay_args.push((theirs, values, at));
    }

    // Media: the SFU's port and the address its host candidate advertises.
    let media_port = match l.scalar("media-port", args.media_port)? {
        // 0 lets the OS pick (tests); the bound port is printed at start.
        Some((v, at)) => match v.trim().parse::<u16>() {
            Ok(p) => p,
            _ => {
                return Err(ConfigError::Invalid {
                    at,
                    value: v,
                    expected: "a UDP port from 0 (any) to 65535",
                })
            }
        },
        None => DEFAULT_MEDIA_PORT,
    };
    // TCP and UDP ports are separate spaces, so the same number is the
    // natural default and one firewall rule number covers both.
    let media_tcp_port = match l.scalar("media-tcp-port", args.media_tcp_port)? {
        Some((v, at)) => match v.trim() {
            "off" => None,
            t => match t.parse::<u16>() {
                Ok(p) => Some(p),
                _ => {
                    return Err(ConfigError::Invalid {
                        at,
                        value: v,
                        expected: "a TCP port from 0 (any) to 65535, or off",
                    })
                }
            },
        },
        None => Some(media_port),
    };
    let media_tcp_max_connections = match l.scalar("media-tcp-max-connections", args.media_tcp_max_connections)? {
        Some((v, at)) => match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => n as usize,
            _ => {
                return Err(ConfigError::Invalid {
                    at,
                    value: v,
                    expected: "a number of connections from 1",
                })
            }
        },
        None => sfu::TcpLimits::default().max_connections,
    };
    let media_ip = match l.scalar("media-ip", args.media_ip)? {
        Some((v, at)) => match v.trim().parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => Some(ip),
            _ => {
                return Err(ConfigError::Invalid {
                    at,
                    value: v,
                    expected: "a specific IP address clients can reach",
                })
            }
        },
        None => None,
    };

    let (webhook_urls, hook_at) = l.list("webhook-url", args.webhook_url)?;
    for url in &webhook_urls {
        if !crate::webhooks::valid_url(url) {
            return Err(ConfigError::BadWebhookUrl {
                at: hook_at,
                value: url.clone(),
            });
        }
    }
    let log_format = match l.scalar("log-format", args.log_format)? {
        Some((v, at)) => match v.to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                return Err(ConfigError::Invalid {
                    at,
                    value: v,
                    expected: "text or json",
                })
            }
        },
        None => LogFormat::Text,
    };

    // The SFU's host candidate must be an address clients can send to.
    if http_listen.ip().is_unspecified() && media_ip.is_none() {
        return Err(ConfigError::NoMediaIp { addr: http_listen });
    }

    let mut cfg = ServerConfig {
        http_listen,
        api_keys,
        primary_key,
        dev_mode,
        relay: None,
        dev_loopback_peers: false,
        turn_urls_explicit: !turn_urls.is_empty(),
        stun_urls: Vec::new(),
        turn_urls,
        turn_secrets,
        media_port,
        media_tcp_port,
        media_tcp_max_connections,
        media_ip,
        webhook_urls,
        log_format,
    };

    if no_turn {
        if let Some(at) = (!raw_listen.is_empty())
            .then_some(listen_at)
            .or_else(|| relay_args.first().map(|(_, _, at)| at.clone()))
        {
            return Err(ConfigError::NoTurnConflict { at });
        }
        if !cfg.turn_urls.is_empty() && cfg.turn_secrets.is_empty() {
            return Err(ConfigError::TurnUrlWithoutSecret);
        }
    } else {
        let listen = if raw_listen.is_empty() {
            vec![DEFAULT_TURN_LISTEN]
        } else {
            raw_listen
                .iter()
                .map(|v| parse_addr(v, &listen_at))
                .collect::<Result<Vec<_>, _>>()?
        };
        let loopback_only = listen.iter().all(|a| a.ip().is_loopback());
        let explicit_loopback = relay_args.iter().any(|(f, _, _)| *f == "allow-loopback-peers");
        // Browsers on this machine relay to each other's relayed addresses,
        // which are the relay's own loopback address, and reach the SFU on
        // loopback too; the relay's secure default refuses both. A relay that
        // only listens on loopback cannot be reached from elsewhere, so
        // opening loopback peers there gives nobody new anything.
        if dev_mode && loopback_only && !explicit_loopback {
            relay_args.push(("allow-loopback-peers", Vec::new(), Setting::flag("dev")));
            cfg.dev_loopback_peers = true;
        }
        let mut relay = relay_config(&listen, &cfg.turn_secrets, &relay_args)?;
        if let Some(secret) = relay.generated_secret.take() {
            cfg.turn_secrets = vec![secret];
        }
        if !cfg.turn_urls_explicit {
            let tls: Vec<SocketAddr> = relay.tls_listen.clone();
            cfg.turn_urls = embedded_turn_urls(&relay, &listen, &tls, media_ip)?;
        }
        cfg.relay = Some(relay);
    }
    cfg.stun_urls = stun_urls(&cfg.turn_urls);
    Ok(cfg)
}

/// Validates the relay flags with rtc-relay's own parser.
fn relay_config(
    listen: &[SocketAddr],
    secrets: &[String],
    args: &[(&'static str, Vec<String>, Setting)],
) -> Result<RelayConfig, ConfigError> {
    let mut argv: Vec<OsString> = vec!["rtc-relay".into()];
    argv.extend(listen.iter().map(|a| format!("--listen={a}").into()));
    argv.extend(secrets.iter().map(|s| format!("--auth-secret={s}").into()));
    for (flag, values, _) in args {
        if values.is_empty() {
            argv.push(format!("--{flag}").into());
        }
        // `=` keeps a value that starts with '-' from being read as a flag.
        argv.extend(values.iter().map(|v| format!("--{flag}={v}").into()));
    }
    // No environment: RTC_RELAY_* belongs to a separate rtc-relay and must
    // not leak into the embedded one.
    match relay::config::load_from(argv, &|_| None) {
        Ok(relay::config::Invocation::Run(cfg, _)) => Ok(cfg),
        Ok(relay::config::Invocation::Credentials(_)) => Err(ConfigError::Turn(
            "internal: relay arguments parsed as a subcommand".into(),
        )),
        Err(e) => Err(ConfigError::Turn(rename_relay_flags(&e.to_string(), args))),
    }
}

/// Rewrites rtc-relay flag names in `message` to the server's and says where
/// the first one's value came from when that was not the command line.
fn rename_relay_flags(message: &str, args: &[(&'static str, Vec<String>, Setting)]) -> String {
    let ours = |relay: &str| -> Option<&'static str> {
        match relay {
            "listen" => Some("turn-listen"),
            "auth-secret" => Some("turn-secret"),
            _ => RELAY_FLAGS.iter().find(|(_, r, _)| *r == relay).map(|(o, _, _)| *o),
        }
    };
    let mut out = String::with_capacity(message.len() + 32);
    let mut first: Option<&str> = None;
    let mut rest = message;
    while let Some(i) = rest.find("--") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
            .unwrap_or(after.len());
        let name = after[..len].trim_end_matches('-');
        match ours(name) {
            Some(o) => {
                first.get_or_insert(name);
                out.push_str("--");
                out.push_str(o);
                rest = &after[name.len()..];
            }
            None => {
                out.push_str("--");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    if let Some((_, _, at)) = first.and_then(|f| args.iter().find(|(flag, _, _)| *flag == f)) {
        if at.source != Source::Flag {
            out.push_str(&format!(" (set by {at})"));
        }
    }
    out
}

/// `turn:` and `turns:` URLs for the embedded relay's listeners (UDP and
/// TCP on each `listen`, TLS on each `tls`). A wildcard listener is
/// advertised under the external address of its family, else `media_ip`.
pub fn embedded_turn_urls(
    relay: &RelayConfig,
    listen: &[SocketAddr],
    tls: &[SocketAddr],
    media_ip: Option<IpAddr>,
) -> Result<Vec<String>, ConfigError> {
    let host = |addr: &SocketAddr| -> Result<String, ConfigError> {
        let ip = if addr.ip().is_unspecified() {
            let external = match addr.ip() {
                IpAddr::V4(_) => relay.server.external_ipv4.map(IpAddr::V4),
                IpAddr::V6(_) => relay.server.external_ipv6.map(IpAddr::V6),
            };
            external
                .or(media_ip)
                .ok_or(ConfigError::NoAdvertisedHost { addr: *addr })?
        } else {
            addr.ip()
        };
        Ok(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        })
    };
    let mut urls = Vec::new();
    for a in listen {
        let h = host(a)?;
        urls.push(format!("turn:{h}:{}?transport=udp", a.port()));
        urls.push(format!("turn:{h}:{}?transport=tcp", a.port()));
    }
    for a in tls {
        urls.push(format!("turns:{}:{}?transport=tcp", host(a)?, a.port()));
    }
    Ok(urls)
}

/// `(secure, host, port)` of a TURN URL (RFC 7065), or `None`.
fn parse_turn_url(url: &str) -> Option<(bool, &str, Option<u16>)> {
    let (secure, rest) = if let Some(r) = url.strip_prefix("turns:") {
        (true, r)
    } else {
        (false, url.strip_prefix("turn:")?)
    };
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    if let Some(q) = query {
        if !matches!(q, "transport=udp" | "transport=tcp") {
            return None;
        }
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (&hostport[..h.len() + 2], port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
            None => (hostport, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') || host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    host_ok.then_some((secure, host, port))
}

/// A `stun:` URL for every distinct host:port among the `turn:` URLs: a TURN
/// server answers STUN Binding requests on the same port.
pub fn stun_urls(turn_urls: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for url in turn_urls {
        if let Some((false, host, port)) = parse_turn_url(url) {
            let stun = format!("stun:{host}:{}", port.unwrap_or(3478));
            if !out.contains(&stun) {
                out.push(stun);
            }
        }
    }
    out
}

impl ServerConfig {
    /// The room service's TURN settings: credentials signed with the first
    /// TURN secret for the advertised URLs.
    pub fn turn_config(&self) -> crate::room::TurnConfig {
        crate::room::TurnConfig {
            secret: self
                .turn_secrets
                .first()
                .map(|s| s.as_bytes().to_vec())
                .unwrap_or_default(),
            stun_urls: self.stun_urls.clone(),
            turn_urls: self.turn_urls.clone(),
            join_ttl_s: TURN_CREDENTIAL_TTL_S,
        }
    }

    /// After the embedded relay bound its listeners: advertise the bound
    /// ports (they differ from the configuration's when it said port 0).
    pub fn update_turn_urls(&mut self, listen: &[SocketAddr], tls: &[SocketAddr]) -> Result<(), ConfigError> {
        if self.turn_urls_explicit {
            return Ok(());
        }
        if let Some(relay) = &self.relay {
            self.turn_urls = embedded_turn_urls(relay, listen, tls, self.media_ip)?;
            self.stun_urls = stun_urls(&self.turn_urls);
        }
        Ok(())
    }
}

// ---- rtc-server token ----

/// `--ttl`: plain seconds or a number with `s`, `m`, `h` or `d`.
pub fn parse_ttl(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Applies one `--grant` name to `grants`; false for an unknown name.
pub fn apply_grant(grants: &mut Grants, name: &str) -> bool {
    match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "room_join" | "join" => grants.room_join = true,
        "room_create" | "create" => grants.room_create = true,
        "room_list" | "list" => grants.room_list = true,
        "room_admin" | "admin" => grants.room_admin = true,
        "can_publish" | "publish" => grants.can_publish = Some(true),
        "can_subscribe" | "subscribe" => grants.can_subscribe = Some(true),
        "can_publish_data" | "data" => grants.can_publish_data = Some(true),
        "hidden" => grants.hidden = true,
        _ => return false,
    }
    true
}

fn token_args(t: TokenCli, env: &dyn Fn(&str) -> Option<String>) -> Result<TokenArgs, ConfigError> {
    // The configured keys (RTC_API_KEY, else the file's api-key) supply the
    // defaults, so a token for a running server needs no secret retyped.
    let config_path = t
        .config
        .or_else(|| nonempty(env(&env_var("config"))).map(PathBuf::from));
    let file = match config_path {
        Some(p) => {
            let (path, mut table) = read_toml(p, &known_keys())?;
            // Only api-key matters here; other keys are the server's business.
            table.retain(|k, _| k == "api-key");
            Some((path, table))
        }
        None => None,
    };
    let mut l = Layers::new(env, file);
    let (raw, at) = l.list("api-key", Vec::new())?;
    let configured = parse_api_keys(&raw, &at)?;
    let api_key = match t.api_key {
        Some(k) if !k.trim().is_empty() => k.trim().to_string(),
        Some(_) => return Err(ConfigError::Token("--api-key must not be empty".into())),
        None => configured.first().map(|(k, _)| k.clone()).ok_or_else(|| {
            ConfigError::Token(
                "no API key: give --api-key NAME --api-secret SECRET, or set RTC_API_KEY=NAME=SECRET".into(),
            )
        })?,
    };
    let api_secret = match t.api_secret.or_else(|| nonempty(env("RTC_API_SECRET"))) {
        Some(s) if !s.is_empty() => s,
        Some(_) => return Err(ConfigError::Token("--api-secret must not be empty".into())),
        None => configured
            .iter()
            .find(|(k, _)| *k == api_key)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| {
                ConfigError::Token(format!(
                    "no secret for API key {api_key:?}: give --api-secret or set RTC_API_SECRET"
                ))
            })?,
    };
    let mut grants = Grants::default();
    for g in &t.grants {
        if !apply_grant(&mut grants, g) {
            return Err(ConfigError::Token(format!(
                "--grant {g:?} is not a grant; use room_join, room_create, room_list, room_admin, can_publish (publish), \
                 can_subscribe (subscribe), can_publish_data (data), hidden or admin"
            )));
        }
    }
    if t.grants.is_empty() {
        grants.room_join = true;
    }
    // Naming some participant grants means exactly those: the others are
    // off (not the full-participant default), and the token joins its room,
    // so `--grant subscribe` mints a watch-only token.
    if grants.can_publish.is_some() || grants.can_subscribe.is_some() || grants.can_publish_data.is_some() {
        grants.room_join = true;
        grants.can_publish.get_or_insert(false);
        grants.can_subscribe.get_or_insert(false);
        grants.can_publish_data.get_or_insert(false);
    }
    grants.room = t.room.filter(|r| !r.trim().is_empty());
    let identity = t.identity.unwrap_or_default();
    if grants.room_join && (grants.room.is_none() || identity.trim().is_empty()) {
        return Err(ConfigError::Token(
            "a token that joins a room needs --room and --identity".into(),
        ));
    }
    let ttl = match t.ttl {
        Some(v) => parse_ttl(&v).ok_or_else(|| {
            ConfigError::Token(format!(
                "--ttl {v:?}: expected seconds or a number with s, m, h or d, e.g. 30s, 10m, 1h, 2d"
            ))
        })?,
        None => DEFAULT_TOKEN_TTL,
    };
    Ok(TokenArgs {
        api_key,
        api_secret,
        request: TokenRequest {
            identity,
            name: t.name,
            metadata: t.metadata,
            ttl,
            grants,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn load_env(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let argv = std::iter::once("rtc-server")
            .chain(args.iter().copied())
            .map(OsString::from);
        load_from(argv, &|k| env.get(k).cloned())
    }

    fn serve_env(args: &[&str], env: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        match load_env(args, env)? {
            Invocation::Serve(c) => Ok(c),
            Invocation::Token(_) => panic!("expected serve"),
        }
    }

    fn serve(args: &[&str]) -> Result<ServerConfig, ConfigError> {
        serve_env(args, &[])
    }

    fn token(args: &[&str], env: &[(&str, &str)]) -> Result<TokenArgs, ConfigError> {
        let mut a = vec!["token"];
        a.extend_from_slice(args);
        match load_env(&a, env)? {
            Invocation::Token(t) => Ok(t),
            Invocation::Serve(_) => panic!("expected token"),
        }
    }

    struct TempFile(PathBuf);
    impl TempFile {
        fn new(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!("rtc-server-test-{}.toml", rand::random::<u64>()));
            std::fs::File::create(&path)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            TempFile(path)
        }
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn defaults_are_a_loopback_dev_server() {
        let c = serve(&[]).unwrap();
        assert_eq!(c.http_listen, DEFAULT_HTTP_LISTEN);
        assert!(c.dev_mode);
        assert_eq!(c.primary_key.0, DEV_KEY_NAME);
        assert!(c.primary_key.1.len() >= MIN_SECRET_LEN);
        assert_eq!(c.api_keys.secret(DEV_KEY_NAME), Some(c.primary_key.1.as_str()));
        let relay = c.relay.as_ref().expect("embedded relay on by default");
        assert_eq!(relay.listen, vec![DEFAULT_TURN_LISTEN]);
        assert!(relay.server.peer_filter.allow_loopback && c.dev_loopback_peers);
        assert_eq!(c.turn_secrets.len(), 1, "a generated TURN secret");
        assert_eq!(relay.server.auth.secrets, vec![c.turn_secrets[0].as_bytes().to_vec()]);
        assert_eq!(
            c.turn_urls,
            vec!["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"]
        );
        assert_eq!(c.stun_urls, vec!["stun:127.0.0.1:3478"]);
        assert_eq!((c.media_port, c.media_ip), (DEFAULT_MEDIA_PORT, None));
        assert!(c.webhook_urls.is_empty());
        // Two runs never share a generated secret.
        assert_ne!(serve(&[]).unwrap().primary_key.1, c.primary_key.1);
        let tc = c.turn_config();
        assert_eq!(tc.secret, c.turn_secrets[0].as_bytes());
        assert_eq!(tc.turn_urls, c.turn_urls);
    }

    #[test]
    fn configured_keys_leave_dev_mode_and_keep_secure_peers() {
        let key = format!("main={SECRET}");
        let c = serve(&["--api-key", &key, "--api-key", &format!("old={SECRET}x")]).unwrap();
        assert!(!c.dev_mode);
        assert_eq!(c.primary_key, ("main".to_string(), SECRET.to_string()));
        assert_eq!(c.api_keys.names(), vec!["main", "old"]);
        assert!(!c.relay.unwrap().server.peer_filter.allow_loopback);
        // Dev mode on a public relay address does not open loopback either.
        let c = serve(&["--turn-listen=0.0.0.0:3478", "--turn-external-ip=198.51.100.7"]).unwrap();
        assert!(c.dev_mode && !c.dev_loopback_peers);
        assert!(!c.relay.unwrap().server.peer_filter.allow_loopback);
        // Explicitly asked for, it is honoured.
        let c = serve(&["--api-key", &key, "--turn-allow-loopback-peers"]).unwrap();
        assert!(c.relay.unwrap().server.peer_filter.allow_loopback);
    }

    #[test]
    fn api_key_errors() {
        for bad in ["main", "=x", "main=", " = "] {
            let e = serve(&["--api-key", bad]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::BadApiKey { at } if at.flag == "api-key"),
                "{bad}: {e}"
            );
        }
        let e = serve(&["--api-key", "main=tiny-pw"]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::WeakApiSecret { name, .. } if name == "main"),
            "{e}"
        );
        assert!(!e.to_string().contains("tiny-pw"), "secrets stay out of messages: {e}");
        let key = format!("a={SECRET}");
        let e = serve(&["--api-key", &key, "--api-key", &key]).unwrap_err();
        assert!(matches!(e, ConfigError::DuplicateApiKey { .. }), "{e}");
    }

    #[test]
    fn public_http_needs_keys_or_dev() {
        let e = serve(&["--http-listen", "0.0.0.0:8080"]).unwrap_err();
        assert!(matches!(e, ConfigError::KeysRequired { .. }), "{e}");
        assert!(e.to_string().contains("--api-key"), "{e}");
        let c = serve(&["--http-listen", "0.0.0.0:8080", "--dev", "--media-ip", "192.0.2.10"]).unwrap();
        assert!(c.dev_mode);
        let key = format!("k={SECRET}");
        // The SFU shares the HTTP host: a wildcard needs the address to advertise.
        let e = serve(&["--http-listen", "[::]:8080", "--api-key", &key]).unwrap_err();
        assert!(matches!(e, ConfigError::NoMediaIp { .. }), "{e}");
        let c = serve(&[
            "--http-listen",
            "[::]:8080",
            "--api-key",
            &key,
            "--media-ip",
            "2001:db8::1",
        ])
        .unwrap();
        assert_eq!(c.http_listen, "[::]:8080".parse().unwrap());
        let e = serve(&["--http-listen", "localhost:8080"]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { at, .. } if at.flag == "http-listen"),
            "{e}"
        );
    }

    #[test]
    fn env_and_file_layers() {
        let f = TempFile::new(&format!(
            "http_listen = \"127.0.0.1:9000\"\napi-key = [\"file={SECRET}\"]\nturn-user-quota = 5\nwebhook-url = \"http://127.0.0.1:1/hook\"\n"
        ));
        let c = serve(&["--config", f.path()]).unwrap();
        assert_eq!(c.http_listen.port(), 9000);
        assert_eq!(c.primary_key.0, "file");
        assert_eq!(c.relay.as_ref().unwrap().server.quota.per_user, 5);
        assert_eq!(c.webhook_urls, vec!["http://127.0.0.1:1/hook"]);
        // The environment beats the file, the flag beats both.
        let env_key = format!("env={SECRET},env2={SECRET}");
        let env = [
            ("RTC_CONFIG", f.path()),
            ("RTC_HTTP_LISTEN", "127.0.0.1:9001"),
            ("RTC_API_KEY", env_key.as_str()),
            ("RTC_TURN_USER_QUOTA", "7"),
            ("RTC_LOG_FORMAT", "json"),
        ];
        let c = serve_env(&[], &env).unwrap();
        assert_eq!(c.http_listen.port(), 9001);
        assert_eq!(c.api_keys.names(), vec!["env", "env2"]);
        assert_eq!(c.relay.as_ref().unwrap().server.quota.per_user, 7);
        assert_eq!(c.log_format, LogFormat::Json);
        let c = serve_env(&["--http-listen=127.0.0.1:9002", "--turn-user-quota=9"], &env).unwrap();
        assert_eq!(c.http_listen.port(), 9002);
        assert_eq!(c.relay.unwrap().server.quota.per_user, 9);
        // RTC_RELAY_* is another program's and does not leak in.
        let c = serve_env(&[], &[("RTC_RELAY_USER_QUOTA", "3")]).unwrap();
        assert_eq!(c.relay.unwrap().server.quota.per_user, 0);
    }

    #[test]
    fn file_errors() {
        let f = TempFile::new("http-lisen = \"x\"\n");
        assert!(
            matches!(serve(&["--config", f.path()]), Err(ConfigError::Layer(LayerError::UnknownKey { key, .. })) if key == "http-lisen")
        );
        let f = TempFile::new("media-port = 1.5\n");
        let e = serve(&["--config", f.path()]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Layer(LayerError::WrongType { at, .. }) if at.flag == "media-port"),
            "{e}"
        );
        assert!(e.to_string().contains(f.path()), "{e}");
        let f = TempFile::new("no-turn = \"yes\"\n");
        assert!(matches!(
            serve(&["--config", f.path()]),
            Err(ConfigError::Layer(LayerError::WrongType { .. }))
        ));
        assert!(matches!(
            serve(&["--config", "/nonexistent/x.toml"]),
            Err(ConfigError::Layer(LayerError::ReadFile { .. }))
        ));
        let f = TempFile::new("[section]\n");
        assert!(matches!(
            serve(&["--config", f.path()]),
            Err(ConfigError::Layer(LayerError::UnknownKey { .. }))
        ));
    }

    #[test]
    fn relay_flags_are_validated_by_the_relay() {
        let e = serve(&["--turn-user-quota=lots"]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::Turn(_)));
        assert!(msg.starts_with("--turn-user-quota: "), "{msg}");
        let e = serve(&["--turn-listen=nope"]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { at, .. } if at.flag == "turn-listen"),
            "{e}"
        );
        let msg = serve(&["--turn-deny-peer=10.0.0.0/33"]).unwrap_err().to_string();
        assert!(msg.starts_with("--turn-deny-peer: "), "{msg}");
        let msg = serve(&["--turn-tls-listen=127.0.0.1:5349"]).unwrap_err().to_string();
        assert_eq!(msg, "--turn-tls-listen needs both --turn-tls-cert and --turn-tls-key");
        let msg = serve_env(&[], &[("RTC_TURN_RELAY_PORTS", "9-1")])
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("--turn-relay-ports: "), "{msg}");
        assert!(
            msg.ends_with("(set by RTC_TURN_RELAY_PORTS (--turn-relay-ports))"),
            "{msg}"
        );
        let e = serve(&["--turn-secret="]).unwrap_err();
        assert!(matches!(e, ConfigError::EmptySecret { .. }), "{e}");
        // Values starting with '-' are values, not flags.
        let c = serve(&["--turn-software=-x-"]).unwrap();
        assert_eq!(c.relay.unwrap().server.software.as_deref(), Some("-x-"));
        let c = serve(&[
            "--turn-relay-ports=50000-50100",
            "--turn-shards=1",
            "--turn-secret=s1",
            "--turn-secret=s2",
        ])
        .unwrap();
        assert_eq!(c.turn_secrets, vec!["s1", "s2"]);
        let r = c.relay.unwrap();
        assert_eq!((r.server.port_min, r.server.port_max, r.shards), (50000, 50100, 1));
        assert_eq!(r.server.auth.secrets.len(), 2);
        assert!(r.generated_secret.is_none());
    }

    #[test]
    fn turn_urls() {
        let c = serve(&["--turn-listen=127.0.0.1:3479", "--turn-listen=[::1]:3479"]).unwrap();
        assert_eq!(
            c.turn_urls,
            vec![
                "turn:127.0.0.1:3479?transport=udp",
                "turn:127.0.0.1:3479?transport=tcp",
                "turn:[::1]:3479?transport=udp",
                "turn:[::1]:3479?transport=tcp",
            ]
        );
        assert_eq!(c.stun_urls, vec!["stun:127.0.0.1:3479", "stun:[::1]:3479"]);
        let e = serve(&["--turn-listen=0.0.0.0:3478"]).unwrap_err();
        assert!(matches!(e, ConfigError::NoAdvertisedHost { .. }), "{e}");
        let c = serve(&["--turn-listen=0.0.0.0:3478", "--media-ip=192.0.2.10"]).unwrap();
        assert_eq!(c.turn_urls[0], "turn:192.0.2.10:3478?transport=udp");
        let c = serve(&[
            "--turn-url=turn:turn.example.com:3478?transport=udp",
            "--turn-url=turns:turn.example.com:5349?transport=tcp",
        ])
        .unwrap();
        assert!(c.turn_urls_explicit);
        assert_eq!(c.stun_urls, vec!["stun:turn.example.com:3478"]);
        for bad in [
            "http://x",
            "turn:",
            "turn:host:99999",
            "turn:host?transport=sctp",
            "turn:[::1",
        ] {
            let e = serve(&["--turn-url", bad]).unwrap_err();
            assert!(matches!(e, ConfigError::BadTurnUrl { .. }), "{bad}: {e}");
        }
        // Port 0: the binary re-advertises the ports actually bound.
        let mut c = serve(&["--turn-listen=127.0.0.1:0"]).unwrap();
        c.update_turn_urls(&["127.0.0.1:40000".parse().unwrap()], &[]).unwrap();
        assert_eq!(c.turn_urls[0], "turn:127.0.0.1:40000?transport=udp");
        assert_eq!(c.stun_urls, vec!["stun:127.0.0.1:40000"]);
    }

    #[test]
    fn no_turn() {
        let c = serve(&["--no-turn"]).unwrap();
        assert!(c.relay.is_none() && c.turn_urls.is_empty() && c.turn_secrets.is_empty());
        assert_eq!(c.turn_config().ice_servers("a", 60, 0), vec![]);
        let e = serve(&["--no-turn", "--turn-user-quota=3"]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::NoTurnConflict { at } if at.flag == "turn-user-quota"),
            "{e}"
        );
        let e = serve(&["--no-turn", "--turn-listen=127.0.0.1:1"]).unwrap_err();
        assert!(matches!(e, ConfigError::NoTurnConflict { .. }), "{e}");
        let e = serve(&["--no-turn", "--turn-url=turn:t.example.com:3478"]).unwrap_err();
        assert!(matches!(e, ConfigError::TurnUrlWithoutSecret), "{e}");
        let c = serve(&["--no-turn", "--turn-url=turn:t.example.com:3478", "--turn-secret=s"]).unwrap();
        assert_eq!(c.turn_config().ice_servers("a", 60, 0).len(), 2);
        let c = serve_env(&[], &[("RTC_NO_TURN", "true")]).unwrap();
        assert!(c.relay.is_none());
    }

    #[test]
    fn media_and_webhooks() {
        let c = serve(&["--media-port=50000", "--media-ip=203.0.113.5"]).unwrap();
        assert_eq!(
            (c.media_port, c.media_ip),
            (50000, Some("203.0.113.5".parse().unwrap()))
        );
        assert_eq!(serve(&["--media-port=0"]).unwrap().media_port, 0);
        // ICE-TCP follows the UDP port number unless told otherwise.
        assert_eq!(c.media_tcp_port, Some(50000));
        assert_eq!(serve(&[]).unwrap().media_tcp_port, Some(DEFAULT_MEDIA_PORT));
        let c = serve(&["--media-port=50000", "--media-tcp-port=443"]).unwrap();
        assert_eq!((c.media_port, c.media_tcp_port), (50000, Some(443)));
        assert_eq!(serve(&["--media-tcp-port=off"]).unwrap().media_tcp_port, None);
        assert_eq!(serve(&[]).unwrap().media_tcp_max_connections, 4096);
        assert_eq!(
            serve(&["--media-tcp-max-connections=10"])
                .unwrap()
                .media_tcp_max_connections,
            10
        );
        assert!(serve(&["--media-tcp-max-connections=0"]).is_err());
        for (f, v) in [
            ("media-port", "70000"),
            ("media-tcp-port", "70000"),
            ("media-tcp-port", "no"),
            ("media-ip", "0.0.0.0"),
            ("media-ip", "host"),
        ] {
            let e = serve(&[&format!("--{f}={v}")]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { at, .. } if at.flag == f),
                "{f}={v}: {e}"
            );
        }
        let e = serve(&["--webhook-url=ftp://x/"]).unwrap_err();
        assert!(matches!(e, ConfigError::BadWebhookUrl { .. }), "{e}");
    }

    #[test]
    fn help_and_unknown_flags() {
        let e = load_env(&["--help"], &[]).unwrap_err();
        assert!(matches!(&e, ConfigError::Clap(c) if c.kind() == clap::error::ErrorKind::DisplayHelp));
        let help = e.to_string();
        assert!(help.contains("--turn-allow-peer") && help.contains("RTC_"), "{help}");
        let e = load_env(&["--turn-listen-typo=1"], &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Clap(_)));
    }

    #[test]
    fn ttl_values() {
        for (v, s) in [
            ("30s", 30),
            ("10m", 600),
            ("1h", 3600),
            ("2d", 172_800),
            ("45", 45),
            (" 5m ", 300),
        ] {
            assert_eq!(parse_ttl(v), Some(Duration::from_secs(s)), "{v}");
        }
        for v in ["", "0", "h", "1w", "-1", "1.5h", "1 h", "99999999999999999999d"] {
            assert_eq!(parse_ttl(v), None, "{v}");
        }
    }

    #[test]
    fn token_subcommand() {
        let t = token(
            &[
                "--api-key=k",
                "--api-secret=s",
                "--room=r",
                "--identity=alice",
                "--name=Alice",
                "--ttl=10m",
            ],
            &[],
        )
        .unwrap();
        assert_eq!((t.api_key.as_str(), t.api_secret.as_str()), ("k", "s"));
        assert_eq!(t.request.identity, "alice");
        assert_eq!(t.request.name, "Alice");
        assert_eq!(t.request.ttl, Duration::from_secs(600));
        assert_eq!(t.request.grants.room.as_deref(), Some("r"));
        let p = t.request.grants.permissions();
        assert!(t.request.grants.room_join && p.can_publish && p.can_subscribe && p.can_publish_data);

        let t = token(
            &[
                "--room=r",
                "--identity=v",
                "--grant=room_join",
                "--grant=subscribe",
                "--grant",
                "hidden",
            ],
            &[("RTC_API_KEY", &format!("main={SECRET},other={SECRET}"))],
        )
        .unwrap();
        assert_eq!((t.api_key.as_str(), t.api_secret.as_str()), ("main", SECRET));
        assert_eq!(t.request.ttl, DEFAULT_TOKEN_TTL);
        let p = t.request.grants.permissions();
        assert!(
            p.can_subscribe && !p.can_publish && !p.can_publish_data && p.hidden,
            "naming subscribe means a watch-only token"
        );

        // The issue's example: publish and subscribe, joining the room, no data.
        let t = token(
            &[
                "--room=r",
                "--identity=i",
                "--grant",
                "publish",
                "--grant",
                "subscribe",
                "--ttl",
                "1h",
            ],
            &[("RTC_API_KEY", &format!("main={SECRET}"))],
        )
        .unwrap();
        let p = t.request.grants.permissions();
        assert!(t.request.grants.room_join && p.can_publish && p.can_subscribe && !p.can_publish_data);

        let t = token(
            &["--grant=admin", "--grant=room_list", "--api-key=k", "--api-secret=s"],
            &[],
        )
        .unwrap();
        assert!(t.request.grants.room_admin && t.request.grants.room_list && !t.request.grants.room_join);

        // The secret of a named configured key, from the config file.
        let f = TempFile::new(&format!(
            "api-key = [\"a={SECRET}\", \"b={SECRET}b\"]\nhttp-listen = \"127.0.0.1:1\"\n"
        ));
        let t = token(&["--config", f.path(), "--api-key=b", "--room=r", "--identity=i"], &[]).unwrap();
        assert_eq!(t.api_secret, format!("{SECRET}b"));

        for (args, needle) in [
            (vec!["--room=r", "--identity=i"], "no API key"),
            (vec!["--api-key=k", "--room=r", "--identity=i"], "no secret for API key"),
            (
                vec!["--api-key=k", "--api-secret=s", "--identity=i"],
                "--room and --identity",
            ),
            (
                vec!["--api-key=k", "--api-secret=s", "--room=r"],
                "--room and --identity",
            ),
            (
                vec![
                    "--api-key=k",
                    "--api-secret=s",
                    "--room=r",
                    "--identity=i",
                    "--grant=sudo",
                ],
                "--grant \"sudo\"",
            ),
            (
                vec![
                    "--api-key=k",
                    "--api-secret=s",
                    "--room=r",
                    "--identity=i",
                    "--ttl=forever",
                ],
                "--ttl",
            ),
        ] {
            let e = token(&args, &[]).unwrap_err();
            assert!(
                matches!(e, ConfigError::Token(_)) && e.to_string().contains(needle),
                "{args:?}: {e}"
            );
        }
        // Minted and verified with the same keys.
        let t = token(
            &["--api-key=k", "--api-secret", SECRET, "--room=r", "--identity=i"],
            &[],
        )
        .unwrap();
        let jwt = crate::auth::mint(&t.api_key, &t.api_secret, &t.request, 1000).unwrap();
        let keys = ApiKeys::new(HashMap::from([("k".to_string(), SECRET.to_string())]));
        assert_eq!(keys.verify(&jwt, 1000).unwrap().sub, "i");
    }

    #[test]
    fn grant_names() {
        let mut g = Grants::default();
        for name in [
            "room_join",
            "room_create",
            "room_list",
            "room_admin",
            "can_publish",
            "can_subscribe",
            "can_publish_data",
            "hidden",
        ] {
            assert!(apply_grant(&mut g, name), "{name}");
        }
        assert!(g.room_join && g.room_create && g.room_list && g.room_admin && g.hidden);
        assert_eq!(
            (g.can_publish, g.can_subscribe, g.can_publish_data),
            (Some(true), Some(true), Some(true))
        );
        let mut g = Grants::default();
        for name in ["publish", "subscribe", "data", "admin", "Room-Join"] {
            assert!(apply_grant(&mut g, name), "{name}");
        }
        assert!(g.room_admin && g.room_join && g.can_publish_data == Some(true));
        assert!(!apply_grant(&mut g, "everything"));
    }
}
