//! Prometheus metrics. Per-key state is rendered from a snapshot of the store, so a removed
//! credential leaves no stale series and the CLI, which writes the same store, shows up on
//! the next scrape without the daemon being told.
//!
//! Process-level series (build info, heartbeat, provider request counters) are ordinary
//! registered metrics, encoded on every scrape (a handful of series).
//!
//! The per-key families are the bulk of a scrape (14 series per credential: 11.8 MB of text
//! at 10,000 credentials), so they are not re-encoded per scrape, and they are not kept as
//! text either: they are written straight to text (no protobuf model, no per-label
//! allocations) through a 64 KiB buffer into a gzip compressor, and only the compressed
//! **gzip member** is cached (~0.6 MB at 10,000 credentials):
//!
//! - the families that depend only on the store ([`KeyState::fixed`]) are rendered and
//!   compressed once per store generation (off the async threads);
//! - `keyrotd_key_age_seconds` and `keyrotd_key_expires_in_seconds`, which move with the
//!   clock, are rendered and compressed at most once per second, into their own member,
//!   from a compact per-key table kept with the generation;
//! - the registry (a few KB) is compressed on every scrape.
//!
//! A scrape is an [`Exposition`]: those members in order. Concatenated they are one valid
//! multi-member gzip stream (RFC 1952 §2.2), which `/metrics` sends as is to a client that
//! accepts gzip (Prometheus does); for any other client it is decompressed while it is sent,
//! in bounded chunks ([`Exposition::text_reader`]). The text is the same either way.
//!
//! A scrape of an unchanged store is then: one `SELECT` of the generation, compressing the
//! small registry, and the cached members handed to the response as shared `Bytes`.

use crate::clock::Clock;
use crate::model::{CheckStatus, UnixTime};
use crate::store::{CredentialState, Store, StoreResult};
use bytes::{Buf, Bytes};
use flate2::write::GzEncoder;
use flate2::Compression;
use prometheus::proto::MetricType;
use prometheus::{Encoder, Registry, TextEncoder};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, Read, Write as _};
use std::sync::{Arc, Mutex};

pub const NAMESPACE: &str = "keyrotd";

/// The gzip level of every cached member. Chosen by measurement at 10,000 credentials
/// (BENCHMARKS.md, "/metrics scrape"): with the zlib-rs backend, level 2 compresses the
/// 11 MB of store-dependent text in ~20 ms to ~0.55 MB; level 1 is no faster and 1.5×
/// larger, level 3 twice as slow for nothing.
pub const GZIP_LEVEL: u32 = 2;

/// Text is rendered into a buffer of about this size, then handed to the compressor.
const RENDER_BUFFER: usize = 64 * 1024;

/// The registry and the per-key state of one daemon.
pub struct Metrics {
    registry: Registry,
    keys: Mutex<KeyState>,
    /// Serialises re-reads of the store, so a burst of scrapes after a change reads it once.
    refreshing: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
    heartbeat: prometheus::Gauge,
}

/// One gzip member (header, deflate data, CRC-32 and length trailer) and the length of the
/// text it holds.
#[derive(Debug, Clone, Default)]
pub struct Member {
    pub gzip: Bytes,
    pub text_len: u64,
}

impl Member {
    /// Compresses `text` into one member (the registry's part, tests).
    pub fn compress(text: &[u8]) -> Member {
        let mut writer = MemberWriter::new();
        writer.write_bytes(text);
        writer.finish()
    }

    pub fn is_empty(&self) -> bool {
        self.text_len == 0
    }
}

/// Renders text into one gzip member through a bounded buffer: the whole text never exists
/// at once.
struct MemberWriter {
    text: String,
    encoder: GzEncoder<Vec<u8>>,
    text_len: u64,
}

impl MemberWriter {
    fn new() -> MemberWriter {
        MemberWriter {
            text: String::with_capacity(RENDER_BUFFER + 1024),
            encoder: GzEncoder::new(Vec::new(), Compression::new(GZIP_LEVEL)),
            text_len: 0,
        }
    }

    /// The buffer to append text to; call [`MemberWriter::spill`] after each line.
    fn buffer(&mut self) -> &mut String {
        &mut self.text
    }

    /// Compresses the buffer once it is full.
    fn spill(&mut self) {
        if self.text.len() >= RENDER_BUFFER {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.text.is_empty() {
            return;
        }
        self.text_len += self.text.len() as u64;
        self.encoder
            .write_all(self.text.as_bytes())
            .expect("compressing into a Vec cannot fail");
        self.text.clear();
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        self.flush();
        self.text_len += bytes.len() as u64;
        self.encoder
            .write_all(bytes)
            .expect("compressing into a Vec cannot fail");
    }

    fn finish(mut self) -> Member {
        self.flush();
        if self.text_len == 0 {
            return Member::default();
        }
        let mut gzip = self
            .encoder
            .finish()
            .expect("compressing into a Vec cannot fail");
        gzip.shrink_to_fit();
        Member {
            gzip: Bytes::from(gzip),
            text_len: self.text_len,
        }
    }
}

/// One rendered scrape: gzip members to send in order (shared, not copied). Their
/// concatenation is one multi-member gzip stream of the text exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub members: Vec<Member>,
}

impl Exposition {
    /// Bytes of the gzip stream.
    pub fn gzip_len(&self) -> u64 {
        self.members.iter().map(|m| m.gzip.len() as u64).sum()
    }

    /// Bytes of the text it decompresses to.
    pub fn text_len(&self) -> u64 {
        self.members.iter().map(|m| m.text_len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.text_len() == 0
    }

    /// The gzip stream, as the members' shared bytes.
    pub fn gzip_chunks(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.members
            .iter()
            .filter(|m| !m.is_empty())
            .map(|m| m.gzip.clone())
    }

    /// Reads the text by decompressing the members as it goes.
    pub fn text_reader(&self) -> TextReader {
        TextReader::new(self.gzip_chunks())
    }

    /// The whole body as one string (tests, tools).
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.text_len() as usize);
        self.text_reader()
            .read_to_string(&mut text)
            .expect("the cached members decompress to UTF-8 text");
        text
    }
}

/// The text of a multi-member gzip stream held as shared chunks, decompressed as it is read.
pub struct TextReader {
    decoder: Option<flate2::bufread::MultiGzDecoder<ChunkReader>>,
}

impl TextReader {
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> TextReader {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        TextReader {
            // An empty input is no gzip stream (not even a header): it is empty text.
            decoder: (!chunks.is_empty())
                .then(|| flate2::bufread::MultiGzDecoder::new(ChunkReader { chunks })),
        }
    }
}

impl Read for TextReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.decoder {
            Some(decoder) => decoder.read(buf),
            None => Ok(0),
        }
    }
}

/// `BufRead` over shared chunks, without copying them into one buffer.
struct ChunkReader {
    chunks: VecDeque<Bytes>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.chunks.front().is_some_and(|c| c.is_empty()) {
            self.chunks.pop_front();
        }
        Ok(self.chunks.front().map(|c| &c[..]).unwrap_or(&[]))
    }

    fn consume(&mut self, amount: usize) {
        if let Some(front) = self.chunks.front_mut() {
            front.advance(amount);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }
}

impl Metrics {
    pub fn new(clock: Arc<dyn Clock>) -> Metrics {
        let registry = Registry::new();
        let build_info = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "keyrotd_build_info",
                "A metric with a constant '1' value labeled by the version of keyrotd.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        registry
            .register(Box::new(build_info))
            .expect("registered once");
        let heartbeat = prometheus::Gauge::new(
            "keyrotd_scheduler_heartbeat_timestamp_seconds",
            "Unix time of the scheduler's last heartbeat; stale means the scheduler is stuck.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(heartbeat.clone()))
            .expect("registered once");
        Metrics {
            registry,
            keys: Mutex::new(KeyState::default()),
            refreshing: tokio::sync::Mutex::new(()),
            clock,
            heartbeat,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn set_heartbeat(&self, at: i64) {
        self.heartbeat.set(at as f64);
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, KeyState> {
        // A panic while holding this lock cannot leave the cache half-written: it is
        // replaced whole.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the store when it changed since the last scrape.
    pub async fn refresh(&self, store: &dyn Store) -> StoreResult<()> {
        let generation = store.generation().await?;
        if self.keys().generation == Some(generation) {
            return Ok(());
        }
        let _turn = self.refreshing.lock().await;
        if self.keys().generation == Some(generation) {
            return Ok(());
        }
        // Each record is cut down to what the families need as it is read: the full
        // records of 10,000 credentials are ~10 MB, their rows ~2 MB.
        let mut rows = Vec::new();
        let generation = store
            .visit_states(&mut |state| rows.push(KeyRow::from(&state)))
            .await?;
        // Rendering and compressing 10,000 credentials takes tens of ms: not on the
        // threads that serve the other requests.
        let rendered =
            tokio::task::spawn_blocking(move || KeyState::render_rows(generation, &rows))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        *self.keys() = rendered;
        Ok(())
    }

    /// Every metric, as gzip members to send in order.
    pub fn exposition(&self) -> Exposition {
        let families = self.registry.gather();
        let mut process = Vec::with_capacity(4 * 1024);
        TextEncoder::new()
            .encode(&families, &mut process)
            .expect("text encoding into a Vec cannot fail");
        let process = Member::compress(&process);
        let now = self.clock.now();
        let (timed, fixed) = {
            let mut keys = self.keys();
            (keys.timed(now), keys.fixed.clone())
        };
        Exposition {
            members: vec![process, timed, fixed],
        }
    }

    /// The text exposition of every metric as one string.
    pub fn render(&self) -> String {
        self.exposition().to_text()
    }
}

/// The per-key families, compressed, for one store generation.
#[derive(Debug, Default)]
struct KeyState {
    generation: Option<i64>,
    /// Every per-key family that does not move with the clock.
    fixed: Member,
    /// What the clock-dependent families are computed from.
    clocked: Vec<ClockedKey>,
    /// The clock-dependent families, rendered for the second in `.0`.
    timed: Option<(UnixTime, Member)>,
}

/// A credential's current key, for `keyrotd_key_age_seconds` and
/// `keyrotd_key_expires_in_seconds`.
#[derive(Debug)]
struct ClockedKey {
    /// `{credential="..",provider=".."}`, escaped.
    labels: Box<str>,
    created_at: UnixTime,
    expires_at: Option<UnixTime>,
}

/// (name, help, type, extra label) of every per-credential family.
const FAMILIES: &[(&str, &str, MetricType, Option<&str>)] = &[
    ("keyrotd_key_age_seconds", "Age of the current key in seconds.", MetricType::GAUGE, None),
    ("keyrotd_key_created_timestamp_seconds", "Unix time the current key was created.", MetricType::GAUGE, None),
    ("keyrotd_key_expiry_timestamp_seconds", "Unix time the current key expires (provider-reported or policy).", MetricType::GAUGE, None),
    ("keyrotd_key_expires_in_seconds", "Seconds until the current key expires; negative once expired.", MetricType::GAUGE, None),
    ("keyrotd_key_valid", "1 if the last conclusive check found the current key valid, 0 if invalid; absent until the first conclusive check.", MetricType::GAUGE, None),
    ("keyrotd_key_check_status", "One-hot status of the last check of the current key.", MetricType::GAUGE, Some("status")),
    ("keyrotd_key_last_check_timestamp_seconds", "Unix time of the last check attempt of the current key.", MetricType::GAUGE, None),
    ("keyrotd_key_next_rotation_timestamp_seconds", "Unix time the next rotation is due.", MetricType::GAUGE, None),
    ("keyrotd_key_last_rotation_timestamp_seconds", "Unix time of the last successful rotation.", MetricType::GAUGE, None),
    ("keyrotd_rotation_consecutive_failures", "Failed rotation attempts since the last success.", MetricType::GAUGE, None),
    ("keyrotd_key_credit_remaining", "Balance or limit remaining as reported by the provider, in `unit`.", MetricType::GAUGE, Some("unit")),
];

const AGE: usize = 0;
const CREATED: usize = 1;
const EXPIRY: usize = 2;
const EXPIRES_IN: usize = 3;
const VALID: usize = 4;
const CHECK_STATUS: usize = 5;
const LAST_CHECK: usize = 6;
const NEXT_ROTATION: usize = 7;
const LAST_ROTATION: usize = 8;
const FAILURES: usize = 9;
const CREDIT: usize = 10;
const ROTATIONS_TOTAL: (&str, &str) = (
    "keyrotd_rotations_total",
    "Finished rotations by result (success or failure).",
);

/// The store-dependent families in the order they are served.
const FIXED_ORDER: [usize; 9] = [
    CREATED,
    EXPIRY,
    VALID,
    CHECK_STATUS,
    LAST_CHECK,
    NEXT_ROTATION,
    LAST_ROTATION,
    FAILURES,
    CREDIT,
];

/// Writes one family into a member: its `# HELP` and `# TYPE` lines before its first
/// sample, nothing at all when it has none.
struct Family<'a> {
    out: &'a mut MemberWriter,
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    started: bool,
}

impl<'a> Family<'a> {
    fn new(
        out: &'a mut MemberWriter,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
    ) -> Family<'a> {
        Family {
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

    /// `name{labels[,extra="v"]} value`; `labels` is open (see [`KeyRow::labels`]).
    fn sample(&mut self, labels: &str, extra: Option<(&str, &str)>, value: Value) {
        let name = self.name;
        sample(self.begin(), name, labels, extra, value);
        self.out.spill();
    }

    /// `name{labels} value` with closed `labels`.
    fn line_closed(&mut self, labels: &str, value: i64) {
        let name = self.name;
        line_closed(self.begin(), name, labels, value);
        self.out.spill();
    }
}

/// What the per-key families need of one credential, cut from its full record.
#[derive(Debug)]
struct KeyRow {
    /// `{credential="..",provider=".."` (escaped, without its closing brace so extra labels
    /// can follow).
    labels: Box<str>,
    /// (created, expires) of the current key.
    key: Option<(UnixTime, Option<UnixTime>)>,
    valid: Option<bool>,
    check_status: Option<CheckStatus>,
    last_check_at: Option<UnixTime>,
    next_rotation_at: Option<UnixTime>,
    last_rotated_at: Option<UnixTime>,
    consecutive_failures: i64,
    rotations_succeeded: u64,
    rotations_failed: u64,
    credits: Box<[(String, f64)]>,
}

impl From<&CredentialState> for KeyRow {
    fn from(state: &CredentialState) -> KeyRow {
        let c = &state.credential;
        let mut labels = String::with_capacity(c.name.len() + c.provider.len() + 28);
        labels.push_str("{credential=\"");
        escape_label(&mut labels, &c.name);
        labels.push_str("\",provider=\"");
        escape_label(&mut labels, &c.provider);
        labels.push('"');
        KeyRow {
            labels: labels.into_boxed_str(),
            key: state.current.as_ref().map(|k| (k.created_at, k.expires_at)),
            valid: c.valid,
            check_status: c.check_status,
            last_check_at: c.last_check_at,
            next_rotation_at: c.next_rotation_at,
            last_rotated_at: c.last_rotated_at,
            consecutive_failures: c.consecutive_failures,
            rotations_succeeded: state.rotations_succeeded,
            rotations_failed: state.rotations_failed,
            credits: state.credits.clone().into_boxed_slice(),
        }
    }
}

impl KeyState {
    /// [`KeyState::render_rows`] of a whole snapshot.
    #[cfg(test)]
    fn render(snapshot: &crate::store::Snapshot) -> KeyState {
        let rows: Vec<KeyRow> = snapshot.credentials.iter().map(KeyRow::from).collect();
        KeyState::render_rows(snapshot.generation, &rows)
    }

    /// Renders and compresses the store-only families of `rows`, one family at a time,
    /// and keeps what the clocked ones need.
    fn render_rows(generation: i64, rows: &[KeyRow]) -> KeyState {
        let mut out = MemberWriter::new();
        for index in FIXED_ORDER {
            let (name, help, _, _) = FAMILIES[index];
            let mut family = Family::new(&mut out, name, help, "gauge");
            for row in rows {
                let labels = &row.labels;
                let key = row.key;
                let int = |v: i64| Some(Value::Int(v));
                let single = match index {
                    CREATED => key.and_then(|(created, _)| int(created)),
                    EXPIRY => key.and_then(|(_, expires)| expires).and_then(int),
                    VALID => key.and(row.valid).and_then(|v| int(v as i64)),
                    LAST_CHECK => key.and(row.last_check_at).and_then(int),
                    NEXT_ROTATION => row.next_rotation_at.and_then(int),
                    LAST_ROTATION => row.last_rotated_at.and_then(int),
                    FAILURES => int(row.consecutive_failures),
                    CHECK_STATUS => {
                        if let (Some(status), Some(_)) = (row.check_status, key) {
                            for candidate in CheckStatus::ALL {
                                family.sample(
                                    labels,
                                    Some(("status", candidate.as_str())),
                                    Value::Int((candidate == status) as i64),
                                );
                            }
                        }
                        None
                    }
                    CREDIT => {
                        for (unit, remaining) in &row.credits {
                            family.sample(labels, Some(("unit", unit)), Value::Float(*remaining));
                        }
                        None
                    }
                    _ => unreachable!("not a store-dependent family"),
                };
                if let Some(value) = single {
                    family.sample(labels, None, value);
                }
            }
        }
        let mut rotations = Family::new(&mut out, ROTATIONS_TOTAL.0, ROTATIONS_TOTAL.1, "counter");
        for row in rows {
            for (result, count) in [
                ("success", row.rotations_succeeded),
                ("failure", row.rotations_failed),
            ] {
                rotations.sample(
                    &row.labels,
                    Some(("result", result)),
                    Value::Int(count as i64),
                );
            }
        }
        let fixed = out.finish();
        let clocked = rows
            .iter()
            .filter_map(|row| {
                let (created_at, expires_at) = row.key?;
                Some(ClockedKey {
                    labels: format!("{}}}", row.labels).into_boxed_str(),
                    created_at,
                    expires_at,
                })
            })
            .collect();
        KeyState {
            generation: Some(generation),
            fixed,
            clocked,
            timed: None,
        }
    }

    /// The clock-dependent families at `now`, rendered and compressed at most once per
    /// second.
    fn timed(&mut self, now: UnixTime) -> Member {
        if let Some((at, member)) = &self.timed {
            if *at == now {
                return member.clone();
            }
        }
        let mut out = MemberWriter::new();
        let mut age = Family::new(&mut out, FAMILIES[AGE].0, FAMILIES[AGE].1, "gauge");
        for key in &self.clocked {
            age.line_closed(&key.labels, (now - key.created_at).max(0));
        }
        let (name, help, _, _) = FAMILIES[EXPIRES_IN];
        let mut expires_in = Family::new(&mut out, name, help, "gauge");
        for key in &self.clocked {
            if let Some(expires) = key.expires_at {
                expires_in.line_closed(&key.labels, expires - now);
            }
        }
        let member = out.finish();
        self.timed = Some((now, member.clone()));
        member
    }
}

/// A sample value: integers print without going through `f64`, floats as the prometheus
/// crate prints them.
enum Value {
    Int(i64),
    Float(f64),
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
fn escape_label(out: &mut String, value: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::model::Stage;
    use crate::store::{CredentialRecord, CredentialState, KeyVersion, Snapshot};
    use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily};

    fn state(name: &str, checked: bool, credits: bool) -> CredentialState {
        CredentialState {
            credential: CredentialRecord {
                id: 1,
                name: name.into(),
                provider: "or".into(),
                provider_kind: "openrouter".into(),
                created_at: 10,
                removed_at: None,
                next_rotation_at: Some(5_000),
                last_rotated_at: checked.then_some(900),
                consecutive_failures: 2,
                check_status: checked.then_some(CheckStatus::Exhausted),
                valid: checked.then_some(true),
                last_check_at: checked.then_some(950),
                check_detail: None,
            },
            current: Some(KeyVersion {
                id: 7,
                credential: name.into(),
                stage: Stage::Current,
                fingerprint: "abcd".into(),
                provider_key_id: None,
                rotation_id: None,
                created_at: 100,
                expires_at: checked.then_some(2_000),
                stage_changed_at: 100,
                last_check_at: None,
                last_check_status: None,
                has_secret: true,
            }),
            rotations_succeeded: 3,
            rotations_failed: 1,
            credits: if credits {
                vec![("usd".into(), 12.5)]
            } else {
                Vec::new()
            },
        }
    }

    /// What the prometheus crate's encoder makes of the same series (the collector this
    /// module used before the text cache), one sample per line.
    fn reference(snapshot: &Snapshot, now: UnixTime) -> Vec<String> {
        let label = |name: &str, value: &str| {
            let mut pair = LabelPair::default();
            pair.set_name(name.into());
            pair.set_value(value.into());
            pair
        };
        let mut families = Vec::new();
        let mut push = |name: &str, kind: MetricType, samples: Vec<(Vec<LabelPair>, f64)>| {
            let metrics = samples
                .into_iter()
                .map(|(labels, value)| {
                    let mut metric = if kind == MetricType::GAUGE {
                        let mut gauge = Gauge::default();
                        gauge.set_value(value);
                        Metric::from_gauge(gauge)
                    } else {
                        let mut counter = prometheus::proto::Counter::default();
                        counter.set_value(value);
                        let mut metric = Metric::default();
                        metric.set_counter(counter);
                        metric
                    };
                    metric.set_label(labels);
                    metric
                })
                .collect();
            let mut family = MetricFamily::default();
            family.set_name(name.into());
            family.set_help("h".into());
            family.set_field_type(kind);
            family.set_metric(metrics);
            families.push(family);
        };
        for s in &snapshot.credentials {
            let c = &s.credential;
            let base = || vec![label("credential", &c.name), label("provider", &c.provider)];
            let key = s.current.as_ref().unwrap();
            let g = MetricType::GAUGE;
            push(
                FAMILIES[AGE].0,
                g,
                vec![(base(), (now - key.created_at) as f64)],
            );
            push(
                FAMILIES[CREATED].0,
                g,
                vec![(base(), key.created_at as f64)],
            );
            if let Some(e) = key.expires_at {
                push(FAMILIES[EXPIRY].0, g, vec![(base(), e as f64)]);
                push(FAMILIES[EXPIRES_IN].0, g, vec![(base(), (e - now) as f64)]);
            }
            if let Some(v) = c.valid {
                push(FAMILIES[VALID].0, g, vec![(base(), v as i64 as f64)]);
            }
            if let Some(status) = c.check_status {
                let samples = CheckStatus::ALL
                    .iter()
                    .map(|s| {
                        let mut l = base();
                        l.push(label("status", s.as_str()));
                        (l, (*s == status) as i64 as f64)
                    })
                    .collect();
                push(FAMILIES[CHECK_STATUS].0, g, samples);
            }
            if let Some(at) = c.last_check_at {
                push(FAMILIES[LAST_CHECK].0, g, vec![(base(), at as f64)]);
            }
            if let Some(at) = c.next_rotation_at {
                push(FAMILIES[NEXT_ROTATION].0, g, vec![(base(), at as f64)]);
            }
            if let Some(at) = c.last_rotated_at {
                push(FAMILIES[LAST_ROTATION].0, g, vec![(base(), at as f64)]);
            }
            push(
                FAMILIES[FAILURES].0,
                g,
                vec![(base(), c.consecutive_failures as f64)],
            );
            for (unit, remaining) in &s.credits {
                let mut l = base();
                l.push(label("unit", unit));
                push(FAMILIES[CREDIT].0, g, vec![(l, *remaining)]);
            }
            let mut ok = base();
            ok.push(label("result", "success"));
            let mut failed = base();
            failed.push(label("result", "failure"));
            push(
                ROTATIONS_TOTAL.0,
                MetricType::COUNTER,
                vec![
                    (ok, s.rotations_succeeded as f64),
                    (failed, s.rotations_failed as f64),
                ],
            );
        }
        let text = TextEncoder::new().encode_to_string(&families).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn cached_text_matches_the_prometheus_encoder() {
        let snapshot = Snapshot {
            generation: 4,
            credentials: vec![
                state("plain", true, true),
                state("we\\ird \"name\"\nhere", false, false),
            ],
        };
        let clock = ManualClock::new(1_000);
        let metrics = Metrics::new(Arc::new(clock.clone()));
        *metrics.keys() = KeyState::render(&snapshot);
        for now in [1_000, 1_001, 2_500] {
            clock.set(now);
            let text = metrics.render();
            let mut ours: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("keyrotd_key_") || l.starts_with("keyrotd_rotation"))
                .map(str::to_string)
                .collect();
            ours.sort();
            assert_eq!(ours, reference(&snapshot, now), "at {now}");
            // Every family has exactly one HELP and one TYPE line.
            for (name, ..) in FAMILIES {
                assert!(
                    text.matches(&format!("# TYPE {name} ")).count() <= 1,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn the_clocked_families_are_rendered_once_per_second() {
        let snapshot = Snapshot {
            generation: 1,
            credentials: vec![state("a", true, false)],
        };
        let mut keys = KeyState::render(&snapshot);
        let first = keys.timed(50);
        let again = keys.timed(50);
        assert_eq!(
            first.gzip.as_ptr(),
            again.gzip.as_ptr(),
            "same second: the cached member"
        );
        let later = keys.timed(51);
        assert_ne!(first.gzip, later.gzip);
    }

    #[test]
    fn the_gzip_stream_decompresses_to_the_text_exposition() {
        // Enough credentials that every member spans several render buffers.
        let credentials: Vec<CredentialState> = (0..3_000)
            .map(|i| state(&format!("cred-{i:05}"), i % 3 != 0, i % 7 == 0))
            .collect();
        let snapshot = Snapshot {
            generation: 9,
            credentials,
        };
        let clock = ManualClock::new(1_500);
        let metrics = Metrics::new(Arc::new(clock.clone()));
        *metrics.keys() = KeyState::render(&snapshot);
        let exposition = metrics.exposition();
        assert!(exposition.members.iter().all(|m| !m.is_empty()));
        assert!(
            exposition.members[2].text_len > 4 * RENDER_BUFFER as u64,
            "the fixed member spans several buffers"
        );
        // The members concatenated: what a gzip response carries.
        let mut gzip = Vec::new();
        for chunk in exposition.gzip_chunks() {
            gzip.extend_from_slice(&chunk);
        }
        assert_eq!(gzip.len() as u64, exposition.gzip_len());
        let mut multi = String::new();
        flate2::read::MultiGzDecoder::new(&gzip[..])
            .read_to_string(&mut multi)
            .unwrap();
        // Each member on its own, decoded separately and joined: the same text.
        let mut separately = String::new();
        for member in &exposition.members {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&member.gzip[..])
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text.len() as u64, member.text_len);
            separately.push_str(&text);
        }
        assert_eq!(multi, separately);
        assert_eq!(multi.len() as u64, exposition.text_len());
        // What the identity path streams.
        assert_eq!(exposition.to_text(), multi);
        // It is a real multi-member stream: a single-member reader stops after the first.
        let mut first_only = String::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_string(&mut first_only)
            .unwrap();
        assert_eq!(first_only.len() as u64, exposition.members[0].text_len);
        // And it is compressed: far smaller than the text.
        assert!(exposition.gzip_len() * 8 < exposition.text_len());

        // Every sample line against the prometheus crate's encoder.
        let mut ours: Vec<String> = multi
            .lines()
            .filter(|l| l.starts_with("keyrotd_key_") || l.starts_with("keyrotd_rotation"))
            .map(str::to_string)
            .collect();
        ours.sort();
        let expected = reference(&snapshot, 1_500);
        assert_eq!(ours.len(), expected.len());
        assert!(ours == expected, "sample lines differ from the encoder's");
    }

    #[test]
    fn an_empty_store_still_serves_the_registry() {
        let metrics = Metrics::new(Arc::new(ManualClock::new(5)));
        *metrics.keys() = KeyState::render(&Snapshot {
            generation: 1,
            credentials: Vec::new(),
        });
        let exposition = metrics.exposition();
        let text = exposition.to_text();
        assert!(text.contains("keyrotd_build_info{"), "{text}");
        assert!(!text.contains("keyrotd_key_"), "{text}");
        assert_eq!(
            exposition.gzip_chunks().count(),
            1,
            "empty members are not sent"
        );
        let mut nothing = Vec::new();
        TextReader::new(Vec::new())
            .read_to_end(&mut nothing)
            .unwrap();
        assert!(nothing.is_empty());
    }

    /// The text is byte for byte what the uncompressed text cache served (order included):
    /// `tests/data/exposition-3-credentials.txt` was rendered by that code.
    #[test]
    fn the_text_is_unchanged_byte_for_byte() {
        let snapshot = Snapshot {
            generation: 4,
            credentials: vec![
                state("plain", true, true),
                state("we\\ird \"name\"\nhere", false, false),
                state("third", true, false),
            ],
        };
        let metrics = Metrics::new(Arc::new(ManualClock::new(1_000)));
        *metrics.keys() = KeyState::render(&snapshot);
        let expected = include_str!("../tests/data/exposition-3-credentials.txt").replace(
            "{version=\"VERSION\"}",
            &format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
        );
        assert_eq!(metrics.render(), expected);
    }

    /// What a re-render after a change costs at 10,000 credentials (the render and the
    /// compression, not the store's snapshot queries):
    /// `cargo test --release --lib -- --ignored render_cost --nocapture`.
    #[test]
    #[ignore = "a measurement, not a test"]
    fn render_cost_at_10k() {
        let credentials: Vec<CredentialState> = (0..10_000)
            .map(|i| state(&format!("bench-{i:06}"), true, false))
            .collect();
        let snapshot = Snapshot {
            generation: 1,
            credentials,
        };
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let mut keys = KeyState::render(&snapshot);
            let fixed_ms = started.elapsed().as_secs_f64() * 1e3;
            let started = std::time::Instant::now();
            let timed = keys.timed(1_000);
            let timed_ms = started.elapsed().as_secs_f64() * 1e3;
            let text = Exposition {
                members: vec![keys.fixed.clone()],
            }
            .to_text();
            let started = std::time::Instant::now();
            let _ = Member::compress(text.as_bytes());
            let compress_ms = started.elapsed().as_secs_f64() * 1e3;
            println!(
                "fixed: {} -> {} bytes in {fixed_ms:.1} ms (compressing alone {compress_ms:.1} ms); \
                 clocked: {} -> {} bytes in {timed_ms:.1} ms",
                keys.fixed.text_len,
                keys.fixed.gzip.len(),
                timed.text_len,
                timed.gzip.len()
            );
            for level in 1..=4 {
                let started = std::time::Instant::now();
                let mut encoder = GzEncoder::new(Vec::new(), Compression::new(level));
                for piece in text.as_bytes().chunks(RENDER_BUFFER) {
                    encoder.write_all(piece).unwrap();
                }
                let gzip = encoder.finish().unwrap();
                let ms = started.elapsed().as_secs_f64() * 1e3;
                let started = std::time::Instant::now();
                let mut back = Vec::with_capacity(text.len());
                flate2::read::GzDecoder::new(&gzip[..])
                    .read_to_end(&mut back)
                    .unwrap();
                let inflate_ms = started.elapsed().as_secs_f64() * 1e3;
                println!(
                    "  level {level}: {} bytes, compress {ms:.1} ms, decompress {inflate_ms:.1} ms",
                    gzip.len()
                );
            }
        }
    }
}
