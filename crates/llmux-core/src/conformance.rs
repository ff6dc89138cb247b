//! The behaviour every [`Store`] must show, written once and run from each store's
//! `tests/conformance.rs` (memory, sqlite, and redis against a real server). Each check panics
//! with a message naming what broke.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use crate::health::{GateUse, Growth, HealthOp, Learned, LearnedMeasure};
use crate::ids::Subject;
use crate::store::*;
use crate::time::Timestamp;
use crate::window::Window;
use std::sync::Arc;

fn line(subject: &str, resource: &str, capacity: u64, amount: u64, window_end: i64) -> Line {
    Line {
        subject: Subject::new(subject),
        resource: Arc::from(resource),
        window: Window {
            start: Timestamp(window_end - 60_000),
            end: Timestamp(window_end),
        },
        capacity,
        amount,
    }
}

fn reserve(now: i64, lines: Vec<Line>, gates: &[&str]) -> Reserve {
    Reserve {
        lease: LeaseId::random(&mut rand::rng()),
        now: Timestamp(now),
        lease_ttl_ms: 10_000,
        lines,
        gates: gates.iter().map(|g| Subject::new(g)).collect(),
        health: GateUse::default(),
    }
}

async fn counter<S: StoreAdmin>(s: &S, subject: &str, resource: &str) -> Counter {
    let states = s.snapshot(subject).await.unwrap();
    let st = states
        .iter()
        .find(|x| x.subject == subject)
        .unwrap_or_else(|| panic!("no state for {subject}: {states:?}"));
    st.resources
        .iter()
        .find(|(n, _)| n == resource)
        .unwrap_or_else(|| panic!("no {resource} on {subject}"))
        .1
}

async fn granted<S: Store>(s: &S, r: Reserve) -> LeaseId {
    match s.reserve(r).await.unwrap() {
        Admission::Granted(id) => id,
        Admission::Probe(id) => panic!("expected a plain grant, got probe {id:?}"),
        Admission::Denied(d) => panic!("expected a grant, got {d:?}"),
    }
}

async fn denied<S: Store>(s: &S, r: Reserve) -> Denial {
    match s.reserve(r).await.unwrap() {
        Admission::Granted(id) | Admission::Probe(id) => {
            panic!("expected a denial, got lease {id:?}")
        }
        Admission::Denied(d) => d,
    }
}

/// Run every check. `ns` keeps subjects of different runs apart on a shared server.
pub async fn run<S: Store + StoreAdmin + crate::records::Records>(s: &S, ns: &str) {
    records(s, &format!("{ns}r")).await;
    // Time only moves forward across the checks, as it does for a real store.
    all_or_nothing(s, &format!("{ns}a")).await;
    commit_reconciles(s, &format!("{ns}b")).await;
    leases_expire(s, &format!("{ns}d")).await;
    gates(s, &format!("{ns}e")).await;
    admin(s, &format!("{ns}f")).await;
    reset_forgets_leases(s, &format!("{ns}g")).await;
    windows_roll(s, &format!("{ns}c")).await;
    lease_ids_are_the_callers(s, &format!("{ns}h")).await;
    health(s, &format!("{ns}i")).await;
}

async fn flags<S: StoreAdmin>(s: &S, subject: &str) -> Flags {
    let states = s.snapshot(subject).await.unwrap();
    states
        .iter()
        .find(|x| x.subject == subject)
        .map(|x| x.flags)
        .unwrap_or_else(|| panic!("no flags for {subject}: {states:?}"))
}

/// Growing cooldowns, a breaker's open → half-open (bounded probes) → closed, and learned
/// limits that take each reservation's share until their reset; `reset` forgets them all.
async fn health<S: Store + StoreAdmin>(s: &S, p: &str) {
    let k = format!("{p}/k");
    let t = format!("{p}/k/m");
    let g = Growth::default();
    let cool = |now: i64, hint: Option<i64>| HealthOp::RateLimited {
        now: Timestamp(now),
        hint: hint.map(Timestamp),
        growth: g,
    };
    let f = s
        .health(Subject::new(&k), cool(40_000, None))
        .await
        .unwrap();
    assert_eq!((f.cooldown_until, f.strikes), (Some(Timestamp(41_000)), 1));
    // During the cooldown: no strike. Right after: twice as long.
    let f = s
        .health(Subject::new(&k), cool(40_500, None))
        .await
        .unwrap();
    assert_eq!((f.cooldown_until, f.strikes), (Some(Timestamp(41_500)), 1));
    let f = s
        .health(Subject::new(&k), cool(41_600, None))
        .await
        .unwrap();
    assert_eq!((f.cooldown_until, f.strikes), (Some(Timestamp(43_600)), 2));
    // A longer hint wins; a shorter one never shortens.
    let f = s
        .health(Subject::new(&k), cool(43_000, Some(50_000)))
        .await
        .unwrap();
    assert_eq!(f.cooldown_until, Some(Timestamp(50_000)));
    assert_eq!(flags(s, &k).await.strikes, 2, "snapshot shows the strikes");
    let d = denied(s, reserve(49_000, vec![], &[&k])).await;
    assert_eq!(
        (d.reason, d.retry_at),
        (DenialReason::Cooldown, Some(Timestamp(50_000)))
    );

    // Breaker: open, then one probe, then open again until the probe reports.
    s.health(Subject::new(&t), HealthOp::Breaker(Some(Timestamp(55_000))))
        .await
        .unwrap();
    let d = denied(s, reserve(54_000, vec![], &[&k, &t])).await;
    assert_eq!(
        (d.reason, d.retry_at, d.subject.as_str()),
        (
            DenialReason::BreakerOpen,
            Some(Timestamp(55_000)),
            t.as_str()
        )
    );
    let mut probe = reserve(55_000, vec![], &[&k, &t]);
    probe.health.open_ms = 10_000;
    let probe_id = probe.lease;
    assert_eq!(s.reserve(probe).await.unwrap(), Admission::Probe(probe_id));
    let d = denied(s, reserve(55_001, vec![], &[&k, &t])).await;
    assert_eq!(
        (d.reason, d.retry_at),
        (DenialReason::BreakerOpen, Some(Timestamp(65_000))),
        "its probe is out: open again"
    );
    s.release(probe_id).await.unwrap();
    s.health(Subject::new(&t), HealthOp::Breaker(None))
        .await
        .unwrap();
    let id = granted(s, reserve(55_002, vec![], &[&k, &t])).await;
    s.release(id).await.unwrap();

    // Learned limits: 2 requests and 100 tokens left until 70 s.
    let mut limits = [None; 4];
    limits[LearnedMeasure::Requests.index()] = Some(Learned {
        limit: 60,
        remaining: 2,
        reset_at: Timestamp(70_000),
    });
    limits[LearnedMeasure::Tokens.index()] = Some(Learned {
        limit: 1000,
        remaining: 100,
        reset_at: Timestamp(70_000),
    });
    s.health(Subject::new(&k), HealthOp::Learned(limits))
        .await
        .unwrap();
    let with_tokens = |now: i64, tokens: u64| {
        let mut r = reserve(now, vec![], &[&k]);
        r.health.learned = [1, tokens, 0, 0];
        r
    };
    let d = denied(s, with_tokens(60_000, 101)).await;
    assert_eq!(d.retry_at, Some(Timestamp(70_000)));
    assert!(
        matches!(&d.reason, DenialReason::Exhausted { resource, capacity: 1000, amount: 101, .. } if &**resource == "upstream_tokens"),
        "{d:?}"
    );
    granted(s, with_tokens(60_000, 60)).await;
    granted(s, with_tokens(60_001, 40)).await;
    let d = denied(s, with_tokens(60_002, 0)).await;
    assert!(
        matches!(&d.reason, DenialReason::Exhausted { resource, used: 60, .. } if &**resource == "upstream_requests"),
        "{d:?}"
    );
    let f = flags(s, &k).await;
    assert_eq!(
        f.learned[LearnedMeasure::Tokens.index()].map(|l| l.remaining),
        Some(0)
    );
    // Past the reset the limit no longer applies.
    granted(s, with_tokens(70_000, 500)).await;
    s.reset(p).await.unwrap();
    assert!(
        s.snapshot(p).await.unwrap().is_empty(),
        "reset forgets health"
    );
    granted(s, reserve(70_001, vec![], &[&k, &t])).await;
}

/// A grant carries the id the caller chose; the same id again (a retried call) is granted
/// without reserving twice, and releasing it gives back the one reservation.
async fn lease_ids_are_the_callers<S: Store + StoreAdmin>(s: &S, p: &str) {
    let r = reserve(200_000, vec![line(p, "rpm", 5, 1, 240_000)], &[]);
    let id = granted(s, r.clone()).await;
    assert_eq!(id, r.lease, "the grant carries the caller's id");
    assert_eq!(
        granted(s, r.clone()).await,
        r.lease,
        "a retried reserve is granted again"
    );
    assert_eq!(
        counter(s, p, "rpm").await.reserved,
        1,
        "a retried reserve reserves once"
    );
    s.release(id).await.unwrap();
    assert_eq!(counter(s, p, "rpm").await.reserved, 0);
    s.release(id).await.unwrap();
    assert_eq!(
        counter(s, p, "rpm").await.reserved,
        0,
        "a second release is a no-op"
    );
}

async fn all_or_nothing<S: Store + StoreAdmin>(s: &S, p: &str) {
    let k = format!("{p}/k");
    let id = granted(
        s,
        reserve(
            1_000,
            vec![
                line(p, "tpm", 100, 60, 60_000),
                line(&k, "rpm", 2, 1, 60_000),
            ],
            &[],
        ),
    )
    .await;
    let d = denied(
        s,
        reserve(
            1_000,
            vec![
                line(p, "tpm", 100, 50, 60_000),
                line(&k, "rpm", 2, 1, 60_000),
            ],
            &[],
        ),
    )
    .await;
    assert_eq!(d.subject.as_str(), p, "the tpm line refuses");
    assert!(
        matches!(
            d.reason,
            DenialReason::Exhausted {
                used: 0,
                reserved: 60,
                amount: 50,
                ..
            }
        ),
        "{d:?}"
    );
    assert_eq!(d.retry_at, Some(Timestamp(60_000)));
    assert_eq!(
        counter(s, &k, "rpm").await.reserved,
        1,
        "a denial writes nothing"
    );
    let d = denied(
        s,
        reserve(1_000, vec![line(p, "tpm", 100, 101, 60_000)], &[]),
    )
    .await;
    assert!(
        matches!(d.reason, DenialReason::NeverFits { .. }) && d.retry_at.is_none(),
        "{d:?}"
    );
    s.release(id).await.unwrap();
    assert_eq!(counter(s, p, "tpm").await.reserved, 0);
    assert_eq!(counter(s, &k, "rpm").await.reserved, 0);
}

async fn commit_reconciles<S: Store + StoreAdmin>(s: &S, p: &str) {
    let id = granted(
        s,
        reserve(1_000, vec![line(p, "tpm", 100, 30, 60_000)], &[]),
    )
    .await;
    s.commit(id, Timestamp(2_000), vec![line(p, "tpm", 100, 45, 60_000)])
        .await
        .unwrap();
    let c = counter(s, p, "tpm").await;
    assert_eq!(
        (c.used, c.reserved, c.capacity),
        (45, 0, 100),
        "usage may exceed the estimate"
    );
    // A commit of an unknown (expired, swept) lease still records usage.
    s.commit(
        LeaseId(u64::MAX / 2),
        Timestamp(3_000),
        vec![line(p, "tpm", 100, 5, 60_000)],
    )
    .await
    .unwrap();
    assert_eq!(counter(s, p, "tpm").await.used, 50);
    let d = denied(
        s,
        reserve(3_000, vec![line(p, "tpm", 100, 51, 60_000)], &[]),
    )
    .await;
    assert!(
        matches!(d.reason, DenialReason::Exhausted { used: 50, .. }),
        "{d:?}"
    );
    // A lease granted under the old capacity settles after an operator changed it: the
    // commit must not write the old capacity back.
    let id = granted(s, reserve(3_000, vec![line(p, "tpm", 100, 1, 60_000)], &[])).await;
    s.update(
        line(p, "tpm", 80, 0, 60_000),
        AdminOp::Sync {
            custom_ttl_ms: None,
        },
        Timestamp(3_000),
    )
    .await
    .unwrap();
    s.commit(id, Timestamp(3_000), vec![line(p, "tpm", 100, 1, 60_000)])
        .await
        .unwrap();
    let c = counter(s, p, "tpm").await;
    assert_eq!(
        (c.capacity, c.used, c.reserved),
        (80, 51, 0),
        "a commit keeps the capacity an operator set"
    );
}

async fn windows_roll<S: Store + StoreAdmin>(s: &S, p: &str) {
    let id = granted(s, reserve(1_000, vec![line(p, "rpm", 1, 1, 60_000)], &[])).await;
    denied(s, reserve(9_999, vec![line(p, "rpm", 1, 1, 60_000)], &[])).await;
    s.commit(id, Timestamp(2_000), vec![line(p, "rpm", 1, 1, 60_000)])
        .await
        .unwrap();
    // The next window starts afresh.
    let id2 = granted(s, reserve(60_000, vec![line(p, "rpm", 1, 1, 120_000)], &[])).await;
    let c = counter(s, p, "rpm").await;
    assert_eq!(
        (c.used, c.reserved, c.window.end),
        (0, 1, Timestamp(120_000))
    );
    s.release(id2).await.unwrap();
}

async fn leases_expire<S: Store + StoreAdmin>(s: &S, p: &str) {
    // A store may expire leases by the caller's `now` or by its own clock (Redis: one clock
    // for all replicas), so the lease outlives its TTL on both: 500 ms of `now` and of real
    // time.
    let mut lost = reserve(1_000, vec![line(p, "rpm", 1, 1, 60_000)], &[]);
    lost.lease_ttl_ms = 500;
    granted(s, lost).await;
    denied(s, reserve(1_100, vec![line(p, "rpm", 1, 1, 60_000)], &[])).await;
    // Blocks the thread briefly: this suite has no runtime of its own to sleep on.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let id = granted(s, reserve(11_001, vec![line(p, "rpm", 1, 1, 60_000)], &[])).await;
    assert_eq!(counter(s, p, "rpm").await.reserved, 1);
    s.release(id).await.unwrap();
}

async fn gates<S: Store + StoreAdmin>(s: &S, p: &str) {
    let k = format!("{p}/k");
    s.set_cooldown(Subject::new(&k), Timestamp(25000))
        .await
        .unwrap();
    s.set_cooldown(Subject::new(&k), Timestamp(24000))
        .await
        .unwrap(); // never shortens
    let d = denied(
        s,
        reserve(21000, vec![line(p, "rpm", 10, 1, 60_000)], &[p, &k]),
    )
    .await;
    assert_eq!(
        (d.reason.clone(), d.retry_at),
        (DenialReason::Cooldown, Some(Timestamp(25000)))
    );
    assert_eq!(d.subject.as_str(), k);
    let id = granted(
        s,
        reserve(25000, vec![line(p, "rpm", 10, 1, 60_000)], &[p, &k]),
    )
    .await;
    s.release(id).await.unwrap();
    s.set_disabled(Subject::new(p), true).await.unwrap();
    let d = denied(s, reserve(26000, vec![], &[p, &k])).await;
    assert_eq!((d.reason, d.retry_at), (DenialReason::Disabled, None));
    s.set_disabled(Subject::new(p), false).await.unwrap();
    granted(s, reserve(26000, vec![], &[p, &k])).await;
}

async fn admin<S: Store + StoreAdmin>(s: &S, p: &str) {
    let k = format!("{p}/k");
    let l = line(&k, "rpm", 10, 0, 60_000);
    let c = s
        .update(l.clone(), AdminOp::SetUsed(7), Timestamp(21000))
        .await
        .unwrap();
    assert_eq!((c.used, c.capacity), (7, 10));
    let c = s
        .update(l.clone(), AdminOp::AdjustUsed(-9), Timestamp(21000))
        .await
        .unwrap();
    assert_eq!(c.used, 0, "floored at 0");
    let c = s
        .update(l.clone(), AdminOp::AdjustUsed(4), Timestamp(21000))
        .await
        .unwrap();
    assert_eq!(c.used, 4);
    let c = s
        .update(l.clone(), AdminOp::SetTtl { secs: 3600 }, Timestamp(22000))
        .await
        .unwrap();
    assert_eq!(
        (c.window.start, c.window.end, c.used),
        (Timestamp(22000), Timestamp(3_622_000), 4)
    );
    let mut bigger = l.clone();
    bigger.capacity = 20;
    let c = s
        .update(
            bigger,
            AdminOp::Sync {
                custom_ttl_ms: None,
            },
            Timestamp(23000),
        )
        .await
        .unwrap();
    assert_eq!(
        (c.capacity, c.used, c.window.end),
        (20, 4, Timestamp(60_000))
    );

    s.set_score(Subject::new(&k), Some(0.25)).await.unwrap();
    let sc = s
        .scores(
            Timestamp(23000),
            vec![(Subject::new(&k), vec![line(&k, "rpm", 20, 0, 60_000)])],
        )
        .await
        .unwrap();
    assert_eq!(sc, vec![0.25]);
    let id = granted(s, reserve(23000, vec![line(&k, "rpm", 20, 1, 60_000)], &[])).await;
    s.commit(id, Timestamp(23000), vec![line(&k, "rpm", 20, 1, 60_000)])
        .await
        .unwrap();
    let sc = s
        .scores(
            Timestamp(23000),
            vec![(Subject::new(&k), vec![line(&k, "rpm", 20, 0, 60_000)])],
        )
        .await
        .unwrap();
    assert!(
        (sc[0] - 0.75).abs() < 1e-9,
        "a usage change ends the override: {sc:?}"
    );

    let snap = s.snapshot(p).await.unwrap();
    assert!(snap.iter().any(|x| x.subject == k), "{snap:?}");
    assert_eq!(s.reset(p).await.unwrap(), 1);
    assert!(
        s.snapshot(p).await.unwrap().is_empty(),
        "reset clears the provider and its keys"
    );
}

async fn reset_forgets_leases<S: Store + StoreAdmin>(s: &S, p: &str) {
    let k = format!("{p}/k");
    let a = granted(
        s,
        reserve(
            30_000,
            vec![
                line(&k, "rpm", 1, 1, 60_000),
                line("other", "rpm", 5, 1, 60_000),
            ],
            &[],
        ),
    )
    .await;
    assert_eq!(s.reset(p).await.unwrap(), 1);
    let b = granted(s, reserve(30_100, vec![line(&k, "rpm", 1, 1, 60_000)], &[])).await;
    // The old lease settles after the reset: it must not free B's reservation...
    s.release(a).await.unwrap();
    assert_eq!(counter(s, &k, "rpm").await.reserved, 1);
    denied(s, reserve(30_200, vec![line(&k, "rpm", 1, 1, 60_000)], &[])).await;
    // ...while its lines on subjects not reset are given back as usual.
    assert_eq!(counter(s, "other", "rpm").await.reserved, 0);
    s.release(b).await.unwrap();
}

/// Records: put replaces, get and list read back (by name), delete says whether it removed,
/// and tables are apart.
async fn records<S: crate::records::Records>(s: &S, ns: &str) {
    let t = format!("{ns}-table");
    let other = format!("{ns}-other");
    assert_eq!(s.get_record(&t, "a").await.unwrap(), None);
    s.put_record(&t, "b", "{\"v\":2}").await.unwrap();
    s.put_record(&t, "a", "one").await.unwrap();
    s.put_record(&t, "a", "uno").await.unwrap();
    s.put_record(&other, "a", "elsewhere").await.unwrap();
    assert_eq!(s.get_record(&t, "a").await.unwrap().as_deref(), Some("uno"));
    assert_eq!(
        s.list_records(&t).await.unwrap(),
        vec![
            ("a".to_string(), "uno".to_string()),
            ("b".to_string(), "{\"v\":2}".to_string())
        ]
    );
    assert!(s.delete_record(&t, "a").await.unwrap());
    assert!(!s.delete_record(&t, "a").await.unwrap());
    assert_eq!(s.list_records(&t).await.unwrap().len(), 1);
    assert_eq!(
        s.get_record(&other, "a").await.unwrap().as_deref(),
        Some("elsewhere")
    );
    // Compare and swap: set only over what the caller saw (absent, or that value).
    assert!(s.swap_record(&t, "l", None, "first").await.unwrap());
    assert!(!s.swap_record(&t, "l", None, "second").await.unwrap());
    assert!(!s
        .swap_record(&t, "l", Some("stale"), "second")
        .await
        .unwrap());
    assert_eq!(
        s.get_record(&t, "l").await.unwrap().as_deref(),
        Some("first")
    );
    assert!(s
        .swap_record(&t, "l", Some("first"), "second")
        .await
        .unwrap());
    assert_eq!(
        s.get_record(&t, "l").await.unwrap().as_deref(),
        Some("second")
    );
    // Many over the same value seen: only the first sets it.
    let mut won = Vec::new();
    for i in 0..8 {
        won.push(
            s.swap_record(&t, "l", Some("second"), &format!("v{i}"))
                .await
                .unwrap(),
        );
    }
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    assert_eq!(s.get_record(&t, "l").await.unwrap().as_deref(), Some("v0"));
}
