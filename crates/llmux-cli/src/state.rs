//! State commands: show and administer what the store holds for a provider or key.

use crate::NotFound;
use llmux::core::store::{StoreAdmin, SubjectState};
use llmux::core::{Clock, SystemClock};
use llmux::{AnyStore, Config};
use std::io::Write;

/// Check that SUBJECT (`provider` or `provider/key`) exists in config.
pub fn check_subject(config: &Config, subject: &str) -> anyhow::Result<()> {
    let (provider, key) = match subject.split_once('/') {
        Some((p, k)) => (p, Some(k)),
        None => (subject, None),
    };
    let Some(p) = config.provider(provider) else {
        return Err(NotFound(format!("no provider {provider:?} in config")).into());
    };
    if let Some(k) = key {
        if !p.keys.iter().any(|x| x.id.as_str() == k) {
            return Err(NotFound(format!("provider {provider:?} has no key {k:?}")).into());
        }
    }
    Ok(())
}

pub async fn show(config: &Config, subject: &str, json: bool) -> anyhow::Result<()> {
    check_subject(config, subject)?;
    let store = AnyStore::open(&config.store)?;
    let states = store.snapshot(subject).await?;
    let now = SystemClock.now();
    let mut out = std::io::stdout().lock();
    if json {
        let v: Vec<serde_json::Value> = states.iter().map(|s| state_json(s, now)).collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"subject": subject, "subjects": v}))?
        )?;
        return Ok(());
    }
    if states.is_empty() {
        writeln!(out, "{subject}: no state recorded yet")?;
    }
    for s in &states {
        writeln!(out, "{}", s.subject)?;
        if s.flags.disabled {
            writeln!(out, "  disabled")?;
        }
        if let Some(until) = s.flags.cooldown_until.filter(|u| *u > now) {
            writeln!(out, "  cooling down for {} s", now.secs_until_ceil(until))?;
        }
        for (name, c) in &s.resources {
            let ttl = now.secs_until_ceil(c.window.end);
            writeln!(
                out,
                "  {name}: used {} + reserved {} of {} (window ends in {ttl} s)",
                c.used, c.reserved, c.capacity
            )?;
        }
    }
    Ok(())
}

fn state_json(s: &SubjectState, now: llmux::core::Timestamp) -> serde_json::Value {
    let resources: serde_json::Map<String, serde_json::Value> = s
        .resources
        .iter()
        .map(|(name, c)| {
            (
                name.clone(),
                serde_json::json!({
                    "capacity": c.capacity,
                    "used": c.used,
                    "reserved": c.reserved,
                    "remaining": c.available(),
                    "window_start_ms": c.window.start.0,
                    "window_end_ms": c.window.end.0,
                    "ttl_secs": now.secs_until_ceil(c.window.end),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "subject": s.subject,
        "disabled": s.flags.disabled,
        "cooldown_until_ms": s.flags.cooldown_until.map(|t| t.0),
        "score": s.flags.score,
        "resources": resources,
    })
}
