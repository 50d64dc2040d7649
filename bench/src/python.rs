//! The baseline: the same series served by Python's `prometheus_client`
//! (`bench/prom_exporter.py`), the way an exporter written with it would serve them, and
//! scraped the same way as the daemon, so the two scrape latencies compare like for like.

use crate::process::{proc_status_kib, Running};
use crate::scrape::scrapes;
use crate::setup::Bench;
use crate::Args;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

impl Bench {
    /// Starts `script` with the daemon's last exposition and scrapes it.
    pub(crate) async fn python_phase(&self, args: &Args, script: &Path) -> anyhow::Result<Value> {
        let spec = self.dir.join("series.json");
        let exposition = self.exposition.lock().unwrap().clone();
        std::fs::write(&spec, serde_json::to_string(&families(&exposition))?)?;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let started = Instant::now();
        let child = Command::new(&args.python_bin)
            .arg(script)
            .arg(&spec)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the Python exporter")?;
        let mut python = Running::new(child);
        let stdout = python.child.stdout.take().context("no stdout")?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            if !line.starts_with("READY") {
                bail!("the Python exporter did not start: {line:?}");
            }
            Ok(())
        })
        .await??;
        let load_seconds = started.elapsed().as_secs_f64();
        let address = format!("127.0.0.1:{port}");
        let gzip = scrapes(&address, args.python_scrapes, true).await?;
        let identity = scrapes(&address, args.python_identity_scrapes, false).await?;
        let rss = proc_status_kib(python.pid(), "VmRSS")?;
        python.terminate()?;
        Ok(json!({
            "load_seconds": load_seconds,
            "scrape": gzip.summary(json!({ "identity": identity.summary(json!({})) })),
            "rss_kib": rss,
        }))
    }
}

/// The exposition as families: `[{name, help, type, samples: [[sample, {labels}, value]]}]`.
fn families(exposition: &str) -> Value {
    let mut out: Vec<Value> = Vec::new();
    let mut help = String::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').map(|x| x.1).unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            out.push(json!({"name": name, "help": help, "type": kind, "samples": []}));
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap_or((line, "0"));
            let (sample, labels) = match series.split_once('{') {
                Some((sample, rest)) => (sample, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels: serde_json::Map<String, Value> = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_string(), json!(v.trim_matches('"'))))
                .collect();
            if let Some(Value::Array(samples)) = out.last_mut().and_then(|f| f.get_mut("samples")) {
                samples.push(json!([sample, labels, value.parse::<f64>().unwrap_or(0.0)]));
            }
        }
    }
    Value::Array(out)
}
