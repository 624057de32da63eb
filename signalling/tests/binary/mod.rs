//! The real `rtc-server` binary as a child process, for tests that need the
//! whole server (relay and SFU included). Killed when dropped.
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub struct Binary {
    child: Child,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rtc-server` with exactly `args` (no `RTC_*` from the environment
/// running the tests) and returns it with the addresses it printed after each
/// of `prefixes` (e.g. `"listening http "`), in the order asked.
pub fn start(args: &[&str], prefixes: &[&str], wait: Duration) -> (Binary, Vec<SocketAddr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtc-server"))
        .args(args)
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rtc-server");
    let lines = drain(child.stdout.take().expect("piped stdout"));
    let deadline = Instant::now() + wait;
    let mut found: Vec<Option<SocketAddr>> = vec![None; prefixes.len()];
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("rtc-server did not print {prefixes:?}: {e}"));
        for (slot, prefix) in found.iter_mut().zip(prefixes) {
            if let Some(rest) = line.strip_prefix(prefix) {
                *slot = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
    }
    (Binary { child }, found.into_iter().flatten().collect())
}

/// Reads stdout for the server's whole life: closing the pipe early would
/// make its next println fail (and panic the server).
fn drain(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    rx
}
