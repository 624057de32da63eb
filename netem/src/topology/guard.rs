//! Teardown that happens however a run ends.

use std::sync::Mutex;

use super::naming::{creator_pid, PREFIX};
use super::netns;

/// Owns the namespaces of one topology and deletes them on drop: normal
/// return, `?` error, panic unwinding, or the main loop stopping on
/// SIGINT/SIGTERM (see [`super::signals`]). TUN devices need no separate
/// cleanup: they die with their namespace or when the router closes their
/// fds. Only a SIGKILL leaves leftovers, which `netem down` removes.
#[derive(Debug, Default)]
pub struct Guard {
    // A Mutex so `track` can be called through a shared reference while the
    // topology is being built.
    netns: Mutex<Vec<String>>,
}

impl Guard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a namespace *before* creating it, so a failure halfway
    /// through creation is still cleaned up.
    pub fn track(&self, name: &str) {
        self.netns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
    }

    /// Deletes everything now (idempotent); errors are reported, not fatal,
    /// so one stuck namespace does not keep the others alive.
    pub fn teardown(&self) {
        let names = std::mem::take(&mut *self.netns.lock().unwrap_or_else(|p| p.into_inner()));
        for name in names.iter().rev() {
            if !std::path::Path::new(netns::NETNS_DIR).join(name).exists() {
                continue;
            }
            if let Err(e) = netns::delete(name) {
                eprintln!("netem: teardown of {name} failed: {e}");
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// What `netem down` did.
#[derive(Debug, Default)]
pub struct Sweep {
    pub removed: Vec<String>,
    /// Namespaces of runs whose creator is still alive (kept unless `all`).
    pub kept_live: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// Removes rig namespaces left by runs that died without teardown (or all
/// of them with `all`). Processes still inside a removed namespace were
/// started by the rig (scenario clients), so they are sent SIGTERM: left
/// alone they would keep running in a network with no links.
pub fn sweep(all: bool) -> Result<Sweep, super::TopologyError> {
    let mut sweep = Sweep::default();
    for name in netns::list()?.into_iter().filter(|n| n.starts_with(PREFIX)) {
        let alive = creator_pid(&name).is_some_and(process_alive);
        if alive && !all {
            sweep.kept_live.push(name);
            continue;
        }
        for pid in netns::pids(&name) {
            // SAFETY: kill(2) on a pid read from the kernel's view of this namespace.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        match netns::delete(&name) {
            Ok(()) => sweep.removed.push(name),
            Err(e) => sweep.failed.push((name, e.to_string())),
        }
    }
    Ok(sweep)
}

/// A killed run can linger as a zombie until its parent reaps it; that
/// counts as dead. The state is the field after the parenthesised command.
fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}
