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
