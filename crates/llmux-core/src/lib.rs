//! llmux-core: the domain of llmux with no I/O. Config and its validation, windows, quota
//! arithmetic, target selection, the `Store` trait and `MemoryStore`.
//!
//! Architecture invariant: this crate does no I/O and reads no clock or environment; time and
//! env arrive as parameters.

pub mod config;
#[doc(hidden)]
pub mod conformance;
pub mod forecast;
pub mod health;
pub mod hex;
pub mod ids;
pub mod memory;
pub mod plan;
pub mod records;
pub mod select;
pub mod store;
pub mod time;
pub mod usage;
pub mod window;

pub use config::{Config, Issue, Issues};
pub use ids::{KeyId, ProviderId, Secret, Subject, TargetId};
pub use memory::MemoryStore;
pub use records::Records;
pub use store::{Admission, Denial, DenialReason, LeaseId, Line, Reserve, Store, StoreError};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use usage::{Measure, Usage};
pub use window::{window_at, Period, Window};
