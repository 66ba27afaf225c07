//! The PostgreSQL store from the command line: a start that cannot reach the database
//! says so and exits, `tern-server migrate`, and `tern-server import-sqlite` on a real
//! data directory (a server on SQLite that clients used, then the same server on
//! PostgreSQL: the clients carry on as if nothing happened). Runs when `TERN_TEST_PG`
//! is set (see `tern_server::store::postgres::testing`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::spawn_server_with;
use tern_server::store::postgres::testing;
use tern_testkit::client::{client_at, connected, texts};
use tern_testkit::until_within;

const BIN: &str = env!("CARGO_BIN_EXE_tern-server");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("TERN_STORE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_server_that_cannot_reach_its_database_says_so_and_exits() {
    if testing::base_url().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(&[
        "--dev",
        "--data",
        dir.path().to_str().unwrap(),
        "--quic",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--store",
        "postgres://tern:pw@127.0.0.1:1/tern?sslmode=disable",
    ]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach PostgreSQL at 127.0.0.1:1/tern as tern"),
        "{err}"
    );
    assert!(!err.contains("pw@"), "the password is not printed: {err}");
}

#[tokio::test]
async fn migrate_applies_the_schema_once() {
    let Some(url) = testing::scratch().await else {
        return;
    };
    let (ok, _, err) = run(&["migrate", "--store", &url]);
    assert!(ok, "{err}");
    let applied: usize = err
        .split(": ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(applied >= 1, "{err}");
    let (ok, _, err) = run(&["migrate", "--store", &url]);
    assert!(ok && err.contains(": 0 migration(s) applied"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_sqlite_moves_a_used_server_to_postgres_without_clients_noticing() {
    if tern_testkit::server::sqlite_only("the first server must run on SQLite") {
        return;
    }
    let Some(url) = testing::scratch().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut server = spawn_server_with(&data, "127.0.0.1:0", &[]);
    let addr = server.addr.to_string();
    let (alice, _) = client_at(
        &addr,
        &server.cert_pem,
        &dir.path().join("a"),
        "alice",
        "alice-phone",
        // An idle client learns of the restart at its next heartbeat: make that soon.
        tern_testkit::client::quick_heartbeats,
    );
    let (bob, _) = client_at(
        &addr,
        &server.cert_pem,
        &dir.path().join("b"),
        "bob",
        "bob-phone",
        tern_testkit::client::quick_heartbeats,
    );
    connected(&alice).await;
    connected(&bob).await;
    for i in 0..20 {
        alice.send_text("bob", &format!("m{i}")).unwrap();
    }
    until_within("bob has 20", Duration::from_secs(20), || {
        texts(&bob, "alice").len() == 20
    })
    .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let (ok, out, err) = run(&[
        "import-sqlite",
        "--data",
        data.to_str().unwrap(),
        "--store",
        &url,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["messages", "20"]),
        "{out}"
    );
    // The same server (address, certificate) now on PostgreSQL.
    // QUIC only: the dev server's TCP and WebSocket ports follow the QUIC port, and a
    // port freed a moment ago may be some other socket's by now.
    let mut server = spawn_server_with(
        &data,
        &addr,
        &["--store", &url, "--tcp", "off", "--ws", "off"],
    );
    alice.send_text("bob", "m20").unwrap();
    let expected: Vec<String> = (0..=20).map(|i| format!("m{i}")).collect();
    until_within("bob has 21", Duration::from_secs(30), || {
        texts(&bob, "alice").len() >= 21
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(texts(&bob, "alice"), expected, "once each, in order");
    assert_eq!(texts(&alice, "bob"), expected);
    alice.shutdown();
    bob.shutdown();
    let _ = server.child.kill();
}
