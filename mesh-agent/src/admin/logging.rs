//! Changing the agent's log filter while it runs (the admin API's
//! `/logging`), without the library knowing how the binary set up tracing.
use std::sync::Arc;

type Get = dyn Fn() -> String + Send + Sync;
type Set = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// Reads and replaces the active filter (tracing's EnvFilter syntax:
/// `debug`, `info,mesh::access=off`, …).
#[derive(Clone)]
pub struct LogControl {
    get: Arc<Get>,
    set: Arc<Set>,
}

impl LogControl {
    pub fn new(
        get: impl Fn() -> String + Send + Sync + 'static,
        set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            get: Arc::new(get),
            set: Arc::new(set),
        }
    }

    /// For embedding without a reloadable subscriber: changes are refused.
    pub fn fixed() -> Self {
        Self::new(
            || "unknown".into(),
            |_| Err("this process's log level cannot be changed at run time".into()),
        )
    }

    pub fn current(&self) -> String {
        (self.get)()
    }

    pub fn set(&self, filter: &str) -> Result<(), String> {
        (self.set)(filter)
    }
}
