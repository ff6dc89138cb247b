//! `MemoryStore`: the store in one process's memory (tests, demos). One mutex section per call
//! makes check-and-write atomic; nothing survives a restart.

use crate::health::HealthOp;
use crate::ids::{at_or_below, Subject};
use crate::store::*;
use crate::time::Timestamp;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

type CounterKey = (Subject, Arc<str>);

struct LeaseRecord {
    expires_at: Timestamp,
    lines: Vec<(CounterKey, u64)>,
}

#[derive(Default)]
struct Inner {
    counters: HashMap<CounterKey, Counter>,
    leases: HashMap<u64, LeaseRecord>,
    flags: HashMap<Subject, Flags>,
    next_sweep: Timestamp,
    /// `(table, name) -> value` (see [`crate::records`]).
    records: std::collections::BTreeMap<(String, String), String>,
}

impl Inner {
    fn release(&mut self, lease: u64) {
        if let Some(rec) = self.leases.remove(&lease) {
            for (key, amount) in rec.lines {
                if let Some(c) = self.counters.get_mut(&key) {
                    c.reserved = c.reserved.saturating_sub(amount);
                }
            }
        }
    }

    fn sweep(&mut self, now: Timestamp) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.plus_millis(1000);
        let expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.release(id);
        }
    }
}

/// A [`Store`] in memory. Cloning shares the state.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStore")
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn commit_now(&self, lease: LeaseId, now: Timestamp, used: &[Line]) {
        let mut g = self.inner.lock();
        let reserved: HashMap<CounterKey, u64> = g
            .leases
            .remove(&lease.0)
            .map(|r| r.lines.into_iter().collect())
            .unwrap_or_default();
        for l in used {
            let key = (l.subject.clone(), l.resource.clone());
            let held = reserved.get(&key).copied().unwrap_or(0);
            let c = g.counters.entry(key).or_insert_with(|| Counter::fresh(l));
            c.settle(l, held, now);
            if let Some(f) = g.flags.get_mut(&l.subject) {
                f.score = None; // usage changed: an operator's score override ends
            }
        }
        // Lines reserved but absent from `used` are released.
        for (key, amount) in reserved {
            if !used
                .iter()
                .any(|l| l.subject == key.0 && l.resource == key.1)
            {
                if let Some(c) = g.counters.get_mut(&key) {
                    c.reserved = c.reserved.saturating_sub(amount);
                }
            }
        }
    }

    fn reserve_now(&self, r: &Reserve) -> Reserved {
        let mut g = self.inner.lock();
        g.sweep(r.now);
        if g.leases.contains_key(&r.lease.0) {
            return Reserved::without_room(Admission::Granted(r.lease));
        }
        let mut gates: Vec<Flags> = r
            .gates
            .iter()
            .map(|s| g.flags.get(s).copied().unwrap_or_default())
            .collect();
        let mut counters: Vec<Counter> = r
            .lines
            .iter()
            .map(|l| {
                g.counters
                    .get(&(l.subject.clone(), l.resource.clone()))
                    .copied()
                    .unwrap_or_else(|| Counter::fresh(l))
            })
            .collect();
        let passed = match decide(r, &mut counters, &mut gates) {
            Ok(p) => p,
            Err(d) => return Reserved::without_room(Admission::Denied(d)),
        };
        for (i, (s, f)) in r.gates.iter().zip(gates).enumerate() {
            if passed.gate_changed(i) {
                g.flags.insert(s.clone(), f);
            }
        }
        let id = r.lease.0;
        let mut lines = Vec::with_capacity(r.lines.len());
        let room = counters.iter().map(Counter::available).collect();
        for (l, c) in r.lines.iter().zip(counters) {
            let key = (l.subject.clone(), l.resource.clone());
            g.counters.insert(key.clone(), c);
            lines.push((key, l.amount));
        }
        g.leases.insert(
            id,
            LeaseRecord {
                expires_at: r.now.plus_millis(r.lease_ttl_ms),
                lines,
            },
        );
        Reserved {
            admission: passed.admission(r.lease),
            room,
        }
    }
}

impl Store for MemoryStore {
    async fn reserve_with_room(&self, r: Reserve) -> Result<Reserved, StoreError> {
        Ok(self.reserve_now(&r))
    }

    async fn commit(
        &self,
        lease: LeaseId,
        now: Timestamp,
        used: Vec<Line>,
    ) -> Result<(), StoreError> {
        self.commit_now(lease, now, &used);
        Ok(())
    }

    fn commit_detached(&self, lease: LeaseId, now: Timestamp, used: Vec<Line>) {
        self.commit_now(lease, now, &used);
    }

    async fn release(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.lock().release(lease.0);
        Ok(())
    }

    async fn set_cooldown(&self, subject: Subject, until: Timestamp) -> Result<(), StoreError> {
        let mut g = self.inner.lock();
        let f = g.flags.entry(subject).or_default();
        f.cooldown_until = Some(f.cooldown_until.map_or(until, |u| u.max(until)));
        Ok(())
    }

    async fn health(&self, subject: Subject, op: HealthOp) -> Result<Flags, StoreError> {
        let mut g = self.inner.lock();
        let f = g.flags.entry(subject).or_default();
        f.apply_health(&op);
        Ok(*f)
    }

    async fn scores(
        &self,
        now: Timestamp,
        subjects: Vec<(Subject, Vec<Line>)>,
    ) -> Result<Vec<f64>, StoreError> {
        let g = self.inner.lock();
        Ok(subjects
            .into_iter()
            .map(|(s, lines)| {
                let flags = g.flags.get(&s).copied().unwrap_or_default();
                let counters: Vec<(Line, Option<Counter>)> = lines
                    .into_iter()
                    .map(|l| {
                        let c = g
                            .counters
                            .get(&(l.subject.clone(), l.resource.clone()))
                            .copied();
                        (l, c)
                    })
                    .collect();
                score_of(&flags, &counters, now)
            })
            .collect())
    }

    async fn set_disabled(&self, subject: Subject, disabled: bool) -> Result<(), StoreError> {
        self.inner.lock().flags.entry(subject).or_default().disabled = disabled;
        Ok(())
    }
}

impl StoreAdmin for MemoryStore {
    async fn snapshot(&self, subject: &str) -> Result<Vec<SubjectState>, StoreError> {
        let g = self.inner.lock();
        let matches = |s: &str| at_or_below(s, subject);
        let counters = g
            .counters
            .iter()
            .filter(|((s, _), _)| matches(s.as_str()))
            .map(|((s, r), c)| (s.to_string(), r.to_string(), *c));
        let flags = g
            .flags
            .iter()
            .filter(|(s, _)| matches(s.as_str()))
            .map(|(s, f)| (s.to_string(), *f));
        Ok(SubjectState::collect(counters, flags))
    }

    async fn update(&self, line: Line, op: AdminOp, now: Timestamp) -> Result<Counter, StoreError> {
        let mut g = self.inner.lock();
        let key = (line.subject.clone(), line.resource.clone());
        let c = g
            .counters
            .entry(key)
            .or_insert_with(|| Counter::fresh(&line));
        c.apply_admin(&line, op, now);
        Ok(*c)
    }

    async fn set_score(&self, subject: Subject, score: Option<f64>) -> Result<(), StoreError> {
        self.inner.lock().flags.entry(subject).or_default().score = score;
        Ok(())
    }

    async fn reset(&self, subject: &str) -> Result<usize, StoreError> {
        let mut g = self.inner.lock();
        let matches = |s: &Subject| at_or_below(s.as_str(), subject);
        let before = g.counters.len();
        g.counters.retain(|(s, _), _| !matches(s));
        g.flags.retain(|s, _| !matches(s));
        // Leases in flight must not give back amounts on counters that no longer exist.
        for lease in g.leases.values_mut() {
            lease.lines.retain(|((s, _), _)| !matches(s));
        }
        Ok(before - g.counters.len())
    }
}

impl crate::records::Records for MemoryStore {
    async fn put_record(&self, table: &str, name: &str, value: &str) -> Result<(), StoreError> {
        let key = (table.to_string(), name.to_string());
        self.inner.lock().records.insert(key, value.to_string());
        Ok(())
    }
    async fn get_record(&self, table: &str, name: &str) -> Result<Option<String>, StoreError> {
        let key = (table.to_string(), name.to_string());
        Ok(self.inner.lock().records.get(&key).cloned())
    }
    async fn list_records(&self, table: &str) -> Result<Vec<(String, String)>, StoreError> {
        let g = self.inner.lock();
        Ok(g.records
            .iter()
            .filter(|((t, _), _)| t == table)
            .map(|((_, n), v)| (n.clone(), v.clone()))
            .collect())
    }
    async fn swap_record(
        &self,
        table: &str,
        name: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError> {
        let key = (table.to_string(), name.to_string());
        let mut g = self.inner.lock();
        if g.records.get(&key).map(String::as_str) != expected {
            return Ok(false);
        }
        g.records.insert(key, value.to_string());
        Ok(true)
    }
    async fn delete_record(&self, table: &str, name: &str) -> Result<bool, StoreError> {
        let key = (table.to_string(), name.to_string());
        Ok(self.inner.lock().records.remove(&key).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Window;

    fn line(amount: u64) -> Line {
        Line {
            subject: Subject::new("p/k"),
            resource: Arc::from("rpm"),
            window: Window {
                start: Timestamp(0),
                end: Timestamp(60_000),
            },
            capacity: 5,
            amount,
        }
    }

    fn reserve(now: i64) -> Reserve {
        Reserve {
            lease: LeaseId::random(&mut rand::rng()),
            now: Timestamp(now),
            lease_ttl_ms: 1_000,
            lines: vec![line(1)],
            gates: vec![],
            health: Default::default(),
        }
    }

    #[tokio::test]
    async fn concurrent_reserves_admit_exactly_capacity() {
        let s = MemoryStore::new();
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let s = s.clone();
            tasks.push(tokio::spawn(
                async move { s.reserve(reserve(0)).await.unwrap() },
            ));
        }
        let mut granted = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Admission::Granted(_)) {
                granted += 1;
            }
        }
        assert_eq!(granted, 5);
    }

    #[tokio::test]
    async fn expired_leases_give_capacity_back() {
        let s = MemoryStore::new();
        for _ in 0..5 {
            assert!(matches!(
                s.reserve(reserve(0)).await.unwrap(),
                Admission::Granted(_)
            ));
        }
        assert!(matches!(
            s.reserve(reserve(500)).await.unwrap(),
            Admission::Denied(_)
        ));
        assert!(matches!(
            s.reserve(reserve(1_000)).await.unwrap(),
            Admission::Granted(_)
        ));
    }

    #[tokio::test]
    async fn commit_swaps_reservation_for_usage() {
        let s = MemoryStore::new();
        let Admission::Granted(id) = s.reserve(reserve(0)).await.unwrap() else {
            panic!()
        };
        s.commit(id, Timestamp(1), vec![line(3)]).await.unwrap();
        let snap = s.snapshot("p").await.unwrap();
        let c = snap[0].resources[0].1;
        assert_eq!((c.used, c.reserved), (3, 0));
    }
}
