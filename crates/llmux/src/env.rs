//! Config from files and from the environment (`Router::from_path` / `from_env` build on it,
//! in `router/builder.rs`).

use llmux_core::config::ResourcesFile;
use llmux_core::{Config, Issues};
use std::path::{Path, PathBuf};

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}:\n{issues}")]
    Invalid { path: PathBuf, issues: Issues },
}

/// The process environment, as the `env` parameter core expects.
#[allow(clippy::disallowed_methods)]
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `$LLMUX_MASTER_KEY`, parsed, if set.
pub(crate) fn master_key_from_env(
) -> Option<Result<crate::secrets::MasterKey, crate::secrets::SecretError>> {
    process_env(llmux_core::config::MASTER_KEY_VAR).map(|v| crate::secrets::MasterKey::parse(&v))
}

/// Read and validate the TOML config at `path`, resolving `${VAR}` from the environment and
/// merging the resources file it names (`resources_file`, relative to the config's folder) or
/// `$LLMUX_RESOURCES_FILE` names.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    load_config_with(path, &process_env)
}

/// [`load_config`] with the environment as a parameter.
pub fn load_config_with(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let text = read(path)?;
    let named = toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| t.get("resources_file")?.as_str().map(str::to_string))
        .map(|f| path.parent().unwrap_or(Path::new(".")).join(f));
    let file = match named.or_else(|| env("LLMUX_RESOURCES_FILE").map(PathBuf::from)) {
        Some(p) => Some(ResourcesFile {
            name: p.display().to_string(),
            text: read(&p)?,
        }),
        None => None,
    };
    Config::from_toml_str_with(&text, env, file.as_ref()).map_err(|issues| ConfigError::Invalid {
        path: path.to_path_buf(),
        issues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RouteError;
    use crate::router::Router;

    #[test]
    fn resources_file_is_read_beside_the_config_or_from_the_env() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("llmux.toml");
        let base = "[providers.p]\nkind = \"mock\"\n[models.m]\ntargets = [{ provider = \"p\", model = \"x\" }]\n";
        std::fs::write(&cfg, format!("resources_file = \"limits.toml\"\n{base}")).unwrap();
        std::fs::write(
            dir.path().join("limits.toml"),
            "[providers.p]\ntimezone = \"Europe/Warsaw\"\nresources = [{ name = \"rpd\", value = 9, period = \"daily\" }]\n",
        )
        .unwrap();
        let c = load_config_with(&cfg, &|_| None).unwrap();
        let p = c.provider("p").unwrap();
        assert_eq!(p.resources[0].capacity, 9);
        assert_eq!(p.timezone.iana_name(), Some("Europe/Warsaw"));

        let other = dir.path().join("other.json");
        std::fs::write(&other, r#"{"providers": {"p": {"resources": [{"name": "rpm", "value": 3, "period": "minutely"}]}}}"#).unwrap();
        std::fs::write(&cfg, base).unwrap();
        let env = |k: &str| (k == "LLMUX_RESOURCES_FILE").then(|| other.display().to_string());
        let c = load_config_with(&cfg, &env).unwrap();
        assert_eq!(&*c.provider("p").unwrap().resources[0].name, "rpm");

        let env =
            |k: &str| (k == "LLMUX_RESOURCES_FILE").then(|| "/nonexistent/r.json".to_string());
        let e = load_config_with(&cfg, &env).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/r.json"), "{e}");
    }

    #[tokio::test]
    async fn from_env_maps_model_names_to_providers() {
        let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "sk-x".to_string());
        let r = Router::from_env_with(&env).unwrap();
        let lease = r
            .acquire("gpt-4o-mini", llmux_core::Usage::new(1, 1))
            .await
            .unwrap();
        assert_eq!(lease.target().to_string(), "openai/env/gpt-4o-mini");
        assert_eq!(lease.secret().expose(), "sk-x");
        lease.release().await.unwrap();
        assert!(matches!(
            r.acquire("vendor/model", llmux_core::Usage::default())
                .await,
            Err(RouteError::UnknownModel(_))
        ));
    }
}
