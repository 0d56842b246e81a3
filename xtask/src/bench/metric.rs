//! The table's rows: every figure the benchmark reports, each with its
//! label, unit and direction.
use std::collections::BTreeMap;

/// One row of the table. Declared in the order the rows are shown (the
/// labels' alphabetical order, which is how the table has always listed
/// them, so tables from older runs line up row for row).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Metric {
    FixedRateAchieved,
    CpuFixedRate,
    CpuBulk,
    CpuNewConnections,
    RssIdle,
    RssBulk,
    TouchedIdle,
    AnonIdle,
    AnonBulk,
    HeyRate,
    Iperf1Stream,
    Iperf4Streams,
    SockperfP50,
    SockperfP99,
    WrkRate1Conn,
    WrkRate64Conns,
    Wrk1ConnP50,
    Wrk1ConnP99,
    Wrk64ConnsP50,
    Wrk64ConnsP99,
}

/// What a figure counts.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Unit {
    GbitPerSec,
    ReqPerSec,
    Micros,
    MiB,
    /// Of one CPU, over the interval measured.
    CpuPercent,
}

impl Unit {
    /// As the labels write it.
    // Read by the tests, which check that each label names its unit.
    #[cfg_attr(not(test), expect(dead_code))]
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::GbitPerSec => "Gbit/s",
            Unit::ReqPerSec => "req/s",
            Unit::Micros => "us",
            Unit::MiB => "MiB",
            Unit::CpuPercent => "%",
        }
    }
}

impl Metric {
    #[cfg(test)]
    pub const ALL: [Metric; 20] = [
        Metric::FixedRateAchieved,
        Metric::CpuFixedRate,
        Metric::CpuBulk,
        Metric::CpuNewConnections,
        Metric::RssIdle,
        Metric::RssBulk,
        Metric::TouchedIdle,
        Metric::AnonIdle,
        Metric::AnonBulk,
        Metric::HeyRate,
        Metric::Iperf1Stream,
        Metric::Iperf4Streams,
        Metric::SockperfP50,
        Metric::SockperfP99,
        Metric::WrkRate1Conn,
        Metric::WrkRate64Conns,
        Metric::Wrk1ConnP50,
        Metric::Wrk1ConnP99,
        Metric::Wrk64ConnsP50,
        Metric::Wrk64ConnsP99,
    ];

    /// The row's label, unit included.
    pub fn label(self) -> &'static str {
        match self {
            Metric::FixedRateAchieved => "achieved req/s at the fixed-rate stage",
            Metric::CpuFixedRate => "agent (or relay) CPU % at a fixed 2000 req/s (max of 2)",
            Metric::CpuBulk => "agent (or relay) CPU % under bulk (max of 2)",
            Metric::CpuNewConnections => {
                "agent (or relay) CPU % under new-connection load (max of 2)"
            }
            Metric::RssIdle => "agent RSS idle (MiB)",
            Metric::RssBulk => "agent RSS under bulk (MiB)",
            Metric::TouchedIdle => "agent memory touched while idle, 2 s (Referenced, MiB)",
            Metric::AnonIdle => "agent private memory idle (RssAnon, MiB)",
            Metric::AnonBulk => "agent private memory under bulk (RssAnon, MiB)",
            Metric::HeyRate => "hey new connection per request, 8 concurrent (req/s)",
            Metric::Iperf1Stream => "iperf3 bulk 1 stream (Gbit/s)",
            Metric::Iperf4Streams => "iperf3 bulk 4 streams (Gbit/s)",
            Metric::SockperfP50 => "sockperf 64 B RTT p50 (us)",
            Metric::SockperfP99 => "sockperf 64 B RTT p99 (us)",
            Metric::WrkRate1Conn => "wrk 1 KiB keep-alive 1 conn (req/s)",
            Metric::WrkRate64Conns => "wrk 1 KiB keep-alive 64 conns (req/s)",
            Metric::Wrk1ConnP50 => "wrk 1 conn latency p50 (us)",
            Metric::Wrk1ConnP99 => "wrk 1 conn latency p99 (us)",
            Metric::Wrk64ConnsP50 => "wrk 64 conns latency p50 (us)",
            Metric::Wrk64ConnsP99 => "wrk 64 conns latency p99 (us)",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            Metric::Iperf1Stream | Metric::Iperf4Streams => Unit::GbitPerSec,
            Metric::FixedRateAchieved
            | Metric::HeyRate
            | Metric::WrkRate1Conn
            | Metric::WrkRate64Conns => Unit::ReqPerSec,
            Metric::SockperfP50
            | Metric::SockperfP99
            | Metric::Wrk1ConnP50
            | Metric::Wrk1ConnP99
            | Metric::Wrk64ConnsP50
            | Metric::Wrk64ConnsP99 => Unit::Micros,
            Metric::RssIdle
            | Metric::RssBulk
            | Metric::TouchedIdle
            | Metric::AnonIdle
            | Metric::AnonBulk => Unit::MiB,
            Metric::CpuFixedRate | Metric::CpuBulk | Metric::CpuNewConnections => Unit::CpuPercent,
        }
    }

    /// Throughput: more is better; latency, CPU and memory: less is. The
    /// main table shows one ratio per row whichever way the row points (its
    /// heading says how to read it); the source-IP comparison reads it to
    /// tell a cost from a gain.
    pub fn higher_is_better(self) -> bool {
        matches!(self.unit(), Unit::GbitPerSec | Unit::ReqPerSec)
    }
}

/// One mode's figures, a value per row it has (a row a mode has no figure
/// for, such as agent memory without agents, is left out).
pub type Figures = BTreeMap<Metric, f64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_listed_in_label_order() {
        let labels: Vec<&str> = Metric::ALL.iter().map(|m| m.label()).collect();
        let mut sorted = labels.clone();
        sorted.sort();
        assert_eq!(labels, sorted);
        let mut by_ord = Metric::ALL;
        by_ord.sort();
        assert_eq!(by_ord, Metric::ALL, "ALL is in declaration order");
    }

    #[test]
    fn each_label_names_its_unit() {
        for m in Metric::ALL {
            assert!(
                m.label().contains(m.unit().symbol()),
                "{m:?}: {} / {}",
                m.label(),
                m.unit().symbol()
            );
        }
        assert!(Metric::Iperf1Stream.higher_is_better());
        assert!(Metric::FixedRateAchieved.higher_is_better());
        assert!(!Metric::SockperfP99.higher_is_better());
        assert!(!Metric::CpuBulk.higher_is_better());
        assert!(!Metric::AnonIdle.higher_is_better());
    }
}
