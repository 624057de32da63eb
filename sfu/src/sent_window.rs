//! Which recent output sequence numbers a down-track has already sent.
//!
//! A sliding bitmap over the last [`SENT_WINDOW`] extended numbers below the
//! highest one sent, the way SRTP replay protection keeps its window: 64 bytes
//! inline per down-track instead of a slot per packet, and no heap. A number
//! older than the window is reported as not sent, so a very late packet is
//! forwarded rather than lost (a duplicate that late is vanishingly rare,
//! and the receiver drops it itself).

/// How many numbers below the highest sent are remembered (about 1 s of
/// 4 Mbit/s video).
pub const SENT_WINDOW: u64 = 512;

const WORDS: usize = (SENT_WINDOW / 64) as usize;

#[derive(Debug, Default)]
pub struct SentWindow {
    /// The highest number recorded, plus one; 0 before the first.
    top: u64,
    /// Bit `n % SENT_WINDOW` is set when `n` (within the window) was sent.
    bits: [u64; WORDS],
}

impl SentWindow {
    /// Records `n` as sent; false if it already was (a duplicate to drop).
    pub fn insert(&mut self, n: u64) -> bool {
        let next = n.saturating_add(1);
        if next > self.top {
            // Slide: numbers between the old top and `n` were not sent (yet).
            if next - self.top >= SENT_WINDOW {
                self.bits = [0; WORDS];
            } else {
                for m in self.top..n {
                    self.clear(m);
                }
            }
            self.top = next;
            self.set(n);
            return true;
        }
        if self.top - next >= SENT_WINDOW {
            // Older than the window: unknown, so forward it.
            return true;
        }
        if self.get(n) {
            return false;
        }
        self.set(n);
        true
    }

    fn index(n: u64) -> (usize, u64) {
        let i = n % SENT_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn get(&self, n: u64) -> bool {
        let (w, b) = Self::index(n);
        self.bits[w] & b != 0
    }

    fn set(&mut self, n: u64) {
        let (w, b) = Self::index(n);
        self.bits[w] |= b;
    }

    fn clear(&mut self, n: u64) {
        let (w, b) = Self::index(n);
        self.bits[w] &= !b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn duplicates_within_the_window_are_refused() {
        let mut w = SentWindow::default();
        assert!(w.insert(1000));
        assert!(!w.insert(1000));
        assert!(w.insert(998));
        assert!(!w.insert(998));
        assert!(w.insert(999));
        // Far ahead: the old window is forgotten.
        assert!(w.insert(1000 + 10 * SENT_WINDOW));
        assert!(w.insert(1000 + 9 * SENT_WINDOW + 1));
        assert!(!w.insert(1000 + 9 * SENT_WINDOW + 1));
        // Older than the window is reported unsent (and stays unknown).
        assert!(w.insert(1000));
        assert!(w.insert(1000));
    }

    proptest! {
        /// Matches a set of everything sent, for every number no older than
        /// the window below the highest sent.
        #[test]
        fn agrees_with_a_set_within_the_window(
            base in 0u64..1 << 40,
            steps in prop::collection::vec(-600i64..700, 1..600),
        ) {
            let mut w = SentWindow::default();
            let mut model = HashSet::new();
            let mut highest: Option<u64> = None;
            let mut n = base + 1000;
            for step in steps {
                n = n.saturating_add_signed(step).max(base);
                let fresh = model.insert(n);
                let in_window = highest.is_none_or(|h| n + SENT_WINDOW > h);
                let got = w.insert(n);
                if in_window {
                    prop_assert_eq!(got, fresh, "n={} highest={:?}", n, highest);
                } else {
                    prop_assert!(got, "too old is forwarded");
                }
                highest = Some(highest.map_or(n, |h| h.max(n)));
            }
        }
    }
}
