//! Durations written as "30s", "5m", "24h".
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// The form `deserialize` reads back ("10s", "1h 30m", "1day").
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("`{s}` is not a duration like 30s, 5m or 24h: {e}"))
    })
}
