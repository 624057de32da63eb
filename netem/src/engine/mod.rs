//! The sans-IO impairment engine.
//!
//! A [`Link`] is one direction of one link. It never touches a socket or a
//! clock: the caller passes `now` to [`Link::push`] (a packet arrives) and
//! [`Link::poll`] (what is due to leave), and sleeps until
//! [`Link::next_deadline`]. Tests therefore drive minutes of traffic in
//! milliseconds, and a run is a pure function of the parameters, the
//! schedule, the seed and the arrival times.
//!
//! Packet bytes stay with the caller: the link only carries a token (`T`)
//! the caller uses to find them again, e.g. a slot index in a preallocated
//! pool. Modelled on the impairments of Linux `sch_netem` (and the
//! str0m-netem crate), which this rig replaces because the kernel it runs on
//! lacks that qdisc.

mod link;
mod params;
mod rng;
mod schedule;

#[cfg(test)]
mod tests;

pub use link::{DropCause, Link, LinkStats, Released, Verdict};
pub use params::{BlockRule, GilbertElliott, LinkChange, LinkParams, Proto, QueueLimit};
pub use rng::Rng;
pub use schedule::Schedule;
