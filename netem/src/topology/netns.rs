//! Network namespaces through the `ip` tool, and entering one from a thread.
//!
//! `ip netns add` gives a namespace a name (a bind mount under
//! /var/run/netns) that outlives our process, which is what lets `netem
//! down` find leftovers. Everything we configure is scoped with `ip -n NS`,
//! so no command here can reach the host's own interfaces.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use super::error::TopologyError;

pub const NETNS_DIR: &str = "/var/run/netns";

/// Runs `ip <args>`, mapping a non-zero exit to an error carrying stderr.
pub fn ip(args: &[&str]) -> Result<(), TopologyError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| TopologyError::io("running the `ip` tool", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(TopologyError::Ip {
        args: args.join(" "),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

pub fn add(name: &str) -> Result<(), TopologyError> {
    ip(&["netns", "add", name])
}

pub fn delete(name: &str) -> Result<(), TopologyError> {
    ip(&["netns", "delete", name])
}

/// Names of all named namespaces on the machine.
pub fn list() -> Result<Vec<String>, TopologyError> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TopologyError::io(format!("listing {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| TopologyError::io(format!("listing {NETNS_DIR}"), e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Pids of processes living in the namespace (`ip netns pids`).
pub fn pids(name: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Moves the *calling thread* into the namespace.
///
/// setns(2) with CLONE_NEWNET is per thread, so call this first thing on a
/// thread dedicated to work inside the namespace (creating a TUN device,
/// a test's sender or receiver sockets); sockets it then opens live in the
/// namespace for their whole life, whichever thread uses them later.
pub fn enter(name: &str) -> Result<(), TopologyError> {
    let path = Path::new(NETNS_DIR).join(name);
    let file = File::open(&path).map_err(|e| TopologyError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: plain syscall on a valid fd we own for the duration of the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(TopologyError::io(
            format!("setns into {name}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Runs `f` on a short-lived thread inside the namespace and returns its
/// result; the calling thread's namespace is untouched.
pub fn run_in<R: Send>(name: &str, f: impl FnOnce() -> Result<R, TopologyError> + Send) -> Result<R, TopologyError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(TopologyError::Unsupported(format!("thread inside {name} panicked"))))
    })
}
