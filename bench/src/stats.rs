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
    /// How low the first quartile of what was measured may lie, and how
    /// high its third, from these figures alone: the order statistics
    /// that bound each with [`QUARTILE_CONFIDENCE`] (the least and the
    /// largest figure when there are too few for that).
    pub q1_low: f64,
    pub q3_high: f64,
}

/// The confidence of [`Summary::q1_low`] and [`Summary::q3_high`], each
/// on its side: a goal is judged on them, so that what moves a quartile
/// from one run to the next (a few rounds more or less of a slow stretch
/// of this machine) does not move a verdict.
pub const QUARTILE_CONFIDENCE: f64 = 0.95;

impl Summary {
    /// The summary of `values` (none: all zero).
    #[must_use]
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let min = sorted.first().copied().unwrap_or_default();
        let max = sorted.last().copied().unwrap_or_default();
        // The outer bound of each quartile is the same rank from its end.
        let rank = quartile_bound_rank(sorted.len());
        Self {
            median: quantile(&sorted, 0.5),
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            min,
            max,
            q1_low: rank.map_or(min, |rank| sorted[rank - 1]),
            q3_high: rank.map_or(max, |rank| sorted[sorted.len() - rank]),
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

    /// Every figure mapped through the increasing function `map`.
    #[must_use]
    pub fn map(&self, map: impl Fn(f64) -> f64) -> Self {
        Self {
            median: map(self.median),
            q1: map(self.q1),
            q3: map(self.q3),
            min: map(self.min),
            max: map(self.max),
            q1_low: map(self.q1_low),
            q3_high: map(self.q3_high),
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

    /// "`q1_low`–`q3_high`" with `decimals` decimals: where the quartiles may
    /// lie.
    #[must_use]
    pub fn show_quartile_bounds(&self, decimals: usize) -> String {
        format!("{:.decimals$}–{:.decimals$}", self.q1_low, self.q3_high)
    }
}

/// The rank (from 1) of the figure of `count` that bounds their first
/// quartile from below with [`QUARTILE_CONFIDENCE`], if some does: the
/// largest rank `r` for which fewer than `r` of `count` figures fall
/// below the quartile with a chance of at most `1 - QUARTILE_CONFIDENCE`
/// (that count is binomial, of `count` draws of a quarter). The same rank
/// from the top bounds the third quartile from above.
fn quartile_bound_rank(count: usize) -> Option<usize> {
    let miss = 1.0 - QUARTILE_CONFIDENCE;
    // P(B = k) for B ~ Binomial(count, 1/4), from k = 0 up. P(B = 0) is
    // 1e-250 for 2,000 figures; for many more (a bench has hundreds at
    // most) it underflows, and the least and the largest figure bound.
    #[expect(clippy::cast_precision_loss, reason = "counts of rounds")]
    let n = count as f64;
    let mut term = 0.75f64.powf(n);
    if term < f64::MIN_POSITIVE {
        return None;
    }
    let mut below = 0.0;
    let mut rank = None;
    for k in 0..count {
        // `below` is P(B <= k - 1): rank k + 1 misses with that chance.
        below += term;
        if below > miss {
            break;
        }
        rank = Some(k + 1);
        #[expect(clippy::cast_precision_loss, reason = "counts of rounds")]
        let k = k as f64;
        term *= (n - k) / (k + 1.0) / 3.0;
    }
    rank
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

/// Whether a goal is met, judged on where the figure's quartiles may lie
/// ([`Summary::q1_low`], [`Summary::q3_high`]): the median alone never
/// decides it, nor does a quartile that a few rounds more or less of a
/// slow stretch would move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Both quartiles meet the goal, wherever they may lie.
    Met,
    /// Both miss it, wherever they may lie.
    NotMet,
    /// The goal's bound lies between the quartiles' bounds: this
    /// machine's noise is larger than what the goal asks to resolve.
    WithinNoise,
}

impl Bound {
    /// The verdict on `summary`: met when even the third quartile's upper
    /// bound meets the bound (for a size, both ends), not met when even the
    /// first quartile's lower bound misses it.
    #[must_use]
    pub fn judge(self, summary: &Summary) -> Verdict {
        let (low, high) = (summary.q1_low, summary.q3_high);
        let meets = |value: f64| match self {
            Self::AtMost(limit) => value <= limit,
            Self::AtLeast(limit) => value >= limit,
            Self::WithinOf(limit) => value.abs() <= limit,
        };
        // A range across zero holds sizes down to zero.
        let crosses_zero = low < 0.0 && high > 0.0;
        let (best, worst) = match self {
            Self::AtMost(_) => (low, high),
            Self::AtLeast(_) => (high, low),
            Self::WithinOf(_) => {
                let (low, high) = (low.abs(), high.abs());
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
            q1_low: q1,
            q3_high: q3,
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
    fn quartiles_are_bounded_by_order_statistics() {
        // Too few figures to bound a quartile by any but the extremes.
        assert_eq!(quartile_bound_rank(10), None);
        // P(Binomial(11, 1/4) = 0) = 0.042; P(B <= 1) = 0.197.
        assert_eq!(quartile_bound_rank(11), Some(1));
        assert_eq!(quartile_bound_rank(27), Some(3));
        assert_eq!(quartile_bound_rank(63), Some(10));
        assert_eq!(quartile_bound_rank(1_000_000), None);
        let values: Vec<f64> = (1..=63).map(f64::from).collect();
        let summary = Summary::of(&values);
        assert_eq!((summary.q1, summary.q3), (16.5, 47.5));
        assert_eq!((summary.q1_low, summary.q3_high), (10.0, 54.0));
        let few = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((few.q1_low, few.q3_high), (1.0, 3.0));
    }

    /// bound4's net cost in two runs of the bench, 63 rounds each (their
    /// quartiles 18–20 and 19–22 ns, on either side of the goal's 20):
    /// judged on where the quartiles may lie, both are within noise.
    #[test]
    fn a_quartile_that_moves_between_runs_moves_no_verdict() {
        let spread = |low: f64, high: f64| -> Vec<f64> {
            (0..63)
                .map(|i| low + (high - low) * f64::from(i) / 62.0)
                .collect()
        };
        let goal = Bound::AtMost(20.0);
        for run in [spread(16.0, 22.0), spread(17.0, 24.0)] {
            let summary = Summary::of(&run).rounded(0);
            assert_eq!(goal.judge(&summary), Verdict::WithinNoise, "{summary:?}");
        }
        assert_eq!(goal.judge(&Summary::of(&spread(12.0, 18.0))), Verdict::Met);
        assert_eq!(
            goal.judge(&Summary::of(&spread(24.0, 40.0))),
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
