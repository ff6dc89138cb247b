use super::*;

const DESIGN_EXAMPLE: &str = r#"
listen = "127.0.0.1:4000"
timezone = "UTC"
tier_order = ["free", "pro", "enterprise"]

[store]
kind = "sqlite"
path = "llmux.db"

[providers.openai]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9000/v1"
tiers = ["pro", "enterprise"]
timezone = "Europe/Warsaw"
resources = [{ name = "tpm", value = 1000000, period = "monthly" }]

[[providers.openai.keys]]
id = "k1"
secret = "${OPENAI_KEY_1}"
weight = 2
resources = [{ name = "rpm", value = 60, period = "minutely" }]

[models.fast]
strategy = "weighted"
max_attempts = 3
fallback_on = [429, 500, 502, 503, 504, "timeout"]
fallback_models = []
targets = [{ provider = "openai", model = "gpt-4o-mini", weight = 1 }]
"#;

fn env(k: &str) -> Option<String> {
    (k == "OPENAI_KEY_1").then(|| "sk-test".to_string())
}

#[test]
fn design_example_loads() {
    let c = Config::from_toml_str(DESIGN_EXAMPLE, &env).unwrap();
    let p = c.provider("openai").unwrap();
    assert_eq!(p.keys[0].secret.expose(), "sk-test");
    assert_eq!(p.keys[0].weight, 2);
    assert_eq!(p.resources[0].period, Period::Monthly);
    assert_eq!(p.keys[0].resources[0].measure, Measure::Requests);
    assert_eq!(c.models["fast"].fallback_on, FallbackOn::default());
    assert_eq!(
        c.store,
        StoreConfig::Sqlite {
            path: "llmux.db".into()
        }
    );
}

#[test]
fn every_problem_is_listed_with_its_path() {
    let text = DESIGN_EXAMPLE
        .replace("period = \"minutely\"", "period = \"montly\"")
        .replace("strategy = \"weighted\"", "strategy = \"fastest\"")
        .replace("provider = \"openai\", model", "provider = \"nope\", model");
    let e = Config::from_toml_str(&text, &|_| None).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("providers.openai.keys[0].resources[0].period: unknown period \"montly\"; expected one of secondly, minutely"), "{s}");
    assert!(
        s.contains("models.fast.strategy: unknown strategy \"fastest\""),
        "{s}"
    );
    assert!(
        s.contains("models.fast.targets[0].provider: unknown provider \"nope\""),
        "{s}"
    );
    assert!(
        s.contains("providers.openai.keys[0].secret: environment variable OPENAI_KEY_1 is not set"),
        "{s}"
    );
    assert_eq!(e.len(), 4, "{s}");
}

#[test]
fn unknown_fields_name_their_path() {
    let e = Config::from_toml_str("[providers.a]\nkind = \"mock\"\nbogus = 1\n", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("providers.a") && e.contains("bogus"), "{e}");
}

#[test]
fn every_unknown_field_is_reported_with_its_path() {
    let text = "lisen = \"x\"\n[providers.a]\nkind = \"mock\"\nbogus = 1\n[[providers.a.keys]]\nid = \"k\"\nweigth = 2\n[models.m]\ntargets = [{ provider = \"a\", model = \"x\", wieght = 1 }]\n";
    let e = Config::from_toml_str(text, &|_| None).unwrap_err();
    let s = e.to_string();
    assert_eq!(e.len(), 4, "{s}");
    for (path, field) in [
        ("", "lisen"),
        ("providers.a", "bogus"),
        ("providers.a.keys[0]", "weigth"),
        ("models.m.targets[0]", "wieght"),
    ] {
        assert!(
            e.0.iter()
                .any(|i| i.path.starts_with(path) && i.message.contains(field)),
            "{path} {field}: {s}"
        );
    }
}

#[test]
fn resources_files_merge_and_conflicts_name_both_places() {
    let file = ResourcesFile {
        name: "limits.json".into(),
        text: r#"{"timezone": "UTC", "providers": {"openai": {"resources": [
            {"name": "rpd", "value": 1000, "period": "daily"},
            {"name": "budget", "value": 50, "period": "custom", "ttl": 3600}
        ]}}}"#
            .into(),
    };
    let c = Config::from_toml_str_with(DESIGN_EXAMPLE, &env, Some(&file)).unwrap();
    let names: Vec<&str> = c
        .provider("openai")
        .unwrap()
        .resources
        .iter()
        .map(|r| &*r.name)
        .collect();
    assert_eq!(names, ["tpm", "rpd", "budget"]);
    assert_eq!(
        c.provider("openai").unwrap().resources[2].period,
        Period::Custom { ttl_secs: 3600 }
    );

    let toml_file = ResourcesFile {
        name: "limits.toml".into(),
        text: "[providers.openai]\nresources = [{ name = \"tpm\", value = 5, period = \"daily\" }]\n[providers.ghost]\n".into(),
    };
    let e = Config::from_toml_str_with(DESIGN_EXAMPLE, &env, Some(&toml_file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("providers.openai.resources[0]: resource \"tpm\" is defined both here and in limits.toml: providers.openai.resources[0]"), "{e}");
    assert!(
        e.contains("limits.toml: providers.ghost: no provider \"ghost\" in config"),
        "{e}"
    );
}

#[test]
fn mock_provider_gets_a_default_key() {
    let c = Config::from_toml_str(
        "[providers.demo]\nkind = \"mock\"\n[models.m]\ntargets = [{provider = \"demo\", model = \"x\"}]\n",
        &|_| None,
    )
    .unwrap();
    assert_eq!(c.provider("demo").unwrap().keys[0].id.as_str(), "default");
}

fn issues(text: &str) -> String {
    Config::from_toml_str(text, &|_| None)
        .unwrap_err()
        .to_string()
}

const MOCK: &str = "[providers.demo]\nkind = \"mock\"\n";

#[test]
fn every_duration_is_bounded_with_its_path() {
    let huge = u64::MAX;
    let text = format!(
        "lease_ttl_secs = {big}\nrequest_timeout_secs = {big}\n{MOCK}timeout_secs = {big}\nresources = [{{ name = \"b\", value = 1, period = \"custom\", ttl = {big} }}]\n[models.m]\ntimeout_secs = {big}\ntargets = [{{provider = \"demo\", model = \"x\"}}]\n",
        big = i64::MAX
    );
    let e = issues(&text);
    for at in [
        "lease_ttl_secs: ",
        "request_timeout_secs: ",
        "providers.demo.timeout_secs: ",
        "providers.demo.resources[0].ttl: ",
        "models.m.timeout_secs: ",
    ] {
        assert!(
            e.contains(&format!("{at}{} seconds is too long", i64::MAX)),
            "{at} in {e}"
        );
    }
    // Above i64::MAX (JSON resources files can carry it): bounded, never wrapped.
    let file = ResourcesFile {
        name: "limits.json".into(),
        text: format!(
            r#"{{"providers": {{"demo": {{"resources": [{{"name": "b", "value": 1, "period": "custom", "ttl": {huge}}}]}}}}}}"#
        ),
    };
    let text = format!("{MOCK}[models.m]\ntargets = [{{provider = \"demo\", model = \"x\"}}]\n");
    let e = Config::from_toml_str_with(&text, &|_| None, Some(&file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits.json: providers.demo.resources[0].ttl: 18446744073709551615 seconds is too long"), "{e}");
    let e = issues(&format!("lease_ttl_secs = 0\n{MOCK}"));
    assert!(e.contains("lease_ttl_secs: must be greater than 0"), "{e}");
}

#[test]
fn names_that_reach_store_keys_are_checked() {
    let e = issues(&format!(
        "{MOCK}[models.\"a\\tb\"]\ntargets = [{{provider = \"demo\", model = \"x\\ny\", keys = []}}]\ntimeout_secs = 0\n[[gateway_keys]]\nid = \"g\\n1\"\nsecret = \"sk-same\"\n[[gateway_keys]]\nid = \"g2\"\nsecret = \"sk-same\"\n"
    ));
    assert!(e.contains("models.a\tb: invalid model name"), "{e}");
    assert!(
        e.contains("models.a\tb.targets[0].model: invalid upstream model name"),
        "{e}"
    );
    assert!(
        e.contains("models.a\tb.targets[0].keys: lists no keys"),
        "{e}"
    );
    assert!(
        e.contains("models.a\tb.timeout_secs: must be greater than 0"),
        "{e}"
    );
    assert!(e.contains("gateway_keys[0].id: invalid name"), "{e}");
    assert!(
        e.contains("gateway_keys[1].secret: the same secret as gateway_keys[0]"),
        "{e}"
    );
    assert!(!e.contains("sk-same"), "a secret in an error: {e}");
}

#[test]
fn default_max_tokens_is_4096_and_never_0() {
    let base = format!("{MOCK}[models.m]\ntargets = [{{provider = \"demo\", model = \"x\"}}]\n");
    let c = Config::from_toml_str(&base, &|_| None).unwrap();
    assert_eq!(c.models["m"].default_max_tokens, 4096);
    let c = Config::from_toml_str(&format!("{base}default_max_tokens = 512\n"), &|_| None).unwrap();
    assert_eq!(c.models["m"].default_max_tokens, 512);
    let e = issues(&format!("{base}default_max_tokens = 0\n"));
    assert!(
        e.contains("models.m.default_max_tokens: 0 is out of range"),
        "{e}"
    );
}

#[test]
fn debug_output_holds_no_secret() {
    let text = "[store]\nkind = \"redis\"\nurl = \"redis://user:hunter2@db:6379/0\"\n[providers.p]\nkind = \"openai\"\n[[providers.p.keys]]\nid = \"k\"\nsecret = \"sk-upstream-secret\"\n[[gateway_keys]]\nid = \"g\"\nsecret = \"sk-gateway-secret\"\n";
    let c = Config::from_toml_str(text, &|_| None).unwrap();
    let tree: toml::Value = toml::from_str(text).unwrap();
    let raw: RawConfig = tree.try_into().unwrap();
    for shown in [format!("{c:?}"), format!("{raw:?}")] {
        for secret in ["hunter2", "sk-upstream-secret", "sk-gateway-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("db:6379"), "{shown}");
    }
    assert_eq!(
        crate::ids::redact_url("rediss://:pw@h:1/0?x=@"),
        "rediss://*****@h:1/0?x=@"
    );
    assert_eq!(crate::ids::redact_url("redis://h:1/0"), "redis://h:1/0");
}

#[test]
fn headroom_keeps_a_margin_below_the_limit() {
    let c = Config::from_toml_str(
        r#"
[providers.p]
kind = "mock"
headroom = 0.9
resources = [{ name = "rpm", value = 600, period = "minutely" },
             { name = "tpm", value = 1000, period = "minutely", headroom = 0.5 }]
[[providers.p.keys]]
id = "k"
resources = [{ name = "budget", value = 10, period = "monthly" }]
[models.m]
targets = [{ provider = "p", model = "x" }]
"#,
        &|_| None,
    )
    .unwrap();
    let p = c.provider("p").unwrap();
    let caps: Vec<u64> = p.resources.iter().map(|r| r.capacity).collect();
    assert_eq!(
        caps,
        [540, 500],
        "the provider's 0.9, and the resource's own 0.5"
    );
    assert_eq!(
        p.keys[0].resources[0].capacity, 9_000_000,
        "$10 × 0.9 in micro-USD"
    );
    let e = Config::from_toml_str(
        "[providers.p]\nkind = \"mock\"\nheadroom = 1.5\n[models.m]\ntargets = [{provider = \"p\", model = \"x\"}]\n",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("providers.p.headroom: 1.5 is not a fraction"),
        "{e}"
    );
}
