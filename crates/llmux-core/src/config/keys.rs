//! `[[gateway_keys]]`: ids, secrets (each its own), tiers, allowed models and limits.

use super::*;

pub(super) fn check_gateway_keys(raw: &RawConfig, out: &mut Issues) -> Vec<GatewayKey> {
    let mut gateway_keys = Vec::new();
    let mut key_ids = BTreeSet::new();
    let mut secrets: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in raw.gateway_keys.iter().enumerate() {
        let at = format!("gateway_keys[{i}]");
        check_name(&g.id, &format!("{at}.id"), out);
        if !g.secret.is_empty() {
            match secrets.get(g.secret.as_str()) {
                // Never the secret itself: only where its twin is.
                Some(first) => out.push(
                    format!("{at}.secret"),
                    format!("the same secret as gateway_keys[{first}]; each key needs its own"),
                ),
                None => {
                    secrets.insert(g.secret.as_str(), i);
                }
            }
        }
        if !key_ids.insert(g.id.as_str()) {
            out.push(
                format!("{at}.id"),
                format!("duplicate gateway key id {:?}", g.id),
            );
        }
        if g.secret.is_empty() {
            out.push(format!("{at}.secret"), "must not be empty");
        }
        if let Some(t) = &g.tier {
            if !raw.tier_order.contains(t) {
                out.push(format!("{at}.tier"), unknown_tier(t, &raw.tier_order));
            }
        }
        if let Some(team) = &g.team {
            check_name(team, &format!("{at}.team"), out);
        }
        let policy = super::governance::check_policy(
            g.models.as_ref(),
            g.providers.as_ref(),
            g.max_tokens,
            g.max_cost_usd_per_request,
            &at,
            raw,
            out,
        );
        gateway_keys.push(GatewayKey {
            id: g.id.clone(),
            secret: Secret::new(&g.secret),
            tier: g.tier.clone(),
            models: g.models.clone(),
            resources: check_resources(&g.resources, &format!("{at}.resources"), out),
            team: g.team.clone(),
            policy,
        });
    }
    gateway_keys
}
