//! Gateway keys: those of `[[gateway_keys]]` and those kept in the store (`llmux keys …`).
//!
//! Only a SHA-256 of a secret is kept, in memory and in the store: the secrets are 192 random
//! bits, so a fast hash is as good as a slow one. A lookup finds candidates by the first 8
//! bytes of the hash and compares the whole hash in constant time. The router holds a
//! [`KeyRing`] behind an `ArcSwap` and rebuilds it from the store every
//! [`KEY_REFRESH`], so a key created, revoked or rotated by the CLI takes effect on a running
//! gateway within that time.

use crate::error::RouteError;
use llmux_core::config::{Config, Enforce, GatewayKey, Policy, Resource, Team};
use llmux_core::hex::encode as hex;
use llmux_core::plan::{gateway_key_bounds, Bound};
use llmux_core::{Measure, Period, Secret};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a router reads the store's gateway keys.
pub const KEY_REFRESH: Duration = Duration::from_secs(2);

/// What every generated secret starts with.
pub const SECRET_PREFIX: &str = "sk-llmux-";

/// A gateway key as the store keeps it: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredKey {
    pub name: String,
    /// SHA-256 of the secret, lowercase hex.
    pub hash: String,
    /// The secret's last four characters, to tell keys apart in listings.
    pub hint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// The budget's period (default `monthly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// When it was revoked (it no longer authorizes anything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

impl StoredKey {
    /// The resources this key's own limits make (`rpm`, `tpm`, `budget_usd`).
    pub fn resources(&self) -> Result<Vec<Resource>, String> {
        let mut v = Vec::new();
        let mut push = |name: &str, capacity: u64, period: Period, measure: Measure| {
            v.push(Resource {
                name: Arc::from(name),
                capacity: capacity.max(1),
                period,
                measure,
                enforce: Enforce::Hard,
            })
        };
        if let Some(r) = self.rpm {
            push("rpm", r, Period::Minutely, Measure::Requests);
        }
        if let Some(t) = self.tpm {
            push("tpm", t, Period::Minutely, Measure::Tokens);
        }
        if let Some(usd) = self.budget_usd {
            if !(usd.is_finite() && usd > 0.0) {
                return Err(format!("budget {usd} is not a USD amount above 0"));
            }
            let text = self.budget_period.as_deref().unwrap_or("monthly");
            let period = Period::parse(text, None).map_err(|e| e.to_string())?;
            let capacity = Measure::CostMicroUsd.capacity_from_value(usd);
            push("budget_usd", capacity, period, Measure::CostMicroUsd);
        }
        Ok(v)
    }

    /// The key as config would give it (its secret unknown here: only the hash is kept).
    pub fn gateway_key(&self) -> Result<GatewayKey, String> {
        Ok(GatewayKey {
            id: self.name.clone(),
            secret: Secret::new(""),
            tier: self.tier.clone(),
            models: self.models.clone(),
            resources: self.resources()?,
            team: self.team.clone(),
            policy: Policy {
                models: self.models.clone(),
                ..Policy::default()
            },
        })
    }
}

/// SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// [`hash_secret`] as lowercase hex (what the store keeps).
pub fn hash_hex(secret: &str) -> String {
    hex(&hash_secret(secret))
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    llmux_core::hex::decode(s)?.try_into().ok()
}

/// A fresh secret: `sk-llmux-` and 48 hex characters (192 random bits from the OS).
pub fn new_secret() -> Result<String, RouteError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RouteError::BadRequest("the OS random source failed".into()))?;
    Ok(format!("{SECRET_PREFIX}{}", hex(&bytes)))
}

/// The last four characters of a secret (what listings show).
pub fn hint_of(secret: &str) -> String {
    let tail: Vec<char> = secret.chars().rev().take(4).collect();
    tail.into_iter().rev().collect()
}

/// Equal in time independent of where the bytes differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A gateway key that passed authorization, with its resources bound.
#[derive(Debug)]
pub struct AuthorizedKey {
    pub key: GatewayKey,
    /// The key's team (`[teams.NAME]`), if config has it.
    pub team: Option<Arc<Team>>,
    /// The key's resources and its team's.
    pub(crate) bounds: Arc<[Bound]>,
}

impl AuthorizedKey {
    pub(crate) fn new(config: &Config, key: GatewayKey) -> AuthorizedKey {
        let team = key
            .team
            .as_deref()
            .and_then(|t| config.teams.get(t))
            .cloned();
        AuthorizedKey {
            bounds: gateway_key_bounds(config, &key).into(),
            team,
            key,
        }
    }

    /// Whether the key's and its team's `models` rules let it use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.policies().all(|(_, p)| {
            p.models
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == model))
        })
    }

    /// The key's policy, then its team's (empty ones left out), each with who set it.
    pub fn policies(&self) -> impl Iterator<Item = (PolicyOwner<'_>, &Policy)> {
        let own = (PolicyOwner::Key(&self.key.id), &self.key.policy);
        let team = self
            .team
            .as_ref()
            .map(|t| (PolicyOwner::Team(&t.name), &t.policy));
        std::iter::once(own)
            .chain(team)
            .filter(|(_, p)| !p.is_empty())
    }
}

/// Who set a policy: `gateway key "NAME"` or `team "NAME"` (formatted only for a message).
#[derive(Clone, Copy, Debug)]
pub enum PolicyOwner<'a> {
    Key(&'a str),
    Team(&'a str),
}

impl std::fmt::Display for PolicyOwner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyOwner::Key(n) => write!(f, "gateway key {n:?}"),
            PolicyOwner::Team(n) => write!(f, "team {n:?}"),
        }
    }
}

/// Every gateway key a router accepts, by hash.
/// Keys whose hashes share their first 8 bytes, with their hashes.
type Bucket = Vec<([u8; 32], Arc<AuthorizedKey>)>;

#[derive(Default)]
pub(crate) struct KeyRing {
    by_prefix: HashMap<u64, Bucket>,
    /// The same keys by name (`id`): whose batches run under which key.
    by_name: HashMap<String, Arc<AuthorizedKey>>,
    /// Requests need a key: one exists (revoked ones too), or `require_keys`.
    pub(crate) required: bool,
    /// The store's keys were read at least once (until then, stored keys may exist).
    pub(crate) loaded: bool,
}

fn prefix(h: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_le_bytes(b)
}

impl KeyRing {
    /// The keys of `config` and the live ones of `stored` (a stored key whose name config
    /// already uses, or whose record is malformed, is skipped with a warning).
    pub(crate) fn build(config: &Config, stored: Option<&[StoredKey]>) -> KeyRing {
        let mut ring = KeyRing {
            loaded: stored.is_some(),
            ..KeyRing::default()
        };
        for k in &config.gateway_keys {
            let h = hash_secret(k.secret.expose());
            ring.insert(h, AuthorizedKey::new(config, k.clone()));
        }
        for s in stored.unwrap_or_default() {
            if s.revoked_ms.is_some() {
                continue;
            }
            if config.gateway_keys.iter().any(|k| k.id == s.name) {
                tracing::warn!(key = %s.name, "a stored gateway key has the name of a config key; the config key wins");
                continue;
            }
            let (Some(h), Ok(key)) = (unhex(&s.hash), s.gateway_key()) else {
                tracing::warn!(key = %s.name, "skipping a malformed stored gateway key");
                continue;
            };
            ring.insert(h, AuthorizedKey::new(config, key));
        }
        // A revoked key still counts: revoking the last key must not open the gateway.
        ring.required = config.require_keys
            || !ring.by_prefix.is_empty()
            || stored.is_some_and(|s| !s.is_empty());
        ring
    }

    fn insert(&mut self, h: [u8; 32], key: AuthorizedKey) {
        let key = Arc::new(key);
        self.by_name.insert(key.key.id.clone(), key.clone());
        self.by_prefix.entry(prefix(&h)).or_default().push((h, key));
    }

    /// The live key named `name`.
    pub(crate) fn named(&self, name: &str) -> Option<Arc<AuthorizedKey>> {
        self.by_name.get(name).cloned()
    }

    /// The key whose secret is `token`.
    pub(crate) fn find(&self, token: &str) -> Option<Arc<AuthorizedKey>> {
        let h = hash_secret(token);
        self.by_prefix
            .get(&prefix(&h))?
            .iter()
            .find(|(k, _)| ct_eq(k, &h))
            .map(|(_, a)| a.clone())
    }
}

/// Parse the store's records of gateway keys (malformed ones are logged and skipped).
pub fn parse_stored(records: &[(String, String)]) -> Vec<StoredKey> {
    records
        .iter()
        .filter_map(|(name, v)| match serde_json::from_str::<StoredKey>(v) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(key = %name, error = %e, "skipping an unreadable stored gateway key");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_and_found_only_by_their_own_hash() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 48);
        let config = llmux_core::Config::from_toml_str("", &|_| None).unwrap();
        let stored = StoredKey {
            name: "k".into(),
            hash: hash_hex(&a),
            hint: hint_of(&a),
            tier: None,
            team: None,
            models: None,
            budget_usd: Some(5.0),
            budget_period: Some("daily".into()),
            rpm: Some(10),
            tpm: None,
            created_ms: 0,
            revoked_ms: None,
        };
        let ring = KeyRing::build(&config, Some(std::slice::from_ref(&stored)));
        assert!(ring.required);
        let found = ring.find(&a).unwrap();
        assert_eq!(found.key.id, "k");
        let names: Vec<&str> = found.key.resources.iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["rpm", "budget_usd"]);
        assert_eq!(found.key.resources[1].capacity, 5_000_000);
        assert!(ring.find(&b).is_none());
        assert!(ring.find("").is_none());
        assert_eq!(ring.named("k").unwrap().key.id, "k");
        assert!(ring.named("other").is_none());
        let revoked = StoredKey {
            revoked_ms: Some(1),
            ..stored
        };
        let ring = KeyRing::build(&config, Some(&[revoked]));
        assert!(ring.find(&a).is_none());
        assert!(
            ring.named("k").is_none(),
            "a revoked key is not found by name"
        );
        assert!(ring.required, "revoking the last key keeps keys required");
        assert!(!KeyRing::build(&config, Some(&[])).required);
    }
}
