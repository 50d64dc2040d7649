//! Delivery targets end to end: built from config text, delivering a canary key to real
//! files, real processes and a fake Kubernetes API server. Every error is checked for the
//! canary.

use base64::Engine as _;
use keyrotd::config::Config;
use keyrotd::delivery::{build, Delivery, DeliveryError, Target};
use secrecy::SecretString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn canary() -> String {
    format!("sk-canary-{:016x}", rand::random::<u64>())
}

fn target(deliver: &str) -> Box<dyn Target> {
    let text = format!(
        "[[provider]]\nname = \"p\"\nkind = \"openrouter\"\n\n[[credential]]\nname = \"openai-prod\"\nprovider = \"p\"\n\n[[credential.deliver]]\n{deliver}\n"
    );
    let config = Config::parse(Path::new("test.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    build(&config.credentials[0].deliver[0]).unwrap()
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().unwrap())
}

async fn deliver(target: &dyn Target, key: &str) -> Result<(), DeliveryError> {
    let key = SecretString::from(key.to_string());
    target
        .deliver(&Delivery {
            credential: "openai-prod",
            key: &key,
            fingerprint: "fp1234abcd",
            version_id: 7,
        })
        .await
}

/// How long a test waits for a hook before calling it a hang: longer than any hook timeout
/// here, far shorter than the hooks' sleeps.
const HANG_BOUND: Duration = Duration::from_secs(90);

/// The error's text and Debug form, asserted free of the canary.
fn checked(err: DeliveryError, canary: &str) -> String {
    let text = err.to_string();
    let debug = format!("{err:?}");
    assert!(!text.contains(canary), "canary in error: {text}");
    assert!(!debug.contains(canary), "canary in error Debug: {debug}");
    text
}

/// The directory's entries, without the cross-process lock files deliveries keep beside
/// their targets (`.NAME.keyrotd.lock`, kept on purpose: see `delivery::lock`).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".keyrotd.lock"))
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------- file

#[tokio::test]
async fn file_holds_the_key_and_a_newline_with_mode_0600_and_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    let t = target(&format!("kind = \"file\"\npath = {}", toml_path(&file)));
    assert_eq!(t.describe(), format!("file {}", file.display()));
    let key = canary();
    deliver(t.as_ref(), &key).await.unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{key}\n"));
    assert_eq!(mode(&file), 0o600);
    assert_eq!(entries(dir.path()), vec!["key"]);
    assert!(dir.path().join(".key.keyrotd.lock").exists());
    // Idempotent.
    deliver(t.as_ref(), &key).await.unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{key}\n"));
    assert_eq!(entries(dir.path()), vec!["key"]);
}

#[tokio::test]
async fn file_uses_the_configured_mode_and_raw_format_and_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, "old key, longer than the new one\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let t = target(&format!(
        "kind = \"file\"\npath = {}\nmode = \"0640\"\nformat = \"raw\"\nowner = \"{uid}\"\ngroup = \"{gid}\"",
        toml_path(&file)
    ));
    let key = canary();
    deliver(t.as_ref(), &key).await.unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), key);
    assert_eq!(mode(&file), 0o640);
    assert_eq!(entries(dir.path()), vec!["key"]);
}

#[tokio::test]
async fn file_is_never_observed_partially_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    let t = target(&format!("kind = \"file\"\npath = {}", toml_path(&file)));
    let short = canary();
    let long = format!("{}{}", canary(), "x".repeat(20_000));
    deliver(t.as_ref(), &short).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, file) = (stop.clone(), file.clone());
        let (a, b) = (format!("{short}\n"), format!("{long}\n"));
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let content = std::fs::read_to_string(&file).expect("the file always exists");
                assert!(
                    content == a || content == b,
                    "partial content of {} bytes",
                    content.len()
                );
                reads += 1;
            }
            reads
        })
    };
    for i in 0..200 {
        let key = if i % 2 == 0 { &long } else { &short };
        deliver(t.as_ref(), key).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    assert_eq!(entries(dir.path()), vec!["key"]);
}

#[tokio::test]
async fn file_errors_name_the_target_and_cause_but_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing-dir").join("key");
    let t = target(&format!("kind = \"file\"\npath = {}", toml_path(&file)));
    let key = canary();
    let err = checked(deliver(t.as_ref(), &key).await.unwrap_err(), &key);
    assert!(
        err.starts_with(&format!("file {}: opening lock file", file.display())),
        "{err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");

    let file = dir.path().join("key");
    let t = target(&format!(
        "kind = \"file\"\npath = {}\nowner = \"no-such-user-xyz\"",
        toml_path(&file)
    ));
    let err = checked(deliver(t.as_ref(), &key).await.unwrap_err(), &key);
    assert!(err.contains("unknown user \"no-such-user-xyz\""), "{err}");
    assert!(entries(dir.path()).is_empty());

    let t = target(&format!("kind = \"file\"\npath = {}", toml_path(&file)));
    let bad = format!("{key}\nsecond line");
    let err = checked(deliver(t.as_ref(), &bad).await.unwrap_err(), &key);
    assert!(err.contains("line break"), "{err}");
}

// ---------------------------------------------------------------- env_file

#[tokio::test]
async fn env_file_replaces_its_variable_and_keeps_other_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(
        &file,
        "# app settings\nLOG_LEVEL=info\nOPENAI_API_KEY=sk-old\nPORT=8080\n",
    )
    .unwrap();
    let t = target(&format!(
        "kind = \"env_file\"\npath = {}\nvariable = \"OPENAI_API_KEY\"",
        toml_path(&file)
    ));
    assert_eq!(
        t.describe(),
        format!("env file {} (OPENAI_API_KEY)", file.display())
    );
    let key = canary();
    deliver(t.as_ref(), &key).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("# app settings\nLOG_LEVEL=info\nOPENAI_API_KEY={key}\nPORT=8080\n")
    );
    assert_eq!(mode(&file), 0o600);
    assert_eq!(entries(dir.path()), vec!["app.env"]);
}

#[tokio::test]
async fn env_file_is_shared_by_credentials_delivered_at_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.env");
    let a = target(&format!(
        "kind = \"env_file\"\npath = {}\nvariable = \"A_KEY\"",
        toml_path(&file)
    ));
    let b = target(&format!(
        "kind = \"env_file\"\npath = {}\nvariable = \"B_KEY\"",
        toml_path(&file)
    ));
    for _ in 0..20 {
        let (ka, kb) = (canary(), canary());
        let (ra, rb) = tokio::join!(deliver(a.as_ref(), &ka), deliver(b.as_ref(), &kb));
        ra.unwrap();
        rb.unwrap();
        let content = std::fs::read_to_string(&file).unwrap();
        assert!(content.contains(&format!("A_KEY={ka}\n")), "{content}");
        assert!(content.contains(&format!("B_KEY={kb}\n")), "{content}");
        assert_eq!(content.lines().count(), 2, "{content}");
    }
}

#[tokio::test]
async fn env_file_refuses_a_key_with_a_newline_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(&file, "OPENAI_API_KEY=sk-old\n").unwrap();
    let t = target(&format!(
        "kind = \"env_file\"\npath = {}\nvariable = \"OPENAI_API_KEY\"",
        toml_path(&file)
    ));
    let key = canary();
    let err = checked(
        deliver(t.as_ref(), &format!("{key}\nINJECTED=1"))
            .await
            .unwrap_err(),
        &key,
    );
    assert!(err.contains("line break"), "{err}");
    assert!(err.contains("OPENAI_API_KEY"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "OPENAI_API_KEY=sk-old\n"
    );
}

// ---------------------------------------------------------------- exec

/// A hook that records its stdin, arguments, own command line and environment.
fn recording_hook(dir: &Path, key_via: &str) -> Box<dyn Target> {
    let script = r#"cat > "$0/stdin"; printf '%s\n' "$@" > "$0/args"; cat /proc/$$/cmdline > "$0/cmdline"; env > "$0/env""#;
    target(&format!(
        "kind = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}, {}, \"--flag\"]\n{key_via}",
        toml_path(dir)
    ))
}

fn read(dir: &Path, name: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(dir.join(name)).unwrap()).into_owned()
}

#[tokio::test]
async fn exec_passes_the_key_on_stdin_and_never_in_argv() {
    let dir = tempfile::tempdir().unwrap();
    let t = recording_hook(dir.path(), "key_via = \"stdin\"");
    assert!(t.describe().starts_with("exec sh -c "), "{}", t.describe());
    let key = canary();
    deliver(t.as_ref(), &key).await.unwrap();
    assert_eq!(read(dir.path(), "stdin"), format!("{key}\n"));
    assert_eq!(read(dir.path(), "args"), "--flag\n");
    assert!(read(dir.path(), "cmdline").contains("--flag"));
    assert!(!read(dir.path(), "cmdline").contains(&key));
    let env = read(dir.path(), "env");
    assert!(env.contains("KEYROTD_CREDENTIAL=openai-prod\n"), "{env}");
    assert!(env.contains("KEYROTD_FINGERPRINT=fp1234abcd\n"), "{env}");
    assert!(env.contains("KEYROTD_VERSION_ID=7\n"), "{env}");
    assert!(
        !env.contains(&key),
        "key in the environment of a stdin hook"
    );
}

#[tokio::test]
async fn exec_passes_the_key_in_the_environment_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let key = canary();

    let t = recording_hook(dir.path(), "key_via = \"env\"");
    deliver(t.as_ref(), &key).await.unwrap();
    assert!(read(dir.path(), "env").contains(&format!("KEYROTD_KEY={key}\n")));
    assert_eq!(read(dir.path(), "stdin"), "");
    assert!(!read(dir.path(), "cmdline").contains(&key));
    assert!(!read(dir.path(), "args").contains(&key));

    let t = recording_hook(dir.path(), "key_via = \"env\"\nenv_var = \"APP_API_KEY\"");
    deliver(t.as_ref(), &key).await.unwrap();
    let env = read(dir.path(), "env");
    assert!(env.contains(&format!("APP_API_KEY={key}\n")));
    assert!(!env.contains("KEYROTD_KEY="));
}

#[tokio::test]
async fn exec_without_key_via_gets_no_key_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let t = recording_hook(dir.path(), "");
    let key = canary();
    deliver(t.as_ref(), &key).await.unwrap();
    assert_eq!(read(dir.path(), "stdin"), "");
    for file in ["env", "args", "cmdline"] {
        assert!(!read(dir.path(), file).contains(&key), "key in {file}");
    }
    assert!(read(dir.path(), "env").contains("KEYROTD_FINGERPRINT=fp1234abcd"));
}

#[tokio::test]
async fn exec_failure_reports_status_and_the_last_stderr_line_with_the_key_masked() {
    let key = canary();
    let t = target(
        "kind = \"exec\"\ncommand = [\"sh\", \"-c\", \"echo starting >&2; echo \\\"reload failed for $KEYROTD_KEY\\\" >&2; exit 3\"]\nkey_via = \"env\"",
    );
    let err = checked(deliver(t.as_ref(), &key).await.unwrap_err(), &key);
    assert!(err.starts_with("exec sh -c "), "{err}");
    assert!(
        err.ends_with(": exited with status 3: reload failed for [REDACTED]"),
        "{err}"
    );

    let t = target("kind = \"exec\"\ncommand = [\"false\"]");
    let err = checked(deliver(t.as_ref(), &key).await.unwrap_err(), &key);
    assert_eq!(err, "exec false: exited with status 1");

    let t = target("kind = \"exec\"\ncommand = [\"/nonexistent/hook\"]\nkey_via = \"stdin\"");
    let err = checked(deliver(t.as_ref(), &key).await.unwrap_err(), &key);
    assert!(
        err.contains("starting \"/nonexistent/hook\"") && err.contains("No such file"),
        "{err}"
    );
}

#[tokio::test]
async fn exec_timeout_kills_the_hook_and_everything_it_started() {
    // The hook starts a background child, records its pid (whole, through a rename), then
    // sleeps far past its timeout. That the child started before the kill is the premise,
    // and how soon a busy machine runs the hook is not the hook's promise: a kill before
    // the record is a do-over with a longer timeout, never a pass.
    let key = canary();
    for timeout in ["500ms", "2s", "8s", "30s"] {
        let dir = tempfile::tempdir().unwrap();
        let (recording, pid_file) = (dir.path().join("bg.tmp"), dir.path().join("bg.pid"));
        let script = format!(
            "sleep 600 & echo $! > {recording}; mv {recording} {pid_file}; sleep 600",
            recording = recording.display(),
            pid_file = pid_file.display()
        );
        let t = target(&format!(
            "kind = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}]\nkey_via = \"stdin\"\ntimeout = \"{timeout}\""
        ));
        // A hook left running would hold the delivery for its ten minutes.
        let err = tokio::time::timeout(HANG_BOUND, deliver(t.as_ref(), &key))
            .await
            .expect("the hook's timeout did not end the delivery")
            .unwrap_err();
        let err = checked(err, &key);
        assert!(
            err.ends_with(&format!(": did not finish within {timeout}, killed")),
            "{err}"
        );
        let Ok(pid) = std::fs::read_to_string(&pid_file) else {
            eprintln!("the hook was killed within {timeout} before it recorded its child: again");
            continue;
        };
        // The background child was in the hook's process group and is gone too.
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        let deadline = Instant::now() + HANG_BOUND;
        loop {
            // Reaped by init or a zombie: either way, /proc/<pid>/stat shows it is not
            // sleeping.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return;
            }
            if Instant::now() >= deadline {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                panic!(
                    "background child still alive {HANG_BOUND:?} after the hook was killed: {stat}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("the hook never got as far as recording its child, even with 30s");
}

// ---------------------------------------------------------------- kubernetes

struct Kube {
    server: MockServer,
    dir: tempfile::TempDir,
}

impl Kube {
    async fn start() -> Kube {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "token-one\n").unwrap();
        Kube {
            server: MockServer::start().await,
            dir,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    fn target(&self) -> Box<dyn Target> {
        target(&format!(
            "kind = \"kubernetes\"\nnamespace = \"apps\"\nsecret_name = \"openai\"\nsecret_key = \"OPENAI_API_KEY\"\napi_server = \"{}\"\ntoken_file = {}\ntimeout = \"5s\"",
            self.server.uri(),
            toml_path(&self.token_file())
        ))
    }
}

const SECRET: &str = "/api/v1/namespaces/apps/secrets/openai";

fn b64(key: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[tokio::test]
async fn kubernetes_patches_an_existing_secret_with_the_current_token() {
    let kube = Kube::start().await;
    let key = canary();
    Mock::given(method("PATCH"))
        .and(path(SECRET))
        .and(header("authorization", "Bearer token-one"))
        .and(header("content-type", "application/merge-patch+json"))
        .and(body_json(
            serde_json::json!({"data": {"OPENAI_API_KEY": b64(&key)}}),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"kind": "Secret"})),
        )
        .expect(1)
        .mount(&kube.server)
        .await;
    let t = kube.target();
    assert_eq!(
        t.describe(),
        "kubernetes secret apps/openai key OPENAI_API_KEY"
    );
    deliver(t.as_ref(), &key).await.unwrap();

    // The token file is re-read at each delivery (kubelet rotates it).
    std::fs::write(kube.token_file(), "token-two").unwrap();
    Mock::given(method("PATCH"))
        .and(path(SECRET))
        .and(header("authorization", "Bearer token-two"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&kube.server)
        .await;
    deliver(t.as_ref(), &key).await.unwrap();
}

#[tokio::test]
async fn kubernetes_creates_a_missing_secret() {
    let kube = Kube::start().await;
    let key = canary();
    Mock::given(method("PATCH"))
        .and(path(SECRET))
        .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({
            "kind": "Status", "status": "Failure", "reason": "NotFound",
            "message": "secrets \"openai\" not found", "code": 404
        })))
        .expect(1)
        .mount(&kube.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/namespaces/apps/secrets"))
        .and(header("authorization", "Bearer token-one"))
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "openai",
                "namespace": "apps",
                "labels": {"app.kubernetes.io/managed-by": "keyrotd"}
            },
            "type": "Opaque",
            "data": {"OPENAI_API_KEY": b64(&key)}
        })))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&kube.server)
        .await;
    deliver(kube.target().as_ref(), &key).await.unwrap();
}

#[tokio::test]
async fn kubernetes_retries_the_patch_once_when_create_conflicts() {
    let kube = Kube::start().await;
    let key = canary();
    Mock::given(method("PATCH"))
        .and(path(SECRET))
        .respond_with(ResponseTemplate::new(404))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&kube.server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(SECRET))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .expect(1)
        .mount(&kube.server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(409))
        .expect(1)
        .mount(&kube.server)
        .await;
    deliver(kube.target().as_ref(), &key).await.unwrap();
}

#[tokio::test]
async fn kubernetes_errors_carry_status_and_message_without_secrets() {
    let kube = Kube::start().await;
    let key = canary();
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(403).set_body_json(serde_json::json!({
            "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
            "message": format!(
                "secrets \"openai\" is forbidden: request {} with token token-one and data {} denied",
                key, b64(&key)
            )
        })))
        .mount(&kube.server)
        .await;
    let err = checked(
        deliver(kube.target().as_ref(), &key).await.unwrap_err(),
        &key,
    );
    assert!(err.starts_with("kubernetes secret apps/openai key OPENAI_API_KEY: patch failed: HTTP 403: secrets \"openai\" is forbidden"), "{err}");
    assert!(!err.contains(&b64(&key)), "{err}");
    assert!(!err.contains("token-one"), "{err}");
    assert!(err.contains("[REDACTED]"), "{err}");

    // A create that fails reports the create.
    kube.server.reset().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&kube.server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422).set_body_string("not json at all"))
        .mount(&kube.server)
        .await;
    let err = checked(
        deliver(kube.target().as_ref(), &key).await.unwrap_err(),
        &key,
    );
    assert!(
        err.ends_with("create failed: HTTP 422: not json at all"),
        "{err}"
    );
}

#[tokio::test]
async fn kubernetes_local_problems_are_clear_errors() {
    let kube = Kube::start().await;
    let key = canary();
    std::fs::remove_file(kube.token_file()).unwrap();
    let err = checked(
        deliver(kube.target().as_ref(), &key).await.unwrap_err(),
        &key,
    );
    assert!(
        err.contains("reading token file") && err.contains("No such file"),
        "{err}"
    );

    // Nothing listens on port 1.
    let t = target(&format!(
        "kind = \"kubernetes\"\nnamespace = \"apps\"\nsecret_name = \"openai\"\nsecret_key = \"k\"\napi_server = \"http://127.0.0.1:1\"\ntoken_file = {}",
        toml_path(&kube.dir.path().join("t2"))
    ));
    std::fs::write(kube.dir.path().join("t2"), "tok").unwrap();
    let err = checked(deliver(t.as_ref(), &key).await.unwrap_err(), &key);
    assert!(
        err.starts_with("kubernetes secret apps/openai key k: patch: "),
        "{err}"
    );
}

#[tokio::test]
async fn kubernetes_over_https_needs_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "tok").unwrap();
    std::fs::write(dir.path().join("bad-ca.crt"), "not a certificate").unwrap();
    let key = canary();
    for (ca, expected) in [
        ("missing.crt", "reading CA file"),
        ("bad-ca.crt", "no PEM certificate found"),
    ] {
        let t = target(&format!(
            "kind = \"kubernetes\"\nnamespace = \"apps\"\nsecret_name = \"openai\"\nsecret_key = \"k\"\napi_server = \"https://127.0.0.1:1\"\ntoken_file = {}\nca_file = {}",
            toml_path(&dir.path().join("token")),
            toml_path(&dir.path().join(ca))
        ));
        let err = checked(deliver(t.as_ref(), &key).await.unwrap_err(), &key);
        assert!(err.contains(expected) && err.contains(ca), "{err}");
    }
}

// ---------------------------------------------------------------- kubernetes over https

/// Writes `right-ca.crt`, `wrong-ca.crt`, and `server.crt` + `server.key` for 127.0.0.1
/// signed by the right CA, made in process with rcgen (no external tool, so nothing to skip).
/// Both CAs have the same name, so only the signature tells them apart.
fn make_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca = || {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    let (right_ca, right_key) = ca();
    let (wrong_ca, _) = ca();
    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(Vec::<String>::new()).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    server.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let server_cert = server
        .signed_by(&server_key, &right_ca, &right_key)
        .unwrap();
    std::fs::write(dir.join("right-ca.crt"), right_ca.pem()).unwrap();
    std::fs::write(dir.join("wrong-ca.crt"), wrong_ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}

/// Serves HTTPS on 127.0.0.1 with `server.crt`; answers 200 and records request heads.
async fn tls_server(dir: &Path) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&std::fs::read(dir.join("server.crt")).unwrap())
            .collect::<Result<_, _>>()
            .unwrap();
    let key =
        PrivateKeyDer::from_pem_slice(&std::fs::read(dir.join("server.key")).unwrap()).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head and the body (Content-Length) of one request.
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            record.lock().unwrap().push(text[..end].to_string());
                            break;
                        }
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn kubernetes_over_https_trusts_exactly_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    std::fs::write(dir.path().join("token"), "tok").unwrap();
    let (url, seen) = tls_server(dir.path()).await;
    let key = canary();
    let kube = |ca: &str| {
        target(&format!(
            "kind = \"kubernetes\"\nnamespace = \"apps\"\nsecret_name = \"openai\"\nsecret_key = \"k\"\napi_server = \"{url}\"\ntoken_file = {}\nca_file = {}\ntimeout = \"5s\"",
            toml_path(&dir.path().join("token")),
            toml_path(&dir.path().join(ca))
        ))
    };
    deliver(kube("right-ca.crt").as_ref(), &key).await.unwrap();
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("PATCH /api/v1/namespaces/apps/secrets/openai HTTP/1.1"),
        "{heads:?}"
    );

    let err = checked(
        deliver(kube("wrong-ca.crt").as_ref(), &key)
            .await
            .unwrap_err(),
        &key,
    );
    assert!(
        err.contains("patch: ") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a request got through an untrusted connection"
    );
}
