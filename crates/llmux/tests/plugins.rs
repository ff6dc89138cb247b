//! Provider plug-ins: a kind registered by name, used from config, with its own cost rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use futures_util::future::BoxFuture;
use llmux::core::store::StoreAdmin;
use llmux::core::Usage;
use llmux::{Call, Config, Provider, Reply, ReplyBody, Request, Router, UpstreamError};
use std::sync::Arc;

/// Answers with its own JSON shape, costing by characters.
struct Echo {
    prefix: String,
}

impl Provider for Echo {
    fn send(&self, call: Call) -> BoxFuture<'static, Result<Reply, UpstreamError>> {
        let text = format!("{}{}", self.prefix, call.body.len());
        Box::pin(async move {
            let body = serde_json::json!({"text": text, "chars_in": 40, "chars_out": 8});
            Ok(Reply {
                status: 200,
                headers: Default::default(),
                body: ReplyBody::Full(Bytes::from(body.to_string())),
            })
        })
    }
    fn estimate_cost(&self, _req: &serde_json::Map<String, serde_json::Value>) -> Option<Usage> {
        Some(Usage::new(100, 100))
    }
    fn actual_cost(&self, body: &[u8]) -> Option<Usage> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(Usage::new(
            v["chars_in"].as_u64()? / 4,
            v["chars_out"].as_u64()? / 4,
        ))
    }
}

#[tokio::test]
async fn a_registered_kind_serves_providers_of_that_kind() {
    let text = r#"
[store]
kind = "memory"
[providers.mine]
kind = "echo"
resources = [{ name = "tpm", value = 1000, period = "minutely" }]
[models.m]
targets = [{ provider = "mine", model = "echo-1" }]
"#;
    // The stock loader names the unknown kind…
    let e = Config::from_toml_str(text, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("providers.mine.kind: unknown provider kind \"echo\""),
        "{e}"
    );
    // …and accepts it once registered.
    let config = Config::from_toml_str_opts(text, &|_| None, None, &["echo"]).unwrap();
    let router = Router::builder(config)
        .provider_kind("echo", |p| {
            Arc::new(Echo {
                prefix: format!("{}:", p.id),
            })
        })
        .build()
        .unwrap();
    let req = Request::chat(serde_json::json!({"model": "m", "messages": []})).unwrap();
    let resp = router.request(req).await.unwrap();
    assert_eq!(resp.target.to_string(), "mine/default/echo-1");
    let v = resp.json().await.unwrap();
    assert!(v["text"].as_str().unwrap().starts_with("mine:"), "{v}");
    // Reserved 200 by its estimate, reconciled to 10 + 2 by its actual cost.
    for _ in 0..100 {
        let s = router.store().snapshot("mine").await.unwrap();
        let c = s[0].resources[0].1;
        if (c.used, c.reserved) == (12, 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("usage not reconciled with the provider's own cost");
}

#[tokio::test]
async fn an_unregistered_custom_kind_is_a_clear_build_error() {
    let text = "[providers.x]\nkind = \"nope\"\n[models.m]\ntargets = [{ provider = \"x\", model = \"y\" }]\n[store]\nkind = \"memory\"\n";
    let config = Config::from_toml_str_opts(text, &|_| None, None, &["nope"]).unwrap();
    let e = Router::builder(config).build().unwrap_err().to_string();
    assert!(e.contains("no provider kind \"nope\" is registered"), "{e}");
}
