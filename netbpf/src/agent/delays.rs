//! How long after a cgroup appeared its policy was in the maps, the last
//! delays kept: `netbpf status` shows their percentiles.

use std::time::Duration;

/// The delays from a cgroup's appearing (its inotify event) to its scope
/// being in the maps, the last ones kept.
#[derive(Debug, Default, Clone)]
pub struct Delays(std::collections::VecDeque<Duration>);

impl Delays {
    const KEPT: usize = 1024;

    pub fn record(&mut self, delay: Duration) {
        if self.0.len() == Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back(delay);
    }

    /// The `percent` percentile of the delays kept, if any.
    #[must_use]
    pub fn percentile(&self, percent: usize) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self.0.iter().copied().collect();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        sorted.get((last * percent).div_ceil(100)).copied()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
