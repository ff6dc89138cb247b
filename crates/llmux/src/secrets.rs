//! Upstream secrets kept in the store, encrypted with AES-256-GCM under `$LLMUX_MASTER_KEY`
//! (`llmux secrets set PROVIDER/KEY`; a key with `secret = "store"` uses it).
//!
//! A record is JSON `{"v":1,"alg":"AES-256-GCM","nonce":HEX,"ct":HEX}`: a fresh random 96-bit
//! nonce per secret, and the record's name (`provider/key`) as associated data, so a
//! ciphertext moved to another name does not decrypt. The master key and every plaintext are
//! zeroed when dropped.

use llmux_core::config::parse_master_key;
use llmux_core::Secret;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Why a secret could not be sealed or opened. Never carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    MasterKey(String),
    #[error(
        "the stored secret {0:?} cannot be decrypted: wrong master key, or the record was altered"
    )]
    Decrypt(String),
    #[error("the stored secret {0:?} is not a record this version reads")]
    Malformed(String),
    #[error("the OS random source failed")]
    Random,
}

/// The 32-byte key stored secrets are encrypted with.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(*****)")
    }
}

impl MasterKey {
    /// From its text form: 64 hex characters.
    pub fn parse(text: &str) -> Result<MasterKey, SecretError> {
        parse_master_key(text)
            .map(|k| MasterKey(Zeroizing::new(k)))
            .map_err(SecretError::MasterKey)
    }

    fn aead(&self) -> Result<LessSafeKey, SecretError> {
        UnboundKey::new(&AES_256_GCM, &self.0[..])
            .map(LessSafeKey::new)
            .map_err(|_| SecretError::MasterKey("unusable master key".into()))
    }

    /// The store record of `secret` under `name` (`provider/key`).
    pub fn seal(&self, name: &str, secret: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut buf = Zeroizing::new(secret.as_bytes().to_vec());
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| SecretError::MasterKey("encryption failed".into()))?;
        let record = Record {
            v: 1,
            alg: ALG.into(),
            nonce: llmux_core::hex::encode(&nonce),
            ct: llmux_core::hex::encode(&buf),
        };
        serde_json::to_string(&record).map_err(|_| SecretError::Malformed(name.into()))
    }

    /// The secret in `record`, stored under `name`.
    pub fn open(&self, name: &str, record: &str) -> Result<Secret, SecretError> {
        let malformed = || SecretError::Malformed(name.to_string());
        let r: Record = serde_json::from_str(record).map_err(|_| malformed())?;
        if r.v != 1 || r.alg != ALG {
            return Err(malformed());
        }
        let nonce: [u8; NONCE_LEN] = llmux_core::hex::decode(&r.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(malformed)?;
        let mut buf = Zeroizing::new(llmux_core::hex::decode(&r.ct).ok_or_else(malformed)?);
        let plain = self
            .aead()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretError::Decrypt(name.to_string()))?;
        let text = std::str::from_utf8(plain).map_err(|_| malformed())?;
        Ok(Secret::new(text))
    }
}

const ALG: &str = "AES-256-GCM";

#[derive(Serialize, Deserialize)]
struct Record {
    v: u32,
    alg: String,
    nonce: String,
    ct: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_name() {
        let k = MasterKey::parse(KEY).unwrap();
        let record = k.seal("openai/k1", "sk-very-secret").unwrap();
        assert!(!record.contains("sk-very-secret"));
        assert_eq!(
            k.open("openai/k1", &record).unwrap().expose(),
            "sk-very-secret"
        );
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(record, k.seal("openai/k1", "sk-very-secret").unwrap());
        // Another name (associated data) or another key: no plaintext.
        assert!(matches!(
            k.open("openai/k2", &record),
            Err(SecretError::Decrypt(_))
        ));
        let other = MasterKey::parse(&KEY.replace("1f", "ff")).unwrap();
        let e = other.open("openai/k1", &record).unwrap_err().to_string();
        assert!(
            e.contains("wrong master key") && !e.contains("sk-very"),
            "{e}"
        );
        // A flipped ciphertext byte is caught.
        let mut r: serde_json::Value = serde_json::from_str(&record).unwrap();
        let ct = r["ct"].as_str().unwrap().to_string();
        let flipped = if ct.starts_with('0') { "1" } else { "0" };
        r["ct"] = format!("{flipped}{}", &ct[1..]).into();
        assert!(k.open("openai/k1", &r.to_string()).is_err());
        assert!(MasterKey::parse("short").is_err());
        assert_eq!(format!("{k:?}"), "MasterKey(*****)");
    }
}
