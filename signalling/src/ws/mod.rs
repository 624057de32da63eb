//! WebSocket signalling: the protocol types and the per-connection session task.
pub mod protocol;
pub mod session;

pub use session::{run_session, SessionLimits};
