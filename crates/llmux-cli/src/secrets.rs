//! `llmux secrets …`: upstream secrets kept encrypted (AES-256-GCM under `$LLMUX_MASTER_KEY`)
//! in the store, for keys with `secret = "store"`. The secret is read from stdin and never
//! printed; running gateways use a new one within seconds.

use crate::NotFound;
use anyhow::{bail, Context};
use llmux::core::config::MASTER_KEY_VAR;
use llmux::core::records::SECRETS;
use llmux::core::Records;
use llmux::secrets::MasterKey;
use llmux::{AnyStore, Config};
use std::io::{Read, Write};

#[derive(clap::Subcommand, Debug)]
pub enum SecretsCommand {
    /// Store the secret of PROVIDER/KEY, read from stdin (one line), encrypted.
    Set { name: String },
    /// List the stored secrets (names only).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete the stored secret of PROVIDER/KEY.
    Delete { name: String },
}

pub async fn run(config: &Config, cmd: &SecretsCommand) -> anyhow::Result<()> {
    let store = AnyStore::open(&config.store)?;
    let mut out = std::io::stdout();
    match cmd {
        SecretsCommand::Set { name } => {
            let (p, k) = key_of(config, name)?;
            let master = master_key()?;
            let mut text = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the secret from stdin")?;
            let secret = text.trim_end_matches(['\n', '\r']);
            if secret.is_empty() {
                bail!("no secret on stdin (pipe it in: `printf %s \"$KEY\" | llmux secrets set {name}`)");
            }
            let record = master.seal(name, secret)?;
            store.put_record(SECRETS, name, &record).await?;
            let used = if k {
                ""
            } else {
                " (note: the config does not give this key secret = \"store\" yet)"
            };
            writeln!(out, "stored the secret of {p}, encrypted{used}")?;
        }
        SecretsCommand::List { json } => {
            let names: Vec<String> = store
                .list_records(SECRETS)
                .await?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            if *json {
                let v: Vec<serde_json::Value> = names
                    .iter()
                    .map(|n| {
                        serde_json::json!({
                            "name": n,
                            "used_by_config": key_of(config, n).map(|(_, s)| s).unwrap_or(false),
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else if names.is_empty() {
                writeln!(out, "no stored secrets")?;
            } else {
                for n in names {
                    writeln!(out, "{n}")?;
                }
            }
        }
        SecretsCommand::Delete { name } => {
            if !store.delete_record(SECRETS, name).await? {
                return Err(NotFound(format!("no stored secret {name:?}")).into());
            }
            writeln!(out, "deleted the stored secret of {name}")?;
        }
    }
    Ok(())
}

/// `PROVIDER/KEY` checked against config (exit 1 when unknown); whether the key has
/// `secret = "store"`.
fn key_of<'a>(config: &Config, name: &'a str) -> anyhow::Result<(&'a str, bool)> {
    let Some((p, k)) = name.split_once('/') else {
        bail!("{name:?}: expected PROVIDER/KEY");
    };
    let Some(provider) = config.provider(p) else {
        return Err(NotFound(format!("no provider {p:?} in config")).into());
    };
    let Some(key) = provider.keys.iter().find(|x| x.id.as_str() == k) else {
        return Err(NotFound(format!("provider {p:?} has no key {k:?}")).into());
    };
    Ok((name, key.from_store))
}

fn master_key() -> anyhow::Result<MasterKey> {
    let Some(text) = llmux::process_env(MASTER_KEY_VAR) else {
        bail!("${MASTER_KEY_VAR} is not set: it is the key stored secrets are encrypted with (64 hex characters, e.g. `openssl rand -hex 32`)");
    };
    Ok(MasterKey::parse(&text)?)
}
