//! Median and spread of repeated measurements, and ratios taken round by
//! round (each round measures every way once, one after the other, so a
//! slow moment of the machine falls on all of them).

use serde::{Deserialize, Serialize};

/// Repeated figures of one measurement, summarized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values` (none: all zero).
    #[must_use]
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = match sorted.len() {
            0 => 0.0,
            length if length % 2 == 1 => sorted[middle],
            _ => f64::midpoint(sorted[middle - 1], sorted[middle]),
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or_default(),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }

    /// The ratios of `values` to `baseline`, round by round.
    #[must_use]
    pub fn of_ratios(values: &[f64], baseline: &[f64]) -> Self {
        let ratios: Vec<f64> = values
            .iter()
            .zip(baseline)
            .filter(|(_, base)| **base > 0.0)
            .map(|(value, base)| value / base)
            .collect();
        Self::of(&ratios)
    }

    /// The differences of `values` from `baseline`, round by round.
    #[must_use]
    pub fn of_differences(values: &[f64], baseline: &[f64]) -> Self {
        let differences: Vec<f64> = values
            .iter()
            .zip(baseline)
            .map(|(value, base)| value - base)
            .collect();
        Self::of(&differences)
    }

    /// "median (min-max)" with `decimals` decimals.
    #[must_use]
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            self.median, self.min, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(Summary::of(&[3.0, 1.0, 2.0]).median, 2.0));
        assert!(close(Summary::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5));
        let summary = Summary::of(&[5.0, 1.0, 9.0]);
        assert!(close(summary.min, 1.0) && close(summary.max, 9.0));
    }

    #[test]
    fn ratios_pair_rounds() {
        let ratios = Summary::of_ratios(&[9.0, 20.0, 28.0], &[10.0, 20.0, 30.0]);
        assert!((ratios.median - 28.0 / 30.0).abs() < 1e-9);
        assert!((ratios.max - 1.0).abs() < 1e-9);
    }
}
