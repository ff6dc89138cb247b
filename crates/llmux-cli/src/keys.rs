//! `llmux keys …`: gateway keys kept in the store. A secret is printed once, when it is made
//! (`create`, `rotate`); the store keeps only its SHA-256. Running gateways read the keys
//! every few seconds, so a change takes effect without a restart.

use crate::NotFound;
use anyhow::{bail, Context};
use llmux::core::records::GATEWAY_KEYS;
use llmux::core::{Clock, Records, SystemClock, Timestamp};
use llmux::keys::{hash_hex, hint_of, new_secret, parse_stored, StoredKey, SECRET_PREFIX};
use llmux::{AnyStore, Config};
use std::io::Write;

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a gateway key and print its secret (shown only this once).
    Create {
        #[arg(long)]
        name: String,
        /// The key's tier (one of `tier_order`).
        #[arg(long)]
        tier: Option<String>,
        /// Models the key may use, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// The key's team (`[teams.NAME]` limits, budgets and policies apply).
        #[arg(long)]
        team: Option<String>,
        /// A hard budget in USD per `--budget-period`.
        #[arg(long, allow_negative_numbers = true)]
        budget_usd: Option<f64>,
        /// The budget's window: daily, weekly, monthly (default), …
        #[arg(long, requires = "budget_usd")]
        budget_period: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List gateway keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops working within seconds.
    Revoke { name: String },
    /// Give a key a new secret (printed once); the old one stops working.
    Rotate {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, cmd: &KeysCommand) -> anyhow::Result<()> {
    let store = AnyStore::open(&config.store)?;
    match cmd {
        KeysCommand::Create {
            name,
            tier,
            models,
            team,
            budget_usd,
            budget_period,
            rpm,
            tpm,
            json,
        } => {
            let mut key = StoredKey {
                name: name.clone(),
                hash: String::new(),
                hint: String::new(),
                tier: tier.clone(),
                team: team.clone(),
                models: models.clone(),
                budget_usd: *budget_usd,
                budget_period: budget_period.clone(),
                rpm: *rpm,
                tpm: *tpm,
                created_ms: SystemClock.now().0,
                revoked_ms: None,
            };
            check(config, &key)?;
            if config.gateway_keys.iter().any(|k| &k.id == name) {
                bail!("a gateway key named {name:?} is defined in the config");
            }
            if store.get_record(GATEWAY_KEYS, name).await?.is_some() {
                bail!("a gateway key named {name:?} exists already (rotate or revoke it)");
            }
            let secret = store_new_secret(&store, &mut key).await?;
            print_secret(&key, &secret, *json, "created")
        }
        KeysCommand::List { json } => list(config, &store, *json).await,
        KeysCommand::Revoke { name } => {
            let mut key = stored(config, &store, name).await?;
            let mut out = std::io::stdout();
            if key.revoked_ms.is_some() {
                writeln!(out, "gateway key {name:?} was revoked already")?;
                return Ok(());
            }
            key.revoked_ms = Some(SystemClock.now().0);
            store
                .put_record(GATEWAY_KEYS, name, &serde_json::to_string(&key)?)
                .await?;
            writeln!(
                out,
                "revoked gateway key {name:?}; running gateways refuse it within {} s",
                llmux::keys::KEY_REFRESH.as_secs() + 1
            )?;
            Ok(())
        }
        KeysCommand::Rotate { name, json } => {
            let mut key = stored(config, &store, name).await?;
            if key.revoked_ms.is_some() {
                bail!("gateway key {name:?} is revoked; create a new one");
            }
            let secret = store_new_secret(&store, &mut key).await?;
            print_secret(&key, &secret, *json, "rotated")
        }
    }
}

/// Give `key` a fresh secret, store it (its hash, never the secret), and return the secret.
async fn store_new_secret(store: &AnyStore, key: &mut StoredKey) -> anyhow::Result<String> {
    let secret = new_secret()?;
    key.hash = hash_hex(&secret);
    key.hint = hint_of(&secret);
    store
        .put_record(GATEWAY_KEYS, &key.name, &serde_json::to_string(key)?)
        .await?;
    Ok(secret)
}

/// The stored key `name`: one only in config cannot be changed here (exit 2), none is exit 1.
async fn stored(config: &Config, store: &AnyStore, name: &str) -> anyhow::Result<StoredKey> {
    if config.gateway_keys.iter().any(|k| k.id == name) {
        bail!("gateway key {name:?} is defined in the config; change it there");
    }
    let Some(v) = store.get_record(GATEWAY_KEYS, name).await? else {
        return Err(NotFound(format!("no gateway key {name:?} in the store")).into());
    };
    serde_json::from_str(&v).with_context(|| format!("gateway key {name:?} is unreadable"))
}

/// Every option checked against config, each problem named.
fn check(config: &Config, k: &StoredKey) -> anyhow::Result<()> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !valid(&k.name) {
        bail!(
            "--name: invalid name {:?}; use letters, digits, '-', '_' and '.'",
            k.name
        );
    }
    if let Some(t) = &k.tier {
        if !config.tier_order.contains(t) {
            bail!(
                "--tier: unknown tier {t:?}; expected one of {}",
                if config.tier_order.is_empty() {
                    "(none: tier_order is empty)".to_string()
                } else {
                    config.tier_order.join(", ")
                }
            );
        }
    }
    if let Some(ms) = &k.models {
        if ms.is_empty() {
            bail!("--models: lists no model");
        }
        for m in ms {
            if !config.models.contains_key(m) {
                bail!("--models: unknown model {m:?}");
            }
        }
    }
    if let Some(t) = &k.team {
        if !valid(t) {
            bail!("--team: invalid name {t:?}; use letters, digits, '-', '_' and '.'");
        }
    }
    if k.rpm == Some(0) {
        bail!("--rpm: must be greater than 0");
    }
    if k.tpm == Some(0) {
        bail!("--tpm: must be greater than 0");
    }
    k.resources()
        .map_err(|e| anyhow::anyhow!("--budget-usd / --budget-period: {e}"))?;
    if k.budget_usd.is_some() {
        // A budget over a target with no price would count it free.
        for (name, pool) in &config.models {
            if k.models.as_ref().is_some_and(|ms| !ms.contains(name)) {
                continue;
            }
            for t in &pool.targets {
                let priced = config.providers.get(&t.provider);
                if t.price.is_none() && priced.is_some_and(|p| p.needs_price()) {
                    bail!(
                        "--budget-usd: model {name:?} has a target ({}/{}) with no price; add [prices.\"{}\"] or `default_price` to the config",
                        t.provider, t.model, t.model
                    );
                }
            }
        }
    }
    Ok(())
}

fn key_json(k: &StoredKey, source: &str) -> serde_json::Value {
    serde_json::json!({
        "name": k.name,
        "source": source,
        "tier": k.tier,
        "team": k.team,
        "models": k.models,
        "budget_usd": k.budget_usd,
        "budget_period": k.budget_usd.map(|_| k.budget_period.clone().unwrap_or_else(|| "monthly".into())),
        "rpm": k.rpm,
        "tpm": k.tpm,
        "created_at": (source == "store").then(|| Timestamp(k.created_ms).rfc3339()),
        "revoked": k.revoked_ms.is_some(),
        "revoked_at": k.revoked_ms.map(|t| Timestamp(t).rfc3339()),
        "secret_hint": (!k.hint.is_empty()).then(|| format!("{SECRET_PREFIX}…{}", k.hint)),
    })
}

fn print_secret(k: &StoredKey, secret: &str, json: bool, what: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    if json {
        let mut v = key_json(k, "store");
        v["secret"] = serde_json::Value::String(secret.to_string());
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        eprintln!(
            "{what} gateway key {:?}{}; its secret is shown only now:",
            k.name,
            describe(k)
        );
        writeln!(out, "{secret}")?;
    }
    Ok(())
}

fn describe(k: &StoredKey) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &k.tier {
        parts.push(format!("tier {t}"));
    }
    if let Some(t) = &k.team {
        parts.push(format!("team {t}"));
    }
    if let Some(ms) = &k.models {
        parts.push(format!("models {}", ms.join(",")));
    }
    if let Some(b) = k.budget_usd {
        let p = k.budget_period.as_deref().unwrap_or("monthly");
        parts.push(format!("budget ${b} {p}"));
    }
    if let Some(r) = k.rpm {
        parts.push(format!("rpm {r}"));
    }
    if let Some(t) = k.tpm {
        parts.push(format!("tpm {t}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// Config keys as listings show them (their secrets never).
fn config_keys(config: &Config) -> Vec<StoredKey> {
    config
        .gateway_keys
        .iter()
        .map(|g| StoredKey {
            name: g.id.clone(),
            hash: String::new(),
            hint: String::new(),
            tier: g.tier.clone(),
            team: g.team.clone(),
            models: g.models.clone(),
            budget_usd: None,
            budget_period: None,
            rpm: None,
            tpm: None,
            created_ms: 0,
            revoked_ms: None,
        })
        .collect()
}

async fn list(config: &Config, store: &AnyStore, json: bool) -> anyhow::Result<()> {
    let stored = parse_stored(&store.list_records(GATEWAY_KEYS).await?);
    let from_config = config_keys(config);
    let rows: Vec<(&str, &StoredKey)> = from_config
        .iter()
        .map(|k| ("config", k))
        .chain(stored.iter().map(|k| ("store", k)))
        .collect();
    let mut out = std::io::stdout();
    if json {
        let v: Vec<serde_json::Value> = rows.iter().map(|(s, k)| key_json(k, s)).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(out, "no gateway keys")?;
        return Ok(());
    }
    for (source, k) in rows {
        let status = match k.revoked_ms {
            Some(t) => format!("revoked {}", Timestamp(t).rfc3339()),
            None => "active".to_string(),
        };
        let hint = if k.hint.is_empty() {
            String::new()
        } else {
            format!(", secret {SECRET_PREFIX}…{}", k.hint)
        };
        writeln!(
            out,
            "{}: {status}, from {source}{}{hint}",
            k.name,
            describe(k)
        )?;
    }
    Ok(())
}
