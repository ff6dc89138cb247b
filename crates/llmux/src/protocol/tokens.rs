//! Exact input-token counts with OpenAI's tokenizers (tiktoken's `o200k_base` and
//! `cl100k_base`), for the slow path only.
//!
//! The hot path estimates text as bytes / 4 ([`llmux_core::usage::estimate_tokens`]), which
//! over-reserves English by about a tenth. Loading an encoder costs ~46 MiB and ~0.1 s, and
//! encoding ~20 ns a byte (a 10 kB prompt: ~0.2 ms), more than the rest of a request. So the
//! router counts exactly only when a token limit refused the estimate (see
//! `Router::request`): only a deployment near its token limits pays for it, and there the
//! exact count admits requests the rough one would refuse. Encoders load once, on first need.

use llmux_core::usage::input_tokens_with;
use serde_json::{Map, Value};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// A tokenizer of OpenAI models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1, o3, o4 and their variants.
    O200k,
    /// gpt-4, gpt-3.5 and the `text-embedding-*` models.
    Cl100k,
}

impl Encoding {
    /// The encoding of an upstream model name, if it is an OpenAI one (a `vendor/` prefix, as
    /// OpenRouter writes it, is ignored).
    pub fn for_model(model: &str) -> Option<Encoding> {
        let m = model.strip_prefix("openai/").unwrap_or(model);
        let o_series = ["o1", "o3", "o4"].iter().any(|p| m.starts_with(p));
        let o200k = ["gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o"];
        if o_series || o200k.iter().any(|p| m.starts_with(p)) {
            Some(Encoding::O200k)
        } else if ["gpt-4", "gpt-3.5", "text-embedding-"]
            .iter()
            .any(|p| m.starts_with(p))
        {
            Some(Encoding::Cl100k)
        } else {
            None
        }
    }

    fn bpe(self) -> Option<&'static CoreBPE> {
        static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
        static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
        fn loaded<E: std::fmt::Display>(r: Result<CoreBPE, E>) -> Option<CoreBPE> {
            r.map_err(|e| tracing::error!(error = %e, "tokenizer did not load"))
                .ok()
        }
        match self {
            Encoding::O200k => O200K.get_or_init(|| loaded(tiktoken_rs::o200k_base())),
            Encoding::Cl100k => CL100K.get_or_init(|| loaded(tiktoken_rs::cl100k_base())),
        }
        .as_ref()
    }

    /// The input tokens of `body`, its text counted by this encoding (messages, prompt
    /// fields and images by the same rule as the estimate). `None`: the encoder did not load.
    pub fn input_tokens(self, body: &Map<String, Value>) -> Option<u64> {
        let bpe = self.bpe()?;
        let count = |s: &str| bpe.encode_ordinary(s).len() as u64;
        Some(input_tokens_with(body, &count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn models_pick_their_encoding_and_counts_are_exact() {
        assert_eq!(Encoding::for_model("gpt-4o-mini"), Some(Encoding::O200k));
        assert_eq!(Encoding::for_model("openai/o3-mini"), Some(Encoding::O200k));
        assert_eq!(Encoding::for_model("gpt-4-turbo"), Some(Encoding::Cl100k));
        assert_eq!(
            Encoding::for_model("text-embedding-3-small"),
            Some(Encoding::Cl100k)
        );
        assert_eq!(Encoding::for_model("claude-sonnet-4-5"), None);
        let body = json!({"messages": [{"role": "user",
            "content": "The quick brown fox jumps over the lazy dog."}]});
        // 10 tokens of text (tiktoken), 4 for the message, 3 for the request.
        let n = Encoding::O200k.input_tokens(body.as_object().unwrap());
        assert_eq!(n, Some(10 + 4 + 3));
        let rough = llmux_core::usage::estimate_input_tokens(body.as_object().unwrap());
        assert_eq!(rough, 11 + 4 + 3, "bytes / 4 over-reserves English");
    }
}
