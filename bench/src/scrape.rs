//! A small HTTP/1.1 client that scrapes `GET /metrics` the way Prometheus does
//! (`Accept-Encoding: gzip`) or the way curl and promtool do (identity), and times it.
//!
//! Written against a bare `TcpStream` rather than an HTTP client library so that what is
//! timed is the server's answer, not a client's pooling or decoding: every scrape opens a
//! fresh connection, and decompression is timed apart.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// One `GET /metrics` on a fresh connection, with `Accept-Encoding: gzip` when `gzip` (as
/// Prometheus asks); returns the raw response and where its body starts. The buffer is sized
/// from the previous answer, so the client does not copy a large body while timing it.
fn get_metrics(address: &str, expected: usize, gzip: bool) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let encoding = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    stream.write_all(
        format!(
            "GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: text/plain\r\n{encoding}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let mut response = Vec::with_capacity(expected + 64 * 1024);
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .take(8192)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET /metrics answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked responses are not supported by this client");
    }
    Ok((response, head_end + 4))
}

/// The body of a response from [`get_metrics`] as text (gunzipped when it came gzipped),
/// its `Content-Encoding` and the ms it took to decompress.
fn body_of(response: &[u8], body_start: usize) -> anyhow::Result<(String, String, f64)> {
    let head = String::from_utf8_lossy(&response[..body_start]).to_ascii_lowercase();
    let encoding = head
        .lines()
        .find_map(|l| l.strip_prefix("content-encoding:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "identity".into());
    let body = &response[body_start..];
    let started = Instant::now();
    let text = match encoding.as_str() {
        "identity" => String::from_utf8(body.to_vec())?,
        "gzip" => {
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(body).read_to_string(&mut text)?;
            text
        }
        other => bail!("unexpected Content-Encoding {other}"),
    };
    Ok((text, encoding, started.elapsed().as_secs_f64() * 1e3))
}

/// Sequential scrapes: the first, then `timings.len()` more.
pub(crate) struct Series {
    first_ms: f64,
    pub(crate) timings: Vec<f64>,
    /// Body bytes on the wire (compressed when `encoding` says so).
    wire_bytes: usize,
    encoding: String,
    /// The last body, decompressed.
    pub(crate) text: String,
    /// Client-side decompression of the last body (not in the timings).
    inflate_ms: f64,
}

impl Series {
    /// The figures as JSON, with the fields of `extra` added.
    pub(crate) fn summary(&self, extra: Value) -> Value {
        let series = self
            .text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        let mut out = json!({
            "count": self.timings.len(),
            "first_ms": self.first_ms,
            "p50_ms": percentile(&self.timings, 0.50),
            "p99_ms": percentile(&self.timings, 0.99),
            "mean_ms": self.timings.iter().sum::<f64>() / self.timings.len().max(1) as f64,
            "content_encoding": self.encoding,
            "wire_bytes": self.wire_bytes,
            "bytes": self.text.len(),
            "series": series,
            "client_inflate_ms": self.inflate_ms,
        });
        if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
            out.extend(extra);
        }
        out
    }
}

/// [`scrape_series`] on a blocking thread, so that the runtime (and the simulator on it)
/// runs on while the scrapes wait for their answers.
pub(crate) async fn scrapes(address: &str, count: usize, gzip: bool) -> anyhow::Result<Series> {
    let address = address.to_string();
    tokio::task::spawn_blocking(move || scrape_series(&address, count, gzip)).await?
}

/// The first scrape's latency, then `count` more sequential scrapes; all in ms (receiving
/// the whole body; decompressing it is measured apart).
fn scrape_series(address: &str, count: usize, gzip: bool) -> anyhow::Result<Series> {
    let started = Instant::now();
    let (mut response, mut body_start) = get_metrics(address, 1 << 20, gzip)?;
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut timings = Vec::with_capacity(count);
    for _ in 0..count {
        let expected = response.len();
        let started = Instant::now();
        (response, body_start) = get_metrics(address, expected, gzip)?;
        timings.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (text, encoding, inflate_ms) = body_of(&response, body_start)?;
    Ok(Series {
        first_ms,
        timings,
        wire_bytes: response.len() - body_start,
        encoding,
        text,
        inflate_ms,
    })
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank]
}
