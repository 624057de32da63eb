//! Command line, environment and TOML configuration of `rtc-relay`.
//!
//! Precedence: command-line flag, then environment variable
//! `RTC_RELAY_<FLAG>`, then the `--config` TOML file, then the default.
//! Everything is validated here, once, into a [`RelayConfig`] the rest of the
//! program trusts.
//!
//! Every flag of the run command has all three spellings: `--auth-secret X`,
//! `RTC_RELAY_AUTH_SECRET=X` and `auth-secret = "X"` (or `auth_secret`) in
//! the TOML file. Repeatable flags take a comma-separated list in the
//! environment and an array (or a single value) in TOML. Clap is only used
//! to collect the raw command line; the layering and all parsing happen here
//! so that every source gets the same checks and the same error messages.
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use thiserror::Error;

pub mod layers;

use self::layers::{nonempty, LayerError};
use crate::credentials::{CredentialsArgs, DEFAULT_TTL_SECS, DEFAULT_URLS};
use crate::turn::auth::AuthConfig;
use crate::turn::peer_filter::{Cidr, CidrError, PeerFilter};
use crate::turn::quota::AllocationQuota;
use crate::turn::ServerConfig;

/// TLS certificate chain and private key, PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The validated configuration of a relay process.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The protocol core's settings.
    pub server: ServerConfig,
    /// UDP and TCP listeners (the same address serves both).
    pub listen: Vec<SocketAddr>,
    /// TLS-over-TCP listeners; non-empty only with `tls`.
    pub tls_listen: Vec<SocketAddr>,
    pub tls: Option<TlsFiles>,
    /// Prometheus listener; `None` = off.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a SIGTERM drain keeps relaying existing allocations.
    pub drain_timeout: Duration,
    /// Number of shards (threads); default: available cores.
    pub shards: usize,
    /// Set when no credentials were configured and a random REST secret was
    /// made for this run; the binary prints it so the relay can be tried.
    pub generated_secret: Option<String>,
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// Installs the process's log subscriber, writing to stderr: `RUST_LOG`
    /// when set, otherwise info and above. Shared by rtc-relay and rtc-server.
    pub fn init_tracing(self) {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

/// What the command line asks the binary to do.
#[derive(Clone, Debug)]
// Built once per process and matched right away; a Box would only make the
// binary's match clumsier.
#[allow(clippy::large_enum_variant)]
pub enum Invocation {
    /// Run the relay with this configuration; set up logging in this format first.
    Run(RelayConfig, LogFormat),
    /// `rtc-relay credentials ...`: print TURN REST credentials with
    /// [`crate::credentials::run`] and exit.
    Credentials(CredentialsArgs),
}

/// Says which environment variables (`RTC_RELAY_*`) feed rtc-relay's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayEnv;

impl layers::EnvPrefix for RelayEnv {
    const PREFIX: &'static str = "RTC_RELAY_";
    const EXAMPLE_KEYS: &'static str = "listen, auth-secret, realm";
}

/// Where a setting came from, so an error points at the line to fix.
pub type Source = layers::Source<RelayEnv>;

/// One flag as given by one source.
pub type Setting = layers::Setting<RelayEnv>;

/// Why the configuration was refused. Each message names the setting to fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Clap's own output: `--help`, `--version` and usage errors. Call `e.exit()`.
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// The config file or a setting's type, as the shared layering found it.
    #[error(transparent)]
    Layer(LayerError<RelayEnv>),
    #[error("{at}: invalid socket address {value:?}, expected IP:PORT such as 0.0.0.0:3478 or [::]:3478")]
    BadAddress { at: Setting, value: String },
    #[error("{at}: invalid IP address {value:?}")]
    BadIp { at: Setting, value: String },
    #[error("{at}: {source}")]
    BadCidr { at: Setting, source: CidrError },
    #[error("{at}: invalid value {value:?}, expected {expected}")]
    Invalid {
        at: Setting,
        value: String,
        expected: &'static str,
    },
    #[error("{at}: unusable port range {value:?}: {reason}")]
    BadPortRange {
        at: Setting,
        value: String,
        reason: &'static str,
    },
    #[error("{at}: {first} and {second} are both IPv{family}; give at most one address per family")]
    DuplicateFamily {
        at: Setting,
        first: IpAddr,
        second: IpAddr,
        family: u8,
    },
    #[error("{at}: {addr} is unspecified; give the specific address to {purpose}")]
    UnspecifiedIp {
        at: Setting,
        addr: IpAddr,
        purpose: &'static str,
    },
    #[error("{at}: {addr} is listed more than once (--listen serves UDP and TCP, --tls-listen TCP)")]
    DuplicateListen { at: Setting, addr: SocketAddr },
    #[error("{at}: expected NAME:PASSWORD with a non-empty name and password")]
    BadUser { at: Setting },
    #[error("{at}: user {name:?} is given twice")]
    DuplicateUser { at: Setting, name: String },
    #[error("{at}: a secret must not be empty")]
    EmptySecret { at: Setting },
    #[error("{at}: the nonce key must be at least 16 bytes; every node of a fleet needs the same one")]
    ShortNonceKey { at: Setting },
    #[error("--tls-listen needs both --tls-cert and --tls-key")]
    TlsIncomplete,
    #[error("--tls-cert and --tls-key are only used with --tls-listen; add --tls-listen ADDR (e.g. 0.0.0.0:5349)")]
    TlsUnused,
    #[error("{at} {path}: {reason}")]
    TlsFile { at: Setting, path: PathBuf, reason: String },
    #[error("--tls-cert and --tls-key do not go together: {0}")]
    TlsMismatch(String),
    #[error("--default-lifetime ({default}s) is longer than --max-lifetime ({max}s)")]
    LifetimeOrder { default: u64, max: u64 },
    #[error(
        "credentials: no secret; give --secret SECRET or set RTC_RELAY_AUTH_SECRET (the relay's first secret is used)"
    )]
    NoSecret,
}

impl From<LayerError<RelayEnv>> for ConfigError {
    fn from(e: LayerError<RelayEnv>) -> Self {
        match e {
            // A bad value reads the same whichever layer gave it.
            LayerError::Invalid { at, value, expected } => ConfigError::Invalid { at, value, expected },
            other => ConfigError::Layer(other),
        }
    }
}

const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3478);
const DEFAULT_PORTS: (u16, u16) = (49152, 65535);
const DEFAULT_REALM: &str = "rtc";
const DEFAULT_NEW_PEERS_PER_SEC: u64 = 100;
const DEFAULT_UNAUTH_RATE: u64 = 20;
const DEFAULT_LIFETIME_SECS: u64 = 600;
const DEFAULT_MAX_LIFETIME_SECS: u64 = 3600;
const DEFAULT_DRAIN_SECS: u64 = 30;
/// RFC 8656 fixes these; they are not worth a flag.
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// Long enough that a client rarely sees 438 mid-call, short enough that a
/// captured nonce is of little use.
const NONCE_LIFETIME: Duration = Duration::from_secs(600);
/// The shard index lives in one byte of RFC 6062 connection IDs.
const MAX_SHARDS: usize = 256;
const NONCE_KEY_LABEL: &[u8] = b"rtc-relay nonce key";

const SOURCES_HELP: &str = "\
Every option can also be set with an environment variable RTC_RELAY_<OPTION> \
(e.g. RTC_RELAY_AUTH_SECRET; repeatable options take a comma-separated list) \
or a key in the --config TOML file (e.g. auth-secret = [\"...\"], realm = \"...\"). \
A flag beats the environment, which beats the file, which beats the default.";

#[derive(Parser, Debug)]
#[command(
    name = "rtc-relay",
    version,
    about = "TURN/STUN relay for WebRTC (RFC 8489, 8656, 6062, 6156)",
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
    /// Print TURN REST credentials for a user as JSON (RTCIceServer shape plus ttl).
    Credentials(CredentialsCli),
}

#[derive(Args, Debug)]
struct CredentialsCli {
    /// Shared secret (the relay's first --auth-secret); default: first of RTC_RELAY_AUTH_SECRET.
    #[arg(long, value_name = "SECRET")]
    secret: Option<String>,
    /// User name to embed in the REST username.
    #[arg(long, value_name = "NAME")]
    user: String,
    /// Seconds until the credential expires.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TTL_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    ttl: u64,
    /// ICE server URL to include (repeatable); default: turn:127.0.0.1:3478 over UDP and TCP.
    #[arg(long = "url", value_name = "URL")]
    urls: Vec<String>,
    /// Separator between expiry and user (the relay's --rest-separator); default ':'
    /// or RTC_RELAY_REST_SEPARATOR.
    #[arg(long, value_name = "CHAR")]
    separator: Option<char>,
}

/// The run command's raw values. Strings, not typed values: the environment
/// and the file provide strings too, and parsing all of them in one place
/// gives one set of error messages.
#[derive(Args, Debug)]
struct RunArgs {
    /// TOML configuration file (keys are the option names below).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP and TCP listener (repeatable) [default: 0.0.0.0:3478].
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// TLS listener (repeatable); needs --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR")]
    tls_listen: Vec<String>,
    /// PEM certificate chain for --tls-listen.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key for --tls-listen.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// Address relay sockets bind to, at most one per family [default: the specific
    /// --listen address of that family, else the address the client reached].
    #[arg(long, value_name = "IP")]
    relay_ip: Vec<String>,
    /// Address advertised in XOR-RELAYED-ADDRESS instead of the bound one (NAT, anycast),
    /// at most one per family.
    #[arg(long, value_name = "IP")]
    external_ip: Vec<String>,
    /// Relay port range [default: 49152-65535].
    #[arg(long, value_name = "LOW-HIGH")]
    relay_ports: Option<String>,
    /// Authentication realm [default: rtc].
    #[arg(long, value_name = "REALM")]
    realm: Option<String>,
    /// TURN REST shared secret (repeatable for rotation: the first signs, all verify).
    #[arg(long, value_name = "SECRET")]
    auth_secret: Vec<String>,
    /// Static long-term user (repeatable).
    #[arg(long, value_name = "NAME:PASSWORD")]
    user: Vec<String>,
    /// Nonce MAC key, identical on every node of a fleet, at least 16 bytes
    /// [default: derived from the first --auth-secret, else random per process].
    #[arg(long, value_name = "KEY")]
    nonce_key: Option<String>,
    /// Separator between expiry and user in REST usernames [default: ':'].
    #[arg(long, value_name = "CHAR")]
    rest_separator: Option<String>,
    /// Peer network to allow even if built-in rules deny it (repeatable).
    #[arg(long, value_name = "CIDR")]
    allow_peer: Vec<String>,
    /// Peer network to deny (repeatable; beats --allow-peer).
    #[arg(long, value_name = "CIDR")]
    deny_peer: Vec<String>,
    /// Allow relaying to loopback peers (tests, single-host setups).
    #[arg(long)]
    allow_loopback_peers: bool,
    /// Allocations per user, 0 = unlimited [default: 0].
    #[arg(long, value_name = "N")]
    user_quota: Option<String>,
    /// Allocations in total, 0 = unlimited [default: 0].
    #[arg(long, value_name = "N")]
    total_quota: Option<String>,
    /// Bits per second per allocation, 0 = unlimited [default: 0].
    #[arg(long, value_name = "N")]
    max_bps: Option<String>,
    /// Packets per second per allocation, 0 = unlimited [default: 0].
    #[arg(long, value_name = "N")]
    max_pps: Option<String>,
    /// New peer permissions per second per allocation, 0 = unlimited [default: 100].
    #[arg(long, value_name = "N")]
    new_peers_per_sec: Option<String>,
    /// 401 answers per second per source IP [default: 20].
    #[arg(long, value_name = "N")]
    unauth_rate: Option<String>,
    /// Allocation lifetime when the client asks for none [default: 600].
    #[arg(long, value_name = "SECS")]
    default_lifetime: Option<String>,
    /// Longest allocation lifetime granted [default: 3600].
    #[arg(long, value_name = "SECS")]
    max_lifetime: Option<String>,
    /// Server advertised with 300 Try Alternate while draining.
    #[arg(long, value_name = "ADDR")]
    alternate_server: Option<String>,
    /// Prometheus listener (/metrics, /healthz) [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Seconds a SIGTERM drain keeps relaying existing allocations [default: 30].
    #[arg(long, value_name = "SECONDS")]
    drain_timeout: Option<String>,
    /// Shards (threads), 1 to 256 [default: available cores].
    #[arg(long, value_name = "N")]
    shards: Option<String>,
    /// SOFTWARE attribute; empty to send none [default: rtc-relay <version>].
    #[arg(long, value_name = "NAME")]
    software: Option<String>,
    /// text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
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
    let cli = Cli::try_parse_from(args)?;
    match cli.command {
        Some(Command::Credentials(c)) => credentials_args(c, env).map(Invocation::Credentials),
        None => {
            let (cfg, log) = build(cli.run, env)?;
            Ok(Invocation::Run(cfg, log))
        }
    }
}

fn env_var(flag: &str) -> String {
    layers::env_var::<RelayEnv>(flag)
}

fn credentials_args(c: CredentialsCli, env: &dyn Fn(&str) -> Option<String>) -> Result<CredentialsArgs, ConfigError> {
    let secret = match c.secret {
        Some(s) => s,
        None => nonempty(env(&env_var("auth-secret")))
            .and_then(|v| v.split(',').map(str::trim).find(|s| !s.is_empty()).map(String::from))
            .ok_or(ConfigError::NoSecret)?,
    };
    if secret.is_empty() {
        return Err(ConfigError::EmptySecret {
            at: Setting {
                flag: "secret",
                source: Source::Flag,
            },
        });
    }
    let separator = match c.separator {
        Some(c) => c,
        None => match nonempty(env(&env_var("rest-separator"))) {
            Some(v) => single_char(
                &v,
                &Setting {
                    flag: "rest-separator",
                    source: Source::Env,
                },
            )?,
            None => ':',
        },
    };
    let urls = if c.urls.is_empty() {
        DEFAULT_URLS.iter().map(|s| s.to_string()).collect()
    } else {
        c.urls
    };
    Ok(CredentialsArgs {
        secret,
        user: c.user,
        ttl: c.ttl,
        urls,
        separator,
    })
}

/// The three non-flag sources, consulted in order for each flag.
type Layers<'a> = layers::Layers<'a, RelayEnv>;

/// rtc-relay's own kinds of value on top of the shared layers.
trait RelayLayers {
    fn addr(&mut self, flag: &'static str, cli: Option<String>) -> Result<Option<SocketAddr>, ConfigError>;
}

impl RelayLayers for Layers<'_> {
    fn addr(&mut self, flag: &'static str, cli: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
        self.scalar(flag, cli)?.map(|(v, at)| parse_addr(&v, &at)).transpose()
    }
}

fn parse_number<T: FromStr>(v: &str, at: Setting) -> Result<T, ConfigError> {
    Ok(layers::parse_number(v, at)?)
}

fn parse_addr(v: &str, at: &Setting) -> Result<SocketAddr, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::BadAddress {
        at: at.clone(),
        value: v.to_string(),
    })
}

fn parse_ip(v: &str, at: &Setting) -> Result<IpAddr, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::BadIp {
        at: at.clone(),
        value: v.to_string(),
    })
}

fn single_char(v: &str, at: &Setting) -> Result<char, ConfigError> {
    let mut chars = v.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(ConfigError::Invalid {
            at: at.clone(),
            value: v.to_string(),
            expected: "exactly one character",
        }),
    }
}

fn parse_port_range(v: &str, at: &Setting) -> Result<(u16, u16), ConfigError> {
    let bad = |reason| ConfigError::BadPortRange {
        at: at.clone(),
        value: v.to_string(),
        reason,
    };
    let (lo, hi) = v
        .trim()
        .split_once('-')
        .ok_or_else(|| bad("expected LOW-HIGH such as 49152-65535"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| bad("LOW is not a port number (1-65535)"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| bad("HIGH is not a port number (1-65535)"))?;
    if lo == 0 {
        return Err(bad("port 0 cannot be relayed from; LOW must be at least 1"));
    }
    if lo > hi {
        return Err(bad("LOW is above HIGH, the range is empty"));
    }
    Ok((lo, hi))
}

/// At most one address per family: the core has one relay (or external) address per family.
fn one_per_family(ips: &[IpAddr], at: &Setting) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ConfigError> {
    let (mut v4, mut v6) = (None::<Ipv4Addr>, None::<Ipv6Addr>);
    for ip in ips {
        match *ip {
            IpAddr::V4(a) => {
                if let Some(first) = v4 {
                    return Err(ConfigError::DuplicateFamily {
                        at: at.clone(),
                        first: first.into(),
                        second: *ip,
                        family: 4,
                    });
                }
                v4 = Some(a);
            }
            IpAddr::V6(a) => {
                if let Some(first) = v6 {
                    return Err(ConfigError::DuplicateFamily {
                        at: at.clone(),
                        first: first.into(),
                        second: *ip,
                        family: 6,
                    });
                }
                v6 = Some(a);
            }
        }
    }
    Ok((v4, v6))
}

fn read_toml(path: PathBuf, known: &HashSet<String>) -> Result<(PathBuf, toml::Table), ConfigError> {
    Ok(layers::read_toml(path, known)?)
}

/// The run command's long flags, which are exactly the accepted TOML keys.
fn known_keys() -> HashSet<String> {
    layers::known_keys(&Cli::command())
}

fn read_pem(at: &Setting, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| tls_file(at, path, format!("cannot read: {e}")))
}

fn tls_file(at: &Setting, path: &Path, reason: String) -> ConfigError {
    ConfigError::TlsFile {
        at: at.clone(),
        path: path.to_path_buf(),
        reason,
    }
}

/// Fails at startup rather than at the first TLS handshake when the files
/// are missing, not PEM, or the key does not belong to the certificate.
fn check_tls(cert: (String, Setting), key: (String, Setting)) -> Result<TlsFiles, ConfigError> {
    let (cert_path, cert_at) = (PathBuf::from(cert.0), cert.1);
    let (key_path, key_at) = (PathBuf::from(key.0), key.1);
    let certs = rustls_pemfile::certs(&mut read_pem(&cert_at, &cert_path)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_file(&cert_at, &cert_path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_file(&cert_at, &cert_path, "no PEM CERTIFICATE block found".into()));
    }
    let key = match rustls_pemfile::private_key(&mut read_pem(&key_at, &key_path)?.as_slice()) {
        Ok(Some(key)) => key,
        Ok(None) => {
            let reason = "no PEM private key block (PKCS#8, PKCS#1 or SEC1) found".into();
            return Err(tls_file(&key_at, &key_path, reason));
        }
        Err(e) => return Err(tls_file(&key_at, &key_path, format!("not a PEM key file: {e}"))),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| ConfigError::TlsMismatch(e.to_string()))?;
    Ok(TlsFiles {
        cert: cert_path,
        key: key_path,
    })
}

fn build(args: RunArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<(RelayConfig, LogFormat), ConfigError> {
    let config_path = args
        .config
        .or_else(|| nonempty(env(&env_var("config"))).map(PathBuf::from));
    let file = config_path.map(|p| read_toml(p, &known_keys())).transpose()?;
    let mut l = Layers::new(env, file);

    // Listeners.
    let (raw, at) = l.list("listen", args.listen)?;
    let mut listen = raw.iter().map(|v| parse_addr(v, &at)).collect::<Result<Vec<_>, _>>()?;
    if listen.is_empty() {
        listen.push(DEFAULT_LISTEN);
    }
    let (raw, tls_at) = l.list("tls-listen", args.tls_listen)?;
    let tls_listen = raw
        .iter()
        .map(|v| parse_addr(v, &tls_at))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    for (addr, at) in listen
        .iter()
        .map(|a| (a, &at))
        .chain(tls_listen.iter().map(|a| (a, &tls_at)))
    {
        if !seen.insert(*addr) {
            return Err(ConfigError::DuplicateListen {
                at: at.clone(),
                addr: *addr,
            });
        }
    }
    let cert = l.scalar("tls-cert", args.tls_cert)?;
    let key = l.scalar("tls-key", args.tls_key)?;
    let tls = match (tls_listen.is_empty(), cert, key) {
        (true, None, None) => None,
        (true, _, _) => return Err(ConfigError::TlsUnused),
        (false, Some(cert), Some(key)) => Some(check_tls(cert, key)?),
        (false, _, _) => return Err(ConfigError::TlsIncomplete),
    };

    // Relay addresses.
    let (raw, ext_at) = l.list("external-ip", args.external_ip)?;
    let external = raw
        .iter()
        .map(|v| parse_ip(v, &ext_at))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(ip) = external.iter().find(|ip| ip.is_unspecified()) {
        return Err(ConfigError::UnspecifiedIp {
            at: ext_at,
            addr: *ip,
            purpose: "advertise",
        });
    }
    let (external_ipv4, external_ipv6) = one_per_family(&external, &ext_at)?;
    let (raw, relay_at) = l.list("relay-ip", args.relay_ip)?;
    let relay = raw
        .iter()
        .map(|v| parse_ip(v, &relay_at))
        .collect::<Result<Vec<_>, _>>()?;
    // Binding the wildcard would advertise 0.0.0.0 to clients, unless an
    // external address is advertised instead.
    if let Some(ip) = relay.iter().find(|ip| {
        ip.is_unspecified()
            && if ip.is_ipv4() {
                external_ipv4.is_none()
            } else {
                external_ipv6.is_none()
            }
    }) {
        return Err(ConfigError::UnspecifiedIp {
            at: relay_at,
            addr: *ip,
            purpose: "relay from (or add --external-ip)",
        });
    }
    let (mut relay_ipv4, mut relay_ipv6) = one_per_family(&relay, &relay_at)?;
    // A specific listener address is the natural relay address of its family;
    // with a wildcard listener the core relays from the address the client reached.
    for addr in listen.iter().chain(&tls_listen).filter(|a| !a.ip().is_unspecified()) {
        match addr.ip() {
            IpAddr::V4(a) if relay_ipv4.is_none() && relay.iter().all(|r| !r.is_ipv4()) => relay_ipv4 = Some(a),
            IpAddr::V6(a) if relay_ipv6.is_none() && relay.iter().all(|r| !r.is_ipv6()) => relay_ipv6 = Some(a),
            _ => {}
        }
    }
    let (port_min, port_max) = match l.scalar("relay-ports", args.relay_ports)? {
        Some((v, at)) => parse_port_range(&v, &at)?,
        None => DEFAULT_PORTS,
    };

    // Authentication.
    let realm = match l.scalar("realm", args.realm)? {
        Some((v, at)) if v.trim().is_empty() => {
            return Err(ConfigError::Invalid {
                at,
                value: v,
                expected: "a non-empty realm",
            })
        }
        Some((v, _)) => v,
        None => DEFAULT_REALM.to_string(),
    };
    let (raw, secret_at) = l.list("auth-secret", args.auth_secret)?;
    if raw.iter().any(|s| s.is_empty()) {
        return Err(ConfigError::EmptySecret { at: secret_at });
    }
    let mut secrets: Vec<Vec<u8>> = raw.into_iter().map(String::into_bytes).collect();
    let (raw, user_at) = l.list("user", args.user)?;
    let mut static_users = HashMap::new();
    for entry in raw {
        let (name, password) = entry
            .split_once(':')
            .ok_or_else(|| ConfigError::BadUser { at: user_at.clone() })?;
        if name.is_empty() || password.is_empty() {
            return Err(ConfigError::BadUser { at: user_at });
        }
        if static_users.insert(name.to_string(), password.to_string()).is_some() {
            return Err(ConfigError::DuplicateUser {
                at: user_at,
                name: name.to_string(),
            });
        }
    }
    // With no credentials at all the relay still starts (the README's first
    // command), with a random secret that only this run's log reveals: usable
    // for trying things out, useless to anyone who cannot read the log.
    let generated_secret = if secrets.is_empty() && static_users.is_empty() {
        let secret: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
        secrets.push(secret.clone().into_bytes());
        Some(secret)
    } else {
        None
    };
    let nonce_key = match l.scalar("nonce-key", args.nonce_key)? {
        Some((v, at)) if v.len() < 16 => return Err(ConfigError::ShortNonceKey { at }),
        Some((v, _)) => v.into_bytes(),
        None => match secrets.first() {
            // Derived, so nodes sharing a secret accept each other's nonces
            // (anycast) without configuring anything more.
            Some(secret) => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
                ring::hmac::sign(&key, NONCE_KEY_LABEL).as_ref().to_vec()
            }
            None => rand::random::<[u8; 32]>().to_vec(),
        },
    };
    let rest_separator = match l.scalar("rest-separator", args.rest_separator)? {
        Some((v, at)) => single_char(&v, &at)?,
        None => ':',
    };

    // Peers.
    let mut cidrs = |flag: &'static str, cli: Vec<String>| -> Result<Vec<Cidr>, ConfigError> {
        let (raw, at) = l.list(flag, cli)?;
        raw.iter()
            .map(|v| Cidr::from_str(v.trim()).map_err(|source| ConfigError::BadCidr { at: at.clone(), source }))
            .collect()
    };
    let allow = cidrs("allow-peer", args.allow_peer)?;
    let deny = cidrs("deny-peer", args.deny_peer)?;
    let allow_loopback = l.switch("allow-loopback-peers", args.allow_loopback_peers)?.is_some();

    // Limits.
    let user_quota: usize = l.number("user-quota", args.user_quota, 0)?;
    let total_quota: usize = l.number("total-quota", args.total_quota, 0)?;
    let max_bps = l.number("max-bps", args.max_bps, 0)?;
    let max_pps = l.number("max-pps", args.max_pps, 0)?;
    let new_peers_per_sec = l.number("new-peers-per-sec", args.new_peers_per_sec, DEFAULT_NEW_PEERS_PER_SEC)?;
    let unauth_per_ip_rate = l.number("unauth-rate", args.unauth_rate, DEFAULT_UNAUTH_RATE)?;
    let lifetime = |l: &mut Layers, flag, cli, default| -> Result<u64, ConfigError> {
        match l.scalar(flag, cli)? {
            Some((v, at)) => match parse_number::<u64>(&v, at.clone())? {
                0 => Err(ConfigError::Invalid {
                    at,
                    value: v,
                    expected: "at least 1 second",
                }),
                n => Ok(n),
            },
            None => Ok(default),
        }
    };
    let default_lifetime = lifetime(&mut l, "default-lifetime", args.default_lifetime, DEFAULT_LIFETIME_SECS)?;
    let max_lifetime = lifetime(&mut l, "max-lifetime", args.max_lifetime, DEFAULT_MAX_LIFETIME_SECS)?;
    if default_lifetime > max_lifetime {
        return Err(ConfigError::LifetimeOrder {
            default: default_lifetime,
            max: max_lifetime,
        });
    }

    // Operations.
    let alternate_server = l.addr("alternate-server", args.alternate_server)?;
    let metrics_listen = l.addr("metrics-listen", args.metrics_listen)?;
    let drain_timeout = Duration::from_secs(l.number("drain-timeout", args.drain_timeout, DEFAULT_DRAIN_SECS)?);
    let shards = match l.scalar("shards", args.shards)? {
        Some((v, at)) => match parse_number::<usize>(&v, at.clone())? {
            n @ 1..=MAX_SHARDS => n,
            _ => {
                return Err(ConfigError::Invalid {
                    at,
                    value: v,
                    expected: "a number of shards from 1 to 256",
                })
            }
        },
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_SHARDS),
    };
    let software = match l.scalar("software", args.software)? {
        Some((v, _)) if v.is_empty() => None,
        Some((v, _)) => Some(v),
        None => Some(format!("rtc-relay {}", env!("CARGO_PKG_VERSION"))),
    };
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

    let server = ServerConfig {
        auth: AuthConfig {
            realm,
            secrets,
            static_users,
            nonce_key,
            nonce_lifetime: NONCE_LIFETIME,
            rest_separator,
        },
        peer_filter: PeerFilter {
            allow,
            deny,
            allow_loopback,
        },
        relay_ipv4,
        relay_ipv6,
        external_ipv4,
        external_ipv6,
        port_min,
        port_max,
        default_lifetime: Duration::from_secs(default_lifetime),
        max_lifetime: Duration::from_secs(max_lifetime),
        permission_lifetime: PERMISSION_LIFETIME,
        channel_lifetime: CHANNEL_LIFETIME,
        max_bps,
        max_pps,
        new_peers_per_sec,
        unauth_per_ip_rate,
        software,
        alternate_server,
        quota: Arc::new(AllocationQuota::new(user_quota, total_quota)),
    };
    let cfg = RelayConfig {
        server,
        listen,
        tls_listen,
        tls,
        metrics_listen,
        drain_timeout,
        shards,
        generated_secret,
    };
    Ok((cfg, log_format))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASegAwIBAgIUKVz3gyEpfFnWS8EKbBM5NGiq2vUwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKcmVsYXkudGVzdDAgFw0yNjExMjIwMTA3MThaGA8yMTI2MTAy
OTAxMDcxOFowFTETMBEGA1UEAwwKcmVsYXkudGVzdDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABOQ7+zpoaUGI4OZHNlISgCh8PeWrHWBC8sMOZgn801U7PwBw/RcX
B8EmF1+233xiC/n/hfS7c3v3f88Z3W/Ep8CjUzBRMB0GA1UdDgQWBBQeSj6r8JU1
DKMbOkpHBv4skydscTAfBgNVHSMEGDAWgBQeSj6r8JU1DKMbOkpHBv4skydscTAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCICBJPpvtbNCfx4AHPe1j
inPsSs9wMcwvk0PZfDiQaoHfAiB3DvTjPdtjqafI7+9IaEUe90v8nm7YJg/Lumd6
O0tAXA==
-----END CERTIFICATE-----
";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgX90iYJIeby8Nme/n
1T/mgVPd4Z3eiCK0GmsmKJJUAVahRANCAATkO/s6aGlBiODmRzZSEoAofD3lqx1g
QvLDDmYJ/NNVOz8AcP0XFwfBJhdftt98Ygv5/4X0u3N793/PGd1vxKfA
-----END PRIVATE KEY-----
";
    /// A valid key that does not belong to CERT.
    const OTHER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgo59Az5XNbGCSR2hU
WGe81/tVQp0oEED/L6DIry7iyiqhRANCAARhr3zBfG/mb2YRNi6+S+VqYEIbeDPQ
NIKoWIgJ3D0biJbjnHlCJxJb1/C/qIip+jjhReZSJes1RsSISIRtLehu
-----END PRIVATE KEY-----
";

    /// A file under the temp dir, unique per call, removed on drop.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(contents: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "rtc-relay-config-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).unwrap();
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

    fn load_with(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let argv = std::iter::once("rtc-relay")
            .chain(args.iter().copied())
            .map(OsString::from);
        load_from(argv, &|k| env.get(k).cloned())
    }

    fn run_env(args: &[&str], env: &[(&str, &str)]) -> Result<(RelayConfig, LogFormat), ConfigError> {
        match load_with(args, env)? {
            Invocation::Run(cfg, log) => Ok((cfg, log)),
            Invocation::Credentials(c) => panic!("expected run, got {c:?}"),
        }
    }

    fn run(args: &[&str]) -> Result<RelayConfig, ConfigError> {
        run_env(args, &[]).map(|(c, _)| c)
    }

    fn err(args: &[&str]) -> ConfigError {
        run(args).expect_err("configuration should be refused")
    }

    fn flag(flag: &'static str) -> Setting {
        Setting {
            flag,
            source: Source::Flag,
        }
    }

    #[test]
    fn defaults() {
        let (c, log) = run_env(&["--auth-secret", "north-secret"], &[]).unwrap();
        assert_eq!(log, LogFormat::Text);
        assert_eq!(c.listen, vec![DEFAULT_LISTEN]);
        assert!(c.tls_listen.is_empty() && c.tls.is_none() && c.metrics_listen.is_none());
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert!((1..=MAX_SHARDS).contains(&c.shards));
        let s = &c.server;
        assert_eq!(s.auth.realm, "rtc");
        assert_eq!(s.auth.secrets, vec![b"north-secret".to_vec()]);
        assert!(s.auth.static_users.is_empty());
        assert_eq!(s.auth.rest_separator, ':');
        assert_eq!(s.auth.nonce_lifetime, NONCE_LIFETIME);
        // HMAC-SHA256(b"north-secret", b"rtc-relay nonce key"), computed with python3's hmac.
        assert_eq!(
            s.auth.nonce_key,
            [
                249, 209, 128, 89, 190, 232, 124, 55, 200, 255, 51, 128, 147, 125, 158, 110, 220, 119, 81, 175, 182,
                39, 188, 160, 101, 19, 110, 218, 197, 152, 116, 216
            ]
        );
        assert!(s.peer_filter.allow.is_empty() && s.peer_filter.deny.is_empty() && !s.peer_filter.allow_loopback);
        assert_eq!(
            (s.relay_ipv4, s.relay_ipv6, s.external_ipv4, s.external_ipv6),
            (None, None, None, None)
        );
        assert_eq!((s.port_min, s.port_max), (49152, 65535));
        assert_eq!(s.default_lifetime, Duration::from_secs(600));
        assert_eq!(s.max_lifetime, Duration::from_secs(3600));
        assert_eq!(s.permission_lifetime, Duration::from_secs(300));
        assert_eq!(s.channel_lifetime, Duration::from_secs(600));
        assert_eq!((s.max_bps, s.max_pps), (0, 0));
        assert_eq!(s.new_peers_per_sec, 100);
        assert_eq!(s.unauth_per_ip_rate, 20);
        assert_eq!(
            s.software.as_deref(),
            Some(concat!("rtc-relay ", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(s.alternate_server, None);
        assert_eq!((s.quota.per_user, s.quota.total), (0, 0));
    }

    #[test]
    fn random_nonce_key_without_secret() {
        let a = run(&["--user", "alice:pw"]).unwrap().server.auth.nonce_key;
        let b = run(&["--user", "alice:pw"]).unwrap().server.auth.nonce_key;
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let c = run(&["--user", "alice:pw", "--nonce-key", "0123456789abcdef"]).unwrap();
        assert_eq!(c.server.auth.nonce_key, b"0123456789abcdef");
    }

    #[test]
    fn every_flag() {
        let cert = TempFile::new(CERT);
        let key = TempFile::new(KEY);
        let (c, log) = run_env(
            &[
                "--listen=192.0.2.10:3478",
                "--listen=[2001:db8::10]:3478",
                "--tls-listen=192.0.2.10:5349",
                "--tls-cert",
                cert.path(),
                "--tls-key",
                key.path(),
                "--relay-ip=2001:db8::20",
                "--external-ip=198.51.100.1",
                "--external-ip=2001:db8::99",
                "--relay-ports=40000-40100",
                "--realm=example.org",
                "--auth-secret=new",
                "--auth-secret=old",
                "--user=alice:a:b",
                "--user=bob:pw",
                "--nonce-key=fleet-wide-nonce-key",
                "--rest-separator=/",
                "--allow-loopback-peers",
                "--user-quota=5",
                "--total-quota=1000",
                "--max-bps=2000000",
                "--max-pps=500",
                "--new-peers-per-sec=7",
                "--unauth-rate=3",
                "--default-lifetime=300",
                "--max-lifetime=1200",
                "--alternate-server=203.0.113.5:3478",
                "--metrics-listen=127.0.0.1:9100",
                "--drain-timeout=5",
                "--shards=3",
                "--software=",
                "--log-format=json",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(log, LogFormat::Json);
        assert_eq!(
            c.listen,
            vec![
                "192.0.2.10:3478".parse().unwrap(),
                "[2001:db8::10]:3478".parse().unwrap()
            ]
        );
        assert_eq!(c.tls_listen, vec!["192.0.2.10:5349".parse().unwrap()]);
        let tls = c.tls.unwrap();
        assert_eq!((tls.cert, tls.key), (cert.0.clone(), key.0.clone()));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.shards, 3);
        let s = c.server;
        // v4 derived from the specific listener, v6 given explicitly.
        assert_eq!(s.relay_ipv4, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(s.relay_ipv6, Some("2001:db8::20".parse().unwrap()));
        assert_eq!(s.external_ipv4, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(s.external_ipv6, Some("2001:db8::99".parse().unwrap()));
        assert_eq!((s.port_min, s.port_max), (40000, 40100));
        assert_eq!(s.auth.realm, "example.org");
        assert_eq!(s.auth.secrets, vec![b"new".to_vec(), b"old".to_vec()]);
        assert_eq!(s.auth.static_users.get("alice").map(String::as_str), Some("a:b"));
        assert_eq!(s.auth.static_users.get("bob").map(String::as_str), Some("pw"));
        assert_eq!(s.auth.nonce_key, b"fleet-wide-nonce-key");
        assert_eq!(s.auth.rest_separator, '/');
        assert!(s.peer_filter.allow_loopback);
        assert_eq!((s.quota.per_user, s.quota.total), (5, 1000));
        assert_eq!(
            (s.max_bps, s.max_pps, s.new_peers_per_sec, s.unauth_per_ip_rate),
            (2_000_000, 500, 7, 3)
        );
        assert_eq!(
            (s.default_lifetime, s.max_lifetime),
            (Duration::from_secs(300), Duration::from_secs(1200))
        );
        assert_eq!(s.alternate_server, Some("203.0.113.5:3478".parse().unwrap()));
        assert_eq!(s.software, None);
    }

    #[test]
    fn flag_beats_env_beats_toml_beats_default() {
        let file = TempFile::new(
            "realm = \"from-file\"\nauth_secret = [\"file-secret\"]\nmax-pps = 11\nlisten = \"127.0.0.1:1000\"\n\
             allow-loopback-peers = true\n",
        );
        let env = [
            ("RTC_RELAY_REALM", "from-env"),
            ("RTC_RELAY_MAX_PPS", "22"),
            ("RTC_RELAY_CONFIG", file.path()),
        ];

        let c = run_env(&["--realm", "from-flag", "--max-pps", "33"], &env).unwrap().0;
        assert_eq!((c.server.auth.realm.as_str(), c.server.max_pps), ("from-flag", 33));
        let c = run_env(&[], &env).unwrap().0;
        assert_eq!((c.server.auth.realm.as_str(), c.server.max_pps), ("from-env", 22));
        let c = run(&["--config", file.path()]).unwrap();
        assert_eq!((c.server.auth.realm.as_str(), c.server.max_pps), ("from-file", 11));
        assert_eq!(c.server.auth.secrets, vec![b"file-secret".to_vec()]);
        assert_eq!(c.listen, vec!["127.0.0.1:1000".parse().unwrap()]);
        assert_eq!(c.server.relay_ipv4, Some(Ipv4Addr::LOCALHOST));
        assert!(c.server.peer_filter.allow_loopback);
        // Untouched by any source: the default.
        assert_eq!(c.server.unauth_per_ip_rate, DEFAULT_UNAUTH_RATE);

        // Lists: a flag replaces the env list, which replaces the file's.
        let c = run_env(&["--auth-secret", "flag"], &[("RTC_RELAY_AUTH_SECRET", "env")])
            .unwrap()
            .0;
        assert_eq!(c.server.auth.secrets, vec![b"flag".to_vec()]);
        let c = run_env(&["--config", file.path()], &[("RTC_RELAY_AUTH_SECRET", "env")])
            .unwrap()
            .0;
        assert_eq!(c.server.auth.secrets, vec![b"env".to_vec()]);
        // An empty variable counts as unset.
        let c = run_env(&["--config", file.path()], &[("RTC_RELAY_REALM", "")])
            .unwrap()
            .0;
        assert_eq!(c.server.auth.realm, "from-file");
        // A flag given on the command line wins over RTC_RELAY_CONFIG too.
        let other = TempFile::new("realm = \"other-file\"\nuser = \"u:p\"\n");
        let c = run_env(&["--config", other.path()], &env[2..]).unwrap().0;
        assert_eq!(c.server.auth.realm, "other-file");
    }

    #[test]
    fn env_lists_and_switches() {
        let env = [
            ("RTC_RELAY_LISTEN", "127.0.0.1:3478, [::1]:3478"),
            ("RTC_RELAY_AUTH_SECRET", "a,b,,c"),
            ("RTC_RELAY_USER", "x:1,y:2"),
            ("RTC_RELAY_ALLOW_LOOPBACK_PEERS", "yes"),
            ("RTC_RELAY_LOG_FORMAT", "json"),
        ];
        let (c, log) = run_env(&[], &env).unwrap();
        assert_eq!(log, LogFormat::Json);
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:3478".parse().unwrap(), "[::1]:3478".parse().unwrap()]
        );
        assert_eq!(c.server.relay_ipv4, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(c.server.relay_ipv6, Some(Ipv6Addr::LOCALHOST));
        assert_eq!(c.server.auth.secrets, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(c.server.auth.static_users.len(), 2);
        assert!(c.server.peer_filter.allow_loopback);

        let e = run_env(&["--user=u:p"], &[("RTC_RELAY_ALLOW_LOOPBACK_PEERS", "maybe")]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { at, .. } if at.source == Source::Env),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("RTC_RELAY_ALLOW_LOOPBACK_PEERS (--allow-loopback-peers)"),
            "{e}"
        );
    }

    #[test]
    fn repeatable_flags_keep_order() {
        let c = run(&[
            "--user=a:1",
            "--listen=[::]:3478",
            "--listen=0.0.0.0:3479",
            "--external-ip=198.51.100.7",
        ])
        .unwrap();
        assert_eq!(
            c.listen,
            vec!["[::]:3478".parse().unwrap(), "0.0.0.0:3479".parse().unwrap()]
        );
        // Wildcard listeners: the core relays from the address the client reached.
        assert_eq!((c.server.relay_ipv4, c.server.relay_ipv6), (None, None));
        assert_eq!(c.server.external_ipv4, Some("198.51.100.7".parse().unwrap()));
    }

    #[test]
    fn toml_file_errors() {
        let f = TempFile::new("listen = [\"0.0.0.0:3478\"]\nlisten-addr = \"x\"\n");
        let e = err(&["--config", f.path()]);
        assert!(
            matches!(&e, ConfigError::Layer(LayerError::UnknownKey { key, .. }) if key == "listen-addr"),
            "{e}"
        );
        let f = TempFile::new("auth-secret = \"a\"\nauth_secret = \"b\"\n");
        assert!(
            matches!(err(&["--config", f.path()]), ConfigError::Layer(LayerError::DuplicateKey { key, .. }) if key == "auth-secret")
        );
        let f = TempFile::new("config = \"other.toml\"\n");
        assert!(matches!(
            err(&["--config", f.path()]),
            ConfigError::Layer(LayerError::UnknownKey { .. })
        ));
        let f = TempFile::new("realm = \n");
        assert!(matches!(
            err(&["--config", f.path()]),
            ConfigError::Layer(LayerError::TomlSyntax { .. })
        ));
        let f = TempFile::new("user = \"u:p\"\nrealm = 1.5\n");
        let e = err(&["--config", f.path()]);
        assert!(
            matches!(&e, ConfigError::Layer(LayerError::WrongType { at, .. }) if at.flag == "realm"),
            "{e}"
        );
        assert!(e.to_string().contains(f.path()), "{e}");
        let f = TempFile::new("user = \"u:p\"\nallow-loopback-peers = \"yes\"\n");
        assert!(matches!(
            err(&["--config", f.path()]),
            ConfigError::Layer(LayerError::WrongType { .. })
        ));
        let e = err(&["--config", "/nonexistent/rtc-relay.toml"]);
        assert!(matches!(e, ConfigError::Layer(LayerError::ReadFile { .. })));
    }

    #[test]
    fn known_keys_are_the_flags() {
        let keys = known_keys();
        for k in [
            "listen",
            "auth-secret",
            "allow-loopback-peers",
            "log-format",
            "relay-ports",
            "tls-key",
        ] {
            assert!(keys.contains(k), "{k}");
        }
        assert!(!keys.contains("config") && !keys.contains("help") && !keys.contains("secret"));
    }

    #[test]
    fn address_errors() {
        let e = err(&["--user=u:p", "--listen=0.0.0.0"]);
        assert!(matches!(&e, ConfigError::BadAddress { at, value } if *at == flag("listen") && value == "0.0.0.0"));
        assert!(e.to_string().starts_with("--listen: "), "{e}");
        for f in ["--tls-listen=x", "--alternate-server=nope", "--metrics-listen=1.2.3.4"] {
            assert!(matches!(err(&["--user=u:p", f]), ConfigError::BadAddress { .. }), "{f}");
        }
        let e = err(&["--user=u:p", "--relay-ip=10.0.0.300"]);
        assert!(
            matches!(&e, ConfigError::BadIp { at, .. } if *at == flag("relay-ip")),
            "{e}"
        );
        let e = err(&["--user=u:p", "--external-ip=host"]);
        assert!(
            matches!(&e, ConfigError::BadIp { at, .. } if *at == flag("external-ip")),
            "{e}"
        );
        let e = run_env(&["--user=u:p"], &[("RTC_RELAY_LISTEN", "1.2.3.4:1,bad")]).unwrap_err();
        assert!(matches!(&e, ConfigError::BadAddress { at, value } if at.source == Source::Env && value == "bad"));
    }

    #[test]
    fn one_address_per_family() {
        let e = err(&["--user=u:p", "--relay-ip=10.0.0.1", "--relay-ip=10.0.0.2"]);
        assert!(
            matches!(&e, ConfigError::DuplicateFamily { at, family: 4, .. } if *at == flag("relay-ip")),
            "{e}"
        );
        let e = err(&["--user=u:p", "--external-ip=2001:db8::1", "--external-ip=2001:db8::2"]);
        assert!(matches!(&e, ConfigError::DuplicateFamily { at, family: 6, .. } if *at == flag("external-ip")));
        // A relay address of the other family than a specific listener is fine.
        let c = run(&["--user=u:p", "--listen=192.0.2.1:3478", "--relay-ip=2001:db8::1"]).unwrap();
        assert_eq!(c.server.relay_ipv4, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(c.server.relay_ipv6, Some("2001:db8::1".parse().unwrap()));
        // An explicit relay address beats the one a listener implies.
        let c = run(&["--user=u:p", "--listen=192.0.2.1:3478", "--relay-ip=192.0.2.2"]).unwrap();
        assert_eq!(c.server.relay_ipv4, Some("192.0.2.2".parse().unwrap()));
        // The wildcard needs an advertised address.
        let e = err(&["--user=u:p", "--relay-ip=0.0.0.0"]);
        assert!(matches!(e, ConfigError::UnspecifiedIp { .. }), "{e}");
        let c = run(&["--user=u:p", "--relay-ip=0.0.0.0", "--external-ip=198.51.100.1"]).unwrap();
        assert_eq!(c.server.relay_ipv4, Some(Ipv4Addr::UNSPECIFIED));
        assert!(matches!(
            err(&["--user=u:p", "--external-ip=::"]),
            ConfigError::UnspecifiedIp { .. }
        ));
        let e = err(&["--user=u:p", "--listen=127.0.0.1:3478", "--listen=127.0.0.1:3478"]);
        assert!(matches!(e, ConfigError::DuplicateListen { .. }), "{e}");
    }

    #[test]
    fn port_ranges() {
        for bad in ["2000-1000", "0-100", "1-70000", "abc", "49152", "x-65535"] {
            let e = err(&["--user=u:p", "--relay-ports", bad]);
            assert!(
                matches!(&e, ConfigError::BadPortRange { at, .. } if *at == flag("relay-ports")),
                "{bad}: {e}"
            );
            assert!(e.to_string().starts_with("--relay-ports: "), "{e}");
        }
        let c = run(&["--user=u:p", "--relay-ports", "1-1"]).unwrap();
        assert_eq!((c.server.port_min, c.server.port_max), (1, 1));
        let c = run(&["--user=u:p", "--relay-ports", " 50000 - 50010 "]).unwrap();
        assert_eq!((c.server.port_min, c.server.port_max), (50000, 50010));
    }

    #[test]
    fn tls_files() {
        let cert = TempFile::new(CERT);
        let key = TempFile::new(KEY);
        let other = TempFile::new(OTHER_KEY);
        let garbage = TempFile::new("not pem at all\n");
        let base = ["--user=u:p", "--tls-listen=0.0.0.0:5349"];
        let with = |c: &str, k: &str| {
            let mut a = base.to_vec();
            a.extend(["--tls-cert", c, "--tls-key", k]);
            run(&a)
        };
        assert!(with(cert.path(), key.path()).is_ok());
        assert!(matches!(run(&base), Err(ConfigError::TlsIncomplete)));
        assert!(matches!(
            run(&[base[0], base[1], "--tls-cert", cert.path()]),
            Err(ConfigError::TlsIncomplete)
        ));
        let e = run(&["--user=u:p", "--tls-cert", cert.path(), "--tls-key", key.path()]).unwrap_err();
        assert!(matches!(e, ConfigError::TlsUnused), "{e}");
        let e = with("/nonexistent/cert.pem", key.path()).unwrap_err();
        assert!(
            matches!(&e, ConfigError::TlsFile { at, .. } if *at == flag("tls-cert")),
            "{e}"
        );
        let e = with(cert.path(), garbage.path()).unwrap_err();
        assert!(
            matches!(&e, ConfigError::TlsFile { at, .. } if *at == flag("tls-key")),
            "{e}"
        );
        let e = with(key.path(), key.path()).unwrap_err();
        assert!(
            matches!(&e, ConfigError::TlsFile { at, .. } if *at == flag("tls-cert")),
            "{e}"
        );
        let e = with(cert.path(), other.path()).unwrap_err();
        assert!(matches!(e, ConfigError::TlsMismatch(_)), "{e}");
    }

    #[test]
    fn no_credentials_means_a_generated_secret() {
        let cfg = run(&[]).unwrap();
        let secret = cfg.generated_secret.clone().expect("generated");
        assert_eq!(secret.len(), 32);
        assert_eq!(cfg.server.auth.secrets, vec![secret.into_bytes()]);
        assert!(run(&["--auth-secret", "x"]).unwrap().generated_secret.is_none());
        assert!(run(&["--user", "a:b"]).unwrap().generated_secret.is_none());
    }

    #[test]
    fn credentials_errors() {
        for bad in ["alice", ":pw", "alice:"] {
            let e = err(&["--user", bad]);
            assert!(
                matches!(&e, ConfigError::BadUser { at } if *at == flag("user")),
                "{bad}"
            );
            assert!(!e.to_string().contains(bad), "passwords stay out of messages: {e}");
        }
        let e = err(&["--user=a:1", "--user=a:2"]);
        assert!(
            matches!(&e, ConfigError::DuplicateUser { name, .. } if name == "a"),
            "{e}"
        );
        assert!(matches!(err(&["--auth-secret="]), ConfigError::EmptySecret { .. }));
        let e = err(&["--auth-secret=s", "--nonce-key=short"]);
        assert!(
            matches!(&e, ConfigError::ShortNonceKey { at } if *at == flag("nonce-key")),
            "{e}"
        );
        let e = err(&["--auth-secret=s", "--rest-separator=::"]);
        assert!(
            matches!(&e, ConfigError::Invalid { at, .. } if *at == flag("rest-separator")),
            "{e}"
        );
        assert!(matches!(
            err(&["--auth-secret=s", "--realm="]),
            ConfigError::Invalid { .. }
        ));
    }

    #[test]
    fn number_errors() {
        for (f, v) in [
            ("user-quota", "-1"),
            ("total-quota", "many"),
            ("max-bps", "1.5"),
            ("max-pps", ""),
            ("new-peers-per-sec", "x"),
            ("unauth-rate", "-3"),
            ("drain-timeout", "30s"),
            ("default-lifetime", "0"),
            ("max-lifetime", "0"),
            ("shards", "0"),
            ("shards", "257"),
            ("log-format", "yaml"),
        ] {
            let arg = format!("--{f}={v}");
            let e = err(&["--user=u:p", &arg]);
            assert!(
                matches!(&e, ConfigError::Invalid { at, .. } if at.flag == f),
                "{arg}: {e}"
            );
            assert!(e.to_string().starts_with(&format!("--{f}: ")), "{e}");
        }
        let e = err(&["--user=u:p", "--default-lifetime=4000"]);
        assert!(
            matches!(
                e,
                ConfigError::LifetimeOrder {
                    default: 4000,
                    max: 3600
                }
            ),
            "{e}"
        );
        assert_eq!(run(&["--user=u:p", "--shards=256"]).unwrap().shards, 256);
    }

    #[test]
    fn clap_errors_pass_through() {
        let e = load_with(&["--help"], &[]).unwrap_err();
        assert!(matches!(&e, ConfigError::Clap(c) if c.kind() == clap::error::ErrorKind::DisplayHelp));
        assert!(
            e.to_string().contains("RTC_RELAY_"),
            "help explains the environment: {e}"
        );
        let e = load_with(&["--version"], &[]).unwrap_err();
        assert!(matches!(&e, ConfigError::Clap(c) if c.kind() == clap::error::ErrorKind::DisplayVersion));
        let e = load_with(&["--no-such-flag"], &[]).unwrap_err();
        assert!(matches!(&e, ConfigError::Clap(c) if c.kind() == clap::error::ErrorKind::UnknownArgument));
        let e = load_with(&["--listen=1.2.3.4:5", "credentials", "--user=u", "--secret=s"], &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Clap(_)));
    }

    #[test]
    fn credentials_subcommand() {
        let Invocation::Credentials(c) = load_with(
            &[
                "credentials",
                "--secret=s",
                "--user=alice",
                "--ttl=60",
                "--url=turn:a:3478",
                "--url=turns:a:5349",
            ],
            &[],
        )
        .unwrap() else {
            panic!("expected credentials")
        };
        assert_eq!(
            c,
            CredentialsArgs {
                secret: "s".into(),
                user: "alice".into(),
                ttl: 60,
                urls: vec!["turn:a:3478".into(), "turns:a:5349".into()],
                separator: ':',
            }
        );
        let env = [
            ("RTC_RELAY_AUTH_SECRET", "first,second"),
            ("RTC_RELAY_REST_SEPARATOR", "/"),
        ];
        let Invocation::Credentials(c) = load_with(&["credentials", "--user=bob"], &env).unwrap() else {
            panic!("expected credentials")
        };
        assert_eq!(
            (c.secret.as_str(), c.separator, c.ttl),
            ("first", '/', DEFAULT_TTL_SECS)
        );
        assert_eq!(c.urls, DEFAULT_URLS.map(String::from).to_vec());
        assert!(matches!(
            load_with(&["credentials", "--user=bob"], &[]),
            Err(ConfigError::NoSecret)
        ));
        assert!(matches!(
            load_with(&["credentials", "--user=b", "--secret=s", "--ttl=0"], &[]),
            Err(ConfigError::Clap(_))
        ));
    }

    // Needs turn::peer_filter's Cidr parser.
    #[test]
    fn peer_cidrs() {
        let c = run(&[
            "--user=u:p",
            "--allow-peer=10.1.0.0/16",
            "--deny-peer=198.51.100.0/24",
            "--deny-peer=fd00::/8",
        ])
        .unwrap();
        assert_eq!(
            c.server.peer_filter.allow,
            vec![Cidr {
                addr: "10.1.0.0".parse().unwrap(),
                prefix: 16
            }]
        );
        assert_eq!(c.server.peer_filter.deny.len(), 2);
        let e = err(&["--user=u:p", "--deny-peer=10.0.0.0/33"]);
        assert!(
            matches!(&e, ConfigError::BadCidr { at, .. } if *at == flag("deny-peer")),
            "{e}"
        );
        let e = run_env(&["--user=u:p"], &[("RTC_RELAY_ALLOW_PEER", "10.0.0.0/8,nonsense")]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::BadCidr { at, .. } if at.flag == "allow-peer"),
            "{e}"
        );
    }
}
