//! The media port guard: a second SFU on a port another one holds must
//! refuse to start instead of sharing the port (and its clients) through
//! `SO_REUSEPORT`.
use sfu::{Error, Sfu, SfuConfig};

#[test]
fn a_second_sfu_on_the_same_port_is_refused() {
    let (first, _events) = Sfu::start(SfuConfig {
        shards: 2,
        ..Default::default()
    })
    .unwrap();
    let taken = first.local_addr();
    let second = Sfu::start(SfuConfig {
        listen: taken,
        ..Default::default()
    });
    match second {
        Err(e @ Error::PortInUse { proto: "udp", addr, .. }) => {
            assert_eq!(addr, taken);
            let msg = e.to_string();
            assert!(msg.contains("in use") && msg.contains(&taken.to_string()), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second SFU joined {taken}"),
    }
    // Once the owner is gone the port is free again: the guard refuses only
    // a live owner.
    first.shutdown();
    let (again, _events) = Sfu::start(SfuConfig {
        listen: taken,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(again.local_addr(), taken);
    again.shutdown();
}

#[test]
fn the_ice_tcp_port_is_guarded_too() {
    let (first, _events) = Sfu::start(SfuConfig {
        tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    let taken = first.tcp_addr().unwrap();
    let second = Sfu::start(SfuConfig {
        tcp_listen: Some(taken),
        ..Default::default()
    });
    assert!(
        matches!(&second, Err(Error::PortInUse { proto: "tcp", addr, .. }) if *addr == taken),
        "{:?}",
        second.err()
    );
    first.shutdown();
}
