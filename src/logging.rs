//! Log output: human-readable on a terminal, JSON lines for machines (`--log-format json`).
//! Logs go to stderr; stdout belongs to command output.
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
    // A second init (tests) keeps the first subscriber.
    let _ = subscriber(format, filter, ansi, io::stderr).try_init();
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Redacting(writer));
    match format {
        LogFormat::Human => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// A `MakeWriter` that masks key-shaped tokens in everything written through it.
#[derive(Debug, Clone)]
pub(crate) struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(self.0.make_writer_for(meta))
    }
}

/// Buffers what it is given and passes it on, masked, one complete line at a time (a token
/// never straddles two writes), and the rest when flushed or dropped.
pub(crate) struct RedactingWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    pub fn new(inner: W) -> Self {
        RedactingWriter {
            inner,
            buffer: Vec::new(),
        }
    }

    fn emit(&mut self, upto: usize) -> io::Result<()> {
        if upto == 0 {
            return Ok(());
        }
        let chunk: Vec<u8> = self.buffer.drain(..upto).collect();
        let text = String::from_utf8_lossy(&chunk);
        self.inner.write_all(mask_key_shaped(&text).as_bytes())
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
