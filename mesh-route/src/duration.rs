//! Gateway API durations (GEP-2257): one to four `<1-5 digits><h|m|s|ms>`
//! parts, e.g. `1h2m3s4ms`. Go's `time.ParseDuration` accepts more (`1.5s`,
//! `-1s`, `us`), which the API rejects, so it is not the model here.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a Gateway API duration (1 to 4 parts of up to 5 digits and a unit h, m, s or ms, e.g. 1h2m3s4ms)"
)]
pub struct DurationError(pub String);

pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_string());
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut parts = 0;
    let mut total = Duration::ZERO;
    while at < bytes.len() {
        let digits = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 5 {
            return Err(err());
        }
        // At most five digits: fits a u64 whatever they are.
        let value: u64 = text[at..at + digits].parse().map_err(|_| err())?;
        at += digits;
        let rest = &text[at..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(err());
        };
        at += len;
        parts += 1;
        if parts > 4 {
            return Err(err());
        }
        total += unit * u32::try_from(value).map_err(|_| err())?;
    }
    if parts == 0 {
        return Err(err());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_durations_from_gep_2257() {
        let cases = [
            ("0h", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("0h0m0s", Duration::ZERO),
            ("1h", Duration::from_secs(3600)),
            ("30m", Duration::from_secs(1800)),
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("2h45m", Duration::from_secs(2 * 3600 + 45 * 60)),
            ("1h2m3s4ms", Duration::from_millis(3_723_004)),
            ("99999s", Duration::from_secs(99_999)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn invalid_durations_from_gep_2257() {
        for text in [
            "",
            "1",
            "-1s",
            "1.5s",
            "1us",
            "1ns",
            "1d",
            "100000s",
            "1h2m3s4ms5h",
            "s",
            "1s ",
            " 1s",
            "1H",
            "+1s",
            "1m1",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }
}
