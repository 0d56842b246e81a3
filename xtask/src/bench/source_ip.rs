//! Source-IP delivery in the datapath run: which address each mesh
//! column's server sees (checked on its bed before any load, so a column
//! is what its heading says), and each column that delivers from the
//! client's address set beside the same agents delivering from 127.0.0.6,
//! row by row, read against the rounds' spread.
use std::net::{IpAddr, Ipv4Addr};

use super::{measure::ModeResult, metric::Metric, mode::Mode, stats::Range};

/// Where the server pod's agent delivers inbound connections from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Delivery {
    /// The client's own address (`datapath.sourceIp: preserve`, the
    /// default).
    ClientAddress,
    /// 127.0.0.6 (`datapath.sourceIp: loopback`).
    Loopback,
}

/// The reserved source of a loopback delivery.
const LOOPBACK_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

impl Delivery {
    /// Whether `seen`, the peer address the server reported, is what this
    /// delivery gives a connection from `client`; else what went wrong.
    pub fn check(self, seen: IpAddr, client: Ipv4Addr) -> Result<(), String> {
        let (expected, name) = match self {
            Delivery::ClientAddress => (client, "the client's address"),
            Delivery::Loopback => (LOOPBACK_SOURCE, "127.0.0.6"),
        };
        if seen == IpAddr::V4(expected) {
            Ok(())
        } else {
            Err(format!(
                "the server saw its client as {seen}, where delivery from {name} ({expected}) was configured; the agent's log says why (a pod whose routing could not be set up falls back to 127.0.0.6)"
            ))
        }
    }
}

/// One figure of one mode: its median and its rounds' spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    pub median: f64,
    pub range: Option<Range>,
}

/// What a row says about delivering from the client's address, against
/// the spread of the rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The two figures' rounds overlap: no difference beyond the noise.
    WithinNoise,
    /// Worse than loopback delivery, and no round of either overlaps.
    Costlier,
    /// Better than loopback delivery, and no round of either overlaps.
    Cheaper,
    /// One side was measured once (idle memory, or `--rounds 1`): there is
    /// no spread to read the difference against.
    NoSpread,
}

/// One row, delivering from the client's address and from 127.0.0.6.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowCost {
    pub metric: Metric,
    pub preserve: Figure,
    pub loopback: Figure,
}

impl RowCost {
    /// Preserve over loopback; None when loopback's figure is zero.
    pub fn ratio(&self) -> Option<f64> {
        (self.loopback.median > 0.0).then(|| self.preserve.median / self.loopback.median)
    }

    pub fn verdict(&self) -> Verdict {
        let (Some(p), Some(l)) = (self.preserve.range, self.loopback.range) else {
            return Verdict::NoSpread;
        };
        match p.overlaps(&l) {
            None => Verdict::NoSpread,
            Some(true) => Verdict::WithinNoise,
            Some(false) => {
                let preserve_higher = p.lowest > l.highest;
                if preserve_higher == self.metric.higher_is_better() {
                    Verdict::Cheaper
                } else {
                    Verdict::Costlier
                }
            }
        }
    }
}

/// A mode delivering from the client's address and its loopback twin,
/// every row both measured.
#[derive(Debug, PartialEq)]
pub struct Pair {
    pub preserve: Mode,
    pub loopback: Mode,
    pub rows: Vec<RowCost>,
}

/// The goal for a pair: no measurable cost.
#[derive(Debug, PartialEq)]
pub enum Goal {
    /// No row is worse beyond the rounds' spread.
    Met,
    /// These rows are worse than loopback delivery beyond the spread.
    Missed(Vec<Metric>),
    /// No row had a spread on both sides (one round): nothing to judge.
    NotJudged,
}

impl Pair {
    pub fn goal(&self) -> Goal {
        let costlier: Vec<Metric> = self
            .rows
            .iter()
            .filter(|r| r.verdict() == Verdict::Costlier)
            .map(|r| r.metric)
            .collect();
        if !costlier.is_empty() {
            Goal::Missed(costlier)
        } else if self.rows.iter().all(|r| r.verdict() == Verdict::NoSpread) {
            Goal::NotJudged
        } else {
            Goal::Met
        }
    }
}

/// Every pair of modes in the run that differ only in where they deliver
/// from (`modes` and `results` pair up), in the table's column order.
pub fn pairs(modes: &[Mode], results: &[ModeResult]) -> Vec<Pair> {
    let result = |mode: Mode| {
        modes
            .iter()
            .zip(results)
            .find_map(|(m, r)| (*m == mode).then_some(r))
    };
    modes
        .iter()
        .filter_map(|&preserve| {
            let loopback = preserve.with_loopback_delivery()?;
            let (p, l) = (result(preserve)?, result(loopback)?);
            let figure = |r: &ModeResult, metric| {
                Some(Figure {
                    median: *r.figures.get(&metric)?,
                    range: r.ranges.get(&metric).copied(),
                })
            };
            let rows = p
                .figures
                .keys()
                .filter_map(|&metric| {
                    Some(RowCost {
                        metric,
                        preserve: figure(p, metric)?,
                        loopback: figure(l, metric)?,
                    })
                })
                .collect();
            Some(Pair {
                preserve,
                loopback,
                rows,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bench::{metric::Figures, stats::Samples};

    #[test]
    fn the_server_must_see_the_address_the_mode_delivers_from() {
        let client = Ipv4Addr::new(10, 244, 0, 10);
        let loopback: IpAddr = "127.0.0.6".parse().unwrap();
        assert_eq!(Delivery::ClientAddress.check(client.into(), client), Ok(()));
        assert_eq!(Delivery::Loopback.check(loopback, client), Ok(()));
        let fell_back = Delivery::ClientAddress.check(loopback, client).unwrap_err();
        assert!(fell_back.contains("127.0.0.6") && fell_back.contains("10.244.0.10"));
        assert!(Delivery::Loopback.check(client.into(), client).is_err());
        assert_eq!(Mode::Mtls.delivery(), Some(Delivery::ClientAddress));
        assert_eq!(Mode::MtlsLoopback.delivery(), Some(Delivery::Loopback));
        assert_eq!(Mode::Relays.delivery(), None);
    }

    fn result(rounds: &[(Metric, &[f64])]) -> ModeResult {
        let mut samples = Samples::default();
        for (metric, values) in rounds {
            for v in *values {
                samples.add(Figures::from([(*metric, *v)]));
            }
        }
        ModeResult {
            figures: samples.medians(),
            ranges: samples.ranges(),
            steal: None,
        }
    }

    #[test]
    fn rows_are_judged_against_the_rounds_spread_in_their_direction() {
        let modes = [Mode::Direct, Mode::Mtls, Mode::MtlsLoopback];
        let direct = result(&[(Metric::HeyRate, &[9000.0])]);
        let preserve = result(&[
            (Metric::HeyRate, &[4000.0, 4100.0, 3900.0]),
            (Metric::SockperfP50, &[160.0, 170.0, 165.0]),
            (Metric::CpuFixedRate, &[7.0, 7.2, 7.1]),
            (Metric::Wrk1ConnP99, &[300.0, 320.0, 310.0]),
            (Metric::RssIdle, &[6.0]),
        ]);
        let loopback = result(&[
            (Metric::HeyRate, &[4050.0, 4200.0, 4150.0]),
            (Metric::SockperfP50, &[150.0, 155.0, 152.0]),
            (Metric::CpuFixedRate, &[7.5, 7.6, 7.7]),
            (Metric::RssIdle, &[5.9]),
        ]);
        let pairs = pairs(&modes, &[direct, preserve, loopback]);
        assert_eq!(pairs.len(), 1);
        let pair = &pairs[0];
        assert_eq!(
            (pair.preserve, pair.loopback),
            (Mode::Mtls, Mode::MtlsLoopback)
        );
        let verdicts: BTreeMap<Metric, Verdict> =
            pair.rows.iter().map(|r| (r.metric, r.verdict())).collect();
        // wrk's p99 was measured by one side only: no row.
        assert_eq!(
            verdicts,
            BTreeMap::from([
                (Metric::CpuFixedRate, Verdict::Cheaper),
                (Metric::RssIdle, Verdict::NoSpread),
                (Metric::HeyRate, Verdict::WithinNoise),
                (Metric::SockperfP50, Verdict::Costlier),
            ])
        );
        let sockperf = pair
            .rows
            .iter()
            .find(|r| r.metric == Metric::SockperfP50)
            .unwrap();
        assert_eq!(sockperf.ratio(), Some(165.0 / 152.0));
        assert_eq!(pair.goal(), Goal::Missed(vec![Metric::SockperfP50]));
    }

    #[test]
    fn without_its_twin_or_a_spread_a_mode_is_not_judged() {
        let one_round = |v: f64| result(&[(Metric::SockperfP50, &[v])]);
        let modes = [Mode::Direct, Mode::Mesh, Mode::Mtls, Mode::MtlsLoopback];
        let results = [
            one_round(50.0),
            one_round(150.0),
            one_round(170.0),
            one_round(160.0),
        ];
        let pairs = pairs(&modes, &results);
        assert_eq!(pairs.len(), 1, "mesh's twin did not run");
        assert_eq!(pairs[0].goal(), Goal::NotJudged);
        let within = Pair {
            preserve: Mode::Mesh,
            loopback: Mode::MeshLoopback,
            rows: vec![RowCost {
                metric: Metric::HeyRate,
                preserve: Figure {
                    median: 1.0,
                    range: Range::of(&[1.0, 2.0]),
                },
                loopback: Figure {
                    median: 1.5,
                    range: Range::of(&[1.5, 3.0]),
                },
            }],
        };
        assert_eq!(within.goal(), Goal::Met);
    }
}
