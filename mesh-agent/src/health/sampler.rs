//! The datapath as of its last reading. A reading walks every kernel hash
//! map's keys, one syscall per entry; taken in a scrape, that walk ran on
//! the proxy's runtime (one thread by default) and every connection waited
//! for it. A thread of its own takes a reading every few seconds, and soon
//! after the pods change; `/metrics`, `/status` and `/datapath` serve the
//! last one, with its time.
use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::watch;

use crate::datapath::DatapathInfo;

/// How old a reading gets while nothing changes.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Least time between readings however often the pods change: a reading
/// of full maps costs a good part of a core.
pub const MIN_GAP: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct DatapathSample {
    pub info: DatapathInfo,
    pub sampled_at: SystemTime,
    /// The readings asked for before this one began.
    covers: u64,
}

/// A reading as the admin API shows it: with its time and age, so that
/// fill levels a few seconds old are not taken for live ones.
#[derive(Serialize)]
pub struct SampleJson<'a> {
    /// RFC 3339, to the millisecond.
    pub sampled_at: String,
    pub age_ms: u64,
    #[serde(flatten)]
    pub info: &'a DatapathInfo,
}

impl DatapathSample {
    pub fn to_json(&self, now: SystemTime) -> SampleJson<'_> {
        SampleJson {
            sampled_at: humantime::format_rfc3339_millis(self.sampled_at).to_string(),
            age_ms: now
                .duration_since(self.sampled_at)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            info: &self.info,
        }
    }
}

pub struct DatapathSampler {
    latest: watch::Sender<Option<Arc<DatapathSample>>>,
    /// Readings asked for so far (`refresh_soon`).
    asked: AtomicU64,
    wake: mpsc::SyncSender<()>,
}

impl DatapathSampler {
    /// Starts the reading thread. `read` returns `None` once there is
    /// nothing left to read (the datapath is gone); the thread ends then,
    /// or once the sampler is dropped.
    pub fn start<F>(interval: Duration, min_gap: Duration, read: F) -> Arc<Self>
    where
        F: FnMut() -> Option<DatapathInfo> + Send + 'static,
    {
        // One slot: requests made while a reading is due anyway coalesce.
        let (wake, woken) = mpsc::sync_channel(1);
        let sampler = Arc::new(Self {
            latest: watch::Sender::new(None),
            asked: AtomicU64::new(0),
            wake,
        });
        let weak = Arc::downgrade(&sampler);
        let spawned = std::thread::Builder::new()
            .name("datapath-sampler".into())
            .spawn(move || run(&weak, &woken, interval, min_gap, read));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no datapath sampler thread: map fill levels and program state stay unknown");
        }
        sampler
    }

    /// The last reading; `None` until the first is taken.
    pub fn latest(&self) -> Option<Arc<DatapathSample>> {
        self.latest.borrow().clone()
    }

    /// The first reading begun after every request so far, waited for at
    /// most `wait` (it comes within the least gap); failing that, the last.
    /// For a reader who has just changed the pods and wants to see it.
    pub async fn fresh(&self, wait: Duration) -> Option<Arc<DatapathSample>> {
        let asked = self.asked.load(Ordering::SeqCst);
        let mut readings = self.latest.subscribe();
        let covering = readings.wait_for(|s| s.as_ref().is_some_and(|s| s.covers >= asked));
        match tokio::time::timeout(wait, covering).await {
            Ok(Ok(sample)) => sample.clone(),
            _ => self.latest(),
        }
    }

    /// Asks for a reading as soon as the least gap allows. Never blocks.
    pub fn refresh_soon(&self) {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let _ = self.wake.try_send(());
    }
}

fn run(
    sampler: &Weak<DatapathSampler>,
    woken: &mpsc::Receiver<()>,
    interval: Duration,
    min_gap: Duration,
    mut read: impl FnMut() -> Option<DatapathInfo>,
) {
    loop {
        // Read before the walk: a request made during it needs another.
        let Some(covers) = sampler.upgrade().map(|s| s.asked.load(Ordering::SeqCst)) else {
            return;
        };
        let Some(info) = read() else { return };
        let sample = Arc::new(DatapathSample {
            info,
            sampled_at: SystemTime::now(),
            covers,
        });
        match sampler.upgrade() {
            Some(s) => s.latest.send_replace(Some(sample)),
            None => return,
        };
        std::thread::sleep(min_gap);
        match woken.recv_timeout(interval.saturating_sub(min_gap)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::atomic::{AtomicUsize, Ordering},
        time::Instant,
    };

    use super::*;

    fn info(pod_links: usize) -> DatapathInfo {
        DatapathInfo {
            pin_dir: PathBuf::from("/sys/fs/bpf/mesh/n"),
            adopted: false,
            programs: Vec::new(),
            programs_attached: 0,
            pod_links,
            maps: Vec::new(),
            counters: Default::default(),
            mismatched_maps: Vec::new(),
        }
    }

    fn wait_for(what: &str, ok: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "{what} never happened");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn readings_come_on_request_and_stop_with_the_sampler() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let sampler = DatapathSampler::start(
            Duration::from_secs(3600),
            Duration::from_millis(10),
            move || Some(info(counted.fetch_add(1, Ordering::SeqCst))),
        );
        wait_for("the first reading", || sampler.latest().is_some());
        assert_eq!(sampler.latest().unwrap().info.pod_links, 0);

        // Within the hour-long interval only a request brings another.
        sampler.refresh_soon();
        wait_for("the requested reading", || {
            sampler.latest().unwrap().info.pod_links == 1
        });
        let json =
            serde_json::to_value(sampler.latest().unwrap().to_json(SystemTime::now())).unwrap();
        assert!(json["sampled_at"].is_string(), "{json}");
        assert!(json["age_ms"].as_u64().unwrap() < 5_000, "{json}");
        assert_eq!(json["pod_links"], 1, "{json}");

        // The thread holds the reader; it lets go once the sampler is gone.
        drop(sampler);
        wait_for("the thread's end", || Arc::strong_count(&reads) == 1);
    }

    /// A reader who asked for a reading gets one begun after the request,
    /// not the one already there.
    #[tokio::test]
    async fn a_fresh_reading_is_waited_for() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let sampler = DatapathSampler::start(
            Duration::from_secs(3600),
            Duration::from_millis(200),
            move || Some(info(counted.fetch_add(1, Ordering::SeqCst))),
        );
        let first = sampler.fresh(Duration::from_secs(5)).await.unwrap();
        assert_eq!(first.info.pod_links, 0);
        sampler.refresh_soon();
        let second = sampler.fresh(Duration::from_secs(5)).await.unwrap();
        assert_eq!(second.info.pod_links, 1);
        assert!(second.sampled_at >= first.sampled_at);
    }

    #[test]
    fn the_thread_ends_when_nothing_is_left_to_read() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let sampler = DatapathSampler::start(Duration::ZERO, Duration::ZERO, move || {
            (counted.fetch_add(1, Ordering::SeqCst) < 2).then(|| info(0))
        });
        wait_for("the thread's end", || Arc::strong_count(&reads) == 1);
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        assert!(sampler.latest().is_some());
    }
}
