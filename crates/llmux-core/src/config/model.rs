//! `[models.NAME]`: strategy, failover, targets and their keys, limits and timeouts.

use super::*;

pub(super) fn check_model(
    name: &str,
    m: &RawModel,
    at: &str,
    raw: &RawConfig,
    providers: &BTreeMap<ProviderId, Arc<Provider>>,
    prices: &Prices<'_>,
    out: &mut Issues,
) -> Option<ModelPool> {
    check_label(name, at, "model name", out);
    let strategy = match m.strategy.as_deref() {
        None => Strategy::Weighted,
        Some(s) => Strategy::parse(s).unwrap_or_else(|| {
            out.push(
                format!("{at}.strategy"),
                format!(
                    "unknown strategy {s:?}; expected one of {}",
                    Strategy::NAMES.join(", ")
                ),
            );
            Strategy::Weighted
        }),
    };
    if m.max_attempts == Some(0) {
        out.push(format!("{at}.max_attempts"), "must be at least 1");
    }
    let fallback_on = check_fallback_on(m.fallback_on.as_deref(), at, out);
    for (i, f) in m.fallback_models.iter().enumerate() {
        if f == name {
            out.push(
                format!("{at}.fallback_models[{i}]"),
                "a model cannot fall back to itself",
            );
        } else if !raw.models.contains_key(f) {
            out.push(
                format!("{at}.fallback_models[{i}]"),
                format!("unknown model {f:?}"),
            );
        }
    }
    if m.targets.is_empty() {
        out.push(format!("{at}.targets"), "needs at least one target");
    }
    let targets = check_targets(m, at, raw, providers, prices, out);
    if m.max_concurrent == Some(0) {
        out.push(format!("{at}.max_concurrent"), "must be greater than 0");
    }
    let timeout_secs = check_secs(m.timeout_secs, &format!("{at}.timeout_secs"), out);
    let stream_idle_timeout_secs = check_secs(
        m.stream_idle_timeout_secs,
        &format!("{at}.stream_idle_timeout_secs"),
        out,
    );
    let first_token_timeout_secs = check_secs(
        m.first_token_timeout_secs,
        &format!("{at}.first_token_timeout_secs"),
        out,
    );
    let deadline_secs = check_secs(m.deadline_secs, &format!("{at}.deadline_secs"), out);
    let retry = check_retry(m.retry.as_ref(), &format!("{at}.retry"), out);
    let default_max_tokens = match m.default_max_tokens {
        None => DEFAULT_MAX_TOKENS,
        Some(n) if (1..=MAX_OUTPUT_TOKENS).contains(&n) => n,
        Some(n) => {
            out.push(
                format!("{at}.default_max_tokens"),
                format!("{n} is out of range; expected 1..={MAX_OUTPUT_TOKENS}"),
            );
            DEFAULT_MAX_TOKENS
        }
    };
    Some(ModelPool {
        name: Arc::from(name),
        strategy,
        max_attempts: m.max_attempts.unwrap_or(3).max(1),
        fallback_on,
        fallback_models: m.fallback_models.clone(),
        targets,
        resources: check_resources(&m.resources, &format!("{at}.resources"), out),
        max_concurrent: m.max_concurrent,
        timeout_secs,
        default_max_tokens,
        stream_idle_timeout_secs,
        retry,
        first_token_timeout_secs,
        deadline_secs,
        objective: check_objective(m.objective.as_ref(), &format!("{at}.objective"), out),
        queue: m.queue.as_ref().map(|q| QueueConfig {
            max_wait_secs: check_secs(q.max_wait_secs, &format!("{at}.queue.max_wait_secs"), out)
                .unwrap_or(QueueConfig::DEFAULT_MAX_WAIT_SECS),
            max_queued: match q.max_queued {
                Some(0) => {
                    out.push(format!("{at}.queue.max_queued"), "must be greater than 0");
                    QueueConfig::DEFAULT_MAX_QUEUED
                }
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => QueueConfig::DEFAULT_MAX_QUEUED,
            },
        }),
    })
}

/// `objective = { cost, reliability, latency, fairness }`: weights >= 0, not all 0; a weight
/// left out is 0 (the whole table left out: the defaults).
fn check_objective(o: Option<&RawObjective>, at: &str, out: &mut Issues) -> Objective {
    let Some(o) = o else {
        return Objective::default();
    };
    let mut w = |v: Option<RawNumber>, name: &str| -> f64 {
        let v = v.map_or(0.0, RawNumber::as_f64);
        if !(v.is_finite() && v >= 0.0) {
            out.push(
                format!("{at}.{name}"),
                format!("{v} is not a weight; expected a number >= 0"),
            );
            return 0.0;
        }
        v
    };
    let obj = Objective {
        cost: w(o.cost, "cost"),
        reliability: w(o.reliability, "reliability"),
        latency: w(o.latency, "latency"),
        fairness: w(o.fairness, "fairness"),
    };
    if obj.cost + obj.reliability + obj.latency + obj.fairness <= 0.0 {
        out.push(
            at,
            "needs a weight above 0 (cost, reliability, latency or fairness)",
        );
        return Objective::default();
    }
    obj
}

/// `retry = { backoff_ms, max_backoff_ms }`: `max_backoff_ms` at least `backoff_ms`, both at
/// most an hour.
fn check_retry(r: Option<&RawRetry>, at: &str, out: &mut Issues) -> Retry {
    let d = Retry::default();
    let Some(r) = r else { return d };
    const HOUR_MS: u64 = 3_600_000;
    let mut ms = |v: Option<u64>, name: &str, default: u64| match v {
        Some(v) if v > HOUR_MS => {
            out.push(
                format!("{at}.{name}"),
                format!("{v} ms is too long; at most {HOUR_MS}"),
            );
            default
        }
        Some(v) => v,
        None => default,
    };
    let backoff_ms = ms(r.backoff_ms, "backoff_ms", d.backoff_ms);
    let max_backoff_ms = ms(
        r.max_backoff_ms,
        "max_backoff_ms",
        d.max_backoff_ms.max(backoff_ms),
    );
    if max_backoff_ms < backoff_ms {
        out.push(
            format!("{at}.max_backoff_ms"),
            format!("{max_backoff_ms} is below backoff_ms ({backoff_ms})"),
        );
    }
    Retry {
        backoff_ms,
        max_backoff_ms: max_backoff_ms.max(backoff_ms),
    }
}

/// `fallback_on`: statuses 400..=599 and `"timeout"`; absent, the default set.
fn check_fallback_on(list: Option<&[RawFallbackOn]>, at: &str, out: &mut Issues) -> FallbackOn {
    match list {
        None => FallbackOn::default(),
        Some(list) => {
            let mut f = FallbackOn {
                statuses: BTreeSet::new(),
                timeout: false,
            };
            for (i, item) in list.iter().enumerate() {
                match item {
                    RawFallbackOn::Status(s) if (400..=599).contains(s) => {
                        f.statuses.insert(*s as u16);
                    }
                    RawFallbackOn::Word(w) if w == "timeout" => f.timeout = true,
                    other => out.push(
                        format!("{at}.fallback_on[{i}]"),
                        format!("expected an HTTP status 400..=599 or \"timeout\", got {other:?}"),
                    ),
                }
            }
            f
        }
    }
}

/// The targets: each on a known provider, with a well-formed upstream model name, a weight
/// above 0 and, when it names keys, only keys its provider has (and at least one).
fn check_targets(
    m: &RawModel,
    at: &str,
    raw: &RawConfig,
    providers: &BTreeMap<ProviderId, Arc<Provider>>,
    prices: &Prices<'_>,
    out: &mut Issues,
) -> Vec<TargetConfig> {
    let mut targets = Vec::new();
    for (i, t) in m.targets.iter().enumerate() {
        let tat = format!("{at}.targets[{i}]");
        let Some(p) = providers.get(&ProviderId::new(&t.provider)) else {
            if !raw.providers.contains_key(&t.provider) {
                out.push(
                    format!("{tat}.provider"),
                    format!("unknown provider {:?}", t.provider),
                );
            }
            continue;
        };
        check_label(
            &t.model,
            &format!("{tat}.model"),
            "upstream model name",
            out,
        );
        if t.weight == Some(0) {
            out.push(format!("{tat}.weight"), "must be greater than 0");
        }
        if t.keys.as_ref().is_some_and(Vec::is_empty) {
            out.push(
                format!("{tat}.keys"),
                "lists no keys, so the target could never be used; omit `keys` to use all of the provider's keys",
            );
        }
        let keys = t.keys.as_ref().map(|ks| {
            ks.iter()
                .enumerate()
                .filter_map(|(j, k)| {
                    if p.keys.iter().any(|pk| pk.id.as_str() == k) {
                        Some(KeyId::new(k))
                    } else {
                        out.push(
                            format!("{tat}.keys[{j}]"),
                            format!("provider {:?} has no key {k:?}", t.provider),
                        );
                        None
                    }
                })
                .collect()
        });
        targets.push(TargetConfig {
            provider: p.id.clone(),
            model: Arc::from(t.model.as_str()),
            weight: t.weight.unwrap_or(1).max(1),
            priority: t.priority.unwrap_or(i as i32),
            keys,
            price: match &t.price {
                Some(p) => Some(super::governance::check_price(
                    p,
                    &format!("{tat}.price"),
                    out,
                )),
                None => prices.of(&t.model),
            },
        });
    }
    targets
}

/// The prices a target without its own falls back to.
pub(super) struct Prices<'a> {
    pub(super) by_model: &'a BTreeMap<String, Price>,
    pub(super) default: Option<Price>,
}

impl Prices<'_> {
    fn of(&self, model: &str) -> Option<Price> {
        self.by_model
            .get(model)
            .copied()
            .or_else(|| super::builtin_price(model))
            .or(self.default)
    }
}
