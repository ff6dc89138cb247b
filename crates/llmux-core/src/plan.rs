//! Planning: which resource lines and gates apply when a target takes a request, and how much
//! each line reserves for a given usage. Pure in time: windows come from `now`.

use crate::config::{Config, ModelPool, Provider, Resource};
use crate::ids::{Subject, TargetId};
use crate::store::Line;
use crate::time::Timestamp;
use crate::usage::Usage;
use crate::window::{window_at, Period, Window};
use jiff::tz::TimeZone;
use std::sync::Arc;

/// A resource bound to the subject it limits and the zone its windows follow.
#[derive(Clone, Debug)]
pub struct Bound {
    pub subject: Subject,
    pub resource: Resource,
    pub timezone: TimeZone,
    /// The last window computed for a period of an hour or longer, reused while it holds
    /// `now`: its math reads the zone's rules, and every reserve and commit needs it.
    last: Arc<parking_lot::Mutex<Option<Window>>>,
}

impl Bound {
    pub fn new(subject: Subject, resource: Resource, timezone: TimeZone) -> Bound {
        Bound {
            subject,
            resource,
            timezone,
            last: Arc::default(),
        }
    }

    /// The window of this resource containing `now`.
    pub fn window(&self, now: Timestamp) -> Window {
        let period = self.resource.period;
        if matches!(
            period,
            Period::Secondly | Period::Minutely | Period::Custom { .. }
        ) {
            return window_at(period, &self.timezone, now);
        }
        let mut last = self.last.lock();
        if let Some(w) = *last {
            if w.start <= now && now < w.end {
                return w;
            }
        }
        let w = window_at(period, &self.timezone, now);
        *last = Some(w);
        w
    }

    pub fn line(&self, usage: &Usage, now: Timestamp) -> Line {
        Line {
            subject: self.subject.clone(),
            resource: self.resource.name.clone(),
            window: self.window(now),
            capacity: self.resource.stored_capacity(),
            amount: usage.amount(self.resource.measure),
        }
    }
}

/// Lines for `bounds` at `now`.
pub fn lines<'a>(
    bounds: impl IntoIterator<Item = &'a Bound>,
    usage: &Usage,
    now: Timestamp,
) -> Vec<Line> {
    bounds.into_iter().map(|b| b.line(usage, now)).collect()
}

fn bind<'a>(
    subject: &'a Subject,
    list: &'a [Resource],
    tz: &'a TimeZone,
) -> impl Iterator<Item = Bound> + 'a {
    list.iter()
        .map(move |resource| Bound::new(subject.clone(), resource.clone(), tz.clone()))
}

/// One expanded target of a model pool: a provider key serving an upstream model.
#[derive(Clone, Debug)]
pub struct PlannedTarget {
    pub id: TargetId,
    pub provider: Arc<Provider>,
    /// Index into `provider.keys`.
    pub key_index: usize,
    pub weight: u64,
    pub priority: i32,
    /// Provider and key resources.
    pub bounds: Vec<Bound>,
    /// What a request costs here (`None`: no price configured; cost counts 0).
    pub price: Option<crate::config::Price>,
    /// `provider`, `provider/key` and `provider/key/model`, in this order
    /// (see [`PlannedTarget::key_gate`] and [`PlannedTarget::target_gate`]):
    /// cooldowns and disabled flags apply to these.
    pub gates: Vec<Subject>,
}

impl PlannedTarget {
    /// `provider/key`: a 429 cools it down, a 401 disables it.
    pub fn key_gate(&self) -> &Subject {
        &self.gates[1]
    }
    /// `provider/key/model`: a 403 disables the key for this model only.
    pub fn target_gate(&self) -> &Subject {
        &self.gates[2]
    }
}

/// A model pool with its targets expanded per key.
#[derive(Clone, Debug)]
pub struct PlannedPool {
    pub pool: Arc<ModelPool>,
    pub targets: Vec<PlannedTarget>,
    /// The pool's own resources (subject `model:NAME`) and the global ones (`global`).
    pub bounds: Vec<Bound>,
}

/// Expand every model pool of `config`.
pub fn plan_pool(config: &Config, pool: &Arc<ModelPool>) -> PlannedPool {
    let mut targets = Vec::new();
    for t in &pool.targets {
        let Some(p) = config.providers.get(&t.provider) else {
            continue;
        };
        let psubject = Subject::provider(&p.id);
        for (ki, key) in p.keys.iter().enumerate() {
            if let Some(only) = &t.keys {
                if !only.contains(&key.id) {
                    continue;
                }
            }
            let ksubject = Subject::key(&p.id, &key.id);
            let mut bounds: Vec<Bound> = bind(&psubject, &p.resources, &p.timezone).collect();
            bounds.extend(bind(&ksubject, &key.resources, &p.timezone));
            let id = TargetId {
                provider: p.id.clone(),
                key: key.id.clone(),
                model: t.model.clone(),
            };
            let tsubject = Subject::target(&id);
            targets.push(PlannedTarget {
                id,
                provider: p.clone(),
                key_index: ki,
                weight: u64::from(t.weight) * u64::from(key.weight),
                priority: t.priority,
                bounds,
                price: t.price,
                gates: vec![psubject.clone(), ksubject, tsubject],
            });
        }
    }
    let model_subject = Subject::model(&pool.name);
    let global = Subject::global();
    let bounds = bind(&model_subject, &pool.resources, &config.timezone)
        .chain(bind(&global, &config.global_resources, &config.timezone))
        .collect();
    PlannedPool {
        pool: pool.clone(),
        bounds,
        targets,
    }
}

/// Resources of a gateway key, bound to subject `gateway-key:ID`, and of its team (`team:NAME`).
pub fn gateway_key_bounds(config: &Config, key: &crate::config::GatewayKey) -> Vec<Bound> {
    let subject = key.subject();
    let mut v: Vec<Bound> = bind(&subject, &key.resources, &config.timezone).collect();
    if let Some(team) = key.team.as_deref().and_then(|t| config.teams.get(t)) {
        v.extend(bind(
            &Subject::team(&team.name),
            &team.resources,
            &config.timezone,
        ));
    }
    v
}

/// Resources of tier `tier` (`tier:NAME`): every request at that tier counts against them.
pub fn tier_bounds(config: &Config, tier: &str) -> Vec<Bound> {
    match config.tier_resources.get(tier) {
        Some(rs) => bind(&Subject::tier(tier), rs, &config.timezone).collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_expand_per_key_with_provider_and_key_resources() {
        let c = Config::from_toml_str(
            r#"
[providers.p]
kind = "mock"
resources = [{ name = "tpm", value = 1000, period = "minutely" }]
[[providers.p.keys]]
id = "a"
weight = 2
resources = [{ name = "rpm", value = 10, period = "minutely" }]
[[providers.p.keys]]
id = "b"
[models.m]
targets = [{ provider = "p", model = "up", weight = 3 }]
resources = [{ name = "rpd", value = 5, period = "daily" }]
"#,
            &|_| None,
        )
        .unwrap();
        let plan = plan_pool(&c, &c.models["m"]);
        assert_eq!(plan.targets.len(), 2);
        let a = &plan.targets[0];
        assert_eq!(a.id.to_string(), "p/a/up");
        assert_eq!(a.weight, 6);
        let usage = Usage::new(7, 3);
        let ls = lines(&a.bounds, &usage, Timestamp(0));
        assert_eq!(ls.len(), 2);
        assert_eq!((ls[0].subject.as_str(), ls[0].amount), ("p", 10));
        assert_eq!((ls[1].subject.as_str(), ls[1].amount), ("p/a", 1));
        assert_eq!(plan.bounds[0].subject.as_str(), "model:m");
    }
}
