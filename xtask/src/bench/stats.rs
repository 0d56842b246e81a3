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

    /// Each metric's lowest and highest value and how many it took: the
    /// rounds' spread, which a difference between two modes is read
    /// against.
    pub fn ranges(&self) -> BTreeMap<M, Range> {
        self.0
            .iter()
            .filter_map(|(metric, values)| Some((*metric, Range::of(values)?)))
            .collect()
    }
}

/// The spread of one figure over its rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub lowest: f64,
    pub highest: f64,
    /// How many values it was taken over (one: no spread to speak of).
    pub count: usize,
}

impl Range {
    /// None for no values.
    pub fn of(values: &[f64]) -> Option<Range> {
        let (first, rest) = values.split_first()?;
        Some(rest.iter().fold(
            Range {
                lowest: *first,
                highest: *first,
                count: 1,
            },
            |r, v| Range {
                lowest: r.lowest.min(*v),
                highest: r.highest.max(*v),
                count: r.count + 1,
            },
        ))
    }

    /// Whether the two ranges share a value; None unless both were taken
    /// over at least two values, as one value has no spread.
    pub fn overlaps(&self, other: &Range) -> Option<bool> {
        (self.count >= 2 && other.count >= 2)
            .then_some(self.lowest <= other.highest && other.lowest <= self.highest)
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
        let r = samples.ranges();
        assert_eq!(
            r[&Metric::HeyRate],
            Range {
                lowest: 8913.0,
                highest: 14484.0,
                count: 3
            }
        );
        assert_eq!(r[&Metric::RssIdle].count, 1);
    }

    #[test]
    fn ranges_overlap_only_with_a_spread_on_both_sides() {
        let a = Range::of(&[10.0, 12.0, 11.0]).unwrap();
        let touching = Range::of(&[12.0, 14.0]).unwrap();
        let apart = Range::of(&[12.5, 14.0]).unwrap();
        let once = Range::of(&[11.0]).unwrap();
        assert_eq!(a.overlaps(&touching), Some(true));
        assert_eq!(touching.overlaps(&a), Some(true));
        assert_eq!(a.overlaps(&apart), Some(false));
        assert_eq!(a.overlaps(&once), None, "one value has no spread");
        assert_eq!(Range::of(&[]), None);
    }
}
