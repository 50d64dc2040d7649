//! The metrics endpoint behind a node_exporter web config: real TLS (rcgen certificates),
//! client certificates and basic auth, against `keyrotd::metrics::server::serve` on port 0,
//! and client certificates against the real daemon started with `--web.config.file`.

mod common;

use keyrotd::clock::{Clock, SystemClock};
use keyrotd::heartbeat::Heartbeat;
use keyrotd::metrics::server::{serve, HttpState};
use keyrotd::metrics::Metrics;
use keyrotd::store::{SqliteStore, Store};
use keyrotd::web_config::WebConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tempfile::TempDir;
use tokio::net::TcpListener;

struct Pki {
    ca_pem: String,
    client_pem: String,
}

/// Writes ca.crt, server.crt, server.key into `dir` and returns the CA and a client
/// identity (certificate + key PEM) signed by the same CA.
fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "keyrotd test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "prometheus");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();

    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        client_pem: format!("{}{}", client_cert.pem(), client_key.serialize_pem()),
    }
}

/// Starts the endpoint with the web config text written next to the certificates.
async fn start(dir: &TempDir, web_yaml: &str) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let web_path = dir.path().join("web.yml");
    std::fs::write(&web_path, web_yaml).unwrap();
    let web = Arc::new(WebConfig::load(&web_path).expect("valid web config"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = SqliteStore::open(&dir.path().join("keyrotd.db"), None)
        .await
        .unwrap();
    let heartbeat = Arc::new(Heartbeat::new(clock.clone()));
    let state = Arc::new(HttpState {
        metrics: Arc::new(Metrics::new(clock, heartbeat.clone())),
        store: Arc::new(store) as Arc<dyn Store>,
        heartbeat,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, state, Some(web), async {
        let _ = stopped.await;
    }));
    (address, stop)
}

fn client(pki: &Pki, with_identity: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .timeout(std::time::Duration::from_secs(10));
    if with_identity {
        builder = builder.identity(reqwest::Identity::from_pem(pki.client_pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

const TLS_ONLY: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

#[tokio::test]
async fn tls_serves_and_plain_http_to_the_tls_port_fails() {
    let dir = TempDir::new().unwrap();
    let pki = make_pki(dir.path());
    let (address, _stop) = start(&dir, TLS_ONLY).await;

    let response = client(&pki, false)
        .get(format!("https://localhost:{}/healthz", address.port()))
        .send()
        .await
        .expect("TLS request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok\n");

    let plain = reqwest::Client::new()
        .get(format!("http://{address}/healthz"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP got an answer from the TLS port"
    );

    // A client that does not trust our CA refuses the server.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("https://localhost:{}/healthz", address.port()))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn basic_auth_guards_every_path() {
    let dir = TempDir::new().unwrap();
    let pki = make_pki(dir.path());
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let yaml = format!("{TLS_ONLY}basic_auth_users:\n  prometheus: {hash}\n");
    let (address, _stop) = start(&dir, &yaml).await;
    let client = client(&pki, false);
    let url = |path: &str| format!("https://localhost:{}{path}", address.port());

    for path in ["/metrics", "/healthz", "/readyz", "/", "/nope"] {
        let response = client.get(url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path} without credentials");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"keyrotd\""
        );
    }
    for (user, password) in [
        ("prometheus", "wrong"),
        ("nobody", "s3cret"),
        ("prometheus", ""),
    ] {
        let response = client
            .get(url("/healthz"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{user}:{password}");
    }
    // Twice: the second answer comes from the verification cache.
    for _ in 0..2 {
        let response = client
            .get(url("/healthz"))
            .basic_auth("prometheus", Some("s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = client
        .get(url("/metrics"))
        .basic_auth("prometheus", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("keyrotd_build_info"));
}

#[tokio::test]
async fn required_client_certificates_are_enforced() {
    let dir = TempDir::new().unwrap();
    let pki = make_pki(dir.path());
    let yaml = format!(
        "{TLS_ONLY}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS12\n"
    );
    let (address, _stop) = start(&dir, &yaml).await;
    let url = format!("https://localhost:{}/healthz", address.port());

    let without = client(&pki, false).get(&url).send().await;
    assert!(without.is_err(), "a client without a certificate got in");

    let with = client(&pki, true)
        .get(&url)
        .send()
        .await
        .expect("mutual TLS");
    assert_eq!(with.status(), 200);
}

#[tokio::test]
async fn optional_client_certificates_allow_both() {
    let dir = TempDir::new().unwrap();
    let pki = make_pki(dir.path());
    let yaml = format!(
        "{TLS_ONLY}  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"
    );
    let (address, _stop) = start(&dir, &yaml).await;
    let url = format!("https://localhost:{}/healthz", address.port());
    for identity in [false, true] {
        let response = client(&pki, identity).get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[test]
fn bad_web_configs_are_rejected_at_load() {
    let dir = TempDir::new().unwrap();
    make_pki(dir.path());
    let web = dir.path().join("web.yml");
    for (yaml, expected) in [
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n", "missing.crt"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n", "key_file"),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.crt\n",
            "not supported",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n",
            "TLS10",
        ),
        ("basic_auth_users:\n  alice: hunter2\n", "bcrypt"),
        ("basic_auth_user:\n  alice: x\n", "unknown field"),
    ] {
        std::fs::write(&web, yaml).unwrap();
        let err = WebConfig::load(&web).unwrap_err().to_string();
        assert!(err.contains(expected), "{yaml:?} gave {err}");
        assert!(err.contains("web.yml"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn check_config_exits_78_on_a_bad_web_config() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("keyrotd.toml");
    std::fs::write(&config, "").unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(&web, "tls_server_config:\n  cert_file: nope.crt\n").unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyrotd"))
            .arg("--config")
            .arg(&config)
            .arg("--database")
            .arg(dir.path().join("keyrotd.db"))
            .args(extra)
            .arg("check-config")
            .output()
            .unwrap()
    };
    let out = run(&["--web.config.file", web.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_file"));

    // The same file named in the config, relative to it.
    std::fs::write(&config, "[daemon]\nweb_config_file = \"web.yml\"\n").unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");

    std::fs::write(&web, "").unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// The real daemon with `--web.config.file` requiring client certificates: a certificate from
/// another CA is refused, no certificate is refused, one from the configured CA gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_enforces_required_client_certificates() {
    let env = common::Env::new();
    let pki = make_pki(env.path());
    let stranger = TempDir::new().unwrap();
    let other_ca = make_pki(stranger.path());
    let web = env.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "{TLS_ONLY}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        ),
    )
    .unwrap();
    let mut command = env.command();
    command.arg("--web.config.file").arg(&web);
    let daemon = common::Daemon::start(command);
    let log = daemon.log();
    let ready = log.lines().find(|l| l.contains("keyrotd ready")).unwrap();
    assert!(ready.contains("tls=true"), "{ready}");
    let url = format!("https://localhost:{}/metrics", daemon.port);

    // Trusts the server, presents a certificate the server's CA never signed.
    let foreign = Pki {
        ca_pem: pki.ca_pem.clone(),
        client_pem: other_ca.client_pem.clone(),
    };
    let refused = client(&foreign, true).get(&url).send().await;
    assert!(
        refused.is_err(),
        "a certificate from another CA got in: {refused:?}"
    );

    let refused = client(&pki, false).get(&url).send().await;
    assert!(
        refused.is_err(),
        "a client without a certificate got in: {refused:?}"
    );

    let accepted = client(&pki, true)
        .get(&url)
        .send()
        .await
        .expect("mutual TLS with the configured CA");
    assert_eq!(accepted.status(), 200);
    let body = accepted.text().await.unwrap();
    assert!(body.contains("keyrotd_build_info"), "{body}");

    daemon.stop();
}
