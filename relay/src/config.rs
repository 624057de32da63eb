//! Command line, environment and TOML configuration of `rtc-relay`.
//!
//! Precedence: command-line flag, then environment variable
//! `RTC_RELAY_<FLAG>`, then the `--config` TOML file, then the default.
//! Everything is validated here, once, into a [`RelayConfig`] the rest of the
//! program trusts.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
}
