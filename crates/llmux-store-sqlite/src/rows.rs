//! Rows of the file: counters, subject flags and lease lines, read and written with cached
//! statements. Nothing here caches or decides; it is the SQL under the writer's cache (`cache::Batch`).

use llmux_core::health::{Breaker, Learned};
use llmux_core::ids::at_or_below;
use llmux_core::store::{Counter, Flags, Line, SubjectState};
use llmux_core::{Subject, Timestamp, Window};
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::Arc;

/// One reserved line of a lease: subject, resource, amount.
pub(crate) type Held = (Subject, Arc<str>, u64);

/// Lease lines as stored: `subject\tresource\tamount` per line. Names never hold tabs or
/// newlines (config validation).
pub(crate) fn encode_lines(lines: &[Line]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(lines.len() * 48);
    for l in lines {
        let _ = writeln!(s, "{}\t{}\t{}", l.subject, l.resource, l.amount);
    }
    s
}

pub(crate) fn decode_lines(text: &str) -> Vec<Held> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let s = parts.next()?;
            let r = parts.next()?;
            let a = parts.next()?.parse().ok()?;
            Some((Subject::new(s), Arc::from(r), a))
        })
        .collect()
}

/// A counter from the five columns `capacity, used, reserved, window_start, window_end` of
/// `r`, starting at column `first`.
fn counter_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Counter> {
    Ok(Counter {
        capacity: r.get::<_, i64>(first)? as u64,
        used: r.get::<_, i64>(first + 1)? as u64,
        reserved: r.get::<_, i64>(first + 2)? as u64,
        window: Window {
            start: Timestamp(r.get(first + 3)?),
            end: Timestamp(r.get(first + 4)?),
        },
    })
}

pub(crate) fn load_counter(
    tx: &Connection,
    subject: &str,
    resource: &str,
) -> rusqlite::Result<Option<Counter>> {
    tx.prepare_cached(
        "SELECT capacity, used, reserved, window_start, window_end FROM counters
         WHERE subject = ?1 AND resource = ?2",
    )?
    .query_row(params![subject, resource], |r| counter_at(r, 0))
    .optional()
}

pub(crate) fn save_counter(
    tx: &Connection,
    subject: &str,
    resource: &str,
    c: &Counter,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO counters
         (subject, resource, capacity, used, reserved, window_start, window_end)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        subject,
        resource,
        c.capacity as i64,
        c.used as i64,
        c.reserved as i64,
        c.window.start.0,
        c.window.end.0
    ])?;
    Ok(())
}

pub(crate) fn load_flags(tx: &Connection, s: &str) -> rusqlite::Result<Flags> {
    Ok(tx
        .prepare_cached(
            "SELECT cooldown_until, disabled, score, strikes, breaker_until, probes, learned
             FROM subjects WHERE subject = ?1",
        )?
        .query_row([s], |r| {
            Ok(Flags {
                cooldown_until: r.get::<_, Option<i64>>(0)?.map(Timestamp),
                disabled: r.get::<_, i64>(1)? != 0,
                score: r.get(2)?,
                strikes: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                breaker: Breaker {
                    open_until: r.get::<_, Option<i64>>(4)?.map(Timestamp),
                    probes: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                },
                learned: decode_learned(r.get::<_, Option<String>>(6)?.as_deref()),
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Write every flag of `s`.
pub(crate) fn save_flags(tx: &Connection, s: &str, f: &Flags) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO subjects
           (subject, cooldown_until, disabled, score, strikes, breaker_until, probes, learned)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (subject) DO UPDATE SET cooldown_until = excluded.cooldown_until,
           disabled = excluded.disabled, score = excluded.score, strikes = excluded.strikes,
           breaker_until = excluded.breaker_until, probes = excluded.probes,
           learned = excluded.learned",
    )?
    .execute(params![
        s,
        f.cooldown_until.map(|t| t.0),
        f.disabled as i64,
        f.score,
        i64::from(f.strikes),
        f.breaker.open_until.map(|t| t.0),
        i64::from(f.breaker.probes),
        encode_learned(&f.learned),
    ])?;
    Ok(())
}

/// Learned limits as text: per measure `limit remaining reset_ms`, `;`-separated, empty for
/// none (`None` when there are none at all).
pub(crate) fn encode_learned(l: &[Option<Learned>; 4]) -> Option<String> {
    if l.iter().all(Option::is_none) {
        return None;
    }
    let parts: Vec<String> = l
        .iter()
        .map(|x| {
            x.map(|x| format!("{} {} {}", x.limit, x.remaining, x.reset_at.0))
                .unwrap_or_default()
        })
        .collect();
    Some(parts.join(";"))
}

pub(crate) fn decode_learned(text: Option<&str>) -> [Option<Learned>; 4] {
    let mut out = [None; 4];
    for (slot, part) in out.iter_mut().zip(text.unwrap_or("").split(';')) {
        let mut it = part.split(' ');
        if let (Some(l), Some(r), Some(t)) = (it.next(), it.next(), it.next()) {
            if let (Ok(limit), Ok(remaining), Ok(reset)) = (l.parse(), r.parse(), t.parse()) {
                *slot = Some(Learned {
                    limit,
                    remaining,
                    reset_at: Timestamp(reset),
                });
            }
        }
    }
    out
}

/// `subject = ?1` or below it (`?2` = `subject/`): an exact prefix, unlike LIKE, where `_` is a
/// wildcard and case is folded.
pub(crate) const UNDER: &str = "(subject = ?1 OR substr(subject, 1, length(?2)) = ?2)";

/// After a reset, leases in flight must not give back, at settle or expiry, amounts reserved on
/// counters that no longer exist: drop their lines on the reset subjects.
pub(crate) fn forget_lease_lines(tx: &Connection, subject: &str) -> rusqlite::Result<()> {
    let leases: Vec<(i64, String)> = tx
        .prepare_cached("SELECT id, lines FROM leases")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, text) in leases {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !at_or_below(l.split('\t').next().unwrap_or(""), subject))
            .collect();
        if kept.len() == text.lines().count() {
            continue;
        }
        let mut joined = kept.join("\n");
        if !joined.is_empty() {
            joined.push('\n');
        }
        tx.prepare_cached("UPDATE leases SET lines = ?2 WHERE id = ?1")?
            .execute(params![id, joined])?;
    }
    Ok(())
}

pub(crate) fn snapshot(tx: &Connection, subject: &str) -> rusqlite::Result<Vec<SubjectState>> {
    let below = format!("{subject}/");
    let mut stmt = tx.prepare_cached(
        "SELECT subject, resource, capacity, used, reserved, window_start, window_end
         FROM counters WHERE (subject = ?1 OR substr(subject, 1, length(?2)) = ?2)
         ORDER BY subject, resource",
    )?;
    let rows = stmt.query_map(params![subject, below], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            counter_at(r, 2)?,
        ))
    })?;
    let counters = rows.collect::<Result<Vec<_>, _>>()?;
    let mut stmt = tx.prepare_cached(&format!("SELECT subject FROM subjects WHERE {UNDER}"))?;
    let subjects: Vec<String> = stmt
        .query_map(params![subject, below], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut flags = Vec::with_capacity(subjects.len());
    for s in subjects {
        let f = load_flags(tx, &s)?;
        flags.push((s, f));
    }
    Ok(SubjectState::collect(counters, flags))
}

/// A call on the records table (`llmux_core::records`): `(table, name, value)`.
pub(crate) enum RecordOp {
    Put(String, String, String),
    Get(String, String),
    List(String),
    Delete(String, String),
    /// `(table, name, expected, value)`: set only if it holds `expected` (`None`: absent).
    Swap(String, String, Option<String>, String),
}

/// What a [`RecordOp`] answers.
pub(crate) enum RecordOut {
    Done,
    Value(Option<String>),
    List(Vec<(String, String)>),
    /// Whether a delete removed, or a swap set.
    Removed(bool),
}

/// Run one call on the records table.
pub(crate) fn record(tx: &Connection, op: &RecordOp) -> rusqlite::Result<RecordOut> {
    Ok(match op {
        RecordOp::Put(t, n, v) => {
            tx.prepare_cached(
                "INSERT INTO records (tbl, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tbl, name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![t, n, v])?;
            RecordOut::Done
        }
        RecordOp::Get(t, n) => RecordOut::Value(
            tx.prepare_cached("SELECT value FROM records WHERE tbl = ?1 AND name = ?2")?
                .query_row(params![t, n], |r| r.get(0))
                .optional()?,
        ),
        RecordOp::List(t) => {
            let mut st =
                tx.prepare_cached("SELECT name, value FROM records WHERE tbl = ?1 ORDER BY name")?;
            let rows = st.query_map(params![t], |r| Ok((r.get(0)?, r.get(1)?)))?;
            RecordOut::List(rows.collect::<rusqlite::Result<_>>()?)
        }
        RecordOp::Swap(t, n, expected, v) => {
            let now: Option<String> = tx
                .prepare_cached("SELECT value FROM records WHERE tbl = ?1 AND name = ?2")?
                .query_row(params![t, n], |r| r.get(0))
                .optional()?;
            if now != *expected {
                return Ok(RecordOut::Removed(false));
            }
            tx.prepare_cached(
                "INSERT INTO records (tbl, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tbl, name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![t, n, v])?;
            RecordOut::Removed(true)
        }
        RecordOp::Delete(t, n) => RecordOut::Removed(
            tx.prepare_cached("DELETE FROM records WHERE tbl = ?1 AND name = ?2")?
                .execute(params![t, n])?
                > 0,
        ),
    })
}
