//! `/metrics` over real HTTP, both ways it is served: gzip (one gzip member stitched from
//! the cached chunks, for a client that sends `Accept-Encoding: gzip`, as Prometheus and
//! `curl --compressed` do) and identity text (decompressed while it is sent, for plain curl,
//! promtool and everything else). Same text, exact `Content-Length`, `Vary:
//! Accept-Encoding`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Enough credentials that the identity body spans several 64 KiB frames.
const CREDENTIALS: usize = 600;

struct Reply {
    /// Header lines, lowercased: `name: value`.
    headers: Vec<String>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}:");
        self.headers
            .iter()
            .find_map(|h| h.strip_prefix(&prefix))
            .map(str::trim)
    }
}

fn request(port: u16, method: &str, accept_encoding: Option<&str>) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to keyrotd");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let encoding = accept_encoding
        .map(|v| format!("Accept-Encoding: {v}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{encoding}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of the response head");
    let head = String::from_utf8(response[..end].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{head}");
    Reply {
        headers: lines.map(str::to_ascii_lowercase).collect(),
        body: response[end + 4..].to_vec(),
    }
}

/// Decodes ONE gzip member, as curl, Go's gzip reader and many proxies do, and insists that
/// nothing follows it: a multi-member body would lose everything after its first member.
fn gunzip(body: &[u8]) -> String {
    let mut decoder = flate2::bufread::GzDecoder::new(body);
    let mut text = String::new();
    decoder
        .read_to_string(&mut text)
        .expect("a valid gzip stream");
    assert!(
        decoder.into_inner().is_empty(),
        "bytes after the first gzip member"
    );
    text
}

/// The text without the values that move with the clock between two scrapes.
fn timeless(text: &str) -> String {
    text.lines()
        .map(|line| {
            let moving = [
                "keyrotd_key_age_seconds{",
                "keyrotd_key_expires_in_seconds{",
                "keyrotd_scheduler_heartbeat_timestamp_seconds ",
            ];
            if moving.iter().any(|m| line.starts_with(m)) {
                format!("{} <now>\n", line.rsplit_once(' ').unwrap().0)
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

#[test]
fn metrics_are_served_gzipped_or_as_text_by_accept_encoding() {
    let names: Vec<String> = (0..CREDENTIALS).map(|i| format!("cred-{i:04}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let env = Env::with_credentials(&names);
    env.import(
        names[0],
        &canary(),
        &["--expires-at", "2030-01-01T00:00:00Z"],
    );
    let daemon = env.start();
    // The imported key is checked once within the start-up spread (up to 5 s), and again
    // only after a 15 s backoff (the provider is unreachable): the scrapes below must not
    // straddle that check, or they differ by its counters and its status.
    wait_for(common::HANG_TIMEOUT, || {
        let metrics = daemon.metrics();
        sample(
            &metrics,
            "keyrotd_key_last_check_timestamp_seconds",
            names[0],
        )
        .map(|_| ())
    })
    .unwrap_or_else(|| panic!("the imported key was never checked:\n{}", daemon.metrics()));

    // As Prometheus asks; several cached chunks, one gzip member.
    let gzip = request(daemon.port, "GET", Some("gzip"));
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip.header("vary"), Some("accept-encoding"));
    assert_eq!(
        gzip.header("content-length"),
        Some(gzip.body.len().to_string().as_str())
    );
    assert_eq!(&gzip.body[..2], &[0x1f, 0x8b], "a gzip stream");
    let from_gzip = gunzip(&gzip.body);

    // As curl asks (no Accept-Encoding), and as a client that refuses gzip asks.
    for accept in [None, Some("gzip;q=0, identity"), Some("br, deflate")] {
        let identity = request(daemon.port, "GET", accept);
        assert_eq!(identity.header("content-encoding"), None, "{accept:?}");
        assert_eq!(identity.header("vary"), Some("accept-encoding"));
        assert_eq!(
            identity.header("content-length"),
            Some(identity.body.len().to_string().as_str()),
            "{accept:?}"
        );
        let text = String::from_utf8(identity.body).expect("UTF-8 text");
        assert!(text.len() > 2 * 64 * 1024, "{} bytes", text.len());
        assert_eq!(timeless(&text), timeless(&from_gzip), "{accept:?}");
        assert!(gzip.body.len() * 5 < text.len(), "compressed");
    }

    // Every credential is there, and the per-key families once each.
    for name in &names {
        assert!(has_credential(&from_gzip, name), "{name}");
    }
    for family in [
        "keyrotd_key_age_seconds",
        "keyrotd_rotation_consecutive_failures",
        "keyrotd_rotations_total",
    ] {
        assert_eq!(
            from_gzip.matches(&format!("# TYPE {family} ")).count(),
            1,
            "{family}"
        );
    }

    // HEAD: the same headers, no body.
    let head = request(daemon.port, "HEAD", Some("gzip"));
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    assert!(head.body.is_empty());
    daemon.stop();
}

/// `curl --compressed` (which reads a single gzip member) gets the whole exposition, the
/// same text as a plain scrape.
#[test]
fn curl_compressed_reads_the_whole_exposition() {
    if !tool_available("curl") {
        return;
    }
    let names: Vec<String> = (0..50).map(|i| format!("cred-{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let env = Env::with_credentials(&names);
    let daemon = env.start();
    let url = format!("http://127.0.0.1:{}/metrics", daemon.port);
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
            .args(args)
            .arg(&url)
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "curl {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    // Compared between two plain scrapes, so a change in between cannot fail it.
    let (compressed, plain) = (0..5)
        .find_map(|_| {
            let before = curl(&[]);
            let compressed = curl(&["--compressed"]);
            let after = curl(&[]);
            (timeless(&before) == timeless(&after)).then_some((compressed, after))
        })
        .expect("the exposition kept changing");
    assert_eq!(timeless(&compressed), timeless(&plain));
    for name in &names {
        assert!(has_credential(&compressed, name), "{name}");
    }
    // It really came compressed.
    let headers = curl(&["--compressed", "--head"]);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-encoding: gzip"),
        "{headers}"
    );
    daemon.stop();
}
