//! `RedisStore`: the store several gateway replicas share. Nothing home-made replaces Redis:
//! every check-and-write is one Lua script (`src/lua/*_vN.lua`, versioned by name), one round
//! trip, atomic on the server, so no replica slips between another's check and write.
//!
//! Two clocks. Lease expiry runs on the Redis server's clock (`TIME` inside `reserve_v4`): a
//! lease lives `lease_ttl_ms` of server time and is swept by server time, so replicas whose
//! clocks disagree cannot expire each other's leases (one running ten minutes ahead would
//! otherwise free every lease of the others, and limits would stop holding). The caller's `now`
//! is kept for the calendar the caller computed: which window a line is in, the roll check
//! `now >= window_end`, cooldown instants, and how long a counter outlives its window.
//!
//! Key layout under `PREFIX:v1:{PREFIX}:` (the `{PREFIX}` hash tag puts every key of one llmux
//! deployment in one slot, so a reservation across provider, key and model subjects stays one
//! atomic script on Redis Cluster and Valkey too):
//! `c:SUBJECT|RESOURCE` counter hashes (`cap used res ws we`, expiring an hour after their
//! window ends), `f:SUBJECT` flag hashes (`values::FLAG_FIELDS`: cooldown, disabled, score, strikes,
//! breaker, learned limits), `leases` + `lexp` (reservations
//! and their expiry), `seq`, and the `index` / `fidx` sets the CLI lists state from.
//! Counts are stored as decimal integers (never `1e+17`): capacities exactly as configured, sums
//! computed in Lua's doubles, so exact up to 2^53.
//!
//! The connection is made lazily and then kept by redis' `ConnectionManager`, which reconnects
//! by itself: a gateway starts while Redis is down (calls fail with `StoreError::Unavailable`)
//! and recovers when it returns.
//!
//! Detached commits keep their order: one background task per store (started by the first
//! `commit_detached`, on the caller's runtime) sends them in the order they were made, several
//! queued ones pipelined in one round trip. Every other call of the store (and of its clones)
//! first waits until the detached commits made before it are applied, so it sees them. A
//! commit Redis refuses is logged; one that could not be sent because Redis is unreachable is
//! retried a few times, then logged. A later call waits for them at most `TIMEOUT` (2 s), and
//! not at all while they find Redis unreachable (it would fail as well); then it goes on.

use llmux_core::health::{Breaker, HealthOp, Learned, LearnedMeasure};
use llmux_core::ids::at_or_below;
use llmux_core::store::{
    score_of, AdminOp, Admission, Counter, Denial, DenialReason, Flags, LeaseId, Line, Reserve,
    Reserved, Store, StoreAdmin, StoreError, SubjectState,
};
use llmux_core::{Subject, Timestamp, Window};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

mod detached;
mod values;

use detached::{Conn, Detached, Job, Worker};
use values::{count, flags_of, int, line_args, parse_count, parse_instant, text, FLAG_FIELDS};

struct Scripts {
    reserve: Script,
    commit: Script,
    release: Script,
    cooldown: Script,
    health: Script,
    admin: Script,
    reset: Script,
    swap_record: Script,
}

/// A [`Store`] in Redis. Cloning shares the connection and the order of detached commits.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    detached: Arc<Detached>,
}

/// What the store handles and the background task of detached commits share.
struct Inner {
    client: redis::Client,
    conn: parking_lot::Mutex<Option<ConnectionManager>>,
    /// `PREFIX:v1:{PREFIX}:`
    base: String,
    scripts: Scripts,
    /// Keeps counters this long past their window so late commits find them.
    linger_ms: i64,
    /// The ticket of the last detached commit applied (or given up on).
    done: watch::Sender<u64>,
    /// The background task's last round trip found Redis unreachable: calls do not wait for
    /// it then (they would fail anyway, and an outage must not slow every call down).
    unreachable: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("RedisStore")
            .field("base", &self.inner.base)
            .finish()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// How long a call may take before the store counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(2);
impl Inner {
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis: connection timed out".into()))?
        .map_err(unavailable)?;
        *self.conn.lock() = Some(c.clone());
        Ok(c)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.base)
    }
    fn counter_key(&self, subject: &str, resource: &str) -> String {
        format!("{}c:{subject}|{resource}", self.base)
    }
    fn flags_key(&self, subject: &str) -> String {
        format!("{}f:{subject}", self.base)
    }

    /// The commit script's invocation for one commit.
    fn commit_invocation(
        &self,
        lease: LeaseId,
        now: Timestamp,
        used: &[Line],
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.scripts.commit.prepare_invoke();
        inv.key(self.key("leases"))
            .key(self.key("lexp"))
            .key(self.key("index"));
        for l in used {
            inv.key(self.counter_key(l.subject.as_str(), &l.resource));
        }
        for l in used {
            inv.key(self.flags_key(l.subject.as_str()));
        }
        inv.arg(lease.0)
            .arg(now.0)
            .arg(used.len())
            .arg(self.linger_ms);
        for l in used {
            line_args(&mut inv, l);
        }
        inv
    }
}

impl RedisStore {
    /// A store at `url` (`redis://…`) under `prefix`. Connects on first use.
    pub fn open(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid redis url: {e}")))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                conn: parking_lot::Mutex::new(None),
                base: format!("{prefix}:v1:{{{prefix}}}:"),
                scripts: Scripts {
                    reserve: Script::new(include_str!("lua/reserve_v4.lua")),
                    commit: Script::new(include_str!("lua/commit_v3.lua")),
                    release: Script::new(include_str!("lua/release_v2.lua")),
                    cooldown: Script::new(include_str!("lua/cooldown_v1.lua")),
                    health: Script::new(include_str!("lua/health_v1.lua")),
                    admin: Script::new(include_str!("lua/admin_v2.lua")),
                    reset: Script::new(include_str!("lua/reset_v1.lua")),
                    swap_record: Script::new(include_str!("lua/swap_record_v1.lua")),
                },
                linger_ms: 3_600_000,
                done: watch::Sender::new(0),
                unreachable: AtomicBool::new(false),
            }),
            detached: Arc::new(Detached {
                queue: parking_lot::Mutex::new(None),
                issued: AtomicU64::new(0),
            }),
        })
    }

    /// Connect now (e.g. to report an unreachable Redis at start-up).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// The connection, once every detached commit made before is applied: every call goes
    /// through here, so it sees them ([`Store::commit_detached`]'s promise).
    async fn conn(&self) -> Result<Conn, StoreError> {
        let issued = self.detached.issued.load(Ordering::Acquire);
        let inner = &self.inner;
        let settled = |d: &u64| *d >= issued || inner.unreachable.load(Ordering::Acquire);
        if !settled(&inner.done.borrow()) {
            let mut done = inner.done.subscribe();
            let settled = tokio::time::timeout(TIMEOUT, done.wait_for(settled)).await;
            if settled.is_err() {
                tracing::debug!("earlier usage is still being recorded in redis; going on");
            }
        }
        Ok(Conn {
            c: self.inner.conn().await?,
            inner: self.inner.clone(),
        })
    }

    fn key(&self, rest: &str) -> String {
        self.inner.key(rest)
    }
    fn counter_key(&self, subject: &str, resource: &str) -> String {
        self.inner.counter_key(subject, resource)
    }
    fn flags_key(&self, subject: &str) -> String {
        self.inner.flags_key(subject)
    }

    async fn flags(&self, c: &mut Conn, subjects: &[&str]) -> Result<Vec<Flags>, StoreError> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for s in subjects {
            pipe.cmd("HMGET")
                .arg(self.flags_key(s))
                .arg(&FLAG_FIELDS[..]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(c).await.map_err(unavailable)?;
        Ok(rows.iter().map(|r| flags_of(r)).collect())
    }

    async fn counters(
        &self,
        c: &mut Conn,
        keys: &[String],
    ) -> Result<Vec<Option<Counter>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HMGET")
                .arg(k)
                .arg("cap")
                .arg("used")
                .arg("res")
                .arg("ws")
                .arg("we");
        }
        type Row = [Option<String>; 5];
        let rows: Vec<Row> = pipe.query_async(c).await.map_err(unavailable)?;
        rows.into_iter()
            .map(|[cap, used, res, ws, we]| {
                let (Some(cap), Some(ws), Some(we)) = (cap, ws, we) else {
                    return Ok(None);
                };
                let count = |v: Option<String>| v.as_deref().map_or(Ok(0), parse_count);
                Ok(Some(Counter {
                    capacity: parse_count(&cap)?,
                    used: count(used)?,
                    reserved: count(res)?,
                    window: Window {
                        start: Timestamp(parse_instant(&ws)?),
                        end: Timestamp(parse_instant(&we)?),
                    },
                }))
            })
            .collect()
    }
}

impl Store for RedisStore {
    async fn reserve_with_room(&self, r: Reserve) -> Result<Reserved, StoreError> {
        let mut c = self.conn().await?;
        let s = &self.inner.scripts.reserve;
        let mut inv = s.prepare_invoke();
        inv.key(self.key("seq"))
            .key(self.key("leases"))
            .key(self.key("lexp"))
            .key(self.key("index"));
        for l in &r.lines {
            inv.key(self.counter_key(l.subject.as_str(), &l.resource));
        }
        for g in &r.gates {
            inv.key(self.flags_key(g.as_str()));
        }
        inv.arg(r.now.0)
            .arg(r.lease_ttl_ms)
            .arg(r.lines.len())
            .arg(r.gates.len())
            .arg(r.lease.0)
            .arg(r.health.probes)
            .arg(r.health.open_ms);
        for share in r.health.learned {
            inv.arg(share);
        }
        for l in &r.lines {
            line_args(&mut inv, l);
        }
        let out: Vec<Value> = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        let granted = match out.first().map(int) {
            Some(1) => Some(Admission::Granted(r.lease)),
            Some(2) => Some(Admission::Probe(r.lease)),
            _ => None,
        };
        if let Some(admission) = granted {
            let room = out.get(2..).unwrap_or(&[]).iter().map(count);
            return Ok(Reserved {
                admission,
                room: room.collect::<Result<_, _>>()?,
            });
        }
        let kind = out.get(1).map(text).unwrap_or_default();
        let idx = out.get(2).map(int).unwrap_or(1).max(1) as usize - 1;
        let num = |i: usize| out.get(i).map(int).unwrap_or(0);
        let retry_at = (num(7) >= 0).then(|| Timestamp(num(7)));
        let gate = || {
            r.gates
                .get(idx)
                .cloned()
                .ok_or_else(|| StoreError::Backend("bad reply from reserve_v4".into()))
        };
        let denial = match kind.as_str() {
            "disabled" | "cooldown" | "breaker" => Denial {
                subject: gate()?,
                reason: match kind.as_str() {
                    "disabled" => DenialReason::Disabled,
                    "cooldown" => DenialReason::Cooldown,
                    _ => DenialReason::BreakerOpen,
                },
                retry_at,
            },
            "learned" => {
                let count = |i: usize| out.get(i).map_or(Ok(0), count);
                let m = usize::try_from(num(8) - 1).unwrap_or(0);
                let measure = LearnedMeasure::ALL
                    .get(m)
                    .ok_or_else(|| StoreError::Backend("bad reply from reserve_v4".into()))?;
                Denial {
                    subject: gate()?,
                    reason: DenialReason::Exhausted {
                        resource: Arc::from(measure.resource()),
                        capacity: count(3)?,
                        used: count(4)?,
                        reserved: 0,
                        amount: count(6)?,
                    },
                    retry_at,
                }
            }
            _ => {
                let line = r
                    .lines
                    .get(idx)
                    .ok_or_else(|| StoreError::Backend("bad reply from reserve_v4".into()))?;
                let count = |i: usize| out.get(i).map_or(Ok(0), count);
                let (capacity, used, reserved, amount) =
                    (count(3)?, count(4)?, count(5)?, count(6)?);
                Denial {
                    subject: line.subject.clone(),
                    reason: if kind == "never" {
                        DenialReason::NeverFits {
                            resource: line.resource.clone(),
                            capacity,
                            amount,
                        }
                    } else {
                        DenialReason::Exhausted {
                            resource: line.resource.clone(),
                            capacity,
                            used,
                            reserved,
                            amount,
                        }
                    },
                    retry_at,
                }
            }
        };
        Ok(Reserved::without_room(Admission::Denied(denial)))
    }

    async fn commit(
        &self,
        lease: LeaseId,
        now: Timestamp,
        used: Vec<Line>,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        self.inner
            .commit_invocation(lease, now, &used)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Queued to the store's background task, which applies detached commits in order; every
    /// later call of this store waits for them (see the module docs).
    fn commit_detached(&self, lease: LeaseId, now: Timestamp, used: Vec<Line>) {
        let mut queue = self.detached.queue.lock();
        let ticket = self.detached.issued.load(Ordering::Relaxed) + 1;
        let mut job = Job {
            ticket,
            lease,
            now,
            used,
        };
        if let Some(tx) = queue.as_ref() {
            match tx.send(job) {
                Ok(()) => {
                    self.detached.issued.store(ticket, Ordering::Release);
                    return;
                }
                // The task's runtime has stopped: start another on this one.
                Err(mpsc::error::SendError(j)) => job = j,
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to record usage in redis");
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(
            Worker {
                inner: self.inner.clone(),
                rx,
                in_flight: None,
            }
            .run(),
        );
        if tx.send(job).is_ok() {
            self.detached.issued.store(ticket, Ordering::Release);
        } else {
            tracing::warn!("no runtime to record usage in redis");
        }
        *queue = Some(tx);
    }

    async fn release(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        self.inner
            .scripts
            .release
            .key(self.key("leases"))
            .key(self.key("lexp"))
            .arg(lease.0)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn set_cooldown(&self, subject: Subject, until: Timestamp) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        self.inner
            .scripts
            .cooldown
            .key(self.flags_key(subject.as_str()))
            .key(self.key("fidx"))
            .arg(until.0)
            .arg(subject.as_str())
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn health(&self, subject: Subject, op: HealthOp) -> Result<Flags, StoreError> {
        let mut c = self.conn().await?;
        let script = &self.inner.scripts.health;
        let mut inv = script.prepare_invoke();
        inv.key(self.flags_key(subject.as_str()))
            .key(self.key("fidx"))
            .arg(subject.as_str());
        match op {
            HealthOp::RateLimited { now, hint, growth } => {
                inv.arg("cool")
                    .arg(now.0)
                    .arg(hint.map_or(-1, |h| h.0))
                    .arg(growth.base_ms)
                    .arg(growth.factor)
                    .arg(growth.max_ms);
            }
            HealthOp::Breaker(until) => {
                inv.arg("breaker").arg(until.map_or(-1, |u| u.0));
            }
            HealthOp::Learned(limits) => {
                inv.arg("learn");
                for l in limits {
                    match l {
                        Some(l) => inv.arg(l.limit).arg(l.remaining).arg(l.reset_at.0),
                        None => inv.arg("").arg("").arg(""),
                    };
                }
            }
        }
        let row: Vec<Option<String>> = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(flags_of(&row))
    }

    async fn set_disabled(&self, subject: Subject, disabled: bool) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(self.flags_key(subject.as_str()))
            .arg("dis")
            .arg(if disabled { "1" } else { "0" })
            .ignore()
            .cmd("SADD")
            .arg(self.key("fidx"))
            .arg(subject.as_str())
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn scores(
        &self,
        now: Timestamp,
        subjects: Vec<(Subject, Vec<Line>)>,
    ) -> Result<Vec<f64>, StoreError> {
        let mut c = self.conn().await?;
        let names: Vec<&str> = subjects.iter().map(|(s, _)| s.as_str()).collect();
        let flags = self.flags(&mut c, &names).await?;
        let keys: Vec<String> = subjects
            .iter()
            .flat_map(|(_, ls)| {
                ls.iter()
                    .map(|l| self.counter_key(l.subject.as_str(), &l.resource))
            })
            .collect();
        let mut counters = self.counters(&mut c, &keys).await?.into_iter();
        Ok(subjects
            .iter()
            .zip(flags)
            .map(|((_, ls), f)| {
                let pairs: Vec<(Line, Option<Counter>)> = ls
                    .iter()
                    .map(|l| (l.clone(), counters.next().flatten()))
                    .collect();
                score_of(&f, &pairs, now)
            })
            .collect())
    }
}

impl StoreAdmin for RedisStore {
    async fn snapshot(&self, subject: &str) -> Result<Vec<SubjectState>, StoreError> {
        let mut c = self.conn().await?;
        let matches = |s: &str| at_or_below(s, subject);
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("index"))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut pairs: Vec<(String, String)> = members
            .iter()
            .filter_map(|m| m.rsplit_once('|'))
            .filter(|(s, _)| matches(s))
            .map(|(s, r)| (s.to_string(), r.to_string()))
            .collect();
        pairs.sort();
        let keys: Vec<String> = pairs.iter().map(|(s, r)| self.counter_key(s, r)).collect();
        let counters = self.counters(&mut c, &keys).await?;
        // A counter that expired with its window is left out.
        let counters: Vec<(String, String, Counter)> = pairs
            .into_iter()
            .zip(counters)
            .filter_map(|((s, r), ctr)| Some((s, r, ctr?)))
            .collect();
        let flagged: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("fidx"))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let flagged: Vec<&str> = flagged
            .iter()
            .map(String::as_str)
            .filter(|s| matches(s))
            .collect();
        let flags = self.flags(&mut c, &flagged).await?;
        let flags = flagged.into_iter().map(str::to_string).zip(flags);
        Ok(SubjectState::collect(counters, flags))
    }

    async fn update(&self, line: Line, op: AdminOp, now: Timestamp) -> Result<Counter, StoreError> {
        let mut c = self.conn().await?;
        let (name, value): (&str, String) = match op {
            AdminOp::SetUsed(v) => ("set_used", v.to_string()),
            AdminOp::AdjustUsed(d) => ("adjust", d.to_string()),
            AdminOp::SetTtl { secs } => ("ttl", secs.to_string()),
            AdminOp::Sync { custom_ttl_ms } => ("sync", custom_ttl_ms.unwrap_or(-1).to_string()),
        };
        let out: Vec<Value> = self
            .inner
            .scripts
            .admin
            .key(self.counter_key(line.subject.as_str(), &line.resource))
            .key(self.key("index"))
            .arg(name)
            .arg(now.0)
            .arg(format!("{}|{}", line.subject, line.resource))
            .arg(line.window.start.0)
            .arg(line.window.end.0)
            .arg(line.capacity)
            .arg(value)
            .arg(self.inner.linger_ms)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let field = |i: usize| {
            out.get(i)
                .map(text)
                .ok_or_else(|| StoreError::Backend("bad reply from admin_v2".into()))
        };
        Ok(Counter {
            capacity: parse_count(&field(0)?)?,
            used: parse_count(&field(1)?)?,
            reserved: parse_count(&field(2)?)?,
            window: Window {
                start: Timestamp(parse_instant(&field(3)?)?),
                end: Timestamp(parse_instant(&field(4)?)?),
            },
        })
    }

    async fn set_score(&self, subject: Subject, score: Option<f64>) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let key = self.flags_key(subject.as_str());
        let mut pipe = redis::pipe();
        pipe.atomic();
        match score {
            Some(v) => pipe.cmd("HSET").arg(&key).arg("score").arg(v).ignore(),
            None => pipe.cmd("HDEL").arg(&key).arg("score").ignore(),
        };
        pipe.cmd("SADD")
            .arg(self.key("fidx"))
            .arg(subject.as_str())
            .ignore();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn reset(&self, subject: &str) -> Result<usize, StoreError> {
        let mut c = self.conn().await?;
        let n: i64 = self
            .inner
            .scripts
            .reset
            .key(self.key("index"))
            .key(self.key("fidx"))
            .key(self.key("leases"))
            .arg(subject)
            .arg(self.key("c:"))
            .arg(self.key("f:"))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n as usize)
    }
}

/// One hash per table: `{prefix}…:r:TABLE`, field = name.
impl llmux_core::Records for RedisStore {
    async fn put_record(&self, table: &str, name: &str, value: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("HSET")
            .arg(self.key(&format!("r:{table}")))
            .arg(name)
            .arg(value)
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }
    async fn get_record(&self, table: &str, name: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("HGET")
            .arg(self.key(&format!("r:{table}")))
            .arg(name)
            .query_async(&mut c)
            .await
            .map_err(unavailable)
    }
    async fn list_records(&self, table: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut c = self.conn().await?;
        let mut all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key(&format!("r:{table}")))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        all.sort();
        Ok(all)
    }
    async fn swap_record(
        &self,
        table: &str,
        name: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: i64 = self
            .inner
            .scripts
            .swap_record
            .key(self.key(&format!("r:{table}")))
            .arg(name)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(value)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
    async fn delete_record(&self, table: &str, name: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: i64 = redis::cmd("HDEL")
            .arg(self.key(&format!("r:{table}")))
            .arg(name)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }
}
