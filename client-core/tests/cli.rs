//! The `tern` command line against a real server, as separate processes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_server::config::DEV_TOKEN_SECRET;

fn tern(server: &tern_server::server::ServerHandle, data: &std::path::Path, user: &str) -> Command {
    let token = tern_server::auth::mint(DEV_TOKEN_SECRET.as_bytes(), user, None, 3600);
    tern_with_token(server, data, user, &token)
}

fn tern_with_token(
    server: &tern_server::server::ServerHandle,
    data: &std::path::Path,
    user: &str,
    token: &str,
) -> Command {
    tern_at(&server.quic_addr.to_string(), server, data, user, token)
}

/// `tern` logged in as `user`, with QUIC pointed at `quic` (trusting `server`'s
/// certificate).
fn tern_at(
    quic: &str,
    server: &tern_server::server::ServerHandle,
    data: &std::path::Path,
    user: &str,
    token: &str,
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    c.arg("--server")
        .arg(quic)
        .arg("--ca")
        .arg(&server.cert_path)
        .arg("--data")
        .arg(data)
        .arg("--user")
        .arg(user)
        .arg("--token")
        .arg(token)
        .env("RUST_LOG", "error");
    c
}

async fn start() -> (tern_server::server::ServerHandle, tempfile::TempDir) {
    start_with_budget(10_000, 10_000).await
}

/// A server that gives each device a send budget of `burst`, then `rate` a second.
async fn start_with_budget(
    rate: u32,
    burst: u32,
) -> (tern_server::server::ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tern_testkit::server::dev_config(dir.path());
    config.rate_per_sec = rate;
    config.rate_burst = burst;
    (tern_server::server::start(config).await.unwrap(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_listen_print_what_the_readme_promises() {
    let (server, _sdir) = start().await;
    let data = tempfile::tempdir().unwrap();
    let listener = tern(&server, data.path(), "bob")
        .args(["listen", "--count", "3", "--timeout", "30", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tern(&server, data.path(), "alice")
        .args(["send", "--to", "bob", "--text", "hi", "--count", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("sent hi ") && l.contains("server_id="))
            .count(),
        3,
        "{stdout}"
    );

    let out = listener.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, m) in lines.iter().enumerate() {
        assert_eq!(m["text"], format!("hi {}", i + 1));
        assert_eq!(m["from"], "alice");
        assert_eq!(m["to"], "bob");
        assert_eq!(m["seq"], i as u64 + 1);
        assert!(m["id"].as_u64().unwrap() > 0 && m["sent_at"].as_u64().unwrap() > 0);
        assert_eq!(m["client_id"].as_str().unwrap().len(), 32);
    }

    let out = tern(&server, data.path(), "bob")
        .args(["history", "--with", "alice", "--json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 3);
    let out = tern(&server, data.path(), "bob")
        .args(["conversations", "--json"])
        .output()
        .unwrap();
    let conv: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(
        (conv["id"].as_str(), conv["unread"].as_u64()),
        (Some("alice"), Some(3))
    );

    let out = tern(&server, data.path(), "bob")
        .args(["listen", "--count", "1", "--timeout", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "listen exits non-zero on timeout");
    // The stream uplink, chosen on the command line, sends as well (in order).
    let out = tern(&server, data.path(), "alice")
        .args([
            "send", "--uplink", "stream", "--to", "bob", "--text", "s", "--count", "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tern(&server, data.path(), "bob")
        .args(["history", "--with", "alice", "--json"])
        .output()
        .unwrap();
    let texts: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].to_string())
        .collect();
    assert_eq!(texts.len(), 5, "{texts:?}");
    let out = tern_with_token(&server, data.path(), "carol", "forged")
        .args(["send", "--to", "bob", "--text", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad token is an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("BAD_TOKEN"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_with_sigkill_resends_its_outbox_without_duplicates() {
    // 50 sends at once, then 200 a second: the kill always leaves most of the 300 in the
    // outbox (with an unlimited budget a fast run settled all of them before the kill).
    let (server, _sdir) = start_with_budget(200, 50).await;
    let data = tempfile::tempdir().unwrap();
    let mut sender = tern(&server, data.path(), "alice")
        .args(["send", "--to", "bob", "--text", "x", "--count", "300"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sender.stdout.take().unwrap()).lines();
    for _ in 0..20 {
        lines.next().unwrap().unwrap();
    }
    sender.kill().unwrap(); // SIGKILL mid-stream
    sender.wait().unwrap();
    let left = tern_client::store::Db::open(data.path(), "alice")
        .unwrap()
        .outbox(1000)
        .unwrap()
        .len();
    assert!(left > 0, "the kill left messages in the outbox");

    let out = tern(&server, data.path(), "alice")
        .args(["send", "--to", "bob", "--text", "x", "--count", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = tern(&server, data.path(), "bob")
        .args(["listen", "--count", "300", "--timeout", "30", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let texts: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected: Vec<String> = (1..=300).map(|i| format!("x {i}")).collect();
    assert_eq!(
        texts, expected,
        "all 300, once, in order ({left} were left in the outbox by the kill)"
    );
    // Nothing more arrives: no duplicate is waiting.
    let out = tern(&server, data.path(), "bob")
        .args(["listen", "--count", "1", "--timeout", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    tokio::time::sleep(Duration::from_millis(10)).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_read_marks_and_recall_from_the_command_line() {
    let (server, _sdir) = start().await;
    let data = tempfile::tempdir().unwrap();
    let run = |user: &str, args: &[&str]| -> Result<String, String> {
        let out = tern(&server, data.path(), user)
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let json_lines = |s: String| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let created = run(
        "alice",
        &[
            "group",
            "create",
            "--name",
            "cli crew",
            "--members",
            "bob,carol",
        ],
    )
    .unwrap();
    assert!(created.contains("3 members: alice,bob,carol"), "{created}");
    let gid = created.split_whitespace().next().unwrap().to_owned();
    run(
        "alice",
        &["send", "--group", "--to", &gid, "--text", "hello crew"],
    )
    .unwrap();
    let history =
        json_lines(run("bob", &["history", "--group", "--with", &gid, "--json"]).unwrap());
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0]["text"].as_str(), history[0]["from"].as_str()),
        (Some("hello crew"), Some("alice"))
    );
    let read = run("bob", &["read", "--group", "--with", &gid]).unwrap();
    assert!(read.contains("total unread now 0"), "{read}");
    assert!(run("carol", &["group", "list"]).unwrap().contains(&gid));
    let large = run(
        "carol",
        &[
            "group",
            "create",
            "--large",
            "--name",
            "all",
            "--members",
            "alice",
        ],
    )
    .unwrap();
    assert!(large.contains("2 members (large)"), "{large}");
    let refused = run(
        "bob",
        &["group", "remove", "--group", &gid, "--members", "carol"],
    )
    .unwrap_err();
    assert!(refused.contains("NOT_ALLOWED"), "{refused}");

    run("alice", &["send", "--to", "bob", "--text", "oops"]).unwrap();
    let mine = json_lines(run("alice", &["history", "--with", "bob", "--json"]).unwrap());
    let id = mine[0]["local_id"].as_i64().unwrap().to_string();
    assert!(
        run("alice", &["recall", "--id", &id])
            .unwrap()
            .contains("recalled")
    );
    let theirs = json_lines(run("bob", &["history", "--with", "alice", "--json"]).unwrap());
    assert_eq!(theirs[0]["recalled"], true, "{theirs:?}");
    assert_eq!(theirs[0]["text"], "");
}

/// `tern chat` on a network that blocks UDP: QUIC goes to a socket that answers
/// nothing, the CLI falls back to TLS over TCP by itself, and the chat works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_chat_works_with_udp_blocked() {
    use std::io::Write;
    let (server, _sdir) = start().await;
    let data = tempfile::tempdir().unwrap();
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listener = tern(&server, data.path(), "bob")
        .args(["listen", "--count", "1", "--timeout", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let token = tern_server::auth::mint(DEV_TOKEN_SECRET.as_bytes(), "alice", None, 3600);
    let quic = black_hole.local_addr().unwrap().to_string();
    let mut chat = tern_at(&quic, &server, data.path(), "alice", &token)
        .arg("--tcp-server")
        .arg(server.tcp_addr.unwrap().to_string())
        .args(["chat", "--with", "bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    stdin.write_all(b"hello with udp blocked\n").unwrap();
    let out = tokio::task::spawn_blocking(move || listener.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hello with udp blocked"), "{text}");
    stdin.write_all(b"/quit\n").unwrap();
    let status = tokio::task::spawn_blocking(move || chat.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

/// `tern completions SHELL` prints a completion script without logging in.
#[test]
fn completions_need_no_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["completions", "zsh"])
        .env("TERN_SERVER", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("#compdef tern"), "{text}");
    assert!(text.contains("conversations"), "subcommands are completed");
}

/// `tern doctor`: every check passes against a dev server; an expired token, a
/// certificate nobody vouches for and a closed port each fail with their fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_what_is_wrong_and_the_fix() {
    let (server, _sdir) = start().await;
    let data = tempfile::tempdir().unwrap();
    let run = |mut c: Command| {
        let out = c.arg("doctor").output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The dev server's TLS-over-TCP port differs from its QUIC port here (both are
    // ephemeral); in a deployment they are the same number.
    let tcp = server.tcp_addr.unwrap().to_string();
    let with_tcp = |mut c: Command| {
        c.args(["--tcp-server", &tcp]);
        c
    };
    let (ok, text) = run(with_tcp(tern(&server, data.path(), "alice")));
    assert!(ok, "{text}");
    for line in [
        "✓ address",
        "✓ token",
        "✓ QUIC (UDP)",
        "✓ TLS over TCP",
        "✓ certificate",
        "✓ login",
        "✓ clock",
        "✓ session",
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
    assert!(
        text.contains("connected over quic; heartbeat every"),
        "{text}"
    );

    let expired = tern_server::auth::mint_claims(
        DEV_TOKEN_SECRET.as_bytes(),
        &tern_server::auth::Claims {
            sub: "alice".into(),
            exp: tern_protocol::unix_ms() / 1000 - 7200,
            dev: None,
            plat: None,
        },
    );
    let (ok, text) = run(with_tcp(tern_with_token(
        &server,
        data.path(),
        "alice",
        &expired,
    )));
    assert!(!ok);
    assert!(
        text.contains("✗ token") && text.contains("expired 2 h ago"),
        "{text}"
    );
    assert!(
        text.contains("✗ login") && text.contains("TOKEN_EXPIRED"),
        "{text}"
    );
    assert!(
        text.contains("fix: get a new token from your backend"),
        "{text}"
    );

    // No --ca: the dev certificate is not from a public CA.
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    c.args([
        "--server",
        &server.quic_addr.to_string(),
        "--user",
        "alice",
        "--token",
    ])
    .arg(tern_server::auth::mint(
        DEV_TOKEN_SECRET.as_bytes(),
        "alice",
        None,
        3600,
    ))
    .arg("--data")
    .arg(data.path())
    .current_dir(data.path())
    .env("RUST_LOG", "error");
    let (ok, text) = run(c);
    assert!(!ok);
    assert!(
        text.contains("✗ certificate") && text.contains("--ca PEM"),
        "{text}"
    );

    // Nothing listening.
    let (ok, text) = run(tern_at(
        "127.0.0.1:1",
        &server,
        data.path(),
        "alice",
        &expired,
    ));
    assert!(!ok);
    assert!(
        text.contains("✗ QUIC (UDP)") && text.contains("UDP to 127.0.0.1:1 is blocked"),
        "{text}"
    );
}
