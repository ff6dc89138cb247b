//! The validated config. [`Config::from_toml_str`] parses TOML, resolves `${VAR}` through the
//! env it is given, runs every check and returns either a [`Config`] or every [`Issue`] found,
//! each naming its path (`providers.openai.keys[0].resources[1].period: …`).
//!
//! Invariant: a `Config` refers only to providers, keys, models and tiers that exist, and every
//! resource has a capacity > 0 and a known period.

mod auto;
mod builtin_prices;
mod checks;
mod env;
mod governance;
mod keys;
mod model;
mod provider;
pub mod raw;
mod resources;
mod store;
#[cfg(test)]
mod tests;
mod types;

pub use auto::auto_pool;
pub use builtin_prices::builtin_price;
pub use resources::{check_resources, ResourcesFile};
pub use types::*;

use checks::*;
use governance::*;
use keys::check_gateway_keys;
use model::{check_model, Prices};
use provider::{check_provider, Shared};
use store::{check_on_store_error, check_store};

const DEFAULT_LISTEN: &str = "127.0.0.1:4000";

use crate::ids::{KeyId, ProviderId, Secret, Subject};
use crate::usage::{Measure, Usage};
use crate::window::Period;
use jiff::tz::TimeZone;
use raw::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// One problem in a config, with the path of the value at fault.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

/// Every problem found in a config, sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if issue.path.is_empty() {
                write!(f, "{}", issue.message)?;
            } else {
                write!(f, "{}: {}", issue.path, issue.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Issues {}

/// The field a serde ``unknown field `NAME`, expected …`` error names.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// Remove `field` from the table at `path` (`a.b[0].c`, or the field's own path) in `tree`;
/// whether it was there.
fn remove_field(tree: &mut toml::Value, path: &str, field: &str) -> bool {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next().filter(|n| !n.is_empty()) {
            segments.push(Err(name.to_string()));
        }
        for idx in pieces {
            match idx.trim_end_matches(']').parse::<usize>() {
                Ok(i) => segments.push(Ok(i)),
                Err(_) => return false,
            }
        }
    }
    if segments.last() == Some(&Err(field.to_string())) {
        segments.pop();
    }
    let mut at = tree;
    for s in segments {
        let next = match (s, at) {
            (Err(name), toml::Value::Table(t)) => t.get_mut(&name),
            (Ok(i), toml::Value::Array(a)) => a.get_mut(i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match at {
        toml::Value::Table(t) => t.remove(field).is_some(),
        _ => false,
    }
}

/// `[files]`: sizes from 1 MiB to 1 TiB, retention from 1 day to ten years.
fn check_files(raw: Option<&RawFiles>, out: &mut Issues) -> FilesConfig {
    let mut c = FilesConfig::default();
    let Some(f) = raw else {
        return c;
    };
    let mut within = |v: Option<u64>, name: &str, max: u64, unit: &str| -> Option<u64> {
        let v = v?;
        if (1..=max).contains(&v) {
            Some(v)
        } else {
            out.push(
                format!("files.{name}"),
                format!("{v} is out of range; expected 1 to {max} {unit}"),
            );
            None
        }
    };
    if let Some(mb) = within(f.max_file_mb, "max_file_mb", 1 << 20, "MiB") {
        c.max_file_bytes = mb << 20;
    }
    if let Some(mb) = within(f.quota_mb_per_key, "quota_mb_per_key", 1 << 20, "MiB") {
        c.quota_bytes_per_key = mb << 20;
    }
    if let Some(days) = within(f.retention_days, "retention_days", 3653, "days") {
        c.retention_secs = days * 86_400;
    }
    c
}

/// Keys with `secret = "store"` need `$LLMUX_MASTER_KEY` to decrypt their secrets.
fn check_master_key(c: &Config, env: &dyn Fn(&str) -> Option<String>, out: &mut Issues) {
    let Some((p, i)) = c.providers.values().find_map(|p| {
        let i = p.keys.iter().position(|k| k.from_store)?;
        Some((p, i))
    }) else {
        return;
    };
    let at = format!("providers.{}.keys[{i}].secret", p.id);
    match env(MASTER_KEY_VAR) {
        None => out.push(
            at,
            format!("secret = \"store\" needs ${MASTER_KEY_VAR} (the key the stored secrets are encrypted with), which is not set"),
        ),
        Some(v) => {
            if let Err(e) = parse_master_key(&v) {
                out.push(at, e);
            }
        }
    }
}

impl Config {
    /// Parse and validate TOML. `env` resolves `${VAR}` references.
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Issues> {
        Config::from_toml_str_with(text, env, None)
    }

    /// [`Config::from_toml_str`] merged with a resources file.
    pub fn from_toml_str_with(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        resources_file: Option<&ResourcesFile>,
    ) -> Result<Config, Issues> {
        Config::from_toml_str_opts(text, env, resources_file, &[])
    }

    /// [`Config::from_toml_str_with`] that also accepts the provider kinds in `custom_kinds`
    /// (registered by the library user).
    pub fn from_toml_str_opts(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        resources_file: Option<&ResourcesFile>,
        custom_kinds: &[&str],
    ) -> Result<Config, Issues> {
        let mut issues = Issues::default();
        let file = resources_file.and_then(|f| f.parse(&mut issues).map(|r| (f.name.as_str(), r)));
        let mut tree: toml::Value = match toml::from_str::<toml::Table>(text) {
            Ok(t) => toml::Value::Table(t),
            Err(e) => {
                issues.push("", format!("invalid TOML: {}", e.to_string().trim_end()));
                return Err(issues);
            }
        };
        env::interpolate(&mut tree, "", env, &mut issues);
        // Each unknown field is reported with its path and taken out, so that every one is
        // listed, not only the first; any other shape error stops here.
        let mut removed = 0;
        let raw: RawConfig = loop {
            match serde_path_to_error::deserialize(tree.clone()) {
                Ok(r) => break r,
                Err(e) => {
                    let path = e.path().to_string();
                    let path = if path == "." { String::new() } else { path };
                    let message = e.into_inner().to_string();
                    let field = unknown_field(&message);
                    issues.push(path.clone(), message);
                    match field {
                        Some(f) if removed < 100 && remove_field(&mut tree, &path, &f) => {
                            removed += 1;
                        }
                        _ => return Err(issues),
                    }
                }
            }
        };

        let built = Config::from_raw_with(
            raw,
            file.as_ref().map(|(n, r)| (*n, r)),
            custom_kinds,
            &mut issues,
        );
        if let Some(c) = &built {
            check_master_key(c, env, &mut issues);
        }
        match built {
            Some(c) if issues.is_empty() => Ok(c),
            _ => {
                issues.0.sort();
                issues.0.dedup();
                Err(issues)
            }
        }
    }

    /// Validate a raw config, recording every problem in `out`.
    pub fn from_raw(raw: RawConfig, out: &mut Issues) -> Option<Config> {
        Config::from_raw_with(raw, None, &[], out)
    }

    /// [`Config::from_raw`] merged with a resources file `(name, contents)`.
    pub fn from_raw_with(
        raw: RawConfig,
        file: Option<(&str, &RawResourcesFile)>,
        custom_kinds: &[&str],
        out: &mut Issues,
    ) -> Option<Config> {
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                out.push(
                    "listen",
                    format!("invalid address {listen_text:?}; expected HOST:PORT such as \"127.0.0.1:4000\""),
                );
                DEFAULT_LISTEN.parse().ok()?
            }
        };
        let timezone = check_global_tz(raw.timezone.as_deref(), file, out);
        if let Some((name, f)) = file {
            for p in f.providers.keys() {
                if !raw.providers.contains_key(p) {
                    out.push(
                        format!("{name}: providers.{p}"),
                        format!("no provider {p:?} in config"),
                    );
                }
            }
        }
        let mut seen_tiers = BTreeSet::new();
        for (i, t) in raw.tier_order.iter().enumerate() {
            if !seen_tiers.insert(t.as_str()) {
                out.push(
                    format!("tier_order[{i}]"),
                    format!("tier {t:?} is listed twice"),
                );
            }
        }
        let store = check_store(&raw.store, out);
        let on_store_error = check_on_store_error(&raw, out);

        let shared = Shared {
            global_tz: &timezone,
            tier_order: &raw.tier_order,
            custom_kinds,
        };
        let mut providers = BTreeMap::new();
        for (name, p) in &raw.providers {
            let at = format!("providers.{name}");
            check_name(name, &at, out);
            let from_file = file.and_then(|(f, r)| r.providers.get(name).map(|p| (f, p)));
            if let Some(p) = check_provider(name, p, &at, &shared, from_file, out) {
                providers.insert(ProviderId::new(name), Arc::new(p));
            }
        }

        let prices = check_prices(&raw, out);
        let default_price = raw
            .default_price
            .as_ref()
            .map(|p| check_price(p, "default_price", out));
        let fallback = Prices {
            by_model: &prices,
            default: default_price,
        };
        let mut models = BTreeMap::new();
        for (name, m) in &raw.models {
            let at = format!("models.{name}");
            if let Some(m) = check_model(name, m, &at, &raw, &providers, &fallback, out) {
                models.insert(name.clone(), Arc::new(m));
            }
        }

        let teams = check_teams(&raw, out);
        let tier_resources = check_tier_resources(&raw, out);
        let global_resources = match &raw.global {
            Some(g) => check_resources(&g.resources, "global.resources", out),
            None => Vec::new(),
        };
        let gateway_keys = check_gateway_keys(&raw, out);
        let usd = |rs: &[Resource]| rs.iter().any(|r| r.measure == Measure::CostMicroUsd);
        let everywhere = if usd(&global_resources) {
            Some("global.resources".to_string())
        } else if let Some((t, _)) = tier_resources.iter().find(|(_, rs)| usd(rs)) {
            Some(format!("tiers.{t}.resources"))
        } else if let Some(t) = teams.values().find(|t| usd(&t.resources)) {
            Some(format!("teams.{}.resources", t.name))
        } else {
            gateway_keys
                .iter()
                .position(|k| usd(&k.resources))
                .map(|i| format!("gateway_keys[{i}].resources"))
        };
        check_priced(&models, &providers, everywhere.as_deref(), out);
        let capacity_thresholds = check_thresholds(&raw, out);

        let max_body_bytes =
            check_bytes(raw.max_body_bytes, "max_body_bytes", out).unwrap_or(4 * 1024 * 1024);
        let max_response_bytes = check_bytes(raw.max_response_bytes, "max_response_bytes", out)
            .unwrap_or(64 * 1024 * 1024);
        let request_timeout_secs =
            check_secs(raw.request_timeout_secs, "request_timeout_secs", out).unwrap_or(600);
        let lease_ttl_secs = check_secs(raw.lease_ttl_secs, "lease_ttl_secs", out).unwrap_or(900);
        let files = check_files(raw.files.as_ref(), out);

        Some(Config {
            listen,
            timezone,
            tier_order: raw.tier_order.clone(),
            resources_file: raw.resources_file.clone(),
            max_body_bytes,
            max_response_bytes,
            request_timeout_secs,
            lease_ttl_secs,
            store,
            on_store_error,
            providers,
            models,
            gateway_keys,
            require_keys: raw.require_keys.unwrap_or(false),
            prices,
            default_price,
            teams,
            tier_resources,
            global_resources,
            capacity_thresholds,
            files,
        })
    }

    /// The provider named `id`.
    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.get(&ProviderId::new(id))
    }
}
