//! What a scenario run leaves behind, in its output directory:
//!
//! - [`timeline`]: `timeline.json`, every node's link counters and
//!   bitrates every 250 ms, and the browser clients' getStats() values
//!   ([`browser`] merges them in);
//! - [`plot`]: `timeline.svg`, one panel per client, schedule changes
//!   marked;
//! - [`expect`]: `summary.md`, the scenario's `[[expect]]` entries, passed,
//!   failed or not evaluated ([`browser_expect`] for browser metrics).

pub mod browser;
pub mod browser_expect;
pub mod expect;
pub mod plot;
pub mod plot_browser;
pub mod timeline;
