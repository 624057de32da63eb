//! The control plane: rooms, participants, permissions, and the signalling
//! that tells the media plane what to do.
//!
//! # Design
//! - [`model`] holds the plain data every part shares (rooms, participants,
//!   tracks, permissions), serialised the same way in the REST API, the
//!   WebSocket protocol, webhooks and the store.
//! - [`auth`] verifies and mints access tokens (JWT, HS256) and turns their
//!   grants into [`model::Permissions`].
//! - [`store`] keeps room and participant records behind the [`store::Store`]
//!   trait (in memory now; Redis when rooms span nodes). Live connections are
//!   node-local and never live in the store.
//! - [`room`] is the room service: the single place where permissions are
//!   enforced and state changes turn into events for sessions, webhooks and
//!   the media plane.
//! - [`api`] (REST, axum) and [`ws`] (WebSocket signalling) are thin shells
//!   over the room service; [`webhooks`] delivers events without ever
//!   blocking it.
//! - [`media`] is the seam to the media plane (the SFU): the room service
//!   calls [`media::MediaPlane`] after its permission checks, and the media
//!   plane reports back through a [`media::MediaEvent`] channel.
//!   [`sfu_media::SfuMedia`] implements it over the in-process SFU;
//!   [`media::NoMedia`] stands in where no media is wanted (tests).
//! - [`state::AppState`] bundles the room service, keys, metrics and limits;
//!   [`api::router`] serves it.
//!
//! The media plane never waits on this crate: commands to it go through
//! channels, and nothing here sits on a packet's path.

pub mod api;
pub mod auth;
pub mod config;
pub mod media;
pub mod metrics;
pub mod model;
pub mod room;
pub mod sfu_media;
pub mod state;
pub mod store;
pub mod webhooks;
pub mod ws;
