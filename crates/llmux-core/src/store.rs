//! The `Store`: accounting for resources, one atomic step per call.
//!
//! A reservation names every resource line that applies to a request (provider, key, model
//! pool, gateway key) plus the subjects that must not be cooling down or disabled (gates). The
//! store checks all of them and writes all of them, or writes nothing: that is what keeps
//! admission exact with many callers, many processes or many replicas.
//!
//! The store does arithmetic only, at the `now` it is given, with the rules of [`decide`] and
//! [`Counter::settle`], shared by every backend so they cannot disagree: a counter starts a new
//! window when its stored one has ended (never moving a window back), and
//! `used + reserved + amount <= capacity` must hold on every line.

pub use crate::health::Flags;
use crate::health::{check_gate, GateCheck, GateUse, HealthOp};
use crate::ids::Subject;
use crate::time::Timestamp;
use crate::window::Window;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// Identifies one reservation until it is committed, released or expires. The caller
/// chooses it (see [`LeaseId::random`]) before it asks the store, so a caller that stops
/// waiting for the answer can still release what the store may have granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LeaseId(pub u64);

impl LeaseId {
    /// A fresh id from `rng`: 63 random bits, never 0, so ids drawn by many processes on one
    /// store do not collide in practice and fit an SQLite integer.
    pub fn random(rng: &mut impl rand::Rng) -> LeaseId {
        LeaseId((rng.random::<u64>() >> 1).max(1))
    }
}

/// One resource of one subject, with the window and capacity config gives it now.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub subject: Subject,
    pub resource: Arc<str>,
    /// The window containing `now` (for `custom` periods: one starting now).
    pub window: Window,
    pub capacity: u64,
    /// What to reserve (in `reserve`) or what was used (in `commit`).
    pub amount: u64,
}

/// A request to reserve `amount` on every line, if every gate is open.
#[derive(Clone, Debug)]
pub struct Reserve {
    /// The id the lease gets if granted. Reserving an id that is already held is answered
    /// `Granted` again without reserving twice, so a retried call cannot double-count.
    pub lease: LeaseId,
    pub now: Timestamp,
    /// How long the reservation holds if never committed or released.
    pub lease_ttl_ms: i64,
    pub lines: Vec<Line>,
    /// Subjects that must be neither cooling down nor disabled, whose breaker must let the
    /// request through and whose learned limits must have room (see [`crate::health`]).
    pub gates: Vec<Subject>,
    /// What the request brings to those gates.
    pub health: GateUse,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    Granted(LeaseId),
    /// Granted as a probe of a half-open breaker: its outcome closes or reopens the breaker.
    Probe(LeaseId),
    Denied(Denial),
}

impl Admission {
    /// The lease, if granted (as a probe or not).
    pub fn lease(&self) -> Option<LeaseId> {
        match self {
            Admission::Granted(id) | Admission::Probe(id) => Some(*id),
            Admission::Denied(_) => None,
        }
    }
}

/// What a store answered a reservation, with the room left on each of its lines.
#[derive(Clone, Debug, PartialEq)]
pub struct Reserved {
    pub admission: Admission,
    /// After a new grant: `capacity - used - reserved` of `lines[i]`, this grant included.
    /// Empty after a denial, and for a lease id already held (a retried call).
    pub room: Vec<u64>,
}

impl Reserved {
    pub fn without_room(admission: Admission) -> Reserved {
        Reserved {
            admission,
            room: Vec::new(),
        }
    }
}

/// Why a reservation was refused, and when it could succeed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Denial {
    pub subject: Subject,
    pub reason: DenialReason,
    /// The earliest instant at which this limit could admit the request; `None` = not by
    /// waiting (a disabled key, or a request larger than the capacity).
    pub retry_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DenialReason {
    /// `used + reserved + amount > capacity` on this resource.
    Exhausted {
        resource: Arc<str>,
        capacity: u64,
        used: u64,
        reserved: u64,
        amount: u64,
    },
    /// The request alone is larger than the capacity: it never fits.
    NeverFits {
        resource: Arc<str>,
        capacity: u64,
        amount: u64,
    },
    /// Cooling down after an upstream 429.
    Cooldown,
    /// Disabled after a 401/403 or by an operator.
    Disabled,
    /// The target's circuit breaker is open.
    BreakerOpen,
    /// The model pool's `max_concurrent` requests are in flight.
    Concurrency { max_concurrent: u32 },
    /// The model's wait queue holds `max_queued` waiters already: a newcomer does not try
    /// ahead of them.
    QueueFull { max_queued: usize },
}

impl Denial {
    /// A short name of the limit hit, e.g. `openai/k1:rpm` or `openai/k1:cooldown`.
    pub fn limit(&self) -> String {
        match &self.reason {
            DenialReason::Exhausted { resource, .. } | DenialReason::NeverFits { resource, .. } => {
                format!("{}:{}", self.subject, resource)
            }
            DenialReason::Cooldown => format!("{}:cooldown", self.subject),
            DenialReason::Disabled => format!("{}:disabled", self.subject),
            DenialReason::BreakerOpen => format!("{}:breaker", self.subject),
            DenialReason::Concurrency { .. } => format!("{}:max_concurrent", self.subject),
            DenialReason::QueueFull { .. } => format!("{}:queue", self.subject),
        }
    }
}

/// A resource counter as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub capacity: u64,
    pub used: u64,
    pub reserved: u64,
    pub window: Window,
}

impl Counter {
    /// A counter seen for the first time, in `line`'s window.
    pub fn fresh(line: &Line) -> Counter {
        Counter {
            capacity: line.capacity,
            used: 0,
            reserved: 0,
            window: line.window,
        }
    }

    /// Start `window` if the stored window has ended by `now`; `used` restarts at 0 and
    /// reservations in flight stay reserved.
    pub fn roll(&mut self, window: Window, now: Timestamp) {
        if now >= self.window.end {
            self.used = 0;
            self.window = window;
        }
    }

    /// Room left in this window.
    pub fn available(&self) -> u64 {
        self.capacity
            .saturating_sub(self.used.saturating_add(self.reserved))
    }

    /// Apply a commit line: the reserved amount goes, the used amount comes. The stored
    /// capacity stays: the line carries the capacity of when the lease was granted, and an
    /// operator (`sync-config`) may have changed it since. A counter the commit creates
    /// ([`Counter::fresh`]) has the line's.
    pub fn settle(&mut self, line: &Line, reserved: u64, now: Timestamp) {
        self.roll(line.window, now);
        self.reserved = self.reserved.saturating_sub(reserved);
        self.used = self.used.saturating_add(line.amount);
    }
}

/// A granted reservation's effect on its gates: `changed` has bit `i` set when `gates[i]`'s
/// flags changed and must be written back; `probe` when it passed a half-open breaker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Passed {
    pub changed: u64,
    pub probe: bool,
}

impl Passed {
    pub fn gate_changed(&self, i: usize) -> bool {
        i < 64 && self.changed & (1 << i) != 0
    }
    /// The admission for lease `id`.
    pub fn admission(&self, id: LeaseId) -> Admission {
        if self.probe {
            Admission::Probe(id)
        } else {
            Admission::Granted(id)
        }
    }
}

/// Decide a reservation. `counters[i]` is the stored counter of `lines[i]` (or
/// [`Counter::fresh`]), `gates[i]` the flags of `r.gates[i]`. On success every counter has been
/// rolled and has `amount` added to `reserved`, and the gates whose flags changed (learned
/// shares taken, a probe counted) are named in [`Passed`]; on denial the caller must write
/// nothing. When several lines refuse, the one that frees up last is reported.
pub fn decide(
    r: &Reserve,
    counters: &mut [Counter],
    gates: &mut [Flags],
) -> Result<Passed, Denial> {
    // Gates are checked on copies, so a denial by a later gate or line changes none.
    let mut checked: [Option<Flags>; 4] = [None; 4];
    let mut passed = Passed::default();
    for (i, (subject, flags)) in r.gates.iter().zip(gates.iter()).enumerate() {
        let mut f = *flags;
        let deny = |reason, retry_at| {
            Err(Denial {
                subject: subject.clone(),
                reason,
                retry_at,
            })
        };
        match check_gate(&mut f, r.now, &r.health) {
            GateCheck::Pass { changed, probe } => {
                passed.probe |= probe;
                if changed && i < 64 {
                    passed.changed |= 1 << i;
                    match checked.get_mut(i) {
                        Some(slot) => *slot = Some(f),
                        None => return Err(too_many_gates(subject)),
                    }
                }
            }
            GateCheck::Disabled => return deny(DenialReason::Disabled, None),
            GateCheck::Cooldown(until) => return deny(DenialReason::Cooldown, Some(until)),
            GateCheck::BreakerOpen(until) => return deny(DenialReason::BreakerOpen, Some(until)),
            GateCheck::Learned {
                measure,
                learned,
                amount,
            } => {
                return deny(
                    DenialReason::Exhausted {
                        resource: Arc::from(measure.resource()),
                        capacity: learned.limit,
                        used: learned.limit.saturating_sub(learned.remaining),
                        reserved: 0,
                        amount,
                    },
                    Some(learned.reset_at),
                )
            }
        }
    }
    let mut worst: Option<Denial> = None;
    for (line, c) in r.lines.iter().zip(counters.iter_mut()) {
        c.capacity = line.capacity;
        c.roll(line.window, r.now);
        if line.amount > c.available() {
            let d = if line.amount > c.capacity {
                Denial {
                    subject: line.subject.clone(),
                    reason: DenialReason::NeverFits {
                        resource: line.resource.clone(),
                        capacity: c.capacity,
                        amount: line.amount,
                    },
                    retry_at: None,
                }
            } else {
                Denial {
                    subject: line.subject.clone(),
                    reason: DenialReason::Exhausted {
                        resource: line.resource.clone(),
                        capacity: c.capacity,
                        used: c.used,
                        reserved: c.reserved,
                        amount: line.amount,
                    },
                    retry_at: Some(c.window.end),
                }
            };
            let replace = match &worst {
                None => true,
                Some(w) => match (w.retry_at, d.retry_at) {
                    (_, None) => w.retry_at.is_some(),
                    (Some(a), Some(b)) => b > a,
                    (None, Some(_)) => false,
                },
            };
            if replace {
                worst = Some(d);
            }
        }
    }
    if let Some(d) = worst {
        return Err(d);
    }
    for (line, c) in r.lines.iter().zip(counters.iter_mut()) {
        c.reserved += line.amount;
    }
    for (flags, new) in gates.iter_mut().zip(checked) {
        if let Some(new) = new {
            *flags = new;
        }
    }
    Ok(passed)
}

/// More than four gates whose flags change in one reservation: no plan makes one (a target
/// has three gates), so this is a caller's mistake, refused rather than half-applied.
fn too_many_gates(subject: &Subject) -> Denial {
    Denial {
        subject: subject.clone(),
        reason: DenialReason::Disabled,
        retry_at: None,
    }
}

/// A store failed to answer (I/O, lost connection, corrupt data). Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Backend(String),
}

/// Accounting for resources. Each method is one round trip and one atomic step.
pub trait Store: Send + Sync + 'static {
    /// Reserve on every line or on none, if every gate is open. A denial is an answer.
    fn reserve(&self, r: Reserve) -> impl Future<Output = Result<Admission, StoreError>> + Send {
        async move { Ok(self.reserve_with_room(r).await?.admission) }
    }
    /// [`Store::reserve`], also answering the room each line has left after a grant (what
    /// the gateway's `x-ratelimit-*` and `RateLimit` headers report).
    fn reserve_with_room(
        &self,
        r: Reserve,
    ) -> impl Future<Output = Result<Reserved, StoreError>> + Send;
    /// Swap the lease's reservation for the usage in `used` (one line per resource, `amount` =
    /// used; may exceed the reservation). Usage is recorded even if the lease has expired.
    fn commit(
        &self,
        lease: LeaseId,
        now: Timestamp,
        used: Vec<Line>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// [`Store::commit`] without waiting for it: the store applies it in order after every call
    /// made before, and logs a failure. The gateway's path, so clients never wait on it.
    fn commit_detached(&self, lease: LeaseId, now: Timestamp, used: Vec<Line>);
    /// Give the reservation back untouched.
    fn release(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Cool `subject` down until `until` (never shortens a longer cooldown).
    fn set_cooldown(
        &self,
        subject: Subject,
        until: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Apply a health change (a 429's growing cooldown, a breaker's trip or close, learned
    /// limits) to `subject` atomically; returns its flags after.
    fn health(
        &self,
        subject: Subject,
        op: HealthOp,
    ) -> impl Future<Output = Result<Flags, StoreError>> + Send;
    /// Disable or re-enable `subject`.
    fn set_disabled(
        &self,
        subject: Subject,
        disabled: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The score (see [`score`]) of each subject, given the lines of its resources (their
    /// windows and capacities at `now`; amounts are ignored). One round trip.
    fn scores(
        &self,
        now: Timestamp,
        subjects: Vec<(Subject, Vec<Line>)>,
    ) -> impl Future<Output = Result<Vec<f64>, StoreError>> + Send;
}

/// The score of one subject from its flags and the stored counters of its lines (`None` =
/// never used): see [`score`].
pub fn score_of(flags: &Flags, counters: &[(Line, Option<Counter>)], now: Timestamp) -> f64 {
    let state = SubjectState {
        subject: String::new(),
        flags: *flags,
        resources: counters
            .iter()
            .map(|(l, c)| {
                let mut c = c.unwrap_or_else(|| Counter::fresh(l));
                c.capacity = l.capacity;
                (String::new(), c)
            })
            .collect(),
    };
    score(&state, now)
}

/// A subject's stored state, for `show-state` and `/admin/state`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SubjectState {
    pub subject: String,
    pub flags: Flags,
    pub resources: Vec<(String, Counter)>,
}

impl SubjectState {
    /// Every store's snapshot from what it read: counters as `(subject, resource, counter)`
    /// and flags as `(subject, flags)`. One state per subject, subjects and their resources
    /// in name order.
    pub fn collect(
        counters: impl IntoIterator<Item = (String, String, Counter)>,
        flags: impl IntoIterator<Item = (String, Flags)>,
    ) -> Vec<SubjectState> {
        use std::collections::BTreeMap;
        fn entry(out: &mut BTreeMap<String, SubjectState>, s: String) -> &mut SubjectState {
            out.entry(s.clone()).or_insert_with(|| SubjectState {
                subject: s,
                ..Default::default()
            })
        }
        let mut out = BTreeMap::new();
        for (s, r, c) in counters {
            entry(&mut out, s).resources.push((r, c));
        }
        for (s, f) in flags {
            entry(&mut out, s).flags = f;
        }
        let mut v: Vec<SubjectState> = out.into_values().collect();
        for s in &mut v {
            s.resources.sort_by(|a, b| a.0.cmp(&b.0));
        }
        v
    }
}

/// Operator access to stored state (the CLI). Not on the request path.
pub trait StoreAdmin: Send + Sync {
    /// Every subject equal to `subject` or below it (`provider` includes `provider/…`).
    fn snapshot(
        &self,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<SubjectState>, StoreError>> + Send;
    /// Apply `op` to the counter of `line` (created from `line` if absent), atomically with
    /// respect to reservations; returns the counter after.
    fn update(
        &self,
        line: Line,
        op: AdminOp,
        now: Timestamp,
    ) -> impl Future<Output = Result<Counter, StoreError>> + Send;
    /// Override `subject`'s score until its usage next changes (`None` clears it).
    fn set_score(
        &self,
        subject: Subject,
        score: Option<f64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forget every counter, cooldown, disabled flag and score of `subject` and below.
    /// Reservations in flight are forgotten with their counters; usage they report later is
    /// still recorded. Returns how many counters were removed.
    fn reset(&self, subject: &str) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

/// An operator's change to one counter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AdminOp {
    /// `used = value` in the current window.
    SetUsed(u64),
    /// `used += delta` (floored at 0) in the current window.
    AdjustUsed(i64),
    /// Restart the window now, lasting `secs`; `used` and `reserved` are kept.
    SetTtl { secs: u64 },
    /// Take capacity from the line, and its window unless `keep_start` (custom periods keep
    /// their start and get `ttl_ms`); `used` and `reserved` are kept.
    Sync { custom_ttl_ms: Option<i64> },
}

impl Counter {
    /// Apply an operator's change at `now`; `line` carries the config's capacity and window.
    pub fn apply_admin(&mut self, line: &Line, op: AdminOp, now: Timestamp) {
        match op {
            AdminOp::SetUsed(v) => {
                self.roll(line.window, now);
                self.used = v;
            }
            AdminOp::AdjustUsed(d) => {
                self.roll(line.window, now);
                self.used =
                    (i128::from(self.used) + i128::from(d)).clamp(0, i128::from(u64::MAX)) as u64;
            }
            AdminOp::SetTtl { secs } => {
                self.window = Window {
                    start: now,
                    end: now.plus_millis(crate::time::secs_to_millis(secs)),
                };
            }
            AdminOp::Sync { custom_ttl_ms } => {
                self.capacity = line.capacity;
                match custom_ttl_ms {
                    Some(ttl) if now < self.window.end => {
                        self.window.end = self.window.start.plus_millis(ttl);
                    }
                    _ => self.window = line.window,
                }
            }
        }
    }

    /// Remaining fraction of capacity in this window at `now` (1 = untouched).
    pub fn remaining_fraction(&self, now: Timestamp) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        let used = if now >= self.window.end { 0 } else { self.used };
        let left = self
            .capacity
            .saturating_sub(used.saturating_add(self.reserved));
        left as f64 / self.capacity as f64
    }
}

/// The score of a subject: the lowest remaining fraction over its resources (1 with none),
/// 0 while cooling down or disabled; an operator's override wins until usage changes.
pub fn score(state: &SubjectState, now: Timestamp) -> f64 {
    if let Some(s) = state.flags.score {
        return s;
    }
    if state.flags.disabled
        || state.flags.cooldown_until.is_some_and(|u| u > now)
        || state.flags.breaker.open_until.is_some_and(|u| u > now)
    {
        return 0.0;
    }
    state
        .resources
        .iter()
        .map(|(_, c)| c.remaining_fraction(now))
        .fold(1.0, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(cap: u64, amount: u64) -> Line {
        Line {
            subject: Subject::new("p/k"),
            resource: Arc::from("rpm"),
            window: Window {
                start: Timestamp(0),
                end: Timestamp(60_000),
            },
            capacity: cap,
            amount,
        }
    }

    fn reserve(lines: Vec<Line>, now: i64) -> Reserve {
        Reserve {
            lease: LeaseId(1),
            now: Timestamp(now),
            lease_ttl_ms: 1000,
            lines,
            gates: vec![],
            health: GateUse::default(),
        }
    }

    #[test]
    fn all_or_nothing() {
        let r = reserve(vec![line(10, 3), line(2, 3)], 0);
        let mut cs: Vec<Counter> = r.lines.iter().map(Counter::fresh).collect();
        let d = decide(&r, &mut cs, &mut []).unwrap_err();
        assert!(matches!(
            d.reason,
            DenialReason::NeverFits { capacity: 2, .. }
        ));
        assert_eq!(d.retry_at, None);
        assert!(cs.iter().all(|c| c.reserved == 0));
    }

    #[test]
    fn exhausted_reports_window_end_and_rolls_over() {
        let r = reserve(vec![line(1, 1)], 0);
        let mut cs = vec![Counter::fresh(&r.lines[0])];
        decide(&r, &mut cs, &mut []).unwrap();
        let d = decide(&r, &mut cs, &mut []).unwrap_err();
        assert_eq!(d.retry_at, Some(Timestamp(60_000)));
        cs[0].settle(&line(1, 1), 1, Timestamp(10));
        assert_eq!((cs[0].used, cs[0].reserved), (1, 0));
        let mut next = line(1, 1);
        next.window = Window {
            start: Timestamp(60_000),
            end: Timestamp(120_000),
        };
        let r2 = reserve(vec![next], 60_000);
        decide(&r2, &mut cs, &mut []).unwrap();
        assert_eq!((cs[0].used, cs[0].reserved), (0, 1));
    }

    #[test]
    fn gates_refuse_cooling_and_disabled() {
        let mut r = reserve(vec![], 5);
        r.gates = vec![Subject::new("p/k")];
        let cool = Flags {
            cooldown_until: Some(Timestamp(10)),
            ..Flags::default()
        };
        let d = decide(&r, &mut [], &mut [cool]).unwrap_err();
        assert_eq!(
            (d.reason, d.retry_at),
            (DenialReason::Cooldown, Some(Timestamp(10)))
        );
        r.now = Timestamp(10);
        assert!(decide(&r, &mut [], &mut [cool]).is_ok());
    }
}
