//! `rtc-relay`: parse the configuration, set up logging, run the relay (or
//! print TURN REST credentials).
use std::process::ExitCode;

use relay::config::{self, ConfigError, Invocation, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat) {
    // RUST_LOG wins; without it, info and above.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let invocation = match config::load() {
        Ok(i) => i,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("rtc-relay: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match invocation {
        Invocation::Credentials(args) => match relay::credentials::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rtc-relay: {e}");
                ExitCode::from(2)
            }
        },
        Invocation::Run(cfg, format) => {
            init_tracing(format);
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                shards = cfg.shards,
                "rtc-relay starting"
            );
            if let Some(secret) = &cfg.generated_secret {
                tracing::warn!("no --auth-secret or --user given: using a random secret for this run only");
                println!("auth secret (this run only): {secret}");
                println!("credentials for a browser: rtc-relay credentials --secret {secret} --user demo --ttl 3600");
            }
            match relay::io::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "rtc-relay failed");
                    eprintln!("rtc-relay: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
