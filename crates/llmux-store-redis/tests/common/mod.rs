//! Helpers shared by the regression tests of this crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use llmux_core::store::{Admission, Counter, LeaseId, Line, Reserve, Store, StoreAdmin};
use llmux_core::{Subject, Timestamp, Window};
use llmux_store_redis::RedisStore;
use std::sync::Arc;

pub fn prefix(name: &str) -> String {
    format!("llmux{name}{}", std::process::id())
}

pub fn line(subject: &str, capacity: u64, amount: u64, start: i64, end: i64) -> Line {
    Line {
        subject: Subject::new(subject),
        resource: Arc::from("tpm"),
        window: Window {
            start: Timestamp(start),
            end: Timestamp(end),
        },
        capacity,
        amount,
    }
}

pub fn reserve(now: i64, ttl_ms: i64, lines: Vec<Line>) -> Reserve {
    Reserve {
        lease: LeaseId::random(&mut rand::rng()),
        now: Timestamp(now),
        lease_ttl_ms: ttl_ms,
        lines,
        gates: vec![],
        health: Default::default(),
    }
}

pub async fn granted(s: &RedisStore, r: Reserve) -> LeaseId {
    match s.reserve(r).await.unwrap() {
        Admission::Granted(id) | Admission::Probe(id) => id,
        Admission::Denied(d) => panic!("expected a grant, got {d:?}"),
    }
}

pub async fn counter(s: &RedisStore, subject: &str) -> Counter {
    let states = s.snapshot(subject).await.unwrap();
    states
        .iter()
        .find(|x| x.subject == subject)
        .and_then(|x| x.resources.iter().find(|(r, _)| r == "tpm"))
        .unwrap_or_else(|| panic!("no tpm on {subject}: {states:?}"))
        .1
}
