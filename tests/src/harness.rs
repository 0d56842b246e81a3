//! A test binary's own harness (`harness = false`), for named cases that
//! share one test bed too costly to build per case: the cases run one
//! after another on it, each caught if it panics, with libtest's command
//! line (a name filter, `--exact`, `--skip`, `--list`; the rest, such as
//! `--test-threads`, accepted and ignored) and libtest's lines
//! (`test NAME ... ok`, `test result: ...`), which `cargo xtask test`
//! counts.
use std::{
    any::Any,
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

/// What the command line selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub filters: Vec<String>,
    pub skips: Vec<String>,
    pub exact: bool,
    pub list: bool,
    /// `--ignored`: only ignored cases, and these cases are never ignored
    /// by declaration, so none.
    pub only_ignored: bool,
}

/// libtest's options that take a value in the next argument.
const WITH_VALUE: [&str; 7] = [
    "--test-threads",
    "--logfile",
    "--color",
    "--format",
    "--shuffle-seed",
    "-Z",
    "--report-time-format",
];

impl Selection {
    /// Reads libtest's arguments (the program name already removed).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut s = Self::default();
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--exact" => s.exact = true,
                "--list" => s.list = true,
                "--ignored" => s.only_ignored = true,
                "--skip" => s.skips.extend(args.next()),
                _ if a.starts_with("--skip=") => s.skips.push(a["--skip=".len()..].to_owned()),
                _ if WITH_VALUE.contains(&a.as_str()) => {
                    args.next();
                }
                _ if a.starts_with('-') => {}
                _ => s.filters.push(a),
            }
        }
        s
    }

    /// Whether case `name` runs.
    pub fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        !self.only_ignored
            && (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(matches)
    }
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Ignored(String),
}

impl Outcome {
    /// What follows `test NAME ... ` on libtest's line.
    pub fn word(&self) -> String {
        match self {
            Outcome::Passed => "ok".into(),
            Outcome::Failed(_) => "FAILED".into(),
            Outcome::Ignored(why) => format!("ignored, {why}"),
        }
    }
}

/// Runs `case`, turning an error or a panic into a failure.
pub fn run_case(case: impl FnOnce() -> anyhow::Result<()>) -> Outcome {
    match catching(case) {
        Ok(()) => Outcome::Passed,
        Err(why) => Outcome::Failed(why),
    }
}

/// Runs `f`; its error or its panic as text.
pub fn catching<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(payload) => Err(format!("panicked: {}", panic_message(&*payload))),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// The outcomes so far, and libtest's closing lines for them.
#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: Vec<(String, Outcome)>,
    pub filtered_out: usize,
}

impl Report {
    /// Records a case and prints its libtest line.
    pub fn record(&mut self, name: &str, outcome: Outcome) {
        println!("test {name} ... {}", outcome.word());
        self.outcomes.push((name.to_owned(), outcome));
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(_, o)| f(o)).count()
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    /// libtest's summary line.
    pub fn summary(&self, elapsed: Duration) -> String {
        let failed = self.failed();
        format!(
            "test result: {}. {} passed; {failed} failed; {} ignored; 0 measured; {} filtered out; finished in {:.2}s",
            if failed == 0 { "ok" } else { "FAILED" },
            self.count(|o| *o == Outcome::Passed),
            self.count(|o| matches!(o, Outcome::Ignored(_))),
            self.filtered_out,
            elapsed.as_secs_f64()
        )
    }

    /// The failures section and the summary, as libtest ends its output.
    pub fn finish(&self, started: Instant) {
        if self.failed() > 0 {
            println!("\nfailures:\n");
            for (name, o) in &self.outcomes {
                if let Outcome::Failed(why) = o {
                    println!("---- {name} ----\n{why}\n");
                }
            }
            println!("failures:");
            for (name, o) in &self.outcomes {
                if matches!(o, Outcome::Failed(_)) {
                    println!("    {name}");
                }
            }
        }
        println!("\n{}\n", self.summary(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Selection {
        Selection::parse(a.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn cargo_tests_arguments_select_as_libtest_does() {
        let s = args(&["--test-threads=2"]);
        assert!(s.selects("MeshBasic") && s.selects("MeshPorts"));
        let s = args(&["--test-threads", "2", "Redirect", "--nocapture"]);
        assert_eq!(s.filters, ["Redirect"]);
        assert!(s.selects("MeshHTTPRoute303Redirect") && !s.selects("MeshBasic"));
        let s = args(&["MeshHTTPRouteRedirectPort", "--exact"]);
        assert!(s.selects("MeshHTTPRouteRedirectPort"));
        assert!(!s.selects("MeshHTTPRouteRedirectPortX"));
        let s = args(&["Mesh", "--skip", "GRPC", "--skip=Weight"]);
        assert!(s.selects("MeshBasic"));
        assert!(!s.selects("MeshGRPCRouteRequestHeaderModifier"));
        assert!(!s.selects("MeshHTTPRouteWeight"));
        assert!(!args(&["--ignored"]).selects("MeshBasic"));
        assert!(args(&["--list"]).list);
    }

    #[test]
    fn errors_and_panics_fail_a_case_with_their_message() {
        assert_eq!(run_case(|| Ok(())), Outcome::Passed);
        assert_eq!(
            run_case(|| Err(anyhow::anyhow!("inner")).map_err(|e| e.context("outer"))),
            Outcome::Failed("outer: inner".into())
        );
        let o = run_case(|| panic!("boom {}", 7));
        assert_eq!(o, Outcome::Failed("panicked: boom 7".into()));
    }

    #[test]
    fn the_summary_reads_as_libtests_which_xtask_counts() {
        let mut r = Report {
            filtered_out: 2,
            ..Report::default()
        };
        r.outcomes.push(("A".into(), Outcome::Passed));
        r.outcomes.push(("B".into(), Outcome::Failed("x".into())));
        r.outcomes
            .push(("C".into(), Outcome::Ignored("needs root".into())));
        assert_eq!(
            r.summary(Duration::from_millis(1500)),
            "test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 2 filtered out; finished in 1.50s"
        );
        assert_eq!(
            Outcome::Ignored("needs root".into()).word(),
            "ignored, needs root"
        );
    }
}
