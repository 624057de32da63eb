//! `rtc-relay`: parse the configuration, set up logging, run the relay (or
//! print TURN REST credentials).
use std::process::ExitCode;

use relay::config::{self, ConfigError, Invocation};

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
            format.init_tracing();
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
