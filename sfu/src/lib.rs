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
pub mod handle;
pub mod mux;
pub mod participant;
pub mod router;
pub mod shard;

pub use handle::{Sfu, SfuConfig};
pub use router::{ParticipantId, ParticipantInfo, SfuEvent, TrackId};

pub mod downtrack;
pub mod simulcast;
pub mod allocator;
pub mod cache;
pub mod speaker;

/// Errors of the SFU's control operations. The packet path has none: bad
/// input is dropped and counted, never returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid SDP: {0}")]
    Sdp(String),
    #[error("invalid ICE candidate: {0}")]
    Candidate(String),
    #[error("no offer is waiting for an answer")]
    NoPendingOffer,
    #[error("unknown participant or track")]
    Unknown,
    #[error("already exists")]
    Exists,
    #[error("the participant's WebRTC session panicked and was closed")]
    Panicked,
    #[error("the SFU is shut down")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
