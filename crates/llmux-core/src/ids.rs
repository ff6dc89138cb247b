//! Identifiers and secrets. IDs are cheap to clone (`Arc<str>`); a [`Secret`] never prints.

use serde::{Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub Arc<str>);
        impl $name {
            pub fn new(s: &str) -> Self { $name(Arc::from(s)) }
            pub fn as_str(&self) -> &str { &self.0 }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { write!(f, "{:?}", &*self.0) }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(&self.0) }
        }
    };
}

id_type!(
    /// A provider's name, the table name under `[providers]`.
    ProviderId
);
id_type!(
    /// A key's `id`, unique within its provider.
    KeyId
);
id_type!(
    /// What state is kept for: `provider`, `provider/key`, `provider/key/model` (gates only),
    /// `model:NAME` or `gateway-key:ID`.
    Subject
);

impl Subject {
    pub fn provider(p: &ProviderId) -> Subject {
        Subject::new(p.as_str())
    }
    pub fn key(p: &ProviderId, k: &KeyId) -> Subject {
        Subject(Arc::from(format!("{p}/{k}")))
    }
    /// `provider/key/model`: one key for one upstream model (a 403 disables just this).
    pub fn target(t: &TargetId) -> Subject {
        Subject(Arc::from(t.to_string()))
    }
    pub fn model(name: &str) -> Subject {
        Subject(Arc::from(format!("model:{name}")))
    }
    /// `team:NAME`.
    pub fn team(name: &str) -> Subject {
        Subject(Arc::from(format!("team:{name}")))
    }
    /// `tier:NAME`.
    pub fn tier(name: &str) -> Subject {
        Subject(Arc::from(format!("tier:{name}")))
    }
    /// `global`: what every request counts against.
    pub fn global() -> Subject {
        Subject(Arc::from("global"))
    }
    pub fn gateway_key(id: &str) -> Subject {
        Subject(Arc::from(format!("gateway-key:{id}")))
    }
}

/// Whether `subject` is `parent` or below it (`openai` covers `openai/k1`, not `openai-eu`).
/// What `show-state` and `reset-state` mean by a SUBJECT.
pub fn at_or_below(subject: &str, parent: &str) -> bool {
    subject
        .strip_prefix(parent)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A credential. Debug, Display and Serialize print `*****`; its memory is zeroed when the
/// last clone is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<zeroize::Zeroizing<String>>);

impl Secret {
    pub fn new(s: &str) -> Self {
        Secret(Arc::new(zeroize::Zeroizing::new(s.to_string())))
    }
    /// The secret itself, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("*****")
    }
}

/// `url` with any password (and user) replaced by `*****`: `redis://:pw@host/0` →
/// `redis://*****@host/0`. For Debug output and messages about a store URL.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}*****{}", &url[..scheme_end], &rest[at..]),
        None => url.to_string(),
    }
}

/// One selectable unit: provider + key + upstream model. Displays as `provider/key/model`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TargetId {
    pub provider: ProviderId,
    pub key: KeyId,
    pub model: Arc<str>,
}

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.provider, self.key, self.model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_cover_their_keys_only() {
        assert!(at_or_below("openai", "openai") && at_or_below("openai/k1", "openai"));
        assert!(!at_or_below("openai-eu/k1", "openai") && !at_or_below("open", "openai"));
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s:?} {s}"), "***** *****");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"*****\"");
        assert_eq!(s.expose(), "sk-live-123");
    }
}
