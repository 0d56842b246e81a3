//! The L7 table's rows, in the order shown: each load's figures, then what
//! the L7 hop (the waypoint or HAProxy) spent.
use std::collections::BTreeMap;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Row {
    H1Rate1Conn,
    H1P50_1Conn,
    H1P99_1Conn,
    H1Rate64Conns,
    H1P50_64Conns,
    H1P99_64Conns,
    H2cRate,
    H2cP50,
    H2cP99,
    FixedAchieved,
    FixedP50,
    FixedP99,
    HopCpuFixed,
    HopRssFixed,
    HopCpu64Conns,
    HopRss64Conns,
    HopCpuH2c,
}

impl Row {
    #[cfg(test)]
    pub const ALL: [Row; 17] = [
        Row::H1Rate1Conn,
        Row::H1P50_1Conn,
        Row::H1P99_1Conn,
        Row::H1Rate64Conns,
        Row::H1P50_64Conns,
        Row::H1P99_64Conns,
        Row::H2cRate,
        Row::H2cP50,
        Row::H2cP99,
        Row::FixedAchieved,
        Row::FixedP50,
        Row::FixedP99,
        Row::HopCpuFixed,
        Row::HopRssFixed,
        Row::HopCpu64Conns,
        Row::HopRss64Conns,
        Row::HopCpuH2c,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Row::H1Rate1Conn => "HTTP/1.1 POST 1 KiB → 1 KiB, 1 keep-alive conn (req/s)",
            Row::H1P50_1Conn => "HTTP/1.1 1 conn latency p50 (us)",
            Row::H1P99_1Conn => "HTTP/1.1 1 conn latency p99 (us)",
            Row::H1Rate64Conns => "HTTP/1.1 POST 1 KiB → 1 KiB, 64 keep-alive conns (req/s)",
            Row::H1P50_64Conns => "HTTP/1.1 64 conns latency p50 (us)",
            Row::H1P99_64Conns => "HTTP/1.1 64 conns latency p99 (us)",
            Row::H2cRate => "h2c POST 1 KiB → 1 KiB, 64 streams on 1 conn (req/s)",
            Row::H2cP50 => "h2c 64 streams latency p50 (us)",
            Row::H2cP99 => "h2c 64 streams latency p99 (us)",
            Row::FixedAchieved => {
                "achieved rate at a fixed 1000 req/s, HTTP/1.1 over 8 conns (req/s)"
            }
            Row::FixedP50 => "latency at 1000 req/s p50 (us)",
            Row::FixedP99 => "latency at 1000 req/s p99 (us)",
            Row::HopCpuFixed => "L7 hop CPU % at 1000 req/s",
            Row::HopRssFixed => "L7 hop RSS at 1000 req/s (MiB)",
            Row::HopCpu64Conns => "L7 hop CPU % under HTTP/1.1 64 conns",
            Row::HopRss64Conns => "L7 hop RSS under HTTP/1.1 64 conns (MiB)",
            Row::HopCpuH2c => "L7 hop CPU % under h2c 64 streams",
        }
    }
}

/// One route's figures, a value per row it has.
pub type Figures = BTreeMap<Row, f64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_declared_in_the_order_listed_and_labels_are_unique() {
        let mut sorted = Row::ALL;
        sorted.sort();
        assert_eq!(sorted, Row::ALL);
        let labels: std::collections::BTreeSet<&str> = Row::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Row::ALL.len());
        for r in Row::ALL {
            let l = r.label();
            assert!(
                l.ends_with("(req/s)")
                    || l.ends_with("(us)")
                    || l.ends_with("(MiB)")
                    || l.contains("CPU %"),
                "{r:?}: {l} names no unit"
            );
        }
        let fixed = format!(" {} req/s", crate::bench::l7::bed::FIXED_RATE);
        for r in [
            Row::FixedAchieved,
            Row::FixedP50,
            Row::FixedP99,
            Row::HopCpuFixed,
            Row::HopRssFixed,
        ] {
            assert!(r.label().contains(&fixed), "{r:?}: {}", r.label());
        }
    }
}
