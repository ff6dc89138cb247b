//! Counts of 10^17 and more are stored as integers and read back exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{counter, granted, line, prefix, reserve};
use llmux_core::store::{AdminOp, Admission, DenialReason, LeaseId, Store, StoreAdmin};
use llmux_core::{Subject, Timestamp};
use llmux_store_redis::RedisStore;
use llmux_testkit::redis::RedisServer;
use std::sync::Arc;

#[tokio::test]
async fn capacities_of_1e17_and_1e18_are_exact() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = RedisStore::open(server.url(), &prefix("big")).unwrap();
    for (i, cap) in [100_000_000_000_000_000u64, 1_000_000_000_000_000_000]
        .into_iter()
        .enumerate()
    {
        let subj = format!("big/{i}");
        let l = |amount| line(&subj, cap, amount, 0, 60_000);
        // The whole capacity reserved, then given back: `res` is written as `cap`.
        let id = granted(&s, reserve(1_000, 60_000, vec![l(cap)])).await;
        let c = counter(&s, &subj).await;
        assert_eq!(
            (c.capacity, c.used, c.reserved),
            (cap, 0, cap),
            "after a reservation of the capacity"
        );
        // (Sums are doubles in Lua: exact up to 2^53, so the amounts here are exact doubles.)
        let d = match s
            .reserve(reserve(1_000, 60_000, vec![l(cap)]))
            .await
            .unwrap()
        {
            Admission::Denied(d) => d,
            Admission::Granted(_) | Admission::Probe(_) => panic!("the line is full"),
        };
        assert_eq!(
            d.reason,
            DenialReason::Exhausted {
                resource: Arc::from("tpm"),
                capacity: cap,
                used: 0,
                reserved: cap,
                amount: cap,
            }
        );
        let d = match s
            .reserve(reserve(1_000, 60_000, vec![l(2 * cap)]))
            .await
            .unwrap()
        {
            Admission::Denied(d) => d,
            Admission::Granted(_) | Admission::Probe(_) => panic!("twice the capacity never fits"),
        };
        assert_eq!(
            d.reason,
            DenialReason::NeverFits {
                resource: Arc::from("tpm"),
                capacity: cap,
                amount: 2 * cap,
            }
        );
        s.release(id).await.unwrap();
        assert_eq!(counter(&s, &subj).await.reserved, 0, "after release");

        let id = granted(&s, reserve(1_000, 60_000, vec![l(3)])).await;
        let c = counter(&s, &subj).await;
        assert_eq!(
            (c.capacity, c.used, c.reserved),
            (cap, 0, 3),
            "after reserve"
        );
        s.commit(id, Timestamp(2_000), vec![l(5)]).await.unwrap();
        let c = counter(&s, &subj).await;
        assert_eq!(
            (c.capacity, c.used, c.reserved),
            (cap, 5, 0),
            "after commit"
        );

        let c = s
            .update(l(0), AdminOp::SetUsed(cap), Timestamp(3_000))
            .await
            .unwrap();
        assert_eq!((c.capacity, c.used), (cap, cap), "admin reply");
        let c = counter(&s, &subj).await;
        assert_eq!((c.capacity, c.used), (cap, cap), "after admin");
        let id = LeaseId::random(&mut rand::rng());
        s.commit(id, Timestamp(3_000), vec![l(0)]).await.unwrap();
        assert_eq!(
            counter(&s, &subj).await.used,
            cap,
            "a commit keeps it exact"
        );
        let sc = s
            .scores(Timestamp(3_000), vec![(Subject::new(&subj), vec![l(0)])])
            .await
            .unwrap();
        assert_eq!(sc, vec![0.0]);
    }
}
