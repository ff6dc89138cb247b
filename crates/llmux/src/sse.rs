//! Reading usage out of an SSE stream while passing it through.
//!
//! Chunks go to the client as they arrive; only a chunk that carries a `usage` object is parsed.
//! When llmux asked the upstream for usage on the client's behalf (`stream_options.include_usage`),
//! the final usage-only chunk (`"choices": []`) is withheld so the client sees exactly the stream
//! it asked for. Events split across chunks are reassembled before they are forwarded.

use bytes::{Bytes, BytesMut};
use llmux_core::Usage;

/// Most bytes held back while waiting for the end of an event.
const MAX_PENDING: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct UsageScanner {
    buf: BytesMut,
    /// Bytes of `buf` already searched for an event end (so each byte is searched once).
    scanned: usize,
    /// What was forwarded ends inside an event (only after `MAX_PENDING` forced it out).
    mid_event: bool,
    hide_usage_chunk: bool,
    pub usage: Option<Usage>,
    /// Bytes searched for event ends, to test that scanning stays linear.
    #[cfg(test)]
    examined: usize,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn has_usage_object(b: &[u8]) -> bool {
    find(b, b"\"usage\":{").is_some() || find(b, b"\"usage\": {").is_some()
}

/// End of the first complete event in `b`: index just past its blank line.
fn event_end(b: &[u8]) -> Option<usize> {
    let lf = find(b, b"\n\n").map(|i| i + 2);
    let crlf = find(b, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

fn ends_event(b: &[u8]) -> bool {
    b.ends_with(b"\n\n") || b.ends_with(b"\r\n\r\n")
}

impl UsageScanner {
    /// `hide_usage_chunk`: the client did not ask for usage, so drop the usage-only chunk.
    pub fn new(hide_usage_chunk: bool) -> Self {
        UsageScanner {
            hide_usage_chunk,
            ..Default::default()
        }
    }

    /// Whether what was forwarded so far stopped inside an event: an event written after it
    /// (an error event) must then start with a blank line to stand on its own.
    pub fn mid_event(&self) -> bool {
        self.mid_event
    }

    /// End of the first complete event of the buffer, searching from `from`.
    fn event_end_from(&mut self, from: usize) -> Option<usize> {
        #[cfg(test)]
        {
            self.examined += self.buf.len() - from;
        }
        event_end(&self.buf[from..]).map(|e| e + from)
    }

    /// Take a chunk from upstream; returns what to forward now (maybe nothing).
    pub fn feed(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.buf.is_empty() && ends_event(&chunk) && !has_usage_object(&chunk) {
            self.mid_event = false;
            return Some(chunk); // the common case: whole events, no usage, zero copies
        }
        if self.buf.len() + chunk.len() > MAX_PENDING {
            // An upstream that never ends its event: stop holding bytes back.
            let mut out = std::mem::take(&mut self.buf);
            out.extend_from_slice(&chunk);
            self.scanned = 0;
            self.mid_event = !ends_event(&out);
            return Some(out.freeze());
        }
        self.buf.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        // An event end may straddle the old and the new bytes: back up by its length - 1.
        let mut from = self.scanned.saturating_sub(3);
        while let Some(end) = self.event_end_from(from) {
            let event = self.buf.split_to(end);
            from = 0;
            if has_usage_object(&event) && !self.take_usage(&event) {
                continue;
            }
            out.extend_from_slice(&event);
        }
        self.scanned = self.buf.len();
        if out.is_empty() {
            return None;
        }
        self.mid_event = false;
        Some(out.freeze())
    }

    /// Whatever is left when the upstream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.buf.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        if has_usage_object(&rest) && !self.take_usage(&rest) {
            return None;
        }
        self.mid_event = !ends_event(&rest);
        Some(rest.freeze())
    }

    /// Record the usage in `event`; returns whether to forward the event.
    fn take_usage(&mut self, event: &[u8]) -> bool {
        let text = String::from_utf8_lossy(event);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) else {
            return true;
        };
        if let Some(u) = usage_of(&v) {
            self.usage = Some(u);
        }
        let usage_only = v
            .get("choices")
            .and_then(|c| c.as_array())
            .is_some_and(|c| c.is_empty());
        !(self.hide_usage_chunk && usage_only)
    }
}

/// The usage block of an OpenAI-shaped response or chunk.
pub fn usage_of(v: &serde_json::Value) -> Option<Usage> {
    let u = v.get("usage")?;
    let input = u.get("prompt_tokens").and_then(|x| x.as_u64())?;
    let output = u
        .get("completion_tokens")
        .and_then(|x| x.as_u64())
        .unwrap_or(0);
    Some(Usage::new(input, output))
}

/// The `"usage": {…}` object of a JSON body, found without parsing the rest: the usage block is
/// flat (numbers and small objects), so matching braces from its opening one is enough.
fn usage_object(body: &[u8]) -> Option<&[u8]> {
    let key = b"\"usage\"";
    let at = memchr::memmem::rfind(body, key)?;
    let rest = &body[at + key.len()..];
    let open = rest.iter().position(|b| !b" \t\r\n:".contains(b))?;
    if rest[open] != b'{' {
        return None;
    }
    let mut depth = 0usize;
    for (i, b) in rest[open..].iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[open..=open + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Usage from a whole JSON body (non-streamed answers).
pub fn usage_of_body(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct Block {
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
    }
    if let Some(obj) = usage_object(body) {
        if let Ok(u) = serde_json::from_slice::<Block>(obj) {
            return Some(Usage::new(u.prompt_tokens, u.completion_tokens));
        }
    }
    usage_of_whole_body(body)
}

/// The slow path: parse the whole body (a usage key inside a string, say).
fn usage_of_whole_body(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct Block {
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        usage: Option<Block>,
    }
    let b: Body = serde_json::from_slice(body).ok()?;
    b.usage
        .map(|u| Usage::new(u.prompt_tokens, u.completion_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n";

    #[test]
    fn passes_chunks_and_hides_usage_when_asked() {
        let mut s = UsageScanner::new(true);
        assert_eq!(s.feed(Bytes::from(CHUNK)).unwrap(), CHUNK);
        assert_eq!(s.feed(Bytes::from(USAGE)), None);
        assert_eq!(
            s.feed(Bytes::from("data: [DONE]\n\n")).unwrap(),
            "data: [DONE]\n\n"
        );
        assert_eq!(s.usage, Some(Usage::new(7, 3)));
    }

    #[test]
    fn keeps_usage_chunk_for_clients_that_asked_and_reassembles_splits() {
        let mut s = UsageScanner::new(false);
        let (a, b) = USAGE.split_at(20);
        assert_eq!(s.feed(Bytes::from(a)), None);
        assert_eq!(s.feed(Bytes::from(b)).unwrap(), USAGE);
        assert_eq!(s.usage, Some(Usage::new(7, 3)));
    }

    #[test]
    fn body_usage() {
        let u = usage_of_body(
            br#"{"id":"x","usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        );
        assert_eq!(u, Some(Usage::new(5, 2)));
        assert_eq!(usage_of_body(b"not json"), None);
        let nested = br#"{"choices":[{"message":{"content":"say \"usage\" {"}}],"usage":{"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        assert_eq!(usage_of_body(nested), Some(Usage::new(9, 4)));
        let no_usage = br#"{"choices":[{"message":{"content":"the \"usage\": {x"}}]}"#;
        assert_eq!(usage_of_body(no_usage), None);
    }

    #[test]
    fn scanning_a_slowly_arriving_event_stays_linear() {
        // One 200 kB event arriving a byte at a time: each byte is searched a bounded number
        // of times (the whole buffer was searched again on every chunk: ~2e10 bytes).
        let mut s = UsageScanner::new(false);
        let event = format!("data: {}\n\n", "x".repeat(200_000));
        let mut out = Vec::new();
        for b in event.as_bytes().chunks(1) {
            if let Some(o) = s.feed(Bytes::copy_from_slice(b)) {
                out.extend_from_slice(&o);
            }
        }
        assert_eq!(out, event.as_bytes());
        assert!(
            s.examined < 5 * event.len(),
            "examined {} bytes",
            s.examined
        );
    }

    #[test]
    fn an_event_forced_out_unfinished_is_marked_so_the_next_one_stands_alone() {
        let mut s = UsageScanner::new(false);
        assert!(!s.mid_event());
        let head = format!("data: {}", "x".repeat(MAX_PENDING));
        let out = s.feed(Bytes::from(head.clone())).unwrap();
        assert_eq!(out.len(), head.len());
        assert!(s.mid_event(), "forwarded bytes end inside an event");
        assert_eq!(s.feed(Bytes::from("yy\n\n")).unwrap(), "yy\n\n");
        assert!(!s.mid_event());
    }
}
