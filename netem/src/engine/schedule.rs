//! Parameter changes over time ("3 Mbit/s, then 500 kbit/s at 10 s, back at
//! 30 s"), as offsets from the moment the link was created.

use std::time::Duration;

use super::params::LinkChange;

/// Changes sorted by offset; equal offsets keep their listed order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    steps: Vec<(Duration, LinkChange)>,
}

impl Schedule {
    pub fn new(mut steps: Vec<(Duration, LinkChange)>) -> Self {
        // Stable: two changes at the same instant apply in file order.
        steps.sort_by_key(|(at, _)| *at);
        Self { steps }
    }

    pub fn push(&mut self, at: Duration, change: LinkChange) {
        let pos = self.steps.partition_point(|(t, _)| *t <= at);
        self.steps.insert(pos, (at, change));
    }

    pub fn steps(&self) -> &[(Duration, LinkChange)] {
        &self.steps
    }

    pub fn get(&self, i: usize) -> Option<&(Duration, LinkChange)> {
        self.steps.get(i)
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}
