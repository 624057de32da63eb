//! The media plane: a selective forwarding unit.
//!
//! # Design
//! Participants publish tracks; the SFU forwards their RTP to subscribers
//! without decoding it. Each core runs one shard: a loop over its UDP (and
//! ICE-TCP) sockets and its participants' `str0m::Rtc` instances (RTP mode).
//! A packet enters, is demultiplexed by a hash lookup, given to its
//! participant's `Rtc`, and the media that comes out is routed to the
//! subscribers' down-tracks and sent in batches.
//!
//! The forwarding decisions are plain code with time as an input, tested
//! without sockets:
//! - [`downtrack`] rewrites SSRC, sequence numbers and timestamps so layer
//!   switches and pauses look like one continuous stream to the receiver;
//! - [`simulcast`] picks a subscriber's layer and switches on keyframes;
//! - [`allocator`] divides a subscriber's bandwidth estimate across its
//!   down-tracks;
//! - [`cache`] keeps recent packets per track to answer NACKs;
//! - [`speaker`] detects active speakers from audio levels.
pub mod downtrack;
pub mod simulcast;
pub mod allocator;
pub mod cache;
pub mod speaker;
