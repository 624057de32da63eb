//! Namespaces and TUN devices come and go with the topology, and only
//! inside the rig.

mod common;

use std::path::Path;
use std::process::Command;

use netem::topology::{netns, Topology, TUN_NAME};

fn ns_exists(name: &str) -> bool {
    Path::new(netns::NETNS_DIR).join(name).exists()
}

fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn build_configures_each_namespace_and_drop_removes_it() {
    if !common::rig_available("build_configures_each_namespace_and_drop_removes_it") {
        return;
    }
    let host_links_before = Command::new("ip").args(["-o", "link"]).output().expect("ip").stdout;
    let (topo, tuns) = Topology::build(&["server", "c1", "c2"]).expect("topology");
    assert_eq!(tuns.len(), 3);
    let names: Vec<String> = topo.nodes().iter().map(|n| n.netns.clone()).collect();
    for (i, node) in topo.nodes().iter().enumerate() {
        assert!(ns_exists(&node.netns));
        let addrs = ip_in(&node.netns, &["-o", "-4", "addr", "show", "dev", TUN_NAME]);
        assert!(addrs.contains(&format!("10.77.{i}.2/16")), "{addrs}");
        let lo = ip_in(&node.netns, &["-o", "link", "show", "dev", "lo"]);
        assert!(lo.contains("UP"), "{lo}");
    }
    // Nothing of ours appeared among the host's interfaces.
    let host_links_during = Command::new("ip").args(["-o", "link"]).output().expect("ip").stdout;
    assert_eq!(host_links_before, host_links_during);
    drop(tuns);
    drop(topo);
    for ns in names {
        assert!(!ns_exists(&ns), "{ns} left behind");
    }
}

#[test]
fn teardown_happens_on_panic() {
    if !common::rig_available("teardown_happens_on_panic") {
        return;
    }
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let (topo, _tuns) = Topology::build(&["a", "b"]).expect("topology");
        names
            .lock()
            .expect("lock")
            .extend(topo.nodes().iter().map(|n| n.netns.clone()));
        panic!("test failure inside a run");
    });
    assert!(result.is_err());
    let names = names.into_inner().expect("lock");
    assert_eq!(names.len(), 2);
    for ns in names {
        assert!(!ns_exists(&ns), "{ns} left behind after panic");
    }
}

#[test]
fn invalid_and_duplicate_names_are_rejected_before_anything_is_created() {
    assert!(Topology::build(&["Bad Name"]).is_err());
    assert!(Topology::build(&["a", "a"]).is_err());
}
