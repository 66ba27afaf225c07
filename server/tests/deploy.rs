//! The operator files in `server/deploy/`: the Grafana dashboard is valid JSON, and the
//! dashboard and the Prometheus alert rules name only metrics the server exports (a
//! renamed metric would leave a panel empty and an alert silent). `promtool` checks the
//! rules themselves (`server/deploy/check.sh`, run by CI).

use std::collections::BTreeSet;

use tern_testkit::server::{TestServer, metrics};

const DASHBOARD: &str = include_str!("../deploy/tern-dashboard.json");
const ALERTS: &str = include_str!("../deploy/tern-alerts.yml");

/// Metric names (`tern_...`) in `text`, histogram series folded to the histogram.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("tern_") {
        let start = i + at;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(text.len() - start);
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            let name = &text[start..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(name.to_owned());
        }
        i = end;
    }
    out
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let s = TestServer::start(|_| {}).await;
    // Traffic, so the histograms have samples: a login, a message, its delivery.
    let mut alice = s.login("alice", "phone").await;
    let mut bob = s.login("bob", "phone").await;
    alice.chat("bob", "hi").await;
    alice.send_result().await; // after its commit (the histogram has a sample)
    bob.push().await;
    let exported = names(&metrics(&s.handle).await);
    // Only a PostgreSQL store waits for pooled connections.
    let postgres_only = ["tern_store_pool_wait_seconds"];
    let expected =
        |name: &str| !postgres_only.contains(&name) || tern_testkit::server::on_postgres();
    let missing: Vec<String> = names(DASHBOARD)
        .union(&names(ALERTS))
        .filter(|name| expected(name) && !exported.contains(*name))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?}\nexported: {exported:?}"
    );
}
