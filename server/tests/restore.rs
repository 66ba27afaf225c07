//! Backup and restore as docs/operations.md describes it, end to end (issue 18, attack
//! 3): back up a running server, chat on, stop it, `tern-server restore`, start it
//! again. Before, the sender's client looped on `UNIQUE constraint failed:
//! messages.server_msg_id` and the receiver silently got nothing new. Now the store
//! has a new generation, both clients rewind to the restore point, the sender's
//! messages the restored store lost are sent again, and every message shows exactly
//! once, in order, on both sides. Also: an empty or damaged database is refused at start.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tern_client::{ConversationKind, MessageStatus};
use tern_testkit::client::{client_at, connected, texts};
use tern_testkit::until_within;

const BIN: &str = env!("CARGO_BIN_EXE_tern-server");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run tern-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_server_brings_both_clients_back_without_loss_or_duplicates() {
    if tern_testkit::server::sqlite_only("it backs up and restores the SQLite file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let backup = dir.path().join("backup.db");
    let mut server = common::spawn_quic_only(&data, "127.0.0.1:0");
    let addr = server.addr.to_string();
    let pem = server.cert_pem.clone();
    let quick = tern_testkit::client::quick_heartbeats;
    let (alice, _) = client_at(
        &addr,
        &pem,
        &dir.path().join("a"),
        "alice",
        "a-phone",
        quick,
    );
    let (bob, _) = client_at(&addr, &pem, &dir.path().join("b"), "bob", "b-phone", quick);
    connected(&alice).await;
    connected(&bob).await;
    let stored = |c: &tern_client::Client, n: usize| {
        let m = c
            .messages(ConversationKind::Direct, "bob", None, 1000)
            .unwrap();
        m.len() == n && m.iter().all(|m| m.status != MessageStatus::Pending)
    };
    for i in 0..5 {
        alice.send_text("bob", &format!("before {i}")).unwrap();
    }
    until_within("the first five stored", Duration::from_secs(20), || {
        stored(&alice, 5) && texts(&bob, "alice").len() == 5
    })
    .await;

    let data_s = data.to_str().unwrap();
    let out = run(&[
        "backup",
        "--data",
        data_s,
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for i in 0..5 {
        alice.send_text("bob", &format!("after {i}")).unwrap();
    }
    until_within("five more stored", Duration::from_secs(20), || {
        stored(&alice, 10) && texts(&bob, "alice").len() == 10
    })
    .await;
    // Bob reads them all; the server takes the mark (which the backup does not hold).
    bob.mark_read(ConversationKind::Direct, "alice").unwrap();
    until_within("bob's read mark taken", Duration::from_secs(20), || {
        bob.unsent_read_marks().unwrap() == 0
    })
    .await;

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let out = run(&[
        "restore",
        "--data",
        data_s,
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut server = common::spawn_quic_only(&data, &addr);

    // A raw client sees the new generation and the restore point.
    let (_raw, r) = TestClient::login(
        server.addr,
        server.cert.clone(),
        "bob",
        "b-laptop",
        tern_protocol::pb::Platform::Desktop,
    )
    .await;
    assert_eq!(r.code, 0);
    assert!(r.store_generation != 0);
    assert!(
        r.restored_seq >= 5,
        "bob's head at the restore: {}",
        r.restored_seq
    );

    // Both clients come back by themselves; then the conversation goes on.
    connected(&alice).await;
    connected(&bob).await;
    until_within(
        "alice's lost messages stored again",
        Duration::from_secs(30),
        || stored(&alice, 10),
    )
    .await;
    for i in 0..3 {
        alice.send_text("bob", &format!("new {i}")).unwrap();
    }
    // Two senders have no order between them: Bob answers once he has Alice's three.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while texts(&bob, "alice").last().is_none_or(|t| t != "new 2") {
        if std::time::Instant::now() > deadline {
            let sent = alice
                .messages(ConversationKind::Direct, "bob", None, 100)
                .unwrap();
            panic!(
                "bob: {:?}\nalice: {:?}\nalice diag {:?} state {:?}\nbob diag {:?} state {:?}",
                texts(&bob, "alice"),
                sent.iter()
                    .map(|m| (m.text().unwrap_or("").to_owned(), m.status.clone(), m.seq))
                    .collect::<Vec<_>>(),
                alice.diagnostics(),
                alice.connection_state(),
                bob.diagnostics(),
                bob.connection_state()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bob.send_text("alice", "bob after the restore").unwrap();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("before {i}"))
        .chain((0..5).map(|i| format!("after {i}")))
        .chain((0..3).map(|i| format!("new {i}")))
        .chain(["bob after the restore".to_owned()])
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline
        && !(texts(&bob, "alice") == expected && texts(&alice, "bob") == expected)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(texts(&bob, "alice"), expected, "bob's view");
    assert_eq!(texts(&alice, "bob"), expected, "alice's view");
    // Bob's unread count went back with his timeline: the five he read that the
    // restored store kept stay read (his read mark at the restore point is sent again:
    // the restored store had lost it); the five it lost and got again, and the three
    // new ones, are unread. A new device of bob's counts the same from the server.
    let unread = |c: &tern_client::Client| {
        c.conversations()
            .unwrap()
            .iter()
            .find(|c| c.id == "alice")
            .map(|c| c.unread)
    };
    until_within("bob's unread count", Duration::from_secs(20), || {
        unread(&bob) == Some(8)
    })
    .await;
    let (tablet, _) = client_at(
        &addr,
        &pem,
        &dir.path().join("b2"),
        "bob",
        "b-tablet",
        quick,
    );
    connected(&tablet).await;
    until_within(
        "a new device's unread count",
        Duration::from_secs(20),
        || unread(&tablet) == Some(8),
    )
    .await;
    let sent = alice
        .messages(ConversationKind::Direct, "bob", None, 100)
        .unwrap();
    assert!(
        sent.iter().all(|m| !matches!(
            m.status,
            MessageStatus::Failed { .. } | MessageStatus::Pending
        )),
        "{:?}",
        sent.iter().map(|m| &m.status).collect::<Vec<_>>()
    );
    assert_eq!(alice.diagnostics().last_error, None);
    server.child.kill().unwrap();
}

#[test]
fn an_empty_or_damaged_database_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("tern.db");
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--dev",
            "--quic",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A refused start exits at once; a good one keeps running.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return Some((status, err));
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(&db, b"").unwrap();
    let (status, err) = start(&[]).expect("an empty database is refused");
    assert!(!status.success());
    assert!(err.contains("empty"), "{err}");
    assert!(
        start(&["--create-store"]).is_none(),
        "told to create: it starts"
    );

    // A damaged file: the header of a database, then garbage.
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend(std::iter::repeat_n(0xA5u8, 8192));
    std::fs::write(&db, &bytes).unwrap();
    let _ = std::fs::remove_file(data.join("tern.db-wal"));
    let _ = std::fs::remove_file(data.join("tern.db-shm"));
    let (status, err) = start(&[]).expect("a damaged database is refused");
    assert!(!status.success());
    assert!(
        err.contains("integrity") || err.contains("not a readable database"),
        "{err}"
    );
}
