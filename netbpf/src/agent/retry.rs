//! When instances that failed are tried again: soon after a failure is
//! new, less and less often while the same ones keep failing (a map that
//! stays full, a host-network container granted a service), so that a
//! node with a lasting failure does not reconcile twice a second forever.

use std::time::Duration;

use tokio::time::Instant;

/// The first delay, and the one after any change of what fails.
const FIRST: Duration = Duration::from_millis(500);
/// The longest delay between two tries.
const LONGEST: Duration = Duration::from_secs(30);

/// The next try of the failed instances, and what failed at the last one.
pub struct Retry<F> {
    delay: Duration,
    next: Instant,
    failing: F,
}

impl<F: PartialEq> Retry<F> {
    #[must_use]
    pub fn new(failing: F) -> Self {
        Self {
            delay: FIRST,
            next: Instant::now() + FIRST,
            failing,
        }
    }

    /// When to try next, given what fails now: soon when that changed
    /// since the last try.
    pub fn next(&mut self, failing: F) -> Instant {
        if failing != self.failing {
            self.failing = failing;
            self.delay = FIRST;
            self.next = self.next.min(Instant::now() + FIRST);
        }
        self.next
    }

    /// Records a try and what still fails after it: the delay doubles
    /// while the same instances fail the same way.
    pub fn tried(&mut self, failing: F) {
        self.delay = if failing == self.failing {
            (self.delay * 2).min(LONGEST)
        } else {
            FIRST
        };
        self.failing = failing;
        self.next = Instant::now() + self.delay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_same_failures_wait_longer_and_a_new_one_is_tried_soon() {
        let mut retry = Retry::new(vec!["full"]);
        let start = Instant::now();
        assert_eq!(retry.next(vec!["full"]) - start, FIRST);
        for _ in 0..10 {
            retry.tried(vec!["full"]);
        }
        assert_eq!(retry.next(vec!["full"]) - Instant::now(), LONGEST);
        // A container whose network is not up yet fails too: soon again.
        assert_eq!(
            retry.next(vec!["full", "no network"]) - Instant::now(),
            FIRST
        );
        retry.tried(vec!["full"]);
        assert_eq!(retry.next(vec!["full"]) - Instant::now(), FIRST);
    }
}
