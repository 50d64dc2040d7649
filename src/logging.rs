//! Log output: human-readable on a terminal, JSON lines for machines (`--log-format json`).
//! Logs go to stderr; stdout belongs to command output.
//!
//! Under systemd, stderr is a stream to the journal, which would file every line at the
//! stream's one priority (info): `journalctl -p err` would show no error. When stderr is
//! that stream (`$JOURNAL_STREAM` names its device and inode), each line starts with its
//! level as a `<N>` syslog prefix (sd-daemon(3)), which journald turns into `PRIORITY=`.
//!
//! Every formatted line passes through [`Redacting`], which masks anything shaped like a
//! provider key ([`mask_key_shaped`]) before it reaches the terminal or the journal. It is the
//! second line of defence: code never logs a key on purpose, but a vendor message, an error
//! chain or a debug field might carry one. Vendor-prefixed tokens (`sk-…`, `AIza…`) are
//! always masked, and so is any other run of 32 or more `A-Za-z0-9-_+/=` characters except
//! UUIDs, plain paths (the database path) and hex ids in fields that name an id
//! (`remote_id=<OpenRouter key hash>`); short values such as rotation ids and fingerprints
//! are left alone. The rules are stated in [`crate::providers::sanitize`](mod@crate::providers::sanitize).

use crate::providers::sanitize::mask_key_shaped;
use std::io::{self, Write};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level (`info`).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let levels = stderr_is_journal();
    // A second init (tests) keeps the first subscriber.
    let _ = build(format, filter, ansi && !levels, io::stderr, levels).try_init();
}

/// The subscriber `init` installs, writing through [`Redacting`] to `writer` (tests pass a
/// buffer).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    build(format, filter, ansi, writer, false)
}

/// Whether stderr is the journal stream systemd connected (sd_journal_stream_fd's
/// `$JOURNAL_STREAM=DEVICE:INODE` matches stderr), as systemd.exec(5) says to check.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    device.parse() == Ok(meta.dev()) && inode.parse() == Ok(meta.ino())
}

fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
    levels: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Redacting {
            inner: writer,
            levels,
        });
    match format {
        LogFormat::Human => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// A `MakeWriter` that masks key-shaped tokens in everything written through it, and with
/// `levels` starts each line with its event's syslog level prefix.
#[derive(Debug, Clone)]
pub(crate) struct Redacting<M> {
    pub inner: M,
    pub levels: bool,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let writer = RedactingWriter::new(self.inner.make_writer_for(meta));
        if self.levels {
            writer.with_prefix(syslog_prefix(*meta.level()))
        } else {
            writer
        }
    }
}

/// The sd-daemon(3) prefix of a level: err, warning, info, debug.
fn syslog_prefix(level: tracing::Level) -> &'static str {
    match level {
        tracing::Level::ERROR => "<3>",
        tracing::Level::WARN => "<4>",
        tracing::Level::INFO => "<6>",
        tracing::Level::DEBUG | tracing::Level::TRACE => "<7>",
    }
}

/// Buffers what it is given and passes it on, masked, one complete line at a time (a token
/// never straddles two writes), and the rest when flushed or dropped.
pub(crate) struct RedactingWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
    /// Written before every line (the journal's level prefix), if any.
    prefix: &'static str,
}

impl<W: Write> RedactingWriter<W> {
    pub fn new(inner: W) -> Self {
        RedactingWriter {
            inner,
            buffer: Vec::new(),
            prefix: "",
        }
    }

    /// Starts every line with `prefix`; a message of several lines gets it on each, since
    /// journald files each line as an entry of its own.
    pub fn with_prefix(mut self, prefix: &'static str) -> Self {
        self.prefix = prefix;
        self
    }

    fn emit(&mut self, upto: usize) -> io::Result<()> {
        if upto == 0 {
            return Ok(());
        }
        let chunk: Vec<u8> = self.buffer.drain(..upto).collect();
        let text = String::from_utf8_lossy(&chunk);
        let masked = mask_key_shaped(&text);
        if self.prefix.is_empty() {
            return self.inner.write_all(masked.as_bytes());
        }
        let mut prefixed = String::with_capacity(masked.len() + 4 * self.prefix.len());
        for line in masked.split_inclusive('\n') {
            prefixed.push_str(self.prefix);
            prefixed.push_str(line);
        }
        self.inner.write_all(prefixed.as_bytes())
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if let Some(last_newline) = self.buffer.iter().rposition(|b| *b == b'\n') {
            self.emit(last_newline + 1)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit(self.buffer.len())?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    #[test]
    fn for_the_journal_every_line_starts_with_its_level() {
        for format in [LogFormat::Human, LogFormat::Json] {
            let sink = Sink::default();
            let subscriber = build(format, EnvFilter::new("debug"), false, sink.clone(), true);
            tracing::subscriber::with_default(subscriber, || {
                tracing::error!("broken\n  second line");
                tracing::warn!("odd");
                tracing::info!("fine");
                tracing::debug!("detail");
            });
            let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
            let prefixes: Vec<&str> = text.lines().map(|line| &line[..3]).collect();
            let expected: &[&str] = match format {
                LogFormat::Human => &["<3>", "<3>", "<4>", "<6>", "<7>"],
                // JSON escapes the line break: one line per event.
                LogFormat::Json => &["<3>", "<4>", "<6>", "<7>"],
            };
            assert_eq!(prefixes, expected, "{text}");
        }
    }

    #[test]
    fn elsewhere_lines_have_no_prefix() {
        let sink = Sink::default();
        let subscriber = subscriber(
            LogFormat::Human,
            EnvFilter::new("info"),
            false,
            sink.clone(),
        );
        tracing::subscriber::with_default(subscriber, || tracing::error!("broken"));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(!text.starts_with('<') && text.contains("broken"), "{text}");
    }
}
