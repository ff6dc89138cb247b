//! Resources (`resources = [{ name, value, period, ttl, unit }]`) and the resources file.

use super::*;

/// The text of a resources file and the name to report problems under.
#[derive(Clone, Debug)]
pub struct ResourcesFile {
    pub name: String,
    pub text: String,
}

impl ResourcesFile {
    pub(super) fn parse(&self, out: &mut Issues) -> Option<RawResourcesFile> {
        let json = self.name.ends_with(".json") || self.text.trim_start().starts_with('{');
        let parsed = if json {
            let mut de = serde_json::Deserializer::from_str(&self.text);
            serde_path_to_error::deserialize(&mut de)
                .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
        } else {
            match toml::from_str::<toml::Value>(&self.text) {
                Ok(v) => serde_path_to_error::deserialize(v)
                    .map_err(|e| (e.path().to_string(), e.into_inner().to_string())),
                Err(e) => Err((".".to_string(), e.to_string().trim_end().to_string())),
            }
        };
        match parsed {
            Ok(r) => Some(r),
            Err((path, msg)) => {
                let at = if path == "." {
                    self.name.clone()
                } else {
                    format!("{}: {path}", self.name)
                };
                out.push(at, msg);
                None
            }
        }
    }
}

/// Validate a list of resources at `at` (`…resources`).
pub fn check_resources(list: &[RawResource], at: &str, out: &mut Issues) -> Vec<Resource> {
    check_resources_with(list, at, None, out)
}

/// A `headroom` (fraction of a limit to use) at `at`: in (0, 1].
pub(super) fn check_headroom(v: Option<RawNumber>, at: &str, out: &mut Issues) -> Option<f64> {
    let h = v?.as_f64();
    if !(h.is_finite() && h > 0.0 && h <= 1.0) {
        out.push(
            at,
            format!("{h} is not a fraction; expected 0 < headroom <= 1, such as 0.9"),
        );
        return None;
    }
    Some(h)
}

/// [`check_resources`] where a resource without its own `headroom` takes `headroom` (the
/// provider's).
pub(super) fn check_resources_with(
    list: &[RawResource],
    at: &str,
    headroom: Option<f64>,
    out: &mut Issues,
) -> Vec<Resource> {
    let mut result = Vec::new();
    let mut names = BTreeSet::new();
    for (i, r) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if r.name.is_empty() {
            out.push(format!("{at}.name"), "must not be empty");
        } else if !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            out.push(
                format!("{at}.name"),
                format!(
                    "invalid resource name {:?}; use letters, digits, '-', '_' and '.'",
                    r.name
                ),
            );
        } else if !names.insert(r.name.as_str()) {
            out.push(
                format!("{at}.name"),
                format!("resource {:?} is listed twice", r.name),
            );
        }
        let measure = match &r.unit {
            None => Measure::from_name(&r.name),
            Some(u) => Measure::parse_unit(u).unwrap_or_else(|| {
                out.push(
                    format!("{at}.unit"),
                    format!(
                        "unknown unit {u:?}; expected one of {}",
                        Measure::UNITS.join(", ")
                    ),
                );
                Measure::Requests
            }),
        };
        let value = r.value.as_f64();
        let fraction = check_headroom(r.headroom, &format!("{at}.headroom"), out)
            .or(headroom)
            .unwrap_or(1.0);
        let capacity = if !(value.is_finite() && value > 0.0) {
            out.push(format!("{at}.value"), "must be greater than 0");
            1
        } else {
            // `headroom`: keep a margin below the upstream's limit (rounded down).
            let full = measure.capacity_from_value(value);
            ((full as f64 * fraction).floor() as u64).max(1)
        };
        if r.ttl.is_some() && r.initial_ttl.is_some() {
            out.push(
                format!("{at}.initial_ttl"),
                "give `ttl` or `initial_ttl`, not both",
            );
        }
        let ttl_at = if r.ttl.is_some() {
            "ttl"
        } else {
            "initial_ttl"
        };
        let ttl = match r.ttl.or(r.initial_ttl) {
            Some(t) if t > MAX_SECS => check_secs(Some(t), &format!("{at}.{ttl_at}"), out),
            t => t,
        };
        let period = match Period::parse(&r.period, ttl) {
            Ok(p) => {
                if ttl.is_some() && !matches!(p, Period::Custom { .. }) {
                    out.push(format!("{at}.ttl"), "only a \"custom\" period takes `ttl`");
                }
                p
            }
            Err(e) => {
                out.push(format!("{at}.period"), e.to_string());
                Period::Minutely
            }
        };
        let enforce = match r.enforce.as_deref() {
            None | Some("hard") => Enforce::Hard,
            Some("soft") => Enforce::Soft,
            Some(other) => {
                out.push(
                    format!("{at}.enforce"),
                    format!("unknown enforce {other:?}; expected \"hard\" or \"soft\""),
                );
                Enforce::Hard
            }
        };
        if enforce == Enforce::Soft && capacity > MAX_SOFT_CAPACITY {
            out.push(
                format!("{at}.value"),
                format!("too large for a soft limit (at most {MAX_SOFT_CAPACITY} units)"),
            );
        }
        result.push(Resource {
            name: Arc::from(r.name.as_str()),
            capacity,
            period,
            measure,
            enforce,
        });
    }
    result
}
