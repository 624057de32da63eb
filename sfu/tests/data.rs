//! Data channel relay through the router, in virtual time: to the whole
//! room by default, to named participants on request, and only reported
//! when a participant's relay is off.
mod common;

use std::time::Duration;

use common::Net;
use sfu::participant::Role;
use sfu::router::{ParticipantId, SfuEvent};
use str0m::channel::ChannelId;
use str0m::Event;

/// Messages client `c` received on its data channels.
fn received(net: &Net, c: usize) -> Vec<Vec<u8>> {
    net.clients[c]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ChannelData(d) => Some(d.data.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn data_to_the_room_to_named_participants_and_relay_off() {
    let mut net = Net::new();
    let now = net.now;
    let mut ids: Vec<ParticipantId> = Vec::new();
    let mut channels: Vec<ChannelId> = Vec::new();
    for i in 0..3 {
        let pid = net.sfu.create_participant(now, "room", None).unwrap().id;
        let c = net.add_client(&format!("10.0.0.{}:4000", i + 2));
        let mut ch = None;
        net.publish_offer(c, pid, |api| ch = Some(api.add_channel("chat".into())));
        ids.push(pid);
        channels.push(ch.unwrap());
    }
    // Someone in another room with the same label must never hear a word.
    let other = net.sfu.create_participant(now, "other", None).unwrap().id;
    let o = net.add_client("10.0.0.9:4000");
    net.publish_offer(o, other, |api| {
        api.add_channel("chat".into());
    });
    assert!(net.run_until(Duration::from_secs(5), |n| {
        ids.iter().chain([&other]).all(|p| n.connected(*p, Role::Publisher))
    }));
    net.run(Duration::from_millis(500));
    let (alice, bob, carol) = (ids[0], ids[1], ids[2]);

    // Alice writes: the SFU relays to bob and carol.
    net.clients[0]
        .rtc
        .channel(channels[0])
        .unwrap()
        .write(true, b"to all")
        .unwrap();
    net.run(Duration::from_millis(200));
    assert_eq!(received(&net, 1), vec![b"to all".to_vec()]);
    assert_eq!(received(&net, 2), vec![b"to all".to_vec()]);

    // Signalling sends as alice to carol only; a name from another room is
    // ignored.
    let now = net.now;
    net.sfu
        .send_data(now, alice, "chat", true, b"to carol", &[carol, other])
        .unwrap();
    net.run(Duration::from_millis(200));
    assert_eq!(received(&net, 1), vec![b"to all".to_vec()]);
    assert_eq!(received(&net, 2), vec![b"to all".to_vec(), b"to carol".to_vec()]);

    // Relay off: alice's message is only reported, and signalling routes it
    // to bob (the destinations a client names inside its message).
    net.sfu.set_data_relay(alice, false).unwrap();
    net.clients[0]
        .rtc
        .channel(channels[0])
        .unwrap()
        .write(true, b"for bob")
        .unwrap();
    net.run(Duration::from_millis(200));
    assert_eq!(received(&net, 1).len(), 1);
    assert_eq!(received(&net, 2).len(), 2);
    assert!(net.events.iter().any(
        |e| matches!(e, SfuEvent::Data { from, label, data, .. } if *from == alice && label == "chat" && data == b"for bob")
    ));
    let now = net.now;
    net.sfu.send_data(now, alice, "chat", true, b"for bob", &[bob]).unwrap();
    net.run(Duration::from_millis(200));
    assert_eq!(received(&net, 1).last().unwrap(), b"for bob");
    assert_eq!(received(&net, 2).len(), 2);
    assert!(received(&net, 3).is_empty(), "other rooms hear nothing");
    assert!(received(&net, 0).is_empty(), "no echo to the sender");
}
