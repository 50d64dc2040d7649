//! Where problems in a config file are and how they are reported: every issue collected
//! by byte span while validating, rendered at the end as `file:line:column: message`.
//!
//! Values whose types carry no span (numbers, secret references) are found again by a
//! second, lenient parse ([`LazyPositions`]), only when one of them has a problem.

use serde::Deserialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One problem in a config file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// 1-based; 0 when the problem has no position (e.g. the file is missing).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if issue.line == 0 {
                write!(f, "{}: {}", self.file.display(), issue.message)?;
            } else {
                write!(
                    f,
                    "{}:{}:{}: {}",
                    self.file.display(),
                    issue.line,
                    issue.column,
                    issue.message
                )?;
            }
        }
        Ok(())
    }
}

/// Issues collected during validation, positioned by byte span until rendered.
#[derive(Debug, Default)]
pub(crate) struct Issues(Vec<(Option<Range<usize>>, String)>);

impl Issues {
    pub(crate) fn push(&mut self, span: Option<Range<usize>>, message: String) {
        self.0.push((span, message));
    }

    pub(super) fn into_error(self, file: &Path, source: &str) -> Option<ConfigError> {
        if self.0.is_empty() {
            return None;
        }
        // Line starts are found once: a big file with many issues stays linear.
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let issues = self
            .0
            .into_iter()
            .map(|(span, message)| {
                let (line, column) = match span {
                    // A default value has an empty span at 0: no position in the file.
                    Some(range) if range != (0..0) => {
                        line_column_indexed(source, &line_starts, range.start)
                    }
                    _ => (0, 0),
                };
                ConfigIssue {
                    line,
                    column,
                    message,
                }
            })
            .collect();
        Some(ConfigError {
            file: file.to_path_buf(),
            issues,
        })
    }
}

/// The 1-based line and column of a byte offset, with the byte offsets of line starts precomputed.
fn line_column_indexed(source: &str, line_starts: &[usize], offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    // The last line start at or before `offset`.
    let line = line_starts.partition_point(|&start| start <= offset);
    let line_start = line_starts[line - 1];
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

/// 1-based line and column (in characters) of a byte offset.
#[cfg(test)]
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    // `str::floor_char_boundary` is newer than our MSRV.
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Where values whose types carry no span (numbers, secret references) sit in the file:
/// read in a second, lenient pass so their errors can name a line and column too.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Positions {
    #[serde(default)]
    pub(crate) daemon: DaemonPositions,
    #[serde(default)]
    pub(crate) checks: ChecksPositions,
    #[serde(default, rename = "provider")]
    pub(crate) providers: Vec<ProviderPositions>,
}

/// [`Positions`], parsed on first use: the second pass costs as much as the first (a full
/// TOML parse), and a valid config never needs it.
pub(crate) struct LazyPositions<'a> {
    source: &'a str,
    parsed: std::cell::OnceCell<Positions>,
}

impl<'a> LazyPositions<'a> {
    pub(super) fn new(source: &'a str) -> Self {
        LazyPositions {
            source,
            parsed: std::cell::OnceCell::new(),
        }
    }

    pub(crate) fn get(&self) -> &Positions {
        self.parsed
            .get_or_init(|| toml::from_str(self.source).unwrap_or_default())
    }
}

pub(crate) type Position = Option<Spanned<toml::Value>>;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DaemonPositions {
    pub(crate) events_retention: Position,
    pub(crate) rotation_lease: Position,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChecksPositions {
    pub(crate) jitter: Position,
    pub(crate) max_concurrent: Position,
    pub(crate) interval: Position,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProviderPositions {
    pub(crate) management_key: Position,
    pub(crate) requests_per_second: Position,
    #[serde(default)]
    pub(crate) google: GooglePositions,
}

/// `[provider.google]` values without spans.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct GooglePositions {
    pub(crate) token: Position,
    pub(crate) operation_timeout: Position,
}

pub(crate) fn span_of(position: &Position) -> Option<Range<usize>> {
    position.as_ref().map(Spanned::span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        let source = "ab\ncé\n\nx";
        let starts = [0, 3, 7, 8];
        for offset in 0..=source.len() + 2 {
            assert_eq!(
                line_column_indexed(source, &starts, offset),
                line_column(source, offset),
                "offset {offset}"
            );
        }
    }
}
