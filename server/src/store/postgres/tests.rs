//! PostgreSQL-specific tests: the behaviour suite on this backend, several writers at
//! once on one database, migrations, and the SQLite import.

use std::sync::Arc;

use super::*;

async fn open(url: &str, writers: usize) -> PgStore {
    let mut settings = PgSettings::new(url);
    settings.writers = writers;
    PgStore::open(&settings)
        .await
        .expect("open PostgreSQL store")
}

crate::store::suite::store_suite!(|| async {
    let url = testing::scratch().await?;
    let store: Arc<dyn Store> = Arc::new(open(&url, 2).await);
    Some(((), store))
});

use std::collections::HashMap;
use std::str::FromStr;

use tern_protocol::{ClientMsgId, pb};

use crate::store::suite::msg;
use crate::store::{GroupLimits, GroupOp, NewMessage};

const LIMITS: GroupLimits = GroupLimits {
    members: 100,
    large_members: 1000,
};

/// Every entry of `user`'s timeline, paging through it.
async fn whole_timeline(store: &dyn Store, user: &str) -> (Vec<pb::TimelineEntry>, u64) {
    let mut entries = vec![];
    let mut after = 0;
    loop {
        let page = store.timeline(user, after, 0, 500).await.unwrap();
        after = page.entries.last().map_or(after, |e| e.seq);
        entries.extend(page.entries);
        if !page.more {
            return (entries, page.head_seq);
        }
    }
}

fn message_of(e: &pb::TimelineEntry) -> Option<&pb::StoredMessage> {
    match &e.body {
        Some(pb::timeline_entry::Body::Message(m)) => Some(m),
        _ => None,
    }
}

/// Three "servers" (stores on one database) with three writer lanes each; eight users
/// send direct and group messages at once, from their own server, while the receivers
/// acknowledge and mark read (receipts go to the senders' timelines: locks taken in
/// every order a real load takes them). Afterwards every timeline is contiguous from 1,
/// every message is stored once and sits once in each timeline it belongs to, and each
/// receiver has each sender's messages in the sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_every_timeline_contiguous_and_every_message_once() {
    let Some(url) = testing::scratch().await else {
        return;
    };
    let mut stores = vec![];
    for _ in 0..3 {
        stores.push(Arc::new(open(&url, 3).await));
    }
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    let group = stores[0]
        .group_op(
            GroupOp::Create {
                id: "g".into(),
                name: "g".into(),
                owner: users[0].clone(),
                members: users[1..6].to_vec(),
                large: false,
            },
            LIMITS,
        )
        .await
        .unwrap()
        .info;
    const PER_USER: u64 = 60;
    let mut tasks = vec![];
    for (i, user) in users.iter().enumerate() {
        let store = stores[i % stores.len()].clone();
        let users = users.clone();
        let group = group.clone();
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending = vec![];
            for n in 1..=PER_USER {
                let in_group = group.members.contains(&user) && n % 4 == 0;
                let to = if in_group {
                    "g".to_owned()
                } else {
                    users[(i + 1 + n as usize % 7) % users.len()].clone()
                };
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&n.to_be_bytes());
                id[8] = i as u8;
                let m = NewMessage {
                    client_msg_id: ClientMsgId(id),
                    body: bytes::Bytes::from(format!("{user} {n}")),
                    kind: if in_group {
                        pb::ConversationKind::Group
                    } else {
                        pb::ConversationKind::Direct
                    },
                    device: "phone".into(),
                    send_seq: n,
                    ..msg(&user, &to, 0)
                };
                // Pipelined like a session: queued in order, awaited later.
                pending.push(store.store_message(m));
                if n % 10 == 0 {
                    for p in pending.drain(..) {
                        p.await.expect("stored");
                    }
                    let head = store.head_seq(&user).await.unwrap();
                    store.ack_delivered(&user, "phone", head).await.unwrap();
                    let from = &users[(i + 3) % users.len()];
                    store
                        .mark_read(&user, pb::ConversationKind::Direct, from, head, 100)
                        .await
                        .unwrap();
                }
            }
            for p in pending {
                p.await.expect("stored");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let store: &dyn Store = &*stores[1];
    let mut seen: HashMap<u64, Vec<String>> = HashMap::new();
    for user in &users {
        let (entries, head) = whole_timeline(store, user).await;
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=head).collect::<Vec<_>>(),
            "{user}'s timeline is contiguous"
        );
        let mut last_from: HashMap<String, u64> = HashMap::new();
        for m in entries.iter().filter_map(message_of) {
            seen.entry(m.server_msg_id).or_default().push(user.clone());
            let text = String::from_utf8(m.body.to_vec()).unwrap();
            let (from, n) = text.split_once(' ').unwrap();
            let n: u64 = n.parse().unwrap();
            let last = last_from.entry(from.to_owned()).or_default();
            assert!(n > *last, "{user} has {from}'s {n} after {last}");
            *last = n;
        }
    }
    let sent = users.len() as u64 * PER_USER;
    let c = stores[0].conn().await.unwrap();
    let stored: i64 = c
        .query_one("SELECT COUNT(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as u64, sent, "every message stored once");
    let conflicts: u64 = stores.iter().map(|s| s.conflicts()).sum();
    assert_eq!(
        conflicts, 0,
        "locks taken in one order: no deadlock to run again"
    );
    let batched: u64 = stores.iter().map(|s| s.batched()).sum();
    assert!(
        batched > 0,
        "pipelined sends and ACKs were written in batches"
    );
    println!("{batched} of the writes went in batches");
    assert_eq!(seen.len() as u64, sent, "every message is in timelines");
    for (id, holders) in &seen {
        let mut unique = holders.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            holders.len(),
            "message {id} once per timeline"
        );
    }
}

/// Two servers starting at once on a new database apply each migration once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_once() {
    let Some(url) = testing::scratch().await else {
        return;
    };
    let (a, b) = tokio::join!(open(&url, 1), open(&url, 1));
    assert_eq!(a.generation(), b.generation());
    let c = a.conn().await.unwrap();
    let rows: i64 = c
        .query_one("SELECT COUNT(*) FROM tern_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, schema::MIGRATIONS.len());
}

/// A start that cannot work says why: nothing listening, wrong password, a schema
/// from a newer server.
#[tokio::test]
async fn a_start_that_cannot_work_says_why() {
    let Some(url) = testing::scratch().await else {
        return;
    };
    let unreachable = PgStore::open(&PgSettings::new(
        "postgres://tern:tern@127.0.0.1:1/tern?sslmode=disable",
    ))
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&unreachable, StoreError::Unavailable(m) if m.contains("cannot reach PostgreSQL at 127.0.0.1:1/tern")),
        "{unreachable}"
    );
    let wrong = match url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
    {
        Some((creds, host)) => {
            let user = creds.split(':').next().unwrap();
            format!("postgres://{user}:wrong-password@{host}")
        }
        None => panic!("TERN_TEST_PG has no credentials: {url}"),
    };
    let denied = PgStore::open(&PgSettings::new(wrong)).await.err().unwrap();
    assert!(matches!(denied, StoreError::AccessDenied(_)), "{denied}");
    let store = open(&url, 1).await;
    store
        .conn()
        .await
        .unwrap()
        .execute(
            "INSERT INTO tern_migrations (version, applied_ms) VALUES (999, 0)",
            &[],
        )
        .await
        .unwrap();
    let newer = PgStore::open(&PgSettings::new(&url)).await.err().unwrap();
    assert!(
        matches!(newer, StoreError::SchemaTooNew { found: 999, .. }),
        "{newer}"
    );
}

/// `import-sqlite`: a SQLite store with messages, a group, marks and a queued webhook
/// comes out the same on PostgreSQL: the same timelines and summaries, the same
/// generation, idempotency kept, and new writes continue its seqs and ids.
#[tokio::test]
async fn an_imported_sqlite_store_is_the_same_store() {
    use crate::store::sqlite::{Durability, SqliteStore};
    let Some(url) = testing::scratch().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteStore::open(dir.path(), Durability::Full).unwrap();
    for n in 1..=5 {
        lite.store_message(msg("alice", "bob", n)).await.unwrap();
    }
    lite.store_message(msg("bob", "alice", 6)).await.unwrap();
    lite.group_op(
        GroupOp::Create {
            id: "team".into(),
            name: "Team".into(),
            owner: "alice".into(),
            members: vec!["bob".into(), "carol".into()],
            large: false,
        },
        LIMITS,
    )
    .await
    .unwrap();
    lite.store_message(NewMessage {
        kind: pb::ConversationKind::Group,
        ..msg("carol", "team", 7)
    })
    .await
    .unwrap();
    lite.ack_delivered("bob", "phone", 3).await.unwrap();
    lite.mark_read("bob", pb::ConversationKind::Direct, "alice", 4, 100)
        .await
        .unwrap();
    lite.webhook_enqueue("push", b"{}".to_vec()).await.unwrap();
    let users = ["alice", "bob", "carol"];
    let mut before = vec![];
    for u in users {
        before.push((
            whole_timeline(&lite, u).await,
            lite.summaries(u, 3, 10).await.unwrap(),
        ));
    }
    let generation = lite.generation();
    drop(lite);

    let report = import_sqlite(dir.path(), &PgSettings::new(&url))
        .await
        .unwrap();
    assert!(report.tables.contains(&("messages", 7)), "{report:?}");
    let pg = open(&url, 1).await;
    assert_eq!(pg.generation(), generation);
    for (u, expected) in users.iter().zip(&before) {
        let got = (
            whole_timeline(&pg, u).await,
            pg.summaries(u, 3, 10).await.unwrap(),
        );
        assert_eq!(&got, expected, "{u} after the import");
    }
    assert!(
        pg.store_message(msg("alice", "bob", 1))
            .await
            .unwrap()
            .duplicate
    );
    let next = pg.store_message(msg("alice", "bob", 8)).await.unwrap();
    assert_eq!(next.sender_seq, before[0].0.1 + 1);
    assert!(next.server_msg_id > 7);
    assert_eq!(
        pg.webhooks_due("push", u64::MAX / 4, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // A second import into a store that is no longer empty is refused.
    let again = import_sqlite(dir.path(), &PgSettings::new(&url)).await;
    assert!(matches!(again, Err(StoreError::Config(_))), "{again:?}");
}

/// Two servers' webhook workers share one outbox: every push job is taken by exactly
/// one of them; the ordered `c2s` hook hands out one job at a time, whoever asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_share_the_webhook_outbox_without_taking_a_job_twice() {
    let Some(url) = testing::scratch().await else {
        return;
    };
    let (a, b) = (open(&url, 1).await, open(&url, 1).await);
    for i in 0..50 {
        a.webhook_enqueue("push", format!("{i}").into_bytes())
            .await
            .unwrap();
    }
    let now = tern_protocol::unix_ms();
    let mut taken = vec![];
    for _ in 0..5 {
        let (x, y) = tokio::join!(
            a.webhooks_due("push", now, 8),
            b.webhooks_due("push", now, 8)
        );
        taken.extend(x.unwrap().into_iter().map(|j| j.id));
        taken.extend(y.unwrap().into_iter().map(|j| j.id));
    }
    let mut unique = taken.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), taken.len(), "no job taken twice");
    assert_eq!(taken.len(), 50, "every job taken");
    // A job of a worker that died comes due again when its lease ends.
    let later = now + outbox::LEASE_MS + 1;
    assert_eq!(b.webhooks_due("push", later, 100).await.unwrap().len(), 50);

    for i in 0..3 {
        a.webhook_enqueue("c2s", vec![i]).await.unwrap();
    }
    let first = a.webhooks_due("c2s", now, 10).await.unwrap();
    assert_eq!(first.len(), 1, "c2s: one at a time");
    assert_eq!(first[0].payload, vec![0]);
    assert!(b.webhooks_due("c2s", now, 10).await.unwrap().is_empty());
    b.webhook_done(first[0].id).await.unwrap();
    let second = b.webhooks_due("c2s", now, 10).await.unwrap();
    assert_eq!(second[0].payload, vec![1], "in order, on any server");
}

/// After a restore with PostgreSQL's tools, `mark_restored` gives the store a new
/// generation, records each timeline's head as its restore point, and continues message
/// ids above any the lost data can have used.
#[tokio::test]
async fn a_restored_database_is_marked_for_the_clients() {
    let Some(url) = testing::scratch().await else {
        return;
    };
    let store = open(&url, 1).await;
    for n in 1..=3 {
        store.store_message(msg("alice", "bob", n)).await.unwrap();
    }
    let before = store.generation();
    drop(store);
    let generation = PgStore::mark_restored(&PgSettings::new(&url))
        .await
        .unwrap();
    assert_ne!(generation, before);
    let store = open(&url, 1).await;
    assert_eq!(store.generation(), generation);
    assert_eq!(store.restore_point("bob").await.unwrap(), 3);
    assert_eq!(store.restore_point("alice").await.unwrap(), 3);
    let next = store.store_message(msg("alice", "bob", 9)).await.unwrap();
    assert!(next.server_msg_id > tern_protocol::unix_ms() * 1000 - 60_000_000);
    assert_eq!(next.sender_seq, 4, "seqs continue");
}

/// A TLS terminator in front of the test database, as a managed PostgreSQL with TLS
/// looks to a client: it answers the client's `SSLRequest` with `S`, completes the TLS
/// handshake with `cert` (for "localhost"), and forwards the plaintext to `upstream`.
async fn tls_front(
    upstream: std::net::SocketAddr,
    cert: rcgen::CertifiedKey<rcgen::KeyPair>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_err() {
                    return;
                }
                // length 8, code 80877103: SSLRequest.
                assert_eq!(
                    request,
                    [0, 0, 0, 8, 4, 210, 22, 47],
                    "client asked for TLS"
                );
                socket.write_all(b"S").await.unwrap();
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return; // the client refused our certificate
                };
                let mut db = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut db).await;
            });
        }
    });
    addr
}

/// TLS to the database with rustls: a server whose certificate the configured CA file
/// vouches for is used; one that nothing vouches for is refused at start.
#[tokio::test]
async fn tls_to_the_database_is_verified_against_the_configured_ca() {
    let Some(url) = testing::scratch().await else {
        return;
    };
    let config = tokio_postgres::Config::from_str(&url).unwrap();
    let upstream = match (&config.get_hosts()[0], config.get_ports().first()) {
        (tokio_postgres::config::Host::Tcp(h), port) => {
            let host = if h == "localhost" { "127.0.0.1" } else { h };
            format!("{host}:{}", port.copied().unwrap_or(5432))
                .parse()
                .unwrap()
        }
        _ => panic!("TERN_TEST_PG must use TCP for this test: {url}"),
    };
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, cert.cert.pem()).unwrap();
    let front = tls_front(upstream, cert).await;
    // The same database through the TLS front, with TLS required.
    let (creds, db) = {
        let rest = url.split_once("://").unwrap().1;
        let (creds, after) = rest.split_once('@').unwrap();
        let db = after.split_once('/').unwrap().1.split('?').next().unwrap();
        (creds.to_owned(), db.to_owned())
    };
    let tls_url = format!(
        "postgres://{creds}@localhost:{}/{db}?sslmode=require",
        front.port()
    );
    let untrusted = PgStore::open(&PgSettings::new(&tls_url))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&untrusted, StoreError::Unavailable(m) if m.contains("cannot reach PostgreSQL") && m.contains("certificate")),
        "{untrusted}"
    );
    let mut settings = PgSettings::new(&tls_url);
    settings.ca_file = Some(ca_file);
    let store = PgStore::open(&settings)
        .await
        .expect("TLS with the CA file");
    let stored = store.store_message(msg("alice", "bob", 1)).await.unwrap();
    assert_eq!(stored.sender_seq, 1);
}
