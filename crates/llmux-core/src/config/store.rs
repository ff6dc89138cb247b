//! `[store]`: which store, where, and what to do when it is unreachable.

use super::*;

pub(super) fn check_store(s: &RawStore, out: &mut Issues) -> StoreConfig {
    match s.kind.as_deref().unwrap_or("sqlite") {
        "memory" => StoreConfig::Memory,
        "sqlite" => StoreConfig::Sqlite {
            path: s.path.clone().unwrap_or_else(|| "llmux.db".to_string()),
        },
        "redis" => {
            let url = s.url.clone().unwrap_or_default();
            if url.is_empty() {
                out.push("store.url", "required when store.kind = \"redis\"");
            } else if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                out.push("store.url", "must start with redis:// or rediss://");
            }
            if s.prefix.as_deref().is_some_and(|p| {
                p.is_empty()
                    || p.contains(['{', '}'])
                    || p.contains(char::is_whitespace)
                    || p.contains(char::is_control)
            }) {
                out.push(
                    "store.prefix",
                    "must be non-empty, without braces, whitespace or control characters",
                );
            }
            StoreConfig::Redis {
                url,
                prefix: s.prefix.clone().unwrap_or_else(|| "llmux".to_string()),
            }
        }
        other => {
            out.push(
                "store.kind",
                format!("unknown store {other:?}; expected one of memory, sqlite, redis"),
            );
            StoreConfig::Memory
        }
    }
}

/// `on_store_error` (top level or under `[store]`, not both with different values).
pub(super) fn check_on_store_error(raw: &RawConfig, out: &mut Issues) -> OnStoreError {
    match (
        raw.on_store_error.as_deref(),
        raw.store.on_store_error.as_deref(),
    ) {
        (Some(a), Some(b)) if a != b => {
            out.push(
                "on_store_error",
                format!("{a:?} conflicts with store.on_store_error = {b:?}"),
            );
            OnStoreError::FailClosed
        }
        (Some(v), _) | (None, Some(v)) => match v {
            "fail-closed" => OnStoreError::FailClosed,
            "fail-open" => OnStoreError::FailOpen,
            other => {
                let at = if raw.on_store_error.is_some() {
                    "on_store_error"
                } else {
                    "store.on_store_error"
                };
                out.push(
                    at,
                    format!("unknown policy {other:?}; expected fail-closed or fail-open"),
                );
                OnStoreError::FailClosed
            }
        },
        (None, None) => OnStoreError::FailClosed,
    }
}
