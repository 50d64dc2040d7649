//! Writing the Prometheus text format (version 0.0.4) by hand, for the per-key families.
//!
//! The per-key families are the bulk of a scrape, so they skip the prometheus crate's
//! protobuf model and its per-label allocations: lines are appended straight to the render
//! buffer of a [`ChunkWriter`]. The output is the same text the crate's `TextEncoder` would
//! write for the same series (the tests in `per_key` compare the two).

use super::gzip::ChunkWriter;
use std::fmt::Write as _;

/// A sample value: integers print without going through `f64`, floats as the prometheus
/// crate prints them.
pub(crate) enum Value {
    Int(i64),
    Float(f64),
}

/// Writes one family into a chunk: its `# HELP` and `# TYPE` lines before its first
/// sample, nothing at all when it has none.
pub(crate) struct FamilyWriter<'a> {
    out: &'a mut ChunkWriter,
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    started: bool,
}

impl<'a> FamilyWriter<'a> {
    pub fn new(
        out: &'a mut ChunkWriter,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
    ) -> FamilyWriter<'a> {
        FamilyWriter {
            out,
            name,
            help,
            kind,
            started: false,
        }
    }

    fn begin(&mut self) -> &mut String {
        if !self.started {
            self.started = true;
            header(self.out.buffer(), self.name, self.help, self.kind);
        }
        self.out.buffer()
    }

    /// `name{labels[,extra="v"]} value`; `labels` is open: `{credential="..",provider=".."`.
    pub(crate) fn sample(&mut self, labels: &str, extra: Option<(&str, &str)>, value: Value) {
        let name = self.name;
        sample(self.begin(), name, labels, extra, value);
        self.out.spill();
    }

    /// `name{labels} value` with closed `labels`.
    pub(crate) fn line_closed(&mut self, labels: &str, value: i64) {
        let name = self.name;
        line_closed(self.begin(), name, labels, value);
        self.out.spill();
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    // Help texts are constants without backslashes or newlines.
    out.push_str(help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// `name{labels[,extra="v"]} value\n`; `labels` is `{credential="..",provider=".."` (open).
fn sample(out: &mut String, name: &str, labels: &str, extra: Option<(&str, &str)>, value: Value) {
    out.push_str(name);
    out.push_str(labels);
    if let Some((label, v)) = extra {
        out.push(',');
        out.push_str(label);
        out.push_str("=\"");
        escape_label(out, v);
        out.push('"');
    }
    out.push_str("} ");
    match value {
        Value::Int(v) => write!(out, "{v}").expect("writing to a String cannot fail"),
        Value::Float(v) => write!(out, "{v}").expect("writing to a String cannot fail"),
    }
    out.push('\n');
}

/// `name{labels} value\n` with closed `labels`.
fn line_closed(out: &mut String, name: &str, labels: &str, value: i64) {
    out.push_str(name);
    out.push_str(labels);
    out.push(' ');
    write!(out, "{value}").expect("writing to a String cannot fail");
    out.push('\n');
}

/// Escapes a label value as the text format requires: `\`, `"` and newline.
pub(crate) fn escape_label(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}
