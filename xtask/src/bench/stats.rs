//! One figure per row out of several rounds: the median, which one slow
//! or fast round (steal on a shared VM comes and goes) does not move.
use std::collections::BTreeMap;

use super::metric::Metric;

/// Every value each metric took over the rounds; a metric is a row of the
/// datapath table by default, or of another table's.
pub struct Samples<M = Metric>(BTreeMap<M, Vec<f64>>);

impl<M> Default for Samples<M> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<M: Ord + Copy> Samples<M> {
    pub fn add(&mut self, figures: BTreeMap<M, f64>) {
        for (metric, value) in figures {
            self.0.entry(metric).or_default().push(value);
        }
    }

    /// Each metric's median; a metric measured once (idle memory, at
    /// start) is its own median.
    pub fn medians(&self) -> BTreeMap<M, f64> {
        self.0
            .iter()
            .map(|(metric, values)| (*metric, median(values)))
            .collect()
    }
}

/// The middle value; the mean of the middle two for an even count.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::metric::Figures;

    #[test]
    fn each_figure_is_the_median_of_its_rounds() {
        let mut samples = Samples::default();
        for (rps, rss) in [(14484.0, 14.0), (8913.0, 14.2), (12921.0, 13.9)] {
            samples.add(Figures::from([
                (Metric::HeyRate, rps),
                (Metric::RssBulk, rss),
            ]));
        }
        samples.add(Figures::from([(Metric::RssIdle, 11.0)]));
        let m = samples.medians();
        assert_eq!(m[&Metric::HeyRate], 12921.0);
        assert_eq!(m[&Metric::RssBulk], 14.0);
        assert_eq!(m[&Metric::RssIdle], 11.0, "measured once: its own median");
        assert_eq!(m.len(), 3);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
