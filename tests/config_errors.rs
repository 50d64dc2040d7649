//! Bad configs are refused with exit status 78 and `FILE:LINE:COL: message` on stderr,
//! pointing at the offending text; all semantic problems are reported in one pass.

mod common;

use common::*;
use std::path::Path;

const PROVIDER_OR: &str = "[[provider]]\nname = \"or\"\nkind = \"openrouter\"\n";

/// (what, config text, line, column, a word the message must contain)
fn cases() -> Vec<(&'static str, String, usize, usize, &'static str)> {
    let with_provider = |rest: &str| format!("{PROVIDER_OR}{rest}");
    vec![
        (
            "TOML syntax error",
            "[daemon\nlisten_address = \"127.0.0.1:0\"\n".into(),
            1,
            8,
            "unclosed table",
        ),
        (
            "unknown top-level field",
            "[daemon]\nlisten_address = \"127.0.0.1:0\"\n\n[deamon]\nx = 1\n".into(),
            4,
            2,
            "unknown field `deamon`",
        ),
        (
            "unknown field in [daemon]",
            "[daemon]\nlisten_adress = \"127.0.0.1:0\"\n".into(),
            2,
            1,
            "unknown field `listen_adress`",
        ),
        (
            "wrong type",
            "[checks]\nmax_concurrent = \"x\"\n".into(),
            2,
            18,
            "invalid type",
        ),
        (
            "bad duration",
            "[checks]\ninterval = \"5 minutes\"\n".into(),
            2,
            12,
            "invalid duration \"5 minutes\"",
        ),
        (
            "bad provider_expiry_margin",
            with_provider(
                "\n[[credential]]\nname = \"a\"\nprovider = \"or\"\n[credential.rotation]\nprovider_expiry_margin = \"never\"\n",
            ),
            9,
            26,
            "or \"off\"",
        ),
        (
            "bad verify_timeout",
            with_provider(
                "\n[[credential]]\nname = \"a\"\nprovider = \"or\"\n[credential.rotation]\nverify_timeout = \"30\"\n",
            ),
            9,
            18,
            "invalid duration \"30\"",
        ),
        (
            "verify_timeout too long",
            with_provider(
                "\n[[credential]]\nname = \"a\"\nprovider = \"or\"\n[credential.rotation]\nverify_timeout = \"1h\"\n",
            ),
            9,
            18,
            "must be at most 10m",
        ),
        (
            "bad listen_address",
            "[daemon]\nlisten_address = \"localhost\"\n".into(),
            2,
            18,
            "listen_address",
        ),
        (
            "undefined provider",
            with_provider("\n[[credential]]\nname = \"a\"\nprovider = \"nope\"\n"),
            7,
            12,
            "undefined provider \"nope\"",
        ),
        (
            "duplicate credential names",
            with_provider(
                "\n[[credential]]\nname = \"a\"\nprovider = \"or\"\n\n[[credential]]\nname = \"a\"\nprovider = \"or\"\n",
            ),
            10,
            8,
            "duplicate credential name \"a\"",
        ),
        (
            "duplicate provider names",
            with_provider("\n[[provider]]\nname = \"or\"\nkind = \"openai\"\n"),
            6,
            8,
            "duplicate provider name \"or\"",
        ),
        (
            "bad cron",
            with_provider(
                "\n[[credential]]\nname = \"a\"\nprovider = \"or\"\nrotation = { schedule = \"61 * * * *\" }\n",
            ),
            8,
            25,
            "cron",
        ),
        (
            "cron with the wrong number of fields",
            with_provider(
                "\n[[credential]]\nname = \"a\"\nprovider = \"or\"\n[credential.rotation]\nschedule = \"* * *\"\n",
            ),
            9,
            12,
            "fields",
        ),
        (
            "grace longer than max_age",
            with_provider(
                "\n[[credential]]\nname = \"a\"\nprovider = \"or\"\n[credential.rotation]\nmax_age = \"1d\"\ngrace = \"2d\"\n",
            ),
            10,
            9,
            "longer than `max_age`",
        ),
        (
            "min_age longer than max_age (a policy that never settles)",
            with_provider(
                "\n[[credential]]\nname = \"a\"\nprovider = \"or\"\n[credential.rotation]\nmax_age = \"1h\"\nmin_age = \"2h\"\n",
            ),
            10,
            11,
            "`min_age` (2h) is longer than `max_age` (1h)",
        ),
        (
            "rotate_before_expiry not shorter than the issued keys' lifetime",
            "[[provider]]\nname = \"r\"\nkind = \"relay\"\nbase_url = \"https://relay.example/v1\"\nrotation_policy = \"1d\"\n\n[[credential]]\nname = \"a\"\nprovider = \"r\"\n[credential.rotation]\nrotate_before_expiry = \"2d\"\n"
                .into(),
            11,
            24,
            "every new key would be due at once",
        ),
        (
            "unknown provider kind",
            "[[provider]]\nname = \"x\"\nkind = \"foo\"\n".into(),
            3,
            8,
            "unknown variant `foo`",
        ),
        (
            "invalid credential name",
            with_provider("\n[[credential]]\nname = \"a b\"\nprovider = \"or\"\n"),
            6,
            8,
            "credential name \"a b\"",
        ),
        (
            "management_key with two sources",
            "[[provider]]\nname = \"or\"\nkind = \"openrouter\"\nmanagement_key = { file = \"/x\", env = \"X\" }\n"
                .into(),
            4,
            18,
            "exactly one of",
        ),
        (
            "base_url without a scheme",
            "[[provider]]\nname = \"r\"\nkind = \"relay\"\nbase_url = \"relay.example\"\n".into(),
            4,
            12,
            "base_url",
        ),
        (
            "base_url that is not a URL",
            "[[provider]]\nname = \"r\"\nkind = \"relay\"\nbase_url = \"https://relay example:99999\"\n"
                .into(),
            4,
            12,
            "not a valid URL",
        ),
        (
            "max_concurrent zero",
            "[checks]\nmax_concurrent = 0\n".into(),
            2,
            18,
            "max_concurrent",
        ),
        (
            "jitter out of range",
            "[checks]\njitter = 1.5\n".into(),
            2,
            10,
            "jitter",
        ),
    ]
}

fn check_config(path: &Path) -> std::process::Output {
    run_command(
        bare_command().arg("check-config").arg("--config").arg(path),
        "",
    )
}

#[test]
fn malformed_configs_are_rejected_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (what, text, line, column, word)) in cases().into_iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let out = check_config(&path);
        let err = stderr(&out);
        let position = format!("{}:{line}:{column}:", path.display());
        if out.status.code() != Some(78) || !err.contains(&position) || !err.contains(word) {
            failures.push(format!(
                "{what}: expected exit 78 and {position:?} with {word:?}; got {:?}:\n{err}",
                out.status.code()
            ));
        }
    }
    assert!(cases().len() >= 12);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_semantic_errors_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.toml");
    let text = format!(
        "{PROVIDER_OR}\n[[credential]]\nname = \"a b\"\nprovider = \"or\"\n\n[[credential]]\nname = \"c\"\nprovider = \"nope\"\n\n[[credential]]\nname = \"d\"\nprovider = \"or\"\nrotation = {{ max_age = \"1d\", grace = \"2d\" }}\n"
    );
    std::fs::write(&path, text).unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    let file = path.display();
    for expected in [
        format!("{file}:6:8: credential name \"a b\""),
        format!("{file}:11:12: credential \"c\" refers to undefined provider"),
        format!("{file}:16:38: `grace` (2d) is longer"),
    ] {
        assert!(err.contains(&expected), "no {expected:?} in:\n{err}");
    }
    assert_eq!(err.matches(&format!("{file}:")).count(), 3, "{err}");
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("absent.toml"), "{}", stderr(&out));
}

#[test]
fn the_example_config_passes() {
    // Part of the repository: a missing file is a failure, not a skip.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    assert!(example.is_file(), "{} is missing", example.display());
    let out = check_config(&example);
    assert_success(&out, "check-config config.example.toml");
}

#[test]
fn run_with_a_bad_config_exits_78_without_binding() {
    let env = Env::new();
    std::fs::write(
        &env.config,
        "[daemon]\nlisten_address = \"127.0.0.1:0\"\nlisten_adress = \"x\"\n",
    )
    .unwrap();
    let out = env.run(&["run"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    let position = format!("{}:3:1:", env.config.display());
    assert!(stderr(&out).contains(&position), "{}", stderr(&out));
    assert!(!stderr(&out).contains("keyrotd ready"));
    assert!(
        env.database_files().is_empty(),
        "a bad config must not create the database"
    );
}

#[test]
fn providers_that_cannot_revoke_are_warned_about_but_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let mgmt = dir.path().join("mgmt.key");
    std::fs::write(&mgmt, "mgmt-test-value\n").unwrap();
    let text = format!("[[provider]]\nname = \"relay\"\nkind = \"relay\"\nbase_url = \"https://relay.example.com/v1\"\nmanagement_key = {{ file = {mgmt:?} }}\n\n\
        [[provider]]\nname = \"or\"\nkind = \"openrouter\"\nmanagement_key = {{ file = {mgmt:?} }}\n\n\
        [[provider]]\nname = \"unused\"\nkind = \"deepseek\"\n\n\
        [[credential]]\nname = \"via-relay\"\nprovider = \"relay\"\n\n\
        [[credential]]\nname = \"via-or\"\nprovider = \"or\"\n");
    std::fs::write(&path, text).unwrap();
    let out = check_config(&path);
    assert_success(&out, "check-config with a relay provider");
    let err = stderr(&out);
    assert!(
        err.contains("warning: provider \"relay\" (relay) has no revocation API")
            && err.contains("stay live at the provider"),
        "no warning about the relay provider in:\n{err}"
    );
    assert!(!err.contains("provider \"or\""), "{err}");
    // A provider no credential uses retires nothing.
    assert!(!err.contains("provider \"unused\""), "{err}");
}
