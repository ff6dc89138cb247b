//! Governance settings: prices (`[prices]`, a target's `price`, `default_price`), teams, tier
//! and global limits, policies, `capacity_thresholds`, and the rule that a USD limit needs a
//! price on every target it can meet.

use super::*;

/// The largest price per 1M tokens accepted (far above any model's).
const MAX_PRICE: f64 = 1_000_000.0;

/// `{ input, output, cache_read, cache_write }` in USD per 1M tokens; the cache prices
/// default to `input`.
pub(super) fn check_price(p: &RawPrice, at: &str, out: &mut Issues) -> Price {
    let mut field = |v: Option<RawNumber>, name: &str| -> Option<f64> {
        let v = v?.as_f64();
        if !(v.is_finite() && (0.0..=MAX_PRICE).contains(&v)) {
            out.push(
                format!("{at}.{name}"),
                format!("{v} is not a price; expected USD per 1M tokens in 0..={MAX_PRICE}"),
            );
            return None;
        }
        Some(v)
    };
    let input = field(p.input, "input");
    let output = field(p.output, "output");
    let cache_read = field(p.cache_read, "cache_read");
    let cache_write = field(p.cache_write, "cache_write");
    if p.input.is_none() && p.output.is_none() {
        out.push(
            at,
            "a price needs `input` and/or `output` (USD per 1M tokens)",
        );
    }
    let input = input.unwrap_or(0.0);
    Price {
        input,
        output: output.unwrap_or(0.0),
        cache_read: cache_read.unwrap_or(input),
        cache_write: cache_write.unwrap_or(input),
    }
}

/// `[prices."MODEL"]`.
pub(super) fn check_prices(raw: &RawConfig, out: &mut Issues) -> BTreeMap<String, Price> {
    raw.prices
        .iter()
        .map(|(m, p)| (m.clone(), check_price(p, &format!("prices.\"{m}\""), out)))
        .collect()
}

/// A USD amount given in config (`max_cost_usd_per_request`) in micro-USD.
fn check_usd(v: Option<RawNumber>, at: &str, out: &mut Issues) -> Option<u64> {
    let v = v?.as_f64();
    if !(v.is_finite() && v > 0.0) {
        out.push(at, "must be a USD amount greater than 0");
        return None;
    }
    Some(Measure::CostMicroUsd.capacity_from_value(v).max(1))
}

/// The policy fields of a gateway key or team at `at`.
pub(super) fn check_policy(
    models: Option<&Vec<String>>,
    providers: Option<&Vec<String>>,
    max_tokens: Option<u64>,
    max_cost: Option<RawNumber>,
    at: &str,
    raw: &RawConfig,
    out: &mut Issues,
) -> Policy {
    if let Some(ms) = models {
        for (j, m) in ms.iter().enumerate() {
            if !raw.models.contains_key(m) {
                out.push(format!("{at}.models[{j}]"), format!("unknown model {m:?}"));
            }
        }
    }
    if let Some(ps) = providers {
        for (j, p) in ps.iter().enumerate() {
            if !raw.providers.contains_key(p) {
                out.push(
                    format!("{at}.providers[{j}]"),
                    format!("unknown provider {p:?}"),
                );
            }
        }
    }
    if max_tokens == Some(0) {
        out.push(format!("{at}.max_tokens"), "must be greater than 0");
    }
    Policy {
        models: models.cloned(),
        providers: providers.cloned(),
        max_tokens: max_tokens.filter(|n| *n > 0),
        max_cost_micro_usd: check_usd(max_cost, &format!("{at}.max_cost_usd_per_request"), out),
    }
}

/// `[teams.NAME]`.
pub(super) fn check_teams(raw: &RawConfig, out: &mut Issues) -> BTreeMap<String, Arc<Team>> {
    let mut teams = BTreeMap::new();
    for (name, t) in &raw.teams {
        let at = format!("teams.{name}");
        check_name(name, &at, out);
        let policy = check_policy(
            t.models.as_ref(),
            t.providers.as_ref(),
            t.max_tokens,
            t.max_cost_usd_per_request,
            &at,
            raw,
            out,
        );
        let resources = check_resources(&t.resources, &format!("{at}.resources"), out);
        teams.insert(
            name.clone(),
            Arc::new(Team {
                name: name.clone(),
                resources,
                policy,
            }),
        );
    }
    teams
}

/// `[tiers.NAME] resources`: each tier listed in `tier_order`.
pub(super) fn check_tier_resources(
    raw: &RawConfig,
    out: &mut Issues,
) -> BTreeMap<String, Vec<Resource>> {
    let mut tiers = BTreeMap::new();
    for (name, t) in &raw.tiers {
        let at = format!("tiers.{name}");
        if !raw.tier_order.contains(name) {
            out.push(&at, unknown_tier(name, &raw.tier_order));
        }
        let rs = check_resources(&t.resources, &format!("{at}.resources"), out);
        tiers.insert(name.clone(), rs);
    }
    tiers
}

/// `capacity_thresholds = [abundant, constrained]`: two fractions, falling, in (0, 1).
pub(super) fn check_thresholds(raw: &RawConfig, out: &mut Issues) -> [f64; 2] {
    const DEFAULT: [f64; 2] = [0.5, 0.2];
    let Some(v) = &raw.capacity_thresholds else {
        return DEFAULT;
    };
    let fs: Vec<f64> = v.iter().map(|n| n.as_f64()).collect();
    match fs.as_slice() {
        [a, c] if *a < 1.0 && *c > 0.0 && a > c => [*a, *c],
        _ => {
            out.push(
                "capacity_thresholds",
                format!(
                    "expected two falling fractions between 0 and 1 such as [0.5, 0.2], got {fs:?}"
                ),
            );
            DEFAULT
        }
    }
}

fn has_usd(rs: &[Resource]) -> bool {
    rs.iter().any(|r| r.measure == Measure::CostMicroUsd)
}

/// A USD limit over a target with no price would count it free: a config error unless
/// `default_price` is set (a target's price already falls back to it). Targets of `mock`
/// and custom providers are exempt. Limits that every
/// request meets (global, tiers, teams, gateway keys) need a price on every target.
pub(super) fn check_priced(
    models: &BTreeMap<String, Arc<ModelPool>>,
    providers: &BTreeMap<ProviderId, Arc<Provider>>,
    everywhere: Option<&str>,
    out: &mut Issues,
) {
    for (name, pool) in models {
        for (i, t) in pool.targets.iter().enumerate() {
            if t.price.is_some() {
                continue;
            }
            let Some(p) = providers.get(&t.provider).filter(|p| p.needs_price()) else {
                continue;
            };
            let keyed = p
                .keys
                .iter()
                .filter(|k| t.keys.as_ref().is_none_or(|ks| ks.contains(&k.id)))
                .any(|k| has_usd(&k.resources));
            let limit = if has_usd(&pool.resources) {
                Some(format!("models.{name}.resources"))
            } else if has_usd(&p.resources) || keyed {
                Some(format!("providers.{}", p.id))
            } else {
                everywhere.map(str::to_string)
            };
            if let Some(limit) = limit {
                out.push(
                    format!("models.{name}.targets[{i}]"),
                    format!(
                        "model {:?} has no price, but a USD limit ({limit}) applies to it; add [prices.\"{}\"], a `price` on the target, or `default_price`",
                        t.model, t.model
                    ),
                );
            }
        }
    }
}
