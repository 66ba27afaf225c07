//! The `tern-server` command line: `config check` on the example file and on a bad one.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tern-server");

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_masked() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/tern.example.toml");
    let out = Command::new(BIN)
        .args(["--config", example, "config", "check"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("quic") && text.contains("0.0.0.0:7443"),
        "{text}"
    );
    assert!(text.contains("max_sessions_per_user      = 16"), "{text}");
    assert!(!text.contains("change-me"), "a secret was printed:\n{text}");
    assert!(
        text.contains("token_secret               = (set, "),
        "{text}"
    );
}

#[test]
fn config_check_refuses_an_invalid_configuration_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "dev = true\nmax_body_bytes = 999999\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", file.to_str().unwrap(), "config", "check"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_body_bytes must be at most"), "{err}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef tern-server"),
        ("fish", "complete -c tern-server"),
    ] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(
            text.contains("import-sqlite"),
            "{shell}: subcommands are completed"
        );
    }
}
