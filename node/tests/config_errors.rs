//! Bad flags and bad config files: a clear message and a non-zero exit, before anything binds.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(mysocket_testkit::mysocketd()).args(args).env_remove("MYSOCKET_CONFIG").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A valid start of a command line (data dir `d`, secret file `s`) and then `extra`, which
/// is what is wrong with it.
fn with_base<'a>(d: &'a str, s: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--id", "1", "--data-dir", d, "--cluster-secret-file", s, "--initial-cluster", "1=127.0.0.1:7071"];
    v.extend_from_slice(extra);
    v
}

#[test]
fn bad_flags_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123").unwrap();
    let data = dir.path().join("data");
    let (s, d) = (secret.to_str().unwrap(), data.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--cluster-secret-file", s, "--initial-cluster", "1=127.0.0.1:7071"], "--id is required"),
        (vec!["--id", "0", "--cluster-secret-file", s], "positive integer"),
        (vec!["--id", "1", "--data-dir", d, "--cluster-secret-file", s], "--initial-cluster"),
        (vec!["--id", "1", "--data-dir", d, "--cluster-secret-file", s, "--initial-cluster", "1=nohost"], "HOST:PORT"),
        (
            vec!["--id", "2", "--data-dir", d, "--cluster-secret-file", s, "--initial-cluster", "1=127.0.0.1:7071"],
            "does not include",
        ),
        (vec!["--id", "1", "--data-dir", d, "--initial-cluster", "1=127.0.0.1:7071"], "cluster credential"),
        (
            vec!["--id", "1", "--data-dir", d, "--cluster-secret", "short", "--initial-cluster", "1=127.0.0.1:7071"],
            "at least 16",
        ),
        (
            vec![
                "--id",
                "1",
                "--data-dir",
                d,
                "--cluster-secret-file",
                "/nonexistent/secret",
                "--initial-cluster",
                "1=127.0.0.1:7071",
            ],
            "cannot read",
        ),
        (with_base(d, s, &["--tcp-ports", "9-3"]), "MIN-MAX"),
        (with_base(d, s, &["--acme-email", "ops@example.com"]), "need --acme-directory"),
        (with_base(d, s, &["--acme-directory", "acme.example.com/dir", "--acme-email", "a@b.c"]), "not an http(s) URL"),
        (with_base(d, s, &["--acme-directory", "https://acme.example.com/dir"]), "needs --acme-email"),
        (
            with_base(
                d,
                s,
                &["--acme-directory", "https://acme.example.com/dir", "--acme-email", "a@b.c", "--acme-ca-root", s],
            ),
            "holds no PEM certificate",
        ),
        (with_base(d, s, &["--dns-rate-limit", "10"]), "--dns-rate-limit needs --dns-listen"),
        (with_base(d, s, &["--dns-listen", "127.0.0.1:5353", "--dns-rate-limit", "0"]), "at least 1 query"),
        (with_base(d, s, &["--public-ip", "0.0.0.0"]), "not an address visitors can reach"),
        (with_base(d, s, &["--public-ip", "example.com"]), "invalid"),
        (with_base(d, s, &["--oidc-client-id", "edge"]), "need --oidc-issuer"),
        (with_base(d, s, &["--oidc-issuer", "idp.example.com", "--oidc-client-id", "e"]), "not an http(s) URL"),
        (with_base(d, s, &["--oidc-issuer", "https://idp.example.com"]), "needs --oidc-client-id"),
        (
            with_base(d, s, &["--oidc-issuer", "https://idp.example.com", "--oidc-client-id", "e"]),
            "needs --oidc-client-secret-file",
        ),
        (
            with_base(
                d,
                s,
                &[
                    "--oidc-issuer",
                    "https://i.example",
                    "--oidc-client-id",
                    "e",
                    "--oidc-client-secret-file",
                    "/nonexistent",
                ],
            ),
            "cannot read the OIDC client secret file",
        ),
        (
            with_base(
                d,
                s,
                &[
                    "--oidc-issuer",
                    "https://i.example",
                    "--oidc-client-id",
                    "e",
                    "--oidc-client-secret-file",
                    s,
                    "--oidc-session-secs",
                    "0",
                ],
            ),
            "--oidc-session-secs must be between",
        ),
        (with_base(d, s, &["--tls-cert", s, "--tls-key", s]), "no certificate in the PEM file"),
        (with_base(d, s, &["--tls-cert", s]), "both --tls-cert and --tls-key"),
        (with_base(d, s, &["--join", "127.0.0.2:7071"]), "not both"),
        (
            vec!["--id", "1", "--data-dir", d, "--cluster-secret-file", s, "--join", "http://127.0.0.2:7070"],
            "internal (raft) address",
        ),
        (with_base(d, s, &["--operator-token-file", s]), "must differ"),
        (with_base(d, s, &["--signup", "sometimes"]), "--signup"),
        (with_base(d, s, &["--max-accounts", "0"]), "--max-accounts"),
        (with_base(d, s, &["--login-rate", "0"]), "must be positive"),
        (with_base(d, s, &["--max-connections-per-source", "0"]), "--max-connections-per-source"),
        (with_base(d, s, &["--idle-timeout-secs", "0"]), "--idle-timeout-secs"),
        (with_base(d, s, &["--stall-timeout-secs", "0"]), "--stall-timeout-secs"),
        (with_base(d, s, &["--api-tls-cert", s]), "both --api-tls-cert and --api-tls-key"),
        (with_base(d, s, &["--api-tls-cert", s, "--api-tls-key", s]), "no certificate in the PEM file"),
        (with_base(d, s, &["--host", "nope"]), "not an IP"),
        (with_base(d, s, &["--internal-tls-cert", s]), "internal TLS needs"),
        (vec!["--id", "x"], "invalid value"),
        (vec!["--no-such-flag"], "unexpected argument"),
    ];
    for (args, want) in cases {
        let (code, err) = run(&args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: stderr {err:?} should mention {want:?}");
    }
    assert!(!data.exists(), "nothing is created when the configuration is refused");
}

#[test]
fn bad_config_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cases = [
        (write("syntax.toml", "id = [unclosed"), "config file"),
        (write("unknown.toml", "id = 1\nno_such_setting = true\n"), "unknown field"),
        (write("type.toml", "id = \"one\"\n"), "invalid type"),
    ];
    for (path, want) in cases {
        let (code, err) = run(&["--config", &path]);
        assert_ne!(code, 0);
        assert!(err.contains(want), "{path}: stderr {err:?} should mention {want:?}");
    }
    let (code, err) = run(&["--config", "/nonexistent.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn a_good_config_file_is_used_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("node.toml");
    std::fs::write(&p, "id = 1\ncluster_secret = \"0123456789abcdef0123\"\ninitial_cluster = \"1=127.0.0.1:7071\"\ntcp_ports = \"5-1\"\n").unwrap();
    // The file's bad port range is reported: the file was read.
    let (code, err) = run(&["--config", p.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("MIN-MAX"), "{err}");
}
