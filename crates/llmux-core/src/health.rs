//! Upstream health as stored state: cooldowns that grow on repeated 429s, circuit breakers and
//! the limits an upstream announced in its headers (learned limits). Pure arithmetic on a
//! subject's [`Flags`], shared by every store so they cannot disagree
//! (the Redis store's Lua scripts follow these functions line by line).
//!
//! - **Cooldown**: a 429 cools the key for the longest of the upstream's hint and a growing
//!   length, `base × factor^(strikes − 1)` capped at `max`. A 429 that arrives while the key
//!   already cools (a burst of requests sent before the first 429) adds no strike; one within
//!   one more cooldown length after the last ended adds one; a later one starts over. A
//!   cooldown is never shortened.
//! - **Breaker** of a target: closed (`open_until = None`), open (`now < open_until`), or
//!   half-open (`now >= open_until`): a reserve then is granted as a *probe*, up to `probes`
//!   of them, after which the breaker counts as open again for `open_ms` (so probes that never
//!   report cannot keep it shut, nor let traffic through). A probe's success closes it, its
//!   failure opens it again.
//! - **Learned limits** of a key: what the upstream said remains of its requests and tokens
//!   until an instant. Each reserve takes its share; the next answer's headers replace it;
//!   past its reset it no longer applies.

use crate::time::Timestamp;
use serde::Serialize;

/// How long repeated 429s cool a key: `base_ms × factor^(strikes − 1)`, at most `max_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Growth {
    pub base_ms: i64,
    pub factor: f64,
    pub max_ms: i64,
}

impl Default for Growth {
    /// `cooldown = { base_secs = 1, factor = 2, max_secs = 300 }`.
    fn default() -> Self {
        Growth {
            base_ms: 1000,
            factor: 2.0,
            max_ms: 300_000,
        }
    }
}

impl Growth {
    /// The cooldown of the `strikes`-th 429 in a row (`strikes >= 1`).
    pub fn length_ms(&self, strikes: u32) -> i64 {
        let exp = i32::try_from(strikes.saturating_sub(1)).unwrap_or(i32::MAX);
        let len = self.base_ms as f64 * self.factor.powi(exp);
        if len.is_finite() && len < self.max_ms as f64 {
            (len as i64).max(0)
        } else {
            self.max_ms
        }
    }
}

/// The upstream-announced limits a key can have, in this order in [`Flags::learned`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LearnedMeasure {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
}

impl LearnedMeasure {
    pub const ALL: [LearnedMeasure; 4] = [
        LearnedMeasure::Requests,
        LearnedMeasure::Tokens,
        LearnedMeasure::InputTokens,
        LearnedMeasure::OutputTokens,
    ];
    /// The resource name a denial by this limit carries, e.g. `upstream_requests`.
    pub fn resource(self) -> &'static str {
        match self {
            LearnedMeasure::Requests => "upstream_requests",
            LearnedMeasure::Tokens => "upstream_tokens",
            LearnedMeasure::InputTokens => "upstream_input_tokens",
            LearnedMeasure::OutputTokens => "upstream_output_tokens",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One limit an upstream announced: `remaining` of `limit` until `reset_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Learned {
    pub limit: u64,
    pub remaining: u64,
    pub reset_at: Timestamp,
}

/// A target's circuit breaker as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Breaker {
    /// `None`: closed. Before it: open. From it on: half-open.
    pub open_until: Option<Timestamp>,
    /// Probes granted in this half-open spell.
    pub probes: u32,
}

/// The state words of a breaker (`show-state`, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl Breaker {
    pub fn state(&self, now: Timestamp) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(u) if now < u => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }
}

/// What a reservation brings to the health gates: its share of the learned limits and the
/// breaker's half-open rules of its provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateUse {
    /// What the request takes of each learned limit, by [`LearnedMeasure::index`].
    pub learned: [u64; 4],
    /// Probes a half-open breaker lets through before it counts as open again.
    pub probes: u32,
    /// How long a breaker stays open (after tripping, or after its probes went out).
    pub open_ms: i64,
}

impl Default for GateUse {
    fn default() -> Self {
        GateUse {
            learned: [1, 0, 0, 0],
            probes: 1,
            open_ms: 30_000,
        }
    }
}

/// Per-subject flags a reservation checks (the rules are this module's).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Flags {
    /// Cooling down until this instant.
    pub cooldown_until: Option<Timestamp>,
    pub disabled: bool,
    /// An operator's score override (see `set-score`).
    pub score: Option<f64>,
    /// 429s in a row: how long the next cooldown lasts.
    pub strikes: u32,
    /// The circuit breaker (targets).
    pub breaker: Breaker,
    /// Limits the upstream announced (keys), by [`LearnedMeasure::index`].
    pub learned: [Option<Learned>; 4],
}

impl Flags {
    /// Whether any health state is set (a store may skip writing default flags).
    pub fn is_default(&self) -> bool {
        *self == Flags::default()
    }
}

/// A change to a subject's health flags (see `Store::health`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HealthOp {
    /// The upstream answered 429 at `now`, hinting it may serve again at `hint` (if it said).
    RateLimited {
        now: Timestamp,
        hint: Option<Timestamp>,
        growth: Growth,
    },
    /// Open the breaker until the instant, or (`None`) close it.
    Breaker(Option<Timestamp>),
    /// The upstream announced these limits (the `None` ones are kept as they are).
    Learned([Option<Learned>; 4]),
}

/// Whether a reservation may pass a subject's health gates at `now`, and what passing
/// changes: `Ok(changed)` (the flags must be written back when `changed`), or the reason it
/// may not with its retry instant. The order of checks is disabled, cooldown, breaker, learned.
pub(crate) enum GateCheck {
    Pass {
        changed: bool,
        probe: bool,
    },
    Disabled,
    Cooldown(Timestamp),
    BreakerOpen(Timestamp),
    Learned {
        measure: LearnedMeasure,
        learned: Learned,
        amount: u64,
    },
}

pub(crate) fn check_gate(flags: &mut Flags, now: Timestamp, u: &GateUse) -> GateCheck {
    if flags.disabled {
        return GateCheck::Disabled;
    }
    if let Some(until) = flags.cooldown_until.filter(|u| *u > now) {
        return GateCheck::Cooldown(until);
    }
    let mut probe = false;
    match flags.breaker.state(now) {
        BreakerState::Closed => {}
        BreakerState::Open => {
            if let Some(until) = flags.breaker.open_until {
                return GateCheck::BreakerOpen(until);
            }
        }
        BreakerState::HalfOpen => probe = true,
    }
    for m in LearnedMeasure::ALL {
        let amount = u.learned[m.index()];
        if let Some(l) = flags.learned[m.index()].filter(|l| l.reset_at > now) {
            if amount > l.remaining {
                return GateCheck::Learned {
                    measure: m,
                    learned: l,
                    amount,
                };
            }
        }
    }
    // Passing: take the learned shares, and count the probe.
    let mut changed = false;
    for m in LearnedMeasure::ALL {
        let amount = u.learned[m.index()];
        if let Some(l) = flags.learned[m.index()].as_mut() {
            if l.reset_at > now && amount > 0 {
                l.remaining -= amount;
                changed = true;
            }
        }
    }
    if probe {
        flags.breaker.probes += 1;
        if flags.breaker.probes >= u.probes.max(1) {
            flags.breaker = Breaker {
                open_until: Some(now.plus_millis(u.open_ms)),
                probes: 0,
            };
        }
        changed = true;
    }
    GateCheck::Pass { changed, probe }
}

impl Flags {
    /// Apply `op`; returns the cooldown's end after a [`HealthOp::RateLimited`].
    pub fn apply_health(&mut self, op: &HealthOp) -> Option<Timestamp> {
        match *op {
            HealthOp::RateLimited { now, hint, growth } => {
                let cooling = self.cooldown_until.filter(|u| *u > now);
                if cooling.is_none() {
                    let streak = self.strikes > 0
                        && self.cooldown_until.is_some_and(|u| {
                            now <= u.plus_millis(growth.length_ms(self.strikes + 1))
                        });
                    self.strikes = if streak { self.strikes + 1 } else { 1 };
                }
                let grown = now.plus_millis(growth.length_ms(self.strikes.max(1)));
                let until = [Some(grown), hint, self.cooldown_until]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(grown);
                self.cooldown_until = Some(until);
                Some(until)
            }
            HealthOp::Breaker(until) => {
                self.breaker = Breaker {
                    open_until: until,
                    probes: 0,
                };
                None
            }
            HealthOp::Learned(limits) => {
                for (slot, new) in self.learned.iter_mut().zip(limits) {
                    if new.is_some() {
                        *slot = new;
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Flags;

    fn rate_limited(f: &mut Flags, now: i64, hint: Option<i64>) -> i64 {
        f.apply_health(&HealthOp::RateLimited {
            now: Timestamp(now),
            hint: hint.map(Timestamp),
            growth: Growth::default(),
        })
        .map(|t| t.0)
        .unwrap_or(0)
    }

    #[test]
    fn cooldowns_grow_cap_and_start_over() {
        let g = Growth::default();
        assert_eq!(
            (g.length_ms(1), g.length_ms(2), g.length_ms(3)),
            (1000, 2000, 4000)
        );
        assert_eq!(g.length_ms(40), 300_000);
        assert_eq!(g.length_ms(u32::MAX), 300_000);
        let mut f = Flags::default();
        assert_eq!(rate_limited(&mut f, 0, None), 1000);
        // A burst while it cools adds no strike.
        assert_eq!(rate_limited(&mut f, 500, None), 1500);
        assert_eq!(f.strikes, 1);
        // Right after it ends: the next is twice as long, then four times.
        assert_eq!(rate_limited(&mut f, 1600, None), 3600);
        assert_eq!(rate_limited(&mut f, 3700, None), 7700);
        assert_eq!(f.strikes, 3);
        // A hint longer than the growth wins; a shorter one never shortens.
        assert_eq!(rate_limited(&mut f, 8000, Some(60_000)), 60_000);
        assert_eq!(rate_limited(&mut f, 9000, Some(10_000)), 60_000);
        // Long after the last, it starts over.
        assert_eq!(rate_limited(&mut f, 10_000_000, None), 10_001_000);
        assert_eq!(f.strikes, 1);
    }

    #[test]
    fn a_breaker_opens_probes_and_reopens() {
        let mut f = Flags::default();
        let u = GateUse {
            probes: 2,
            open_ms: 1000,
            ..GateUse::default()
        };
        f.apply_health(&HealthOp::Breaker(Some(Timestamp(100))));
        assert!(matches!(
            check_gate(&mut f, Timestamp(50), &u),
            GateCheck::BreakerOpen(Timestamp(100))
        ));
        for _ in 0..2 {
            assert!(matches!(
                check_gate(&mut f, Timestamp(100), &u),
                GateCheck::Pass { probe: true, .. }
            ));
        }
        // Its probes are out: open again for open_ms.
        assert!(matches!(
            check_gate(&mut f, Timestamp(100), &u),
            GateCheck::BreakerOpen(Timestamp(1100))
        ));
        f.apply_health(&HealthOp::Breaker(None));
        assert!(matches!(
            check_gate(&mut f, Timestamp(100), &u),
            GateCheck::Pass { probe: false, .. }
        ));
    }

    #[test]
    fn learned_limits_take_shares_until_their_reset() {
        let mut f = Flags::default();
        let mut limits = [None; 4];
        limits[0] = Some(Learned {
            limit: 60,
            remaining: 2,
            reset_at: Timestamp(1000),
        });
        f.apply_health(&HealthOp::Learned(limits));
        let u = GateUse::default();
        for _ in 0..2 {
            assert!(matches!(
                check_gate(&mut f, Timestamp(0), &u),
                GateCheck::Pass { changed: true, .. }
            ));
        }
        assert!(matches!(
            check_gate(&mut f, Timestamp(0), &u),
            GateCheck::Learned {
                measure: LearnedMeasure::Requests,
                ..
            }
        ));
        assert!(matches!(
            check_gate(&mut f, Timestamp(1000), &u),
            GateCheck::Pass { changed: false, .. }
        ));
    }
}
