//! Small checks every part of the config shares: names, labels, durations, tiers, zones.

use super::*;

/// Check a duration in seconds: `Some(0)` and values above [`MAX_SECS`] are issues at `at`.
pub(super) fn check_secs(v: Option<u64>, at: &str, out: &mut Issues) -> Option<u64> {
    match v {
        Some(0) => {
            out.push(at, "must be greater than 0");
            None
        }
        Some(v) if v > MAX_SECS => {
            out.push(
                at,
                format!("{v} seconds is too long; at most {MAX_SECS} (ten years)"),
            );
            Some(MAX_SECS)
        }
        v => v,
    }
}

/// Check a size in bytes: `Some(0)` is an issue at `at`.
pub(super) fn check_bytes(v: Option<u64>, at: &str, out: &mut Issues) -> Option<usize> {
    match v {
        Some(0) => {
            out.push(at, "must be greater than 0");
            None
        }
        v => v.map(|v| usize::try_from(v).unwrap_or(usize::MAX)),
    }
}

/// Names that end up in store keys, lease records, metrics labels and headers (model names,
/// upstream model names): anything printable but whitespace and control characters.
pub(super) fn check_label(name: &str, at: &str, what: &str, out: &mut Issues) {
    if name.is_empty() {
        out.push(at, format!("{what} must not be empty"));
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        out.push(
            at,
            format!("invalid {what} {name:?}: spaces, tabs, newlines and control characters are not allowed"),
        );
    }
}

pub(super) fn unknown_tier(t: &str, order: &[String]) -> String {
    if order.is_empty() {
        format!("unknown tier {t:?}; `tier_order` is empty")
    } else {
        format!("unknown tier {t:?}; expected one of {}", order.join(", "))
    }
}

pub(super) fn check_name(name: &str, at: &str, out: &mut Issues) {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        out.push(
            at,
            format!("invalid name {name:?}; use letters, digits, '-', '_' and '.'"),
        );
    }
}

pub(super) fn parse_tz(
    name: Option<&str>,
    at: &str,
    default: &TimeZone,
    out: &mut Issues,
) -> TimeZone {
    match name {
        None => default.clone(),
        Some(n) => match TimeZone::get(n) {
            Ok(tz) => tz,
            Err(_) => {
                out.push(
                    at,
                    format!("unknown IANA time zone {n:?} (e.g. \"Europe/Warsaw\")"),
                );
                default.clone()
            }
        },
    }
}

/// The global `timezone`, from the config or the resources file (not both, unless equal).
pub(super) fn check_global_tz(
    raw_tz: Option<&str>,
    file: Option<(&str, &RawResourcesFile)>,
    out: &mut Issues,
) -> TimeZone {
    let file_tz = file.and_then(|(name, f)| {
        f.timezone
            .as_deref()
            .map(|tz| (tz, format!("{name}: timezone")))
    });
    match (raw_tz, &file_tz) {
        (Some(a), Some((b, at))) if a != *b => {
            out.push(
                "timezone",
                format!("{a:?} conflicts with {b:?} set in {at}"),
            );
            TimeZone::UTC
        }
        (Some(_), _) => parse_tz(raw_tz, "timezone", &TimeZone::UTC, out),
        (None, Some((tz, at))) => parse_tz(Some(tz), at, &TimeZone::UTC, out),
        (None, None) => TimeZone::UTC,
    }
}
