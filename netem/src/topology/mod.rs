//! The rig's network: one namespace per node (server, clients), each joined
//! to the router by a TUN device.
//!
//! Node `i` lives in namespace `rtcnm-<pid>-<seq>-<name>` and has address
//! `10.77.i.2/16` on its `tun0`. The /16 gives every namespace a connected
//! route to all the others through its TUN, so there is no routing inside
//! the namespaces and the router side needs no address at all: it forwards
//! by destination address between TUN fds. The 10.77/16 addresses exist only
//! inside these namespaces; the host's interfaces, addresses and routes are
//! never touched and no packet can leave the rig.

mod error;
mod guard;
mod naming;
pub mod netns;
pub mod signals;
mod tun;

use std::net::Ipv4Addr;
use std::path::Path;

pub use error::TopologyError;
pub use guard::{sweep, Guard, Sweep};
pub use naming::{validate_node, RunId, PREFIX};
pub use tun::Tun;

/// Interface name of the TUN device inside every namespace.
pub const TUN_NAME: &str = "tun0";
/// MTU of the TUN devices; the router's pool slots are sized from it.
pub const MTU: usize = 1500;
/// Nodes are numbered into the third octet of 10.77.x.2.
pub const MAX_NODES: usize = 250;

/// Address of node `index` inside the rig.
pub fn node_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, index as u8, 2)
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub addr: Ipv4Addr,
}

/// A built topology. Dropping it deletes the namespaces.
#[derive(Debug)]
pub struct Topology {
    run_id: RunId,
    nodes: Vec<Node>,
    guard: Guard,
}

/// Checks what the rig needs, so callers can skip or fail with a reason
/// instead of half-building a topology.
pub fn preflight() -> Result<(), TopologyError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(TopologyError::Unsupported("not running as root".into()));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(TopologyError::Unsupported("/dev/net/tun is missing".into()));
    }
    match std::process::Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(TopologyError::Unsupported(
            "the `ip` tool (iproute2) is not runnable".into(),
        )),
    }
}

impl Topology {
    /// Creates one namespace and TUN device per name. Returns the TUN fds
    /// separately, in node order, for the router to own.
    pub fn build<S: AsRef<str>>(names: &[S]) -> Result<(Self, Vec<Tun>), TopologyError> {
        if names.len() > MAX_NODES {
            return Err(TopologyError::TooManyNodes {
                max: MAX_NODES,
                asked: names.len(),
            });
        }
        for (i, n) in names.iter().enumerate() {
            validate_node(n.as_ref())?;
            if names[..i].iter().any(|m| m.as_ref() == n.as_ref()) {
                return Err(TopologyError::DuplicateName(n.as_ref().to_string()));
            }
        }
        let run_id = RunId::next();
        let mut topo = Topology {
            run_id,
            nodes: Vec::new(),
            guard: Guard::new(),
        };
        let mut tuns = Vec::with_capacity(names.len());
        // On any error below, `topo` drops and the guard deletes what exists.
        for (i, name) in names.iter().enumerate() {
            let node = Node {
                name: name.as_ref().to_string(),
                netns: topo.run_id.netns(name.as_ref()),
                addr: node_addr(i),
            };
            tuns.push(setup_node(&topo.guard, &node)?);
            topo.nodes.push(node);
        }
        Ok((topo, tuns))
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Tears down now rather than at drop (idempotent).
    pub fn teardown(&self) {
        self.guard.teardown();
    }
}

fn setup_node(guard: &Guard, node: &Node) -> Result<Tun, TopologyError> {
    let ns = node.netns.as_str();
    guard.track(ns);
    netns::add(ns)?;
    netns::ip(&["-n", ns, "link", "set", "dev", "lo", "up"])?;
    let tun = netns::run_in(ns, || {
        let tun = Tun::create(TUN_NAME)?;
        // IPv6 on the TUN would only add router solicitations and MLD
        // reports for the router to discard; the rig routes IPv4. Best
        // effort: this thread's /proc/sys/net is the namespace's, and the
        // host has no tun0 of ours, so a miss cannot change the host.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/disable_ipv6"), "1");
        Ok(tun)
    })?;
    let mtu = MTU.to_string();
    netns::ip(&[
        "-n",
        ns,
        "link",
        "set",
        "dev",
        TUN_NAME,
        "mtu",
        &mtu,
        "txqueuelen",
        "1000",
        "up",
    ])?;
    let addr = format!("{}/16", node.addr);
    netns::ip(&["-n", ns, "addr", "add", &addr, "dev", TUN_NAME])?;
    Ok(tun)
}
