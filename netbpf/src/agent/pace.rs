//! When followed events are applied. After a quiet spell at once; during
//! a burst (a node filling up or draining), once as long as the last
//! reconcile took has passed since it ended, with every event seen
//! meanwhile. A reconcile walks every instance present, so the agent
//! spends at most half its time reconciling whatever the burst's rate, a
//! burst's cost per event does not grow with the node, and a lone event
//! waits at most one reconcile's time.

use std::time::{Duration, Instant};

/// What waits to be applied, and how long applying took last.
#[derive(Debug, Default)]
pub struct Pace {
    /// When the last reconcile ended, and how long it took.
    last: Option<(Instant, Duration)>,
    /// When the first event not applied yet was seen.
    waiting: Option<Instant>,
    /// When the first cgroup not applied yet appeared: what the delays
    /// measure.
    appeared: Option<Instant>,
}

impl Pace {
    /// Notes events seen at `seen`, among them a cgroup appearing if
    /// `appeared`.
    pub fn wait(&mut self, seen: Instant, appeared: bool) {
        self.waiting.get_or_insert(seen);
        if appeared {
            self.appeared.get_or_insert(seen);
        }
    }

    /// When what waits is due to be applied; None when nothing waits.
    #[must_use]
    pub fn due(&self) -> Option<Instant> {
        let seen = self.waiting?;
        Some(match self.last {
            Some((ended, took)) => seen.max(ended + took),
            None => seen,
        })
    }

    /// Whether what waits is due at `now`.
    #[must_use]
    pub fn is_due(&self, now: Instant) -> bool {
        self.due().is_some_and(|due| due <= now)
    }

    /// Notes a reconcile that started at `started` and ended at `ended`:
    /// it applied everything seen. When the first cgroup it applied
    /// appeared, if any did.
    pub fn ran(&mut self, started: Instant, ended: Instant) -> Option<Instant> {
        self.last = Some((ended, ended.saturating_duration_since(started)));
        self.waiting = None;
        self.appeared.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_event_is_applied_at_once_and_a_burst_in_batches() {
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut pace = Pace::default();
        assert_eq!(pace.due(), None);
        // The first event after a quiet spell: due when seen.
        pace.wait(ms(0), true);
        assert!(pace.is_due(ms(0)));
        assert_eq!(pace.ran(ms(0), ms(10)), Some(ms(0)));
        // Seen while the last reconcile's time has not passed since it
        // ended: due once it has, with what else comes meanwhile.
        pace.wait(ms(12), false);
        pace.wait(ms(15), true);
        assert_eq!(pace.due(), Some(ms(20)));
        assert!(!pace.is_due(ms(19)));
        assert!(pace.is_due(ms(20)));
        assert_eq!(pace.ran(ms(20), ms(24)), Some(ms(15)));
        assert_eq!(pace.due(), None);
        // After a quiet spell longer than the last reconcile: at once.
        pace.wait(ms(100), false);
        assert_eq!(pace.due(), Some(ms(100)));
        assert_eq!(pace.ran(ms(100), ms(101)), None);
    }
}
