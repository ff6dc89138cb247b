//! Records: small named values a store keeps beside its counters, in tables (`gateway_keys`:
//! hashed gateway keys, `secrets`: encrypted upstream secrets). Written by operators (the
//! CLI), read in bulk by gateways that refresh what they hold every few seconds; never on the
//! request path. Values are opaque text (JSON by convention) to the store.

use crate::store::StoreError;
use std::future::Future;

/// The table of gateway keys (value: JSON of a stored key, its secret only as a hash).
pub const GATEWAY_KEYS: &str = "gateway_keys";
/// The table of upstream secrets (value: JSON of the AES-256-GCM nonce and ciphertext),
/// named `provider/key`.
pub const SECRETS: &str = "secrets";

/// Why a subject was disabled (value: text, e.g. `the upstream answered 401 at …`), named by
/// the subject; shown by `show-state`, removed by `reset-state`.
pub const DISABLED: &str = "disabled";

/// Named records, one table per kind. Each call is one atomic step.
pub trait Records: Send + Sync {
    /// Create or replace `name` in `table`.
    fn put_record(
        &self,
        table: &str,
        name: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The value of `name` in `table`, if any.
    fn get_record(
        &self,
        table: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// Every `(name, value)` of `table`, by name.
    fn list_records(
        &self,
        table: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;
    /// Set `name` in `table` to `value` only if it now holds `expected` (`None`: only if it
    /// is absent), in one atomic step (compare and swap); whether it was set. Several
    /// processes use it to take turns, e.g. a lease on a batch.
    fn swap_record(
        &self,
        table: &str,
        name: &str,
        expected: Option<&str>,
        value: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Remove `name` from `table`; whether it was there.
    fn delete_record(
        &self,
        table: &str,
        name: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
