//! `${VAR}` interpolation over a parsed TOML tree. The environment is a parameter, so tests
//! never touch the process environment and a missing variable is reported by name only.

use super::Issues;

/// Replace `${NAME}` in every string of `value`; `$${` stays a literal `${`.
pub fn interpolate(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut Issues,
) {
    match value {
        toml::Value::String(s) if s.contains("${") => {
            let before = out.len();
            let replaced = interpolate_str(s, path, env, out);
            // On a missing variable keep the text, so later checks do not pile on.
            if out.len() == before {
                *s = replaced;
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                interpolate(v, &format!("{path}[{i}]"), env, out);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate(v, &p, env, out);
            }
        }
        _ => {}
    }
}

fn interpolate_str(
    s: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut Issues,
) -> String {
    let mut result = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            result.push_str(&rest[..i - 1]);
            result.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        result.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match env(name) {
                    Some(v) => result.push_str(&v),
                    None => out.push(path, format!("environment variable {name} is not set")),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push(path, "unterminated ${...} reference");
                return result;
            }
        }
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_reports_missing_by_name() {
        let mut v: toml::Value =
            toml::from_str("a = \"x-${HAVE}-${MISSING}\"\nb = \"$${LIT}\"").unwrap();
        let mut out = Issues::default();
        let env = |k: &str| (k == "HAVE").then(|| "secret-value".to_string());
        interpolate(&mut v, "", &env, &mut out);
        assert_eq!(v["a"].as_str(), Some("x-${HAVE}-${MISSING}"));
        assert_eq!(v["b"].as_str(), Some("${LIT}"));
        let text = out.to_string();
        assert!(
            text.contains("a: environment variable MISSING is not set"),
            "{text}"
        );
        assert!(!text.contains("secret-value"));
    }
}
