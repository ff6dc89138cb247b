//! Reading usage out of an SSE stream while passing it through.
//!
//! Chunks go to the client as they arrive; only a chunk that carries a `usage` object is parsed.
//! When llmux asked the upstream for usage on the client's behalf (`stream_options.include_usage`),
//! the final usage-only chunk (`"choices": []`) is withheld so the client sees exactly the stream
//! it asked for. Events split across chunks are reassembled before they are forwarded.

use crate::protocol::translate::{AnthropicToChatStream, ChatToAnthropicStream};
use crate::protocol::usage::{StreamUsage, UsageShape};
use bytes::{Bytes, BytesMut};
use llmux_core::Usage;

/// Most bytes held back while waiting for the end of an event.
const MAX_PENDING: usize = 1 << 20;

#[derive(Debug)]
pub struct UsageScanner {
    buf: BytesMut,
    /// Bytes of `buf` already searched for an event end (so each byte is searched once).
    scanned: usize,
    /// What was forwarded ends inside an event (only after `MAX_PENDING` forced it out).
    mid_event: bool,
    hide_usage_chunk: bool,
    shape: UsageShape,
    usage: StreamUsage,
    /// Rewrites every event into the client's dialect (a translated request).
    translator: Option<Translator>,
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
    /// A scanner of a stream whose events report usage in `shape`. `hide_usage_chunk`: the
    /// client did not ask for usage, so drop the usage-only chunk (OpenAI chat streams).
    pub fn new(shape: UsageShape, hide_usage_chunk: bool) -> Self {
        UsageScanner {
            buf: BytesMut::new(),
            scanned: 0,
            mid_event: false,
            hide_usage_chunk: hide_usage_chunk && shape == UsageShape::Chat,
            shape,
            usage: StreamUsage::default(),
            translator: None,
            #[cfg(test)]
            examined: 0,
        }
    }

    /// Rewrite every event with `t` (the stream of a translated request).
    pub fn translating(mut self, t: Translator) -> Self {
        self.translator = Some(t);
        self.hide_usage_chunk = false;
        self
    }

    /// The usage the stream reported, once it reported all of it.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.get(self.shape)
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
        if self.translator.is_some() {
            return self.feed_translated(chunk);
        }
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

    /// Whole events only, each read for usage and rewritten by the translator.
    fn feed_translated(&mut self, chunk: Bytes) -> Option<Bytes> {
        self.buf.extend_from_slice(&chunk);
        let mut out = Vec::new();
        let mut from = self.scanned.saturating_sub(3);
        while let Some(end) = self.event_end_from(from) {
            let event = self.buf.split_to(end);
            from = 0;
            self.translate_event(&event, &mut out);
        }
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_PENDING {
            // An event that never ends cannot be translated: drop it rather than grow.
            self.buf.clear();
            self.scanned = 0;
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    fn translate_event(&mut self, event: &[u8], out: &mut Vec<u8>) {
        let (name, data) = split_event(event);
        let Some(t) = &mut self.translator else {
            return;
        };
        // Parsed once: for the usage, then for the translator.
        match serde_json::from_str::<serde_json::Value>(&data) {
            Ok(v) => {
                self.usage.event(self.shape, &v);
                t.event_value(name.as_deref(), &v, out);
            }
            // `[DONE]`, or data that is not JSON (the translator decides).
            Err(_) if !data.is_empty() => t.event(name.as_deref(), &data, out),
            Err(_) => {}
        }
    }

    /// Whatever is left when the upstream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.translator.is_some() {
            let rest = std::mem::take(&mut self.buf);
            self.scanned = 0;
            let mut out = Vec::new();
            self.translate_event(&rest, &mut out);
            if let Some(t) = &mut self.translator {
                t.finish(&mut out);
            }
            return (!out.is_empty()).then(|| Bytes::from(out));
        }
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
        let (_, data) = split_event(event);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) else {
            return true;
        };
        self.usage.event(self.shape, &v);
        let usage_only = v
            .get("choices")
            .and_then(|c| c.as_array())
            .is_some_and(|c| c.is_empty());
        !(self.hide_usage_chunk && usage_only)
    }
}

/// An event's name (its `event:` line) and its `data:` lines joined.
fn split_event(event: &[u8]) -> (Option<String>, String) {
    let text = String::from_utf8_lossy(event);
    let mut name = None;
    let mut data = Vec::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event:") {
            name = Some(n.trim().to_string());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    (name, data.join("\n"))
}

/// The stream translators of [`crate::protocol::translate`], one per direction.
pub enum Translator {
    /// Anthropic events to OpenAI chat chunks.
    ToChat(AnthropicToChatStream),
    /// OpenAI chat chunks to Anthropic events.
    ToMessages(ChatToAnthropicStream),
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Translator::ToChat(_) => "ToChat",
            Translator::ToMessages(_) => "ToMessages",
        })
    }
}

impl Translator {
    fn event(&mut self, name: Option<&str>, data: &str, out: &mut Vec<u8>) {
        match self {
            Translator::ToChat(t) => t.event(name, data, out),
            Translator::ToMessages(t) => t.event(name, data, out),
        }
    }
    fn event_value(&mut self, name: Option<&str>, v: &serde_json::Value, out: &mut Vec<u8>) {
        match self {
            Translator::ToChat(t) => t.event_value(name, v, out),
            Translator::ToMessages(t) => t.event_value(name, v, out),
        }
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Translator::ToChat(t) => t.finish(out),
            Translator::ToMessages(t) => t.finish(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n";

    #[test]
    fn passes_chunks_and_hides_usage_when_asked() {
        let mut s = UsageScanner::new(UsageShape::Chat, true);
        assert_eq!(s.feed(Bytes::from(CHUNK)).unwrap(), CHUNK);
        assert_eq!(s.feed(Bytes::from(USAGE)), None);
        assert_eq!(
            s.feed(Bytes::from("data: [DONE]\n\n")).unwrap(),
            "data: [DONE]\n\n"
        );
        assert_eq!(s.usage(), Some(Usage::new(7, 3)));
    }

    #[test]
    fn keeps_usage_chunk_for_clients_that_asked_and_reassembles_splits() {
        let mut s = UsageScanner::new(UsageShape::Chat, false);
        let (a, b) = USAGE.split_at(20);
        assert_eq!(s.feed(Bytes::from(a)), None);
        assert_eq!(s.feed(Bytes::from(b)).unwrap(), USAGE);
        assert_eq!(s.usage(), Some(Usage::new(7, 3)));
    }

    #[test]
    fn scanning_a_slowly_arriving_event_stays_linear() {
        // One 200 kB event arriving a byte at a time: each byte is searched a bounded number
        // of times (the whole buffer was searched again on every chunk: ~2e10 bytes).
        let mut s = UsageScanner::new(UsageShape::Chat, false);
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
        let mut s = UsageScanner::new(UsageShape::Chat, false);
        assert!(!s.mid_event());
        let head = format!("data: {}", "x".repeat(MAX_PENDING));
        let out = s.feed(Bytes::from(head.clone())).unwrap();
        assert_eq!(out.len(), head.len());
        assert!(s.mid_event(), "forwarded bytes end inside an event");
        assert_eq!(s.feed(Bytes::from("yy\n\n")).unwrap(), "yy\n\n");
        assert!(!s.mid_event());
    }
}
