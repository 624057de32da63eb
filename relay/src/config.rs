//! Command line, environment and TOML configuration of `rtc-relay`.
