//! `[providers.NAME]`: kind, base URL, tiers, zone, resources (inline and from the resources
//! file), keys and mock settings.

use super::*;

/// What every provider's checks share.
pub(super) struct Shared<'a> {
    pub(super) global_tz: &'a TimeZone,
    pub(super) tier_order: &'a [String],
    pub(super) custom_kinds: &'a [&'a str],
}

pub(super) fn check_provider(
    name: &str,
    p: &RawProvider,
    at: &str,
    shared: &Shared<'_>,
    from_file: Option<(&str, &RawFileProvider)>,
    out: &mut Issues,
) -> Option<Provider> {
    let Shared {
        global_tz,
        tier_order,
        custom_kinds,
    } = *shared;
    let kind = match ProviderKind::parse(&p.kind) {
        Some(k) => k,
        None if custom_kinds.contains(&p.kind.as_str()) => {
            ProviderKind::Custom(Arc::from(p.kind.as_str()))
        }
        None => {
            out.push(
                format!("{at}.kind"),
                format!(
                    "unknown provider kind {:?}; expected one of {}",
                    p.kind,
                    ProviderKind::NAMES.join(", ")
                ),
            );
            return None;
        }
    };
    let anthropic_version = check_anthropic_version(p, &kind, at, out);
    let base_url = check_base_url(p, &kind, at, out);
    if let Some(tiers) = &p.tiers {
        for (i, t) in tiers.iter().enumerate() {
            if !tier_order.contains(t) {
                out.push(format!("{at}.tiers[{i}]"), unknown_tier(t, tier_order));
            }
        }
    }
    let file_tz = from_file.and_then(|(f, fp)| fp.timezone.as_deref().map(|tz| (f, tz)));
    let timezone = match (&p.timezone, file_tz) {
        (Some(a), Some((f, b))) if a != b => {
            out.push(
                format!("{at}.timezone"),
                format!("{a:?} conflicts with {b:?} set in {f}: providers.{name}.timezone"),
            );
            global_tz.clone()
        }
        (Some(a), _) => parse_tz(Some(a), &format!("{at}.timezone"), global_tz, out),
        (None, Some((f, b))) => parse_tz(
            Some(b),
            &format!("{f}: providers.{name}.timezone"),
            global_tz,
            out,
        ),
        (None, None) => global_tz.clone(),
    };
    let headroom = super::resources::check_headroom(p.headroom, &format!("{at}.headroom"), out);
    let resources = provider_resources(name, p, at, from_file, headroom, out);
    let timeout_secs = check_secs(p.timeout_secs, &format!("{at}.timeout_secs"), out);

    let keys = check_keys(name, p, &kind, at, headroom, out);
    let mock = check_mock(p, &kind, at, out);
    let health = check_health(p.health.as_ref(), &format!("{at}.health"), out);

    Some(Provider {
        id: ProviderId::new(name),
        kind,
        base_url,
        tiers: p.tiers.clone(),
        timezone,
        resources,
        keys,
        timeout_secs,
        mock,
        anthropic_version,
        health,
    })
}

/// `[providers.NAME.health]`: every field optional, the DESIGN defaults otherwise.
fn check_health(h: Option<&RawHealth>, at: &str, out: &mut Issues) -> Health {
    let Some(h) = h else {
        return Health::default();
    };
    let mut cooldown = crate::health::Growth::default();
    if let Some(c) = &h.cooldown {
        let cat = format!("{at}.cooldown");
        let mut secs =
            |v: Option<RawNumber>, name: &str, default: i64| match v.map(RawNumber::as_f64) {
                None => default,
                Some(s) if s.is_finite() && s >= 0.0 && s <= MAX_SECS as f64 => (s * 1000.0) as i64,
                Some(s) => {
                    out.push(
                        format!("{cat}.{name}"),
                        format!("{s} is out of range; expected 0 ..= {MAX_SECS} seconds"),
                    );
                    default
                }
            };
        cooldown.base_ms = secs(c.base_secs, "base_secs", cooldown.base_ms);
        cooldown.max_ms = secs(
            c.max_secs,
            "max_secs",
            cooldown.max_ms.max(cooldown.base_ms),
        );
        if let Some(f) = c.factor.map(RawNumber::as_f64) {
            if f.is_finite() && (1.0..=100.0).contains(&f) {
                cooldown.factor = f;
            } else {
                out.push(
                    format!("{cat}.factor"),
                    format!("{f} is out of range; expected 1 ..= 100"),
                );
            }
        }
        if cooldown.max_ms < cooldown.base_ms {
            out.push(format!("{cat}.max_secs"), "is below base_secs");
        }
    }
    let mut breaker = BreakerConfig::default();
    if let Some(b) = &h.breaker {
        let bat = format!("{at}.breaker");
        let mut count = |v: Option<u32>, name: &str, default: u32| match v {
            Some(0) => {
                out.push(format!("{bat}.{name}"), "must be greater than 0");
                default
            }
            Some(v) => v,
            None => default,
        };
        breaker.failures = count(b.failures, "failures", breaker.failures);
        breaker.min_requests = count(b.min_requests, "min_requests", breaker.min_requests);
        breaker.half_open_probes = count(
            b.half_open_probes,
            "half_open_probes",
            breaker.half_open_probes,
        );
        if let Some(r) = b.failure_rate.map(RawNumber::as_f64) {
            if r.is_finite() && r > 0.0 && r <= 1.0 {
                breaker.failure_rate = r;
            } else {
                out.push(
                    format!("{bat}.failure_rate"),
                    format!("{r} is out of range; expected a fraction in (0, 1]"),
                );
            }
        }
        let secs = |v: Option<u64>, name: &str, out: &mut Issues| {
            check_secs(v, &format!("{bat}.{name}"), out)
        };
        breaker.window_secs =
            secs(b.window_secs, "window_secs", out).unwrap_or(breaker.window_secs);
        breaker.open_secs = secs(b.open_secs, "open_secs", out).unwrap_or(breaker.open_secs);
    }
    Health {
        cooldown,
        breaker,
        discover_limits: h.discover_limits.unwrap_or(true),
    }
}

/// `anthropic_version`: the `anthropic-version` header of an `anthropic` provider (default
/// [`DEFAULT_ANTHROPIC_VERSION`]); no other kind sends it.
fn check_anthropic_version(
    p: &RawProvider,
    kind: &ProviderKind,
    at: &str,
    out: &mut Issues,
) -> Option<String> {
    let path = format!("{at}.anthropic_version");
    match (&p.anthropic_version, kind) {
        (None, ProviderKind::Anthropic) => Some(DEFAULT_ANTHROPIC_VERSION.to_string()),
        (None, _) => None,
        (Some(_), k) if *k != ProviderKind::Anthropic => {
            out.push(
                path,
                "only providers of kind \"anthropic\" send an anthropic-version",
            );
            None
        }
        (Some(v), _) => {
            let valid = !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
            if !valid {
                out.push(
                    path,
                    format!("must be a non-empty header value without spaces, got {v:?}"),
                );
            }
            Some(v.clone())
        }
    }
}

/// The provider's keys: ids unique and well-formed, secrets present (but for mock and
/// plug-in kinds, which get a `default` key when they list none), weights above 0.
fn check_keys(
    name: &str,
    p: &RawProvider,
    kind: &ProviderKind,
    at: &str,
    headroom: Option<f64>,
    out: &mut Issues,
) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, k) in p.keys.iter().enumerate() {
        let kat = format!("{at}.keys[{i}]");
        check_name(&k.id, &format!("{kat}.id"), out);
        if !ids.insert(k.id.as_str()) {
            out.push(
                format!("{kat}.id"),
                format!("duplicate key id {:?} in provider {name:?}", k.id),
            );
        }
        let from_store = k.secret.as_deref() == Some(STORED_SECRET);
        let secret = match (&k.secret, kind) {
            (Some(_), _) if from_store => Secret::new(""),
            (Some(s), _) if !s.is_empty() => Secret::new(s),
            (_, ProviderKind::Mock | ProviderKind::Custom(_)) => Secret::new(""),
            _ => {
                out.push(
                    format!("{kat}.secret"),
                    "required (e.g. secret = \"${OPENAI_API_KEY}\")",
                );
                Secret::new("")
            }
        };
        if k.weight == Some(0) {
            out.push(format!("{kat}.weight"), "must be greater than 0");
        }
        keys.push(Key {
            id: KeyId::new(&k.id),
            secret,
            weight: k.weight.unwrap_or(1).max(1),
            resources: super::resources::check_resources_with(
                &k.resources,
                &format!("{kat}.resources"),
                headroom,
                out,
            ),
            from_store,
        });
    }
    if keys.is_empty() {
        if matches!(kind, ProviderKind::Mock | ProviderKind::Custom(_)) {
            keys.push(Key {
                id: KeyId::new("default"),
                secret: Secret::new(""),
                weight: 1,
                resources: Vec::new(),
                from_store: false,
            });
        } else {
            out.push(
                format!("{at}.keys"),
                "needs at least one key ([[providers.NAME.keys]])",
            );
        }
    }
    keys
}

/// `mock = { … }`: only on a provider of kind `mock`, with an error rate in 0..=1.
fn check_mock(p: &RawProvider, kind: &ProviderKind, at: &str, out: &mut Issues) -> MockSettings {
    match &p.mock {
        None => MockSettings::default(),
        Some(m) => {
            if *kind != ProviderKind::Mock {
                out.push(
                    format!("{at}.mock"),
                    "only a provider of kind \"mock\" takes mock settings",
                );
            }
            let d = MockSettings::default();
            let error_rate = m.error_rate.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&error_rate) {
                out.push(
                    format!("{at}.mock.error_rate"),
                    "must be between 0.0 and 1.0",
                );
            }
            MockSettings {
                latency_ms: m.latency_ms.unwrap_or(d.latency_ms),
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.completion_tokens.unwrap_or(d.completion_tokens),
                error_rate,
                rate_limit_after: m.rate_limit_after,
                retry_after_secs: m.retry_after_secs.unwrap_or(d.retry_after_secs),
                content: m.content.clone().unwrap_or(d.content),
            }
        }
    }
}

/// `base_url`: `http(s)://…`, required for `openai-compatible`, else the kind's default.
fn check_base_url(
    p: &RawProvider,
    kind: &ProviderKind,
    at: &str,
    out: &mut Issues,
) -> Option<String> {
    match (&p.base_url, kind) {
        (Some(u), _) => {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                out.push(
                    format!("{at}.base_url"),
                    format!("must start with http:// or https://, got {u:?}"),
                );
            }
            Some(u.trim_end_matches('/').to_string())
        }
        (None, ProviderKind::OpenAi) => Some("https://api.openai.com/v1".to_string()),
        (None, ProviderKind::OpenRouter) => Some("https://openrouter.ai/api/v1".to_string()),
        (None, ProviderKind::Anthropic) => Some("https://api.anthropic.com/v1".to_string()),
        (None, ProviderKind::OpenAiCompatible) => {
            out.push(
                format!("{at}.base_url"),
                "required for kind \"openai-compatible\"",
            );
            None
        }
        (None, ProviderKind::Mock | ProviderKind::Custom(_)) => None,
    }
}

/// The provider's resources: inline ones, then those of the resources file; one defined in
/// both is an issue naming both places.
fn provider_resources(
    name: &str,
    p: &RawProvider,
    at: &str,
    from_file: Option<(&str, &RawFileProvider)>,
    headroom: Option<f64>,
    out: &mut Issues,
) -> Vec<Resource> {
    let at_res = format!("{at}.resources");
    let mut resources =
        super::resources::check_resources_with(&p.resources, &at_res, headroom, out);
    if let Some((f, fp)) = from_file {
        let file_at = format!("{f}: providers.{name}.resources");
        for (j, r) in super::resources::check_resources_with(&fp.resources, &file_at, headroom, out)
            .into_iter()
            .enumerate()
        {
            match resources.iter().position(|x| x.name == r.name) {
                Some(i) => out.push(
                    format!("{at}.resources[{i}]"),
                    format!(
                        "resource {:?} is defined both here and in {file_at}[{j}]",
                        &*r.name
                    ),
                ),
                None => resources.push(r),
            }
        }
    }
    resources
}
