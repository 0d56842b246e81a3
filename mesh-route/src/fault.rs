//! Fault injection through Gateway API's extension point: a rule's filter of
//! type ExtensionRef naming a `mesh.io/v1alpha1` `HTTPFaultInjection` in the
//! route's namespace. Its fields are Istio's HTTPFaultInjection:
//! `delay: {fixedDelay, percentage: {value}}` and
//! `abort: {httpStatus | grpcStatus, percentage: {value}}`.
//!
//! `compile` checks one object and names the field at fault; `inject` decides
//! from rolls what one request gets. Nothing here does I/O or draws random
//! numbers: the caller rolls.

use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::{duration, spec::ObjectMeta};

pub const GROUP: &str = "mesh.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "HTTPFaultInjection";

/// Rolls are uniform in `0..ROLL_RANGE`; a percentage is kept in parts of it
/// (four decimals of a percent, finer than any configuration asks for).
pub const ROLL_RANGE: u32 = 1_000_000;

/// The object as the API serves it (or a local file holds it).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct HttpFaultInjection {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: FaultSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelaySpec {
    /// A Gateway API duration (`200ms`, `5s`, `1m30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<String>,
    /// Absent: every request, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    /// A gRPC status code's name, e.g. `UNAVAILABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Absent: every request, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Percentage {
    pub value: f64,
}

/// A checked HTTPFaultInjection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delay {
    pub fixed: Duration,
    /// Out of [`ROLL_RANGE`].
    pub share: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort {
    pub status: AbortStatus,
    /// Out of [`ROLL_RANGE`].
    pub share: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortStatus {
    Http(StatusCode),
    /// A gRPC status code (1 to 16): answered as HTTP 200 with a
    /// trailers-only `grpc-status`.
    Grpc(u8),
}

/// gRPC's status codes by name, in code order (OK, 0, is no abort).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A field of the object and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FaultError {
    pub field: String,
    pub problem: String,
}

fn invalid<T>(field: &str, problem: impl Into<String>) -> Result<T, FaultError> {
    Err(FaultError {
        field: field.to_string(),
        problem: problem.into(),
    })
}

/// Checks one object's spec.
pub fn compile(spec: &FaultSpec) -> Result<Fault, FaultError> {
    if spec.delay.is_none() && spec.abort.is_none() {
        return invalid("spec", "needs delay, abort or both");
    }
    let delay = spec.delay.as_ref().map(delay).transpose()?;
    let abort = spec.abort.as_ref().map(abort).transpose()?;
    Ok(Fault { delay, abort })
}

fn delay(d: &DelaySpec) -> Result<Delay, FaultError> {
    let field = "spec.delay.fixedDelay";
    let fixed = match &d.fixed_delay {
        None => return invalid(field, "required (e.g. 5s or 200ms)"),
        Some(text) => match duration::parse(text) {
            Ok(v) if v.is_zero() => return invalid(field, "must be above 0"),
            Ok(v) => v,
            Err(e) => return invalid(field, e.to_string()),
        },
    };
    let share = share("spec.delay.percentage.value", d.percentage.as_ref())?;
    Ok(Delay { fixed, share })
}

fn abort(a: &AbortSpec) -> Result<Abort, FaultError> {
    let status = match (a.http_status, &a.grpc_status) {
        (Some(_), Some(_)) => {
            return invalid(
                "spec.abort",
                "httpStatus and grpcStatus cannot both be given",
            );
        }
        (None, None) => return invalid("spec.abort", "needs httpStatus or grpcStatus"),
        (Some(code), None) => {
            let field = "spec.abort.httpStatus";
            if !(200..=599).contains(&code) {
                return invalid(field, format!("{code} is not within 200 to 599"));
            }
            match StatusCode::from_u16(code as u16) {
                Ok(s) => AbortStatus::Http(s),
                Err(_) => return invalid(field, format!("{code} is not a status code")),
            }
        }
        (None, Some(name)) => AbortStatus::Grpc(grpc_code("spec.abort.grpcStatus", name)?),
    };
    let share = share("spec.abort.percentage.value", a.percentage.as_ref())?;
    Ok(Abort { status, share })
}

fn grpc_code(field: &str, name: &str) -> Result<u8, FaultError> {
    match GRPC_CODES.iter().position(|c| *c == name) {
        Some(0) => invalid(
            field,
            "OK is not a fault; name an error code, e.g. UNAVAILABLE",
        ),
        Some(code) => Ok(code as u8),
        None => invalid(
            field,
            format!(
                "{name:?} is not a gRPC status code name (one of {})",
                GRPC_CODES[1..].join(", ")
            ),
        ),
    }
}

fn share(field: &str, p: Option<&Percentage>) -> Result<u32, FaultError> {
    let Some(p) = p else {
        return Ok(ROLL_RANGE);
    };
    if !p.value.is_finite() || !(0.0..=100.0).contains(&p.value) {
        return invalid(field, format!("{} is not within 0 to 100", p.value));
    }
    // Within 0..=100, so the product is within 0..=ROLL_RANGE.
    Ok((p.value * f64::from(ROLL_RANGE / 100)).round() as u32)
}

/// Where a rule's filter points: an HTTPFaultInjection in the route's
/// namespace, looked up per request (the object may come, go or change
/// without the route changing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for FaultRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a request gets from its rule's faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    None,
    /// Answered here with this status; the request is not forwarded.
    Abort(AbortStatus),
    /// Forwarded after this long.
    Delay(Duration),
}

/// Each fault's abort is rolled first (the first that hits answers the
/// request); else each fault's delay, the hits adding up. `roll` yields
/// uniform numbers in `0..ROLL_RANGE`, one per abort or delay present.
pub fn inject<'a>(
    faults: impl IntoIterator<Item = &'a Fault> + Clone,
    mut roll: impl FnMut() -> u32,
) -> Injection {
    for f in faults.clone() {
        if let Some(a) = &f.abort
            && roll() < a.share
        {
            return Injection::Abort(a.status);
        }
    }
    let mut total = Duration::ZERO;
    for f in faults {
        if let Some(d) = &f.delay
            && roll() < d.share
        {
            total = total.saturating_add(d.fixed);
        }
    }
    if total.is_zero() {
        Injection::None
    } else {
        Injection::Delay(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> FaultSpec {
        serde_json::from_str(json).unwrap()
    }

    fn error(json: &str) -> FaultError {
        compile(&spec(json)).unwrap_err()
    }

    #[test]
    fn istio_shaped_objects_compile() {
        let f = compile(&spec(
            r#"{"delay":{"fixedDelay":"5s","percentage":{"value":10.0}},
                "abort":{"httpStatus":503,"percentage":{"value":5.5}}}"#,
        ))
        .unwrap();
        assert_eq!(
            f.delay,
            Some(Delay {
                fixed: Duration::from_secs(5),
                share: 100_000
            })
        );
        assert_eq!(
            f.abort,
            Some(Abort {
                status: AbortStatus::Http(StatusCode::SERVICE_UNAVAILABLE),
                share: 55_000
            })
        );
        let g = compile(&spec(r#"{"abort":{"grpcStatus":"UNAVAILABLE"}}"#)).unwrap();
        assert_eq!(
            g.abort,
            Some(Abort {
                status: AbortStatus::Grpc(14),
                share: ROLL_RANGE
            })
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(error("{}").field, "spec");
        assert_eq!(
            error(r#"{"delay":{"fixedDelay":"1.5s"}}"#).field,
            "spec.delay.fixedDelay"
        );
        assert_eq!(error(r#"{"delay":{}}"#).field, "spec.delay.fixedDelay");
        assert_eq!(
            error(r#"{"delay":{"fixedDelay":"0s"}}"#).field,
            "spec.delay.fixedDelay"
        );
        assert_eq!(
            error(r#"{"delay":{"fixedDelay":"1s","percentage":{"value":100.5}}}"#).field,
            "spec.delay.percentage.value"
        );
        assert_eq!(
            error(r#"{"abort":{"httpStatus":503,"percentage":{"value":-1}}}"#).field,
            "spec.abort.percentage.value"
        );
        assert_eq!(
            error(r#"{"abort":{"httpStatus":199}}"#).field,
            "spec.abort.httpStatus"
        );
        assert_eq!(
            error(r#"{"abort":{"httpStatus":600}}"#).field,
            "spec.abort.httpStatus"
        );
        assert_eq!(
            error(r#"{"abort":{"grpcStatus":"UNAVAILABLY"}}"#).field,
            "spec.abort.grpcStatus"
        );
        assert_eq!(
            error(r#"{"abort":{"grpcStatus":"OK"}}"#).field,
            "spec.abort.grpcStatus"
        );
        assert_eq!(
            error(r#"{"abort":{"httpStatus":503,"grpcStatus":"INTERNAL"}}"#).field,
            "spec.abort"
        );
        assert_eq!(error(r#"{"abort":{}}"#).field, "spec.abort");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<FaultSpec>(r#"{"abort":{"httpStaus":503}}"#).is_err());
    }

    fn fault(abort: Option<u32>, delay: Option<u32>) -> Fault {
        Fault {
            abort: abort.map(|share| Abort {
                status: AbortStatus::Http(StatusCode::SERVICE_UNAVAILABLE),
                share,
            }),
            delay: delay.map(|share| Delay {
                fixed: Duration::from_millis(200),
                share,
            }),
        }
    }

    #[test]
    fn a_roll_below_the_share_hits() {
        let f = [fault(Some(500_000), Some(250_000))];
        let abort = Injection::Abort(AbortStatus::Http(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(inject(&f, || 499_999), abort);
        let mut rolls = [500_000, 249_999].into_iter();
        assert_eq!(
            inject(&f, || rolls.next().unwrap()),
            Injection::Delay(Duration::from_millis(200))
        );
        let mut rolls = [500_000, 250_000].into_iter();
        assert_eq!(inject(&f, || rolls.next().unwrap()), Injection::None);
    }

    #[test]
    fn zero_never_hits_and_all_always_does() {
        let never = [fault(Some(0), Some(0))];
        assert_eq!(inject(&never, || 0), Injection::None);
        let always = [fault(None, Some(ROLL_RANGE))];
        assert_eq!(
            inject(&always, || ROLL_RANGE - 1),
            Injection::Delay(Duration::from_millis(200))
        );
    }

    #[test]
    fn an_abort_wins_over_a_delay_and_delays_add_up() {
        let f = [fault(None, Some(ROLL_RANGE)), fault(Some(ROLL_RANGE), None)];
        assert!(matches!(inject(&f, || 0), Injection::Abort(_)));
        let d = [fault(None, Some(ROLL_RANGE)), fault(None, Some(ROLL_RANGE))];
        assert_eq!(
            inject(&d, || 0),
            Injection::Delay(Duration::from_millis(400))
        );
    }
}
