//! Token usage read from answers as they pass, for `keyrotd_relay_tokens_total`: a leaked or
//! abused key shows up as spend.
//!
//! - A JSON answer is kept (up to [`MAX_JSON_BODY`]) and its `usage` read at the end.
//! - A server-sent event stream is never held: its lines are scanned as they pass, and only
//!   a `data:` line that mentions `usage` is parsed. The counts are the largest seen, since
//!   the vendors report usage cumulatively: OpenAI in the final chunk (with
//!   `stream_options.include_usage`), Anthropic in `message_start` (`message.usage`) and then
//!   `message_delta` (`usage`), Gemini in every chunk's `usageMetadata`.
//!
//! Shapes understood: `usage.{prompt_tokens, completion_tokens}` (OpenAI and compatible),
//! `usage.{input_tokens, output_tokens}` and `message.usage` (Anthropic),
//! `usageMetadata.{promptTokenCount, candidatesTokenCount}` (Gemini).

use super::metrics::{CredentialSeries, TokenKind};
use bytes::BytesMut;
use serde_json::Value;

/// Largest JSON answer whose `usage` is read.
pub(crate) const MAX_JSON_BODY: usize = 4 * 1024 * 1024;
/// Longest event-stream line looked at; a longer one is skipped (a usage line is short).
const MAX_EVENT_LINE: usize = 64 * 1024;

/// How an answer's usage is read, chosen from its content type.
pub(crate) enum UsageReader {
    Json(BytesMut),
    Events(EventScanner),
}

impl UsageReader {
    /// The reader for an answer of this content type, if its usage can be read.
    pub(crate) fn for_content_type(content_type: &[u8], size_hint: Option<u64>) -> Option<Self> {
        if content_type.starts_with(b"application/json") {
            let expected = size_hint.unwrap_or(0) as usize;
            Some(UsageReader::Json(BytesMut::with_capacity(
                expected.min(MAX_JSON_BODY),
            )))
        } else if content_type.starts_with(b"text/event-stream") {
            Some(UsageReader::Events(EventScanner::default()))
        } else {
            None
        }
    }

    /// Takes the next piece of the answer. `false` when the usage can no longer be read (a
    /// JSON answer too large to keep): the reader is then dropped.
    pub(crate) fn feed(&mut self, data: &[u8]) -> bool {
        match self {
            UsageReader::Json(buffer) => {
                if buffer.len() + data.len() > MAX_JSON_BODY {
                    return false;
                }
                buffer.extend_from_slice(data);
                true
            }
            UsageReader::Events(scanner) => {
                scanner.feed(data);
                true
            }
        }
    }

    /// Counts what was read. `complete`: the answer reached its end (a JSON answer cut short
    /// cannot be read; the usage an event stream reported so far was spent either way).
    pub(crate) fn count(self, complete: bool, series: &CredentialSeries) {
        let counts = match self {
            UsageReader::Json(buffer) if complete => serde_json::from_slice::<Value>(&buffer)
                .ok()
                .map(|document| Counts::of(&document))
                .unwrap_or_default(),
            UsageReader::Json(_) => Counts::default(),
            UsageReader::Events(scanner) => scanner.counts,
        };
        if let Some(count) = counts.prompt {
            series.tokens(TokenKind::Prompt, count);
        }
        if let Some(count) = counts.completion {
            series.tokens(TokenKind::Completion, count);
        }
    }
}

/// The line-by-line scan of an event stream.
#[derive(Default)]
pub(crate) struct EventScanner {
    /// The current line so far (only while it may still be a usage line).
    line: Vec<u8>,
    /// The current line grew past [`MAX_EVENT_LINE`]: skip to its end.
    skipping: bool,
    counts: Counts,
}

impl EventScanner {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (piece, ended) = match data.iter().position(|&b| b == b'\n') {
                Some(at) => (&data[..at], Some(at + 1)),
                None => (data, None),
            };
            if !self.skipping {
                if self.line.len() + piece.len() > MAX_EVENT_LINE {
                    self.skipping = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            match ended {
                Some(next) => {
                    if !self.skipping {
                        self.line_ended();
                    }
                    self.line.clear();
                    self.skipping = false;
                    data = &data[next..];
                }
                None => break,
            }
        }
    }

    fn line_ended(&mut self) {
        let Some(payload) = self.line.strip_prefix(b"data:") else {
            return;
        };
        // Parsing is for the few lines that can carry usage, not every token's chunk.
        if !payload.windows(5).any(|w| w == b"usage") {
            return;
        }
        if let Ok(event) = serde_json::from_slice::<Value>(payload.trim_ascii()) {
            self.counts.take_larger(Counts::of(&event));
        }
    }
}

/// Prompt and completion tokens, each when reported.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    prompt: Option<u64>,
    completion: Option<u64>,
}

impl Counts {
    fn of(document: &Value) -> Counts {
        let number = |value: &Value, keys: &[&str]| {
            keys.iter()
                .find_map(|key| value.get(key).and_then(Value::as_u64))
        };
        let usage = document
            .get("usage")
            .or_else(|| document.pointer("/message/usage"));
        if let Some(usage) = usage {
            return Counts {
                prompt: number(usage, &["prompt_tokens", "input_tokens"]),
                completion: number(usage, &["completion_tokens", "output_tokens"]),
            };
        }
        match document.get("usageMetadata") {
            Some(gemini) => Counts {
                prompt: number(gemini, &["promptTokenCount"]),
                completion: number(gemini, &["candidatesTokenCount"]),
            },
            None => Counts::default(),
        }
    }

    fn take_larger(&mut self, other: Counts) {
        let larger = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.prompt = larger(self.prompt, other.prompt);
        self.completion = larger(self.completion, other.completion);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&str]) -> Counts {
        let mut scanner = EventScanner::default();
        for piece in pieces {
            scanner.feed(piece.as_bytes());
        }
        scanner.counts
    }

    #[test]
    fn openai_reports_usage_in_the_final_chunk_even_split_across_frames() {
        let counts = scan(&[
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usa",
            "ge\":{\"prompt_tokens\":11,\"completion_tokens\":7}}\n",
            "\ndata: [DONE]\n\n",
        ]);
        assert_eq!(
            counts,
            Counts {
                prompt: Some(11),
                completion: Some(7)
            }
        );
    }

    #[test]
    fn anthropic_reports_input_at_the_start_and_output_at_the_end() {
        let counts = scan(&[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hello\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        ]);
        assert_eq!(
            counts,
            Counts {
                prompt: Some(25),
                completion: Some(15)
            }
        );
    }

    #[test]
    fn gemini_reports_cumulative_usage_in_every_chunk() {
        let counts = scan(&[
            "data: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":2}}\r\n\r\n",
            "data: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":9}}\r\n\r\n",
        ]);
        assert_eq!(
            counts,
            Counts {
                prompt: Some(4),
                completion: Some(9)
            }
        );
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_still_read() {
        let long = format!(
            "data: {{\"usage\":{{\"prompt_tokens\":99}},\"pad\":\"{}\"}}\n",
            "x".repeat(MAX_EVENT_LINE)
        );
        let counts = scan(&[
            &long[..long.len() / 2],
            &long[long.len() / 2..],
            "data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n",
        ]);
        assert_eq!(
            counts,
            Counts {
                prompt: Some(3),
                completion: Some(1)
            }
        );
    }

    #[test]
    fn a_stream_without_usage_counts_nothing() {
        assert_eq!(
            scan(&["data: one\n\n", "data: {\"x\":1}\n\n", "data: [DONE]\n\n"]),
            Counts::default()
        );
    }
}
