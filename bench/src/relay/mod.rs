//! The relay phase (`--relay`): the real `keyrotd run` with a `[relay]` route over the
//! run's credentials to a local upstream ([`upstream`]), measured with one client
//! ([`load`]) against the relay and against the upstream directly, in the same run:
//!
//! 1. **added latency**: `--relay-rate` requests/s open-loop (small JSON), direct and
//!    through the relay in alternating rounds; the relay's median and p99 minus direct;
//! 2. **throughput**: `--relay-connections` connections back to back for
//!    `--relay-throughput-secs`, through the relay and direct (the ceiling of this client
//!    and upstream on this machine), with the daemon's CPU per request;
//! 3. **streaming**: SSE events carrying their send time; each event's delay is its receive
//!    time minus its send time (one process clock), through the relay and direct;
//! 4. **memory**: the daemon's resident memory with `--relay-streams` streams open through it
//!    at once, against the same daemon before them.
//!
//! Everything shares the machine: the client, the upstream and the daemon compete for the
//! same cores, so the load average before and after is recorded with the figures.

mod load;
mod upstream;

use crate::process::{cpu_seconds, proc_status_kib};
use crate::setup::{config_text, credential_name, Bench};
use crate::Args;
use keyrotd::simulator::Simulator;
use load::{summary_us, Target};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use upstream::Upstream;

/// The route's prefix: `/bench/v1/...` goes to the upstream's `/v1/...`.
const PREFIX: &str = "/bench/v1";

impl Bench {
    pub(crate) async fn relay_phase(
        &self,
        args: &Args,
        simulator: &Simulator,
    ) -> anyhow::Result<Value> {
        let upstream = Upstream::start().await?;
        let (token, hash) = keyrotd::relay::new_token();
        let relay_address = free_loopback_address()?;
        let config = self.dir.join("relay.toml");
        let mut text = config_text(
            &self.store_lines(),
            simulator,
            args.concurrency,
            args.n,
            None,
        );
        let credentials: Vec<String> = (0..args.n)
            .map(|i| format!("\"{}\"", credential_name(i)))
            .collect();
        text.push_str(&format!(
            "\n[relay]\nlisten = \"{relay_address}\"\nmax_connections = {}\n\n[[relay.client]]\nname = \"bench\"\ntoken_sha256 = \"{hash}\"\n\n[[relay.route]]\nprefix = \"{PREFIX}\"\nupstream = \"http://{}/v1\"\ncredentials = [{}]\nclients = [\"bench\"]\nstrategy = \"round_robin\"\n",
            args.relay_streams + 256,
            upstream.address,
            credentials.join(", ")
        ));
        std::fs::write(&config, text)?;

        let load_before = load_average();
        let daemon = self.start_daemon(args, "relay", &config).await?;
        let pid = daemon.process.pid();
        let rss_at_ready = proc_status_kib(pid, "VmRSS")?;
        let direct = Target {
            address: upstream.address,
            prefix: String::new(),
            authorization: "Bearer direct".into(),
        };
        let relay = Target {
            address: relay_address,
            prefix: "/bench".into(),
            authorization: format!("Bearer {}", token.expose_secret()),
        };

        // 1. Added latency, in alternating rounds so a change in the machine's load hits both.
        let per_round = args.relay_requests / 2;
        let (mut direct_us, mut relay_us) = (Vec::new(), Vec::new());
        let (mut failed, mut late) = (0, 0);
        for _ in 0..2 {
            for (target, samples) in [(&direct, &mut direct_us), (&relay, &mut relay_us)] {
                let (us, f, l) = load::open_loop(target, args.relay_rate, per_round).await?;
                samples.extend(us);
                failed += f;
                late += l;
            }
        }
        let direct_latency = summary_us(direct_us);
        let relay_latency = summary_us(relay_us);
        let added = |field: &str| {
            relay_latency[field].as_f64().unwrap_or(f64::NAN)
                - direct_latency[field].as_f64().unwrap_or(f64::NAN)
        };
        let latency = json!({
            "rate_per_second": args.relay_rate,
            "requests_per_target": per_round * 2,
            "failed": failed,
            "started_over_1ms_late": late,
            "direct": direct_latency,
            "relay": relay_latency,
            "added_p50_us": added("p50_us"),
            "added_p99_us": added("p99_us"),
        });
        eprintln!("relay latency: {latency:#}");

        // 2. Throughput.
        let secs = args.relay_throughput_secs;
        let (direct_rps, direct_failed) =
            load::closed_loop(&direct, args.relay_connections, secs).await?;
        let cpu_before = cpu_seconds(pid)?;
        let started = Instant::now();
        let (relay_rps, relay_failed) =
            load::closed_loop(&relay, args.relay_connections, secs).await?;
        let relay_cpu = cpu_seconds(pid)? - cpu_before;
        let relay_requests = relay_rps * started.elapsed().as_secs_f64();
        let throughput = json!({
            "connections": args.relay_connections,
            "seconds": secs,
            "direct_per_second": direct_rps,
            "direct_failed": direct_failed,
            "relay_per_second": relay_rps,
            "relay_failed": relay_failed,
            "daemon_cpu_s": relay_cpu,
            "daemon_cpu_us_per_request": relay_cpu / relay_requests.max(1.0) * 1e6,
        });
        eprintln!("relay throughput: {throughput:#}");

        // 3. Streaming.
        let stream_args = (
            args.relay_sse_streams,
            args.relay_sse_chunks,
            args.relay_sse_interval_ms,
        );
        let direct_delays = load::streams(
            &direct,
            upstream.epoch,
            stream_args.0,
            stream_args.1,
            stream_args.2,
        )
        .await?;
        let relay_delays = load::streams(
            &relay,
            upstream.epoch,
            stream_args.0,
            stream_args.1,
            stream_args.2,
        )
        .await?;
        let over_1ms = relay_delays.iter().filter(|&&us| us > 1000.0).count();
        let streaming = json!({
            "streams": stream_args.0,
            "chunks_per_stream": stream_args.1,
            "interval_ms": stream_args.2,
            "direct": summary_us(direct_delays),
            "relay": summary_us(relay_delays),
            "relay_chunks_over_1ms": over_1ms,
        });
        eprintln!("relay streaming: {streaming:#}");

        // 4. Memory with many streams open.
        let rss_before_streams = proc_status_kib(pid, "VmRSS")?;
        let opened = Instant::now();
        let held = load::hold_streams(&relay, args.relay_streams, Duration::from_secs(120)).await?;
        let open_seconds = opened.elapsed().as_secs_f64();
        let rss_open = proc_status_kib(pid, "VmRSS")?;
        let rss_anon_open = proc_status_kib(pid, "RssAnon")?;
        let threads_open = proc_status_kib(pid, "Threads")?;
        upstream.release();
        let stream_failures = held.finish().await?;
        let memory = json!({
            "streams": args.relay_streams,
            "seconds_to_open": open_seconds,
            "rss_at_ready_kib": rss_at_ready,
            "rss_before_streams_kib": rss_before_streams,
            "rss_with_streams_kib": rss_open,
            "rss_anon_with_streams_kib": rss_anon_open,
            "rss_after_streams_kib": proc_status_kib(pid, "VmRSS")?,
            "peak_rss_kib": proc_status_kib(pid, "VmHWM")?,
            "threads": threads_open,
            "kib_per_stream": (rss_open as f64 - rss_before_streams as f64)
                / args.relay_streams.max(1) as f64,
            "failed": stream_failures,
        });
        eprintln!("relay memory: {memory:#}");

        let mut daemon = daemon;
        daemon.process.terminate()?;
        Ok(json!({
            "credentials": args.n,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "latency": latency,
            "throughput": throughput,
            "streaming": streaming,
            "memory": memory,
        }))
    }
}

/// A loopback address nothing listens on now (the relay binds it a moment later).
fn free_loopback_address() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The 1, 5 and 15 minute load averages: what else the machine was doing.
fn load_average() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    json!(fields)
}
