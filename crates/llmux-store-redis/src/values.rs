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

/// The flag fields, in the order [`flags_of`] reads them (and `health_v1` returns them).
pub(super) const FLAG_FIELDS: [&str; 18] = [
    "cool", "dis", "score", "strk", "bu", "pr", "ll1", "lr1", "lt1", "ll2", "lr2", "lt2", "ll3",
    "lr3", "lt3", "ll4", "lr4", "lt4",
];

/// A subject's flags from the values of [`FLAG_FIELDS`] (absent fields: defaults).
pub(super) fn flags_of(v: &[Option<String>]) -> Flags {
    let get = |i: usize| v.get(i).and_then(|x| x.as_deref());
    let instant = |i: usize| get(i).and_then(|s| parse_instant(s).ok()).map(Timestamp);
    let num = |i: usize| get(i).and_then(|s| parse_count(s).ok());
    let mut learned = [None; 4];
    for (m, slot) in learned.iter_mut().enumerate() {
        let b = 6 + m * 3;
        if let (Some(limit), Some(remaining), Some(reset_at)) = (num(b), num(b + 1), instant(b + 2))
        {
            *slot = Some(Learned {
                limit,
                remaining,
                reset_at,
            });
        }
    }
    Flags {
        cooldown_until: instant(0),
        disabled: get(1) == Some("1"),
        score: get(2).and_then(|s| s.parse().ok()),
        strikes: num(3).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        breaker: Breaker {
            open_until: instant(4),
            probes: num(5).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        },
        learned,
    }
}
