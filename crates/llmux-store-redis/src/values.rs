//! Script arguments and replies: lines as arguments, counts and instants as the scripts store
//! them.

use super::*;

pub(super) fn line_args(inv: &mut redis::ScriptInvocation<'_>, l: &Line) {
    inv.arg(format!("{}|{}", l.subject, l.resource))
        .arg(l.window.start.0)
        .arg(l.window.end.0)
        .arg(l.capacity)
        .arg(l.amount);
}

/// A count as the scripts store it: an integer, of any size up to `u64::MAX`. A float
/// (`1e+17`, written by scripts before commit_v3, release_v2 and admin_v2) is read as the
/// integer it stands for.
pub(super) fn parse_count(s: &str) -> Result<u64, StoreError> {
    s.parse::<u64>()
        .ok()
        .or_else(|| {
            s.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| f.max(0.0) as u64)
        })
        .ok_or_else(|| StoreError::Backend(format!("redis: {s:?} is not a count")))
}

/// An instant (ms since the epoch) as the scripts store it; see [`parse_count`].
pub(super) fn parse_instant(s: &str) -> Result<i64, StoreError> {
    s.parse::<i64>()
        .ok()
        .or_else(|| {
            s.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| f as i64)
        })
        .ok_or_else(|| StoreError::Backend(format!("redis: {s:?} is not an instant")))
}

/// A count in a script's reply: an integer, or an integer string (beyond `i64`).
pub(super) fn count(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(i) => Ok((*i).max(0) as u64),
        other => parse_count(&text(other)),
    }
}

pub(super) fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}
