//! State commands: show and administer what the store holds for a provider or `provider/key`.
//! Each mutation is one store call, atomic with respect to running gateways on the same store,
//! which see it on their next request.

use crate::NotFound;
use anyhow::bail;
use llmux::core::config::{Provider, Resource};
use llmux::core::health::{BreakerState, LearnedMeasure};
use llmux::core::ids::at_or_below;
use llmux::core::records::DISABLED;
use llmux::core::store::{score, AdminOp, Counter, StoreAdmin, SubjectState};
use llmux::core::time::secs_to_millis;
use llmux::core::Records;
use llmux::core::{window_at, Clock, Line, Measure, Period, Subject, SystemClock, Timestamp};
use llmux::{AnyStore, Config};
use std::io::Write;
use std::sync::Arc;

/// A subject named on the command line, checked against config.
pub struct Target<'a> {
    pub subject: Subject,
    pub provider: &'a Arc<Provider>,
    /// The subject's own resources (provider's, or the key's).
    pub resources: &'a [Resource],
}

/// Resolve SUBJECT (`provider` or `provider/key`) in config; unknown ones exit 1.
pub fn target<'a>(config: &'a Config, subject: &str) -> anyhow::Result<Target<'a>> {
    let (provider, key) = match subject.split_once('/') {
        Some((p, k)) => (p, Some(k)),
        None => (subject, None),
    };
    let Some(p) = config.provider(provider) else {
        return Err(NotFound(format!("no provider {provider:?} in config")).into());
    };
    match key {
        None => Ok(Target {
            subject: Subject::provider(&p.id),
            provider: p,
            resources: &p.resources,
        }),
        Some(k) => match p.keys.iter().find(|x| x.id.as_str() == k) {
            Some(key) => Ok(Target {
                subject: Subject::key(&p.id, &key.id),
                provider: p,
                resources: &key.resources,
            }),
            None => Err(NotFound(format!("provider {provider:?} has no key {k:?}")).into()),
        },
    }
}

impl Target<'_> {
    fn resource(&self, name: &str) -> anyhow::Result<&Resource> {
        self.resources
            .iter()
            .find(|r| &*r.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.resources.iter().map(|r| &*r.name).collect();
                NotFound(format!(
                    "{} has no resource {name:?} in config (it has: {})",
                    self.subject,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
                .into()
            })
    }

    fn line(&self, r: &Resource, now: Timestamp) -> Line {
        Line {
            subject: self.subject.clone(),
            resource: r.name.clone(),
            window: window_at(r.period, &self.provider.timezone, now),
            capacity: r.stored_capacity(),
            amount: 0,
        }
    }
}

fn open(config: &Config) -> anyhow::Result<AnyStore> {
    Ok(AnyStore::open(&config.store)?)
}

/// Stored state of `subject` and below, with configured resources not used yet filled in.
async fn states(
    store: &AnyStore,
    t: &Target<'_>,
    now: Timestamp,
) -> anyhow::Result<Vec<SubjectState>> {
    let mut states = store.snapshot(t.subject.as_str()).await?;
    let mut expected: Vec<(Subject, &[Resource])> = vec![(t.subject.clone(), t.resources)];
    if !t.subject.as_str().contains('/') {
        for k in &t.provider.keys {
            expected.push((Subject::key(&t.provider.id, &k.id), &k.resources));
        }
    }
    for (subject, resources) in expected {
        let pos = match states.iter().position(|s| s.subject == subject.as_str()) {
            Some(p) => p,
            None => {
                states.push(SubjectState {
                    subject: subject.to_string(),
                    ..Default::default()
                });
                states.len() - 1
            }
        };
        let s = &mut states[pos];
        for r in resources {
            if !s.resources.iter().any(|(n, _)| n == &*r.name) {
                let line = Line {
                    subject: subject.clone(),
                    resource: r.name.clone(),
                    window: window_at(r.period, &t.provider.timezone, now),
                    capacity: r.stored_capacity(),
                    amount: 0,
                };
                s.resources
                    .push((r.name.to_string(), Counter::fresh(&line)));
            }
        }
        s.resources.sort_by(|a, b| a.0.cmp(&b.0));
    }
    states.sort_by(|a, b| a.subject.cmp(&b.subject));
    Ok(states)
}

/// `resource` of `subject` in config.
fn resource_of(config: &Config, subject: &str, resource: &str) -> Option<Resource> {
    target(config, subject)
        .ok()?
        .resources
        .iter()
        .find(|r| &*r.name == resource)
        .cloned()
}

/// The unit of `resource` on `subject` in config (requests when unknown).
fn measure(config: &Config, subject: &str, resource: &str) -> Measure {
    resource_of(config, subject, resource).map_or(Measure::Requests, |r| r.measure)
}

/// A stored counter as people mean it: a soft limit's capacity without its margin.
fn shown(config: &Config, subject: &str, resource: &str, c: &Counter) -> Counter {
    let mut c = *c;
    if let Some(r) = resource_of(config, subject, resource) {
        c.capacity = r.shown(c.capacity);
    }
    c
}

/// An amount in the resource's own unit for people: USD for cost resources (stored as micro-USD).
fn amount_json(m: Measure, v: u64) -> serde_json::Value {
    match m {
        Measure::CostMicroUsd => serde_json::json!(v as f64 / 1_000_000.0),
        _ => serde_json::json!(v),
    }
}

fn amount_text(m: Measure, v: u64) -> String {
    match m {
        Measure::CostMicroUsd => format!("${:.6}", v as f64 / 1_000_000.0),
        _ => v.to_string(),
    }
}

fn unit_name(m: Measure) -> &'static str {
    match m {
        Measure::Requests => "requests",
        Measure::Tokens => "tokens",
        Measure::InputTokens => "input_tokens",
        Measure::OutputTokens => "output_tokens",
        Measure::CacheReadTokens => "cache_read_tokens",
        Measure::CacheWriteTokens => "cache_write_tokens",
        Measure::ReasoningTokens => "reasoning_tokens",
        Measure::CostMicroUsd => "usd",
    }
}

fn counter_json(
    c: &Counter,
    m: Measure,
    now: Timestamp,
    thresholds: [f64; 2],
) -> serde_json::Value {
    let used = if now >= c.window.end { 0 } else { c.used };
    serde_json::json!({
        "state": c.capacity_state(now, thresholds).name(),
        "exhausts_at": c.exhausts_at(now).map(|t| t.rfc3339()),
        "unit": unit_name(m),
        "capacity": amount_json(m, c.capacity),
        "used": amount_json(m, used),
        "reserved": amount_json(m, c.reserved),
        "remaining": amount_json(m, c.capacity.saturating_sub(used.saturating_add(c.reserved))),
        "window_start_ms": c.window.start.0,
        "window_end_ms": c.window.end.0,
        "ttl_secs": now.secs_until_ceil(c.window.end),
    })
}

/// Why subjects were disabled, by subject (records of `llmux_core::records::DISABLED`).
type Reasons = std::collections::HashMap<String, String>;

async fn reasons(store: &AnyStore) -> anyhow::Result<Reasons> {
    Ok(store.list_records(DISABLED).await?.into_iter().collect())
}

fn state_json(
    config: &Config,
    s: &SubjectState,
    now: Timestamp,
    why: &Reasons,
) -> serde_json::Value {
    let resources: serde_json::Map<String, serde_json::Value> = s
        .resources
        .iter()
        .map(|(name, c)| {
            let m = measure(config, &s.subject, name);
            let c = shown(config, &s.subject, name, c);
            (
                name.clone(),
                counter_json(&c, m, now, config.capacity_thresholds),
            )
        })
        .collect();
    let cooling = s.flags.cooldown_until.filter(|u| *u > now);
    let breaker = s.flags.breaker;
    let learned: serde_json::Map<String, serde_json::Value> = LearnedMeasure::ALL
        .iter()
        .zip(s.flags.learned)
        .filter_map(|(m, l)| Some((m, l.filter(|l| l.reset_at > now)?)))
        .map(|(m, l)| {
            let v = serde_json::json!({
                "limit": l.limit,
                "remaining": l.remaining,
                "reset_ms": l.reset_at.0,
                "reset_secs": now.secs_until_ceil(l.reset_at),
            });
            (m.resource().to_string(), v)
        })
        .collect();
    serde_json::json!({
        "subject": s.subject,
        "score": score(s, now),
        "score_override": s.flags.score,
        "disabled": s.flags.disabled,
        "disabled_reason": s.flags.disabled.then(|| why.get(&s.subject)).flatten(),
        "cooldown_until_ms": cooling.map(|t| t.0),
        "cooldown_secs": cooling.map(|t| now.secs_until_ceil(t)),
        "strikes": s.flags.strikes,
        "breaker": {
            "state": breaker.state(now).name(),
            "open_until_ms": breaker.open_until.map(|t| t.0),
        },
        "learned": learned,
        "resources": resources,
    })
}

fn print_text(
    config: &Config,
    out: &mut impl Write,
    states: &[SubjectState],
    now: Timestamp,
    why: &Reasons,
) -> anyhow::Result<()> {
    for s in states {
        let mut status = Vec::new();
        if s.flags.disabled {
            match why.get(&s.subject) {
                Some(r) => status.push(format!("disabled: {r}")),
                None => status.push("disabled".to_string()),
            }
        }
        if let Some(until) = s.flags.cooldown_until.filter(|u| *u > now) {
            let strikes = s.flags.strikes;
            status.push(format!(
                "cooling down for {} s ({strikes} 429s in a row)",
                now.secs_until_ceil(until)
            ));
        }
        match (s.flags.breaker.state(now), s.flags.breaker.open_until) {
            (BreakerState::Open, Some(u)) => {
                status.push(format!("breaker open for {} s", now.secs_until_ceil(u)))
            }
            (BreakerState::HalfOpen, _) => status.push("breaker half-open".into()),
            _ => {}
        }
        if status.is_empty() {
            status.push("ok".into());
        }
        let overridden = if s.flags.score.is_some() {
            " (set by operator)"
        } else {
            ""
        };
        writeln!(
            out,
            "{}: score {:.3}{overridden}, {}",
            s.subject,
            score(s, now),
            status.join(", ")
        )?;
        for (m, l) in LearnedMeasure::ALL.iter().zip(s.flags.learned) {
            if let Some(l) = l.filter(|l| l.reset_at > now) {
                writeln!(
                    out,
                    "  {} (announced by the upstream): {} of {} left (resets in {} s)",
                    m.resource(),
                    l.remaining,
                    l.limit,
                    now.secs_until_ceil(l.reset_at)
                )?;
            }
        }
        for (name, c) in &s.resources {
            let m = measure(config, &s.subject, name);
            let c = &shown(config, &s.subject, name, c);
            let used = if now >= c.window.end { 0 } else { c.used };
            let forecast = match c.exhausts_at(now) {
                Some(t) => format!(", runs out at {} at this rate", t.rfc3339()),
                None => String::new(),
            };
            writeln!(
                out,
                "  {name}: used {} + reserved {} of {} (window ends in {} s), {}{forecast}",
                amount_text(m, used),
                amount_text(m, c.reserved),
                amount_text(m, c.capacity),
                now.secs_until_ceil(c.window.end),
                c.capacity_state(now, config.capacity_thresholds).name(),
            )?;
        }
    }
    Ok(())
}

fn print(
    config: &Config,
    states: &[SubjectState],
    subject: &str,
    json: bool,
    now: Timestamp,
    why: &Reasons,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let v: Vec<serde_json::Value> = states
            .iter()
            .map(|s| state_json(config, s, now, why))
            .collect();
        let doc = serde_json::json!({"subject": subject, "subjects": v});
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        print_text(config, &mut out, states, now, why)?;
    }
    Ok(())
}

pub async fn show(config: &Config, subject: &str, json: bool) -> anyhow::Result<()> {
    let t = target(config, subject)?;
    let store = open(config)?;
    let now = SystemClock.now();
    let states = states(&store, &t, now).await?;
    print(config, &states, subject, json, now, &reasons(&store).await?)
}

pub async fn reset(config: &Config, subject: &str, dry_run: bool) -> anyhow::Result<()> {
    let t = target(config, subject)?;
    let store = open(config)?;
    let now = SystemClock.now();
    if dry_run {
        let states = states(&store, &t, now).await?;
        writeln!(
            std::io::stdout(),
            "dry run: would reset this state of {subject}:"
        )?;
        return print(
            config,
            &states,
            subject,
            false,
            now,
            &reasons(&store).await?,
        );
    }
    let n = store.reset(t.subject.as_str()).await?;
    for (name, _) in store.list_records(DISABLED).await? {
        if at_or_below(&name, t.subject.as_str()) {
            store.delete_record(DISABLED, &name).await?;
        }
    }
    writeln!(
        std::io::stdout(),
        "reset {subject}: {n} counter(s) cleared, cooldowns, breakers, learned limits, disabled flags and scores removed"
    )?;
    Ok(())
}

/// Largest amount an operator may set or add (exact in every store, Lua's doubles included).
const MAX_AMOUNT: f64 = 9_007_199_254_740_992.0;
/// Longest window an operator may set: the config's bound on every duration.
const MAX_TTL_SECS: u64 = llmux::core::config::MAX_SECS;

/// What `set-resource-used`, `adjust-resource-used` and `set-resource-ttl` do.
pub enum Change {
    SetUsed(f64),
    AdjustUsed(f64),
    SetTtl(u64),
}

pub async fn change(
    config: &Config,
    subject: &str,
    resource: &str,
    change: Change,
) -> anyhow::Result<()> {
    let t = target(config, subject)?;
    let r = t.resource(resource)?;
    let in_units = |v: f64| -> f64 {
        match r.measure {
            llmux::core::Measure::CostMicroUsd => v * 1_000_000.0,
            _ => v,
        }
    };
    let op = match change {
        Change::SetUsed(v) => {
            if !(v.is_finite() && v >= 0.0 && in_units(v) <= MAX_AMOUNT) {
                bail!("VALUE must be a number from 0 to {MAX_AMOUNT}, got {v}");
            }
            AdminOp::SetUsed(in_units(v).round() as u64)
        }
        Change::AdjustUsed(d) => {
            if !(d.is_finite() && in_units(d).abs() <= MAX_AMOUNT) {
                bail!("DELTA must be a number from -{MAX_AMOUNT} to {MAX_AMOUNT}, got {d}");
            }
            AdminOp::AdjustUsed(in_units(d).round() as i64)
        }
        Change::SetTtl(secs) => {
            if secs == 0 || secs > MAX_TTL_SECS {
                bail!("SECONDS must be from 1 to {MAX_TTL_SECS} (ten years), got {secs}");
            }
            AdminOp::SetTtl { secs }
        }
    };
    let store = open(config)?;
    let now = SystemClock.now();
    let c = store.update(t.line(r, now), op, now).await?;
    let mut out = std::io::stdout().lock();
    let m = r.measure;
    writeln!(
        out,
        "{subject} {resource}: used {} + reserved {} of {} (window ends in {} s)",
        amount_text(m, c.used),
        amount_text(m, c.reserved),
        amount_text(m, r.shown(c.capacity)),
        now.secs_until_ceil(c.window.end)
    )?;
    Ok(())
}

pub async fn set_score(config: &Config, subject: &str, value: f64) -> anyhow::Result<()> {
    let t = target(config, subject)?;
    if !(0.0..=1.0).contains(&value) {
        bail!("SCORE must be between 0 and 1, got {value}");
    }
    let store = open(config)?;
    store.set_score(t.subject.clone(), Some(value)).await?;
    writeln!(
        std::io::stdout(),
        "{subject}: score set to {value} until its usage next changes"
    )?;
    Ok(())
}

pub async fn sync(config: &Config, only: Option<&str>) -> anyhow::Result<()> {
    if let Some(p) = only {
        target(config, p)?;
    }
    let store = open(config)?;
    let now = SystemClock.now();
    let mut all = Vec::new();
    for p in config.providers.values() {
        if only.is_some_and(|o| o != p.id.as_str()) {
            continue;
        }
        let t = target(config, p.id.as_str())?;
        let mut subjects = vec![t];
        for k in &p.keys {
            subjects.push(target(config, &format!("{}/{}", p.id, k.id))?);
        }
        for t in &subjects {
            for r in t.resources {
                let custom_ttl_ms = match r.period {
                    Period::Custom { ttl_secs } => Some(secs_to_millis(ttl_secs)),
                    _ => None,
                };
                store
                    .update(t.line(r, now), AdminOp::Sync { custom_ttl_ms }, now)
                    .await?;
            }
        }
        all.extend(states(&store, &subjects[0], now).await?);
    }
    writeln!(
        std::io::stdout(),
        "synced capacities and windows from config; used and reserved kept:"
    )?;
    print(
        config,
        &all,
        only.unwrap_or("*"),
        false,
        now,
        &reasons(&store).await?,
    )
}
