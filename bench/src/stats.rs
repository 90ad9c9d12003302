//! Median and spread of repeated measurements, ratios taken round by
//! round (each round measures every way once, one after the other, so a
//! slow moment of the machine falls on all of them), the rounds that
//! stalled, and goals judged on the spread rather than on the median.

use serde::{Deserialize, Serialize};

/// Repeated figures of one measurement, summarized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub median: f64,
    /// The first and third quartiles: half the figures lie between them.
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values` (none: all zero).
    #[must_use]
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            median: quantile(&sorted, 0.5),
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            min: sorted.first().copied().unwrap_or_default(),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }

    /// The ratios of `values` to `baseline`, round by round.
    #[must_use]
    pub fn of_ratios(values: &[f64], baseline: &[f64]) -> Self {
        Self::of(&ratios(values, baseline))
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

    /// This figure divided by `baseline`'s: the medians' ratio, and as its
    /// range the smallest and largest ratios the two interquartile ranges
    /// allow.
    #[must_use]
    pub fn over(&self, baseline: &Self) -> Self {
        let (low, high) = (self.q1 / baseline.q3, self.q3 / baseline.q1);
        Self {
            median: self.median / baseline.median,
            q1: low,
            q3: high,
            min: low,
            max: high,
        }
    }

    /// Every figure mapped through the increasing function `map`.
    #[must_use]
    pub fn map(&self, map: impl Fn(f64) -> f64) -> Self {
        Self {
            median: map(self.median),
            q1: map(self.q1),
            q3: map(self.q3),
            min: map(self.min),
            max: map(self.max),
        }
    }

    /// Every figure rounded to `decimals` decimals, as [`Self::show`]
    /// shows it.
    #[must_use]
    pub fn rounded(&self, decimals: usize) -> Self {
        let scale = 10f64.powi(i32::try_from(decimals).unwrap_or(i32::MAX));
        self.map(|value| (value * scale).round() / scale)
    }

    /// "median (q1–q3)" with `decimals` decimals: the median and the
    /// interquartile range.
    #[must_use]
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            self.median, self.q1, self.q3
        )
    }
}

/// The ratios of `values` to `baseline`, round by round (a round whose
/// baseline measured nothing has none).
#[must_use]
pub fn ratios(values: &[f64], baseline: &[f64]) -> Vec<f64> {
    values
        .iter()
        .zip(baseline)
        .filter(|(_, base)| **base > 0.0)
        .map(|(value, base)| value / base)
        .collect()
}

/// The `fraction` quantile of `sorted`, interpolated between the two
/// nearest figures (0 for none).
fn quantile(sorted: &[f64], fraction: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a handful of rounds: exact in f64, and the position is in 0..=last"
    )]
    let (position, below) = {
        let position = fraction * last as f64;
        (position, position.floor() as usize)
    };
    let above = (below + 1).min(last);
    #[expect(clippy::cast_precision_loss, reason = "a handful of rounds")]
    let weight = position - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * weight
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// A rate: a stalled round is slower.
    Higher,
    /// A time: a stalled round takes longer.
    Lower,
}

/// The rounds (indices into `values`) that stalled: their figure is worse
/// than the median of all by more than `factor`.
#[must_use]
pub fn stalled(values: &[f64], better: Better, factor: f64) -> Vec<usize> {
    let median = Summary::of(values).median;
    values
        .iter()
        .enumerate()
        .filter(|&(_, &value)| match better {
            Better::Higher => value * factor < median,
            Better::Lower => value > median * factor,
        })
        .map(|(round, _)| round)
        .collect()
}

/// What a goal asks of a figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    AtMost(f64),
    AtLeast(f64),
    /// Its size at most this: a change that may go either way.
    WithinOf(f64),
}

/// Whether a goal is met, judged on the figure's interquartile range:
/// the median alone never decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The whole range meets the goal.
    Met,
    /// The whole range misses it.
    NotMet,
    /// The goal's bound lies within the range: this machine's noise is
    /// larger than what the goal asks to resolve.
    WithinNoise,
}

impl Bound {
    /// The verdict on `summary`: met when its whole interquartile range
    /// meets the bound, not met when none of it does.
    #[must_use]
    pub fn judge(self, summary: &Summary) -> Verdict {
        let meets = |value: f64| match self {
            Self::AtMost(limit) => value <= limit,
            Self::AtLeast(limit) => value >= limit,
            Self::WithinOf(limit) => value.abs() <= limit,
        };
        // A range across zero holds sizes down to zero.
        let crosses_zero = summary.q1 < 0.0 && summary.q3 > 0.0;
        let (best, worst) = match self {
            Self::AtMost(_) => (summary.q1, summary.q3),
            Self::AtLeast(_) => (summary.q3, summary.q1),
            Self::WithinOf(_) => {
                let (low, high) = (summary.q1.abs(), summary.q3.abs());
                let best = if crosses_zero { 0.0 } else { low.min(high) };
                (best, low.max(high))
            }
        };
        match (meets(best), meets(worst)) {
            (_, true) => Verdict::Met,
            (false, false) => Verdict::NotMet,
            (true, false) => Verdict::WithinNoise,
        }
    }

    /// The bound as a goal's target: "≤ 150 ns".
    #[must_use]
    pub fn show(self, unit: &str) -> String {
        match self {
            Self::AtMost(limit) => format!("≤ {limit}{unit}"),
            Self::AtLeast(limit) => format!("≥ {limit}{unit}"),
            Self::WithinOf(limit) => format!("within ±{limit}{unit}"),
        }
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
    fn a_ratio_of_summaries_spans_both_ranges() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let ratio = Summary::of(&[9.0, 10.0, 11.0]).over(&Summary::of(&[4.0, 5.0, 6.0]));
        assert!(close(ratio.median, 2.0));
        assert!(close(ratio.q1, 9.5 / 5.5) && close(ratio.q3, 10.5 / 4.5));
        let percent = ratio.map(|r| (r - 1.0) * 100.0);
        assert!(close(percent.median, 100.0));
    }

    #[test]
    fn a_figure_is_judged_as_it_is_shown() {
        let shown = Summary::of(&[20.2, 20.4, 21.0, 21.6, 22.2]);
        assert_eq!(shown.show(0), "21 (20–22)");
        assert_eq!(Bound::AtMost(20.0).judge(&shown), Verdict::NotMet);
        assert_eq!(
            Bound::AtMost(20.0).judge(&shown.rounded(0)),
            Verdict::WithinNoise
        );
        let ratio = Summary::of(&[0.9896, 0.9898, 0.9901]);
        assert!((ratio.rounded(3).q1 - 0.99).abs() < 1e-12);
    }

    #[test]
    fn quartiles_interpolate() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let summary = Summary::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(close(summary.q1, 2.0) && close(summary.q3, 4.0));
        let summary = Summary::of(&[10.0, 20.0, 30.0, 40.0]);
        assert!(close(summary.q1, 17.5) && close(summary.q3, 32.5));
        let single = Summary::of(&[7.0]);
        assert!(close(single.q1, 7.0) && close(single.q3, 7.0));
        assert!(close(Summary::of(&[]).q3, 0.0));
    }

    /// The rounds of a bench run whose TCP rate fell to 285 against about
    /// 7,000 in the others.
    #[test]
    fn finds_the_stalled_rounds_only() {
        let rates = [7100.0, 6900.0, 7300.0, 285.0, 7000.0, 6500.0, 7200.0];
        assert_eq!(stalled(&rates, Better::Higher, 1.5), [3]);
        let p50 = [100.0, 105.0, 98.0, 5100.0, 101.0];
        assert_eq!(stalled(&p50, Better::Lower, 1.5), [3]);
        // The ordinary spread of a noisy machine is no stall.
        let ordinary = [0.81, 1.17, 1.01, 0.95, 1.05];
        assert!(stalled(&ordinary, Better::Higher, 1.5).is_empty());
    }

    #[test]
    fn judges_on_the_range_not_the_median() {
        let range = |q1, q3| Summary {
            median: f64::midpoint(q1, q3),
            q1,
            q3,
            min: q1,
            max: q3,
        };
        assert_eq!(
            Bound::AtMost(150.0).judge(&range(120.0, 140.0)),
            Verdict::Met
        );
        assert_eq!(
            Bound::AtMost(150.0).judge(&range(160.0, 200.0)),
            Verdict::NotMet
        );
        assert_eq!(
            Bound::AtMost(150.0).judge(&range(140.0, 160.0)),
            Verdict::WithinNoise
        );
        assert_eq!(Bound::AtLeast(0.99).judge(&range(1.0, 1.02)), Verdict::Met);
        assert_eq!(
            Bound::AtLeast(0.99).judge(&range(0.97, 1.02)),
            Verdict::WithinNoise
        );
        assert_eq!(
            Bound::AtLeast(0.99).judge(&range(0.9, 0.95)),
            Verdict::NotMet
        );
        assert_eq!(
            Bound::WithinOf(0.05).judge(&range(-0.02, 0.03)),
            Verdict::Met
        );
        assert_eq!(
            Bound::WithinOf(0.05).judge(&range(-0.08, 0.03)),
            Verdict::WithinNoise
        );
        assert_eq!(
            Bound::WithinOf(0.05).judge(&range(0.06, 0.09)),
            Verdict::NotMet
        );
    }

    #[test]
    fn ratios_pair_rounds() {
        let ratios = Summary::of_ratios(&[9.0, 20.0, 28.0], &[10.0, 20.0, 30.0]);
        assert!((ratios.median - 28.0 / 30.0).abs() < 1e-9);
        assert!((ratios.max - 1.0).abs() < 1e-9);
    }
}
