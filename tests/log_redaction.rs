//! The log writer masks key-shaped tokens in every formatted line, in both formats, and
//! leaves ordinary log text alone.

use keyrotd::logging::{subscriber, LogFormat};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn secrets() -> Vec<String> {
    vec![
        format!("sk-proj-{}", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z".repeat(3)),
        format!("sk-ant-api03-{}-AA", "x7Y_q2W-e4R".repeat(8)),
        format!("sk-or-v1-{}", "0123456789abcdef".repeat(4)),
        "sk-admin-Zz9Yy8Xx7Ww6".to_string(),
        "da39a3ee5e6b4b0d3255bfef95601890afd80709".to_string(),
        "QWxhZGRpbjpvcGVuIHNlc2FtZSBhbmQgbW9yZSBzZWNyZXQgdGV4dA==".to_string(),
    ]
}

const ORDINARY: [&str; 5] = [
    "/var/lib/keyrotd/keyrotd.db",
    "sha256:abcdef012345",
    "550e8400-e29b-41d4-a716-446655440000",
    "127.0.0.1:9877",
    "keyrotd/openrouter-prod/rotation",
];

fn capture(format: LogFormat) -> String {
    let sink = Capture::default();
    let subscriber = subscriber(format, EnvFilter::new("trace"), true, sink.clone());
    tracing::subscriber::with_default(subscriber, || {
        for secret in secrets() {
            tracing::info!(detail = %secret, "vendor said: Incorrect API key provided: {secret}.");
            tracing::warn!(header = %format!("Bearer {secret}"), assignment = %format!("key={secret}"), "request failed");
            tracing::error!(error = ?format!("{secret}"), "debug formatted");
        }
        for text in ORDINARY {
            tracing::info!(path = %text, "ordinary {text} stays");
        }
    });
    let out = sink.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

fn assert_redacted(output: &str) {
    for secret in secrets() {
        assert!(!output.contains(&secret), "{secret} leaked:\n{output}");
        // No long fragment of it either.
        let fragment: String = secret.chars().skip(8).take(16).collect();
        assert!(!output.contains(&fragment), "{fragment} leaked:\n{output}");
    }
    assert!(output.contains("[REDACTED]"), "{output}");
    for text in ORDINARY {
        assert!(
            output.matches(text).count() >= 2,
            "{text} was changed:\n{output}"
        );
    }
}

#[test]
fn human_format_is_redacted() {
    let output = capture(LogFormat::Human);
    assert!(output.contains("vendor said: Incorrect API key provided: [REDACTED]."));
    assert_redacted(&output);
}

#[test]
fn json_format_is_redacted() {
    let output = capture(LogFormat::Json);
    for line in output.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is still JSON");
    }
    assert_redacted(&output);
}
