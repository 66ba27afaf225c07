//! Delivery under loss, in the deterministic simulator.
//!
//! Run with `cargo test -p tern-protocol --test sim_qos -- --nocapture` to see the
//! tables recorded in docs/bench/qos-sim.md.

use std::time::Duration;

use tern_protocol::qos::QosConfig;
use tern_protocol::sim::LinkConfig;
use tern_protocol::sim::qos::{QosReport, QosScenario, run};

const RTT: Duration = Duration::from_millis(100);

fn row(name: &str, seed: u64, r: &QosReport) -> String {
    format!(
        "| {name} | {seed} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.3} |",
        r.offered,
        r.delivered,
        r.delivered_twice,
        r.failed,
        r.p(50.0).as_secs_f64() * 1e3,
        r.p(99.0).as_secs_f64() * 1e3,
        r.max().as_secs_f64() * 1e3,
        r.data_transmissions as f64 / r.offered as f64,
    )
}

const HEADER: &str = "| schedule | seed | offered | delivered | delivered twice | reported failed | p50 ms | p99 ms | max ms | transmissions/msg |\n|---|---|---|---|---|---|---|---|---|---|";

#[test]
fn hundred_thousand_messages_at_30pct_loss_arrive_exactly_once() {
    let s = QosScenario::symmetric(100_000, 0.30, RTT, QosConfig::default(), 1);
    let r = run(&s);
    println!(
        "30% loss each way, {RTT:?} RTT, adaptive QoS\n{HEADER}\n{}",
        row("adaptive", 1, &r)
    );
    assert_eq!(
        r.delivered, 100_000,
        "every message reached the receiving app"
    );
    assert_eq!(r.delivered_twice, 0, "no message reached the app twice");
    assert_eq!(r.failed, 0, "none reported failed");
    assert!(
        r.duplicates_dropped > 10_000,
        "the filter really had duplicates to drop: {}",
        r.duplicates_dropped
    );
}

#[test]
fn adaptive_beats_the_mobileimsdk_schedule_on_the_same_seeds() {
    let n = 100_000u64;
    let mut lines = vec![];
    for seed in [7u64, 8, 9] {
        let adaptive = run(&QosScenario::symmetric(
            n,
            0.30,
            RTT,
            QosConfig::default(),
            seed,
        ));
        let baseline = run(&QosScenario::symmetric(
            n,
            0.30,
            RTT,
            QosConfig::mobileimsdk(),
            seed,
        ));
        lines.push(row("adaptive", seed, &adaptive));
        lines.push(row("mobileimsdk", seed, &baseline));

        assert_eq!(adaptive.failed, 0);
        assert_eq!(adaptive.delivered_twice, 0);
        assert_eq!(baseline.delivered_twice, 0);
        assert!(
            adaptive.p(99.0) < baseline.p(99.0),
            "adaptive p99 {:?} must be lower than the fixed schedule's {:?}",
            adaptive.p(99.0),
            baseline.p(99.0)
        );
        assert!(adaptive.p(50.0) <= baseline.p(50.0));

        // The fixed schedule transmits 3 times, then reports the message lost. A
        // transmission "works" if the data and its ACK both survive: 0.7 * 0.7.
        // So the expected loss report rate is (1 - 0.49)^3 = 13.27 %.
        let p_fail = (1.0f64 - 0.7 * 0.7).powi(3);
        let expected = n as f64 * p_fail;
        let sigma = (n as f64 * p_fail * (1.0 - p_fail)).sqrt();
        let got = baseline.failed as f64;
        assert!(
            (got - expected).abs() < 5.0 * sigma,
            "baseline reported {got} lost, its schedule implies {expected:.0} ± {sigma:.0}"
        );
        // And the data itself never arrives when all 3 copies are dropped: 0.3^3 = 2.7 %.
        let never = n as f64 * 0.3f64.powi(3);
        let never_sigma = (never * (1.0 - 0.027)).sqrt();
        let got_never = (n - baseline.delivered) as f64;
        assert!(
            (got_never - never).abs() < 5.0 * never_sigma,
            "{got_never} vs {never:.0}"
        );
    }
    println!(
        "30% loss each way, {RTT:?} RTT, {n} messages per run\n{HEADER}\n{}",
        lines.join("\n")
    );
}

#[test]
fn exactly_once_through_jitter_reordering_duplication_and_blackouts() {
    let link = LinkConfig {
        loss: 0.30,
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(50),
        reorder: 0.05,
        reorder_delay: Duration::from_millis(80),
        duplicate: 0.02,
        blackouts: vec![
            (Duration::from_secs(100), Duration::from_secs(10)),
            (Duration::from_secs(400), Duration::from_secs(10)),
        ],
        rate: None,
    };
    let s = QosScenario {
        messages: 20_000,
        mean_interval: Duration::from_millis(50),
        up: link.clone(),
        down: link,
        qos: QosConfig::default(),
        dedup: Default::default(),
        body_len: 20,
        seed: 3,
    };
    let r = run(&s);
    println!(
        "30% loss, 50-100 ms one way, 5% reorder, 2% duplication, two 10 s blackouts\n{HEADER}\n{}",
        row("adaptive", 3, &r)
    );
    assert_eq!(r.delivered, 20_000);
    assert_eq!(r.delivered_twice, 0);
    assert_eq!(r.failed, 0);
    assert!(
        r.up.blacked_out > 100 && r.up.duplicated > 100 && r.up.reordered > 100,
        "{:?}",
        r.up
    );
    assert!(
        r.max() >= Duration::from_secs(5),
        "blackouts delayed some messages: {:?}",
        r.max()
    );
    // A message offered at the start of a 10 s blackout waits it out; the first ACK
    // after it pulls every waiting message back, so recovery takes a few RTTs, not
    // a slow-phase interval.
    assert!(
        r.max() < Duration::from_secs(12),
        "recovered soon after the path returned: {:?}",
        r.max()
    );
}

#[test]
fn a_dead_path_reports_failure_after_give_up_never_silence() {
    let mut s = QosScenario::symmetric(200, 0.0, RTT, QosConfig::default(), 5);
    s.up.blackouts = vec![(Duration::ZERO, Duration::from_secs(3600))];
    let r = run(&s);
    assert_eq!(r.delivered, 0);
    assert_eq!(r.failed, 200, "every message is reported failed");
    assert_eq!(r.failed_and_lost, 200);
}

#[test]
fn same_seed_same_run() {
    let a = run(&QosScenario::symmetric(
        2_000,
        0.2,
        RTT,
        QosConfig::default(),
        11,
    ));
    let b = run(&QosScenario::symmetric(
        2_000,
        0.2,
        RTT,
        QosConfig::default(),
        11,
    ));
    assert_eq!(a.delivery_times, b.delivery_times);
    assert_eq!(a.data_transmissions, b.data_transmissions);
}
