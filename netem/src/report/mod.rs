//! What a scenario run leaves behind, in its output directory:
//!
//! - [`timeline`]: `timeline.json`, every node's link counters and
//!   bitrates every 250 ms (browser metrics `null` until browser clients
//!   fill them);
//! - [`plot`]: `timeline.svg`, one panel per client, schedule changes
//!   marked;
//! - [`expect`]: `summary.md`, the scenario's `[[expect]]` entries, passed,
//!   failed or not evaluated.

pub mod expect;
pub mod plot;
pub mod timeline;
