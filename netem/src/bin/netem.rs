//! CLI, filled in by a later step.
fn main() {}
