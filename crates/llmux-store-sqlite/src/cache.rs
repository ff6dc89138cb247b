//! What the writer knows of the file, and one transaction's view through it.
//!
//! [`Cache`] keeps counters, subject flags and the lines of leases this writer granted between
//! transactions, valid while `PRAGMA data_version` shows no other connection has written.
//! [`Batch`] applies one operation at a time inside the open transaction: every decision is
//! `llmux_core::store::decide` / `Counter::settle` / `apply_admin` on what the cache holds,
//! and changed counters reach the file once, at [`Batch::flush`]. It opens, commits and answers
//! nothing: that is the writer's.

use crate::rows::{
    self, decode_lines, encode_lines, forget_lease_lines, load_counter, load_flags, save_counter,
    Held, UNDER,
};
use llmux_core::health::HealthOp;
use llmux_core::store::{
    decide, score_of, AdminOp, Admission, Counter, Flags, LeaseId, Line, Reserve, Reserved,
    SubjectState,
};
use llmux_core::{Subject, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// A cached counter: `None` = known to be absent; `dirty` = changed in this transaction.
#[derive(Clone, Copy, Default)]
pub(crate) struct Cached {
    counter: Option<Counter>,
    dirty: bool,
}

/// What the writer knows of the file. Valid while `PRAGMA data_version` is unchanged, i.e. no
/// other connection (another gateway, the CLI) has committed since our last transaction.
#[derive(Default)]
pub(crate) struct Cache {
    version: Option<i64>,
    /// subject -> resource -> counter: looked up by `&str` with no allocation; changed
    /// counters are written once before the transaction commits.
    counters: HashMap<Box<str>, HashMap<Box<str>, Cached>>,
    flags: HashMap<Box<str>, Flags>,
    /// The lines of leases this writer granted, so settling one needs no read or parse of
    /// its row (the row is still deleted, and only a deleted row is settled).
    leases: HashMap<u64, Box<[Held]>>,
    any_dirty: bool,
}

impl Cache {
    /// Forget everything unless `version` (`PRAGMA data_version`, read in the open
    /// transaction) is the one the cache was filled at: another connection has written.
    pub(crate) fn check_version(&mut self, version: i64) {
        if self.version != Some(version) {
            *self = Cache {
                version: Some(version),
                ..Cache::default()
            };
        }
    }
}

/// One transaction's view: the cache in front of the file.
pub(crate) struct Batch<'a> {
    pub(crate) tx: &'a Connection,
    pub(crate) cache: &'a mut Cache,
}

impl Batch<'_> {
    /// The cache slot of a counter, created on a miss (the only place that allocates).
    fn slot(&mut self, subject: &str, resource: &str) -> &mut Cached {
        self.cache
            .counters
            .entry(subject.into())
            .or_default()
            .entry(resource.into())
            .or_default()
    }

    pub(crate) fn counter(
        &mut self,
        subject: &str,
        resource: &str,
    ) -> rusqlite::Result<Option<Counter>> {
        if let Some(c) = self
            .cache
            .counters
            .get(subject)
            .and_then(|m| m.get(resource))
        {
            return Ok(c.counter);
        }
        let counter = load_counter(self.tx, subject, resource)?;
        *self.slot(subject, resource) = Cached {
            counter,
            dirty: false,
        };
        Ok(counter)
    }

    fn set_counter(&mut self, subject: &str, resource: &str, c: Counter) {
        self.cache.any_dirty = true;
        let cached = Cached {
            counter: Some(c),
            dirty: true,
        };
        match self
            .cache
            .counters
            .get_mut(subject)
            .and_then(|m| m.get_mut(resource))
        {
            Some(slot) => *slot = cached,
            None => *self.slot(subject, resource) = cached,
        }
    }

    fn flags(&mut self, subject: &str) -> rusqlite::Result<Flags> {
        if let Some(f) = self.cache.flags.get(subject) {
            return Ok(*f);
        }
        let f = load_flags(self.tx, subject)?;
        self.cache.flags.insert(subject.into(), f);
        Ok(f)
    }

    /// Write every changed counter once.
    pub(crate) fn flush(&mut self) -> rusqlite::Result<()> {
        if !std::mem::take(&mut self.cache.any_dirty) {
            return Ok(());
        }
        for (subject, per) in self.cache.counters.iter_mut() {
            for (resource, cached) in per.iter_mut() {
                if let (true, Some(c)) = (cached.dirty, &cached.counter) {
                    save_counter(self.tx, subject, resource, c)?;
                    cached.dirty = false;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn reserve(&mut self, r: &Reserve) -> rusqlite::Result<Reserved> {
        let mut gates: Vec<Flags> = Vec::with_capacity(r.gates.len());
        for g in &r.gates {
            gates.push(self.flags(g.as_str())?);
        }
        let mut counters = Vec::with_capacity(r.lines.len());
        for l in &r.lines {
            let c = self.counter(l.subject.as_str(), &l.resource)?;
            counters.push(c.unwrap_or_else(|| Counter::fresh(l)));
        }
        let passed = match decide(r, &mut counters, &mut gates) {
            Ok(p) => p,
            Err(d) => return Ok(Reserved::without_room(Admission::Denied(d))),
        };
        let id = r.lease.0;
        let expires_at = r.now.plus_millis(r.lease_ttl_ms).0;
        let text = encode_lines(&r.lines);
        // The caller's id (random, 63 bits: unique across processes on the file, never
        // reused). One already held is a retried call: granted again, reserved once.
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO leases (id, expires_at, lines) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id as i64, expires_at, text])?;
        if inserted == 0 {
            return Ok(Reserved::without_room(Admission::Granted(r.lease)));
        }
        let room = counters.iter().map(Counter::available).collect();
        for (l, c) in r.lines.iter().zip(counters) {
            self.set_counter(l.subject.as_str(), &l.resource, c);
        }
        for (i, (g, f)) in r.gates.iter().zip(gates).enumerate() {
            if passed.gate_changed(i) {
                self.save_flags(g.as_str(), f)?;
            }
        }
        let held = r
            .lines
            .iter()
            .map(|l| (l.subject.clone(), l.resource.clone(), l.amount))
            .collect();
        self.cache.leases.insert(id, held);
        Ok(Reserved {
            admission: passed.admission(r.lease),
            room,
        })
    }

    fn save_flags(&mut self, subject: &str, f: Flags) -> rusqlite::Result<()> {
        rows::save_flags(self.tx, subject, &f)?;
        self.cache.flags.insert(subject.into(), f);
        Ok(())
    }

    pub(crate) fn health(&mut self, s: &Subject, op: &HealthOp) -> rusqlite::Result<Flags> {
        let mut f = self.flags(s.as_str())?;
        f.apply_health(op);
        self.save_flags(s.as_str(), f)?;
        Ok(f)
    }

    /// Remove a lease; returns its lines, or none when the lease is gone (settled, expired
    /// or reset elsewhere).
    fn take_lease(&mut self, id: LeaseId) -> rusqlite::Result<Vec<Held>> {
        if let Some(held) = self.cache.leases.remove(&id.0) {
            let deleted = self
                .tx
                .prepare_cached("DELETE FROM leases WHERE id = ?1")?
                .execute([id.0 as i64])?;
            return Ok(if deleted == 1 {
                held.into()
            } else {
                Vec::new()
            });
        }
        let text: Option<String> = self
            .tx
            .prepare_cached("DELETE FROM leases WHERE id = ?1 RETURNING lines")?
            .query_row([id.0 as i64], |r| r.get(0))
            .optional()?;
        Ok(text.map(|t| decode_lines(&t)).unwrap_or_default())
    }

    fn unreserve(&mut self, subject: &str, resource: &str, amount: u64) -> rusqlite::Result<()> {
        if let Some(mut c) = self.counter(subject, resource)? {
            c.reserved = c.reserved.saturating_sub(amount);
            self.set_counter(subject, resource, c);
        }
        Ok(())
    }

    pub(crate) fn release(&mut self, id: LeaseId) -> rusqlite::Result<()> {
        for (s, r, amount) in self.take_lease(id)? {
            self.unreserve(s.as_str(), &r, amount)?;
        }
        Ok(())
    }

    pub(crate) fn commit(
        &mut self,
        id: LeaseId,
        now: Timestamp,
        used: &[Line],
    ) -> rusqlite::Result<()> {
        let mut held = self.take_lease(id)?;
        for l in used {
            let pos = held
                .iter()
                .position(|(s, r, _)| *s == l.subject && *r == l.resource);
            let reserved = pos.map(|i| held.swap_remove(i).2).unwrap_or(0);
            let mut c = self
                .counter(l.subject.as_str(), &l.resource)?
                .unwrap_or_else(|| Counter::fresh(l));
            c.settle(l, reserved, now);
            self.set_counter(l.subject.as_str(), &l.resource, c);
            // Usage changed: an operator's score override ends.
            if self.flags(l.subject.as_str())?.score.is_some() {
                self.tx
                    .prepare_cached("UPDATE subjects SET score = NULL WHERE subject = ?1")?
                    .execute([l.subject.as_str()])?;
                self.cache.flags.remove(l.subject.as_str());
            }
        }
        for (s, r, amount) in held {
            self.unreserve(s.as_str(), &r, amount)?;
        }
        Ok(())
    }

    pub(crate) fn sweep(&mut self, now: Timestamp) -> rusqlite::Result<()> {
        let expired: Vec<i64> = self
            .tx
            .prepare_cached("SELECT id FROM leases WHERE expires_at <= ?1")?
            .query_map([now.0], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in expired {
            self.release(LeaseId(id as u64))?;
        }
        Ok(())
    }

    pub(crate) fn set_cooldown(&mut self, s: &Subject, until: Timestamp) -> rusqlite::Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO subjects (subject, cooldown_until) VALUES (?1, ?2)
                 ON CONFLICT (subject) DO UPDATE SET cooldown_until =
                   max(coalesce(cooldown_until, 0), excluded.cooldown_until)",
            )?
            .execute(params![s.as_str(), until.0])?;
        self.cache.flags.remove(s.as_str());
        Ok(())
    }

    pub(crate) fn set_disabled(&mut self, s: &Subject, disabled: bool) -> rusqlite::Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO subjects (subject, disabled) VALUES (?1, ?2)
                 ON CONFLICT (subject) DO UPDATE SET disabled = excluded.disabled",
            )?
            .execute(params![s.as_str(), disabled as i64])?;
        self.cache.flags.remove(s.as_str());
        Ok(())
    }

    pub(crate) fn snapshot(&mut self, subject: &str) -> rusqlite::Result<Vec<SubjectState>> {
        self.flush()?;
        rows::snapshot(self.tx, subject)
    }

    pub(crate) fn update(
        &mut self,
        line: &Line,
        op: AdminOp,
        now: Timestamp,
    ) -> rusqlite::Result<Counter> {
        let mut c = self
            .counter(line.subject.as_str(), &line.resource)?
            .unwrap_or_else(|| Counter::fresh(line));
        c.apply_admin(line, op, now);
        self.set_counter(line.subject.as_str(), &line.resource, c);
        Ok(c)
    }

    pub(crate) fn scores(
        &mut self,
        now: Timestamp,
        subjects: &[(Subject, Vec<Line>)],
    ) -> rusqlite::Result<Vec<f64>> {
        let mut out = Vec::with_capacity(subjects.len());
        for (s, lines) in subjects {
            let flags = self.flags(s.as_str())?;
            let mut counters = Vec::with_capacity(lines.len());
            for l in lines {
                counters.push((l.clone(), self.counter(l.subject.as_str(), &l.resource)?));
            }
            out.push(score_of(&flags, &counters, now));
        }
        Ok(out)
    }

    pub(crate) fn set_score(
        &mut self,
        subject: &Subject,
        score: Option<f64>,
    ) -> rusqlite::Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO subjects (subject, score) VALUES (?1, ?2)
                 ON CONFLICT (subject) DO UPDATE SET score = excluded.score",
            )?
            .execute(params![subject.as_str(), score])?;
        self.cache.flags.remove(subject.as_str());
        Ok(())
    }

    /// Delete the counters and flags of `subject` and below; returns the counters deleted.
    pub(crate) fn reset(&mut self, subject: &str) -> rusqlite::Result<usize> {
        self.flush()?;
        let below = format!("{subject}/");
        let n = self
            .tx
            .prepare_cached(&format!("DELETE FROM counters WHERE {UNDER}"))?
            .execute(params![subject, below])?;
        self.tx
            .prepare_cached(&format!("DELETE FROM subjects WHERE {UNDER}"))?
            .execute(params![subject, below])?;
        forget_lease_lines(self.tx, subject)?;
        // Simplest correct cache after a bulk delete: start over.
        self.cache.counters.clear();
        self.cache.flags.clear();
        self.cache.leases.clear();
        Ok(n)
    }
}
