//! Smart heartbeat against simulated NATs.
//!
//! Run with `cargo test -p tern-protocol --test sim_heartbeat -- --nocapture` to see the
//! tables recorded in docs/bench/qos-sim.md.

use std::time::Duration;

use tern_protocol::heartbeat::HeartbeatConfig;
use tern_protocol::sim::heartbeat::{HeartbeatReport, HeartbeatScenario, run};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn row(name: &str, nat: Duration, r: &HeartbeatReport, dur: Duration) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {:.1} | {} | {} |",
        nat.as_secs(),
        r.final_interval.as_secs_f64(),
        r.probes_to_lock.map_or("-".into(), |p| p.to_string()),
        r.time_to_lock
            .map_or("-".into(), |t| format!("{:.0}", t.as_secs_f64() / 60.0)),
        r.packets_per_hour(dur),
        r.nat_expiries,
        r.unreachable.as_secs(),
    )
}

#[test]
fn smart_heartbeat_converges_below_the_nat_timeout_and_stays() {
    let mut lines = vec![];
    for nat in [secs(45), secs(120)] {
        let r = run(&HeartbeatScenario::background(nat, DAY, 1));
        lines.push(row("smart (background)", nat, &r, DAY));
        assert!(
            r.final_interval < nat,
            "{nat:?}: ended at {:?}",
            r.final_interval
        );
        assert!(
            r.final_interval >= nat.mul_f64(0.75),
            "{nat:?}: locked too low at {:?}",
            r.final_interval
        );
        let probes = r.probes_to_lock.expect("learning finished");
        assert!(probes <= 16, "{nat:?}: {probes} probes to lock");
        assert!(
            r.time_to_lock.unwrap() < secs(3600),
            "{nat:?}: locked after {:?}",
            r.time_to_lock
        );
        assert_eq!(
            r.nat_expiries_after_lock, 0,
            "{nat:?}: stays below the timeout once locked"
        );
        assert!(
            r.nat_expiries <= 3,
            "{nat:?}: probing above the timeout costs few expiries"
        );
        assert_eq!(r.connection_lost, 0);
        println!(
            "{nat:?}: interval trace {:?}",
            r.trace
                .iter()
                .map(|(t, i)| (t.as_secs(), i.as_secs_f64()))
                .collect::<Vec<_>>()
        );
    }
    for interval in [secs(3), secs(15)] {
        for nat in [secs(45), secs(120)] {
            let mut s = HeartbeatScenario::background(nat, DAY, 1);
            s.config = HeartbeatConfig::fixed(interval);
            let r = run(&s);
            lines.push(row(
                &format!("fixed {}s (MobileIMSDK)", interval.as_secs()),
                nat,
                &r,
                DAY,
            ));
        }
    }
    println!(
        "| policy | NAT timeout s | final interval s | probes to lock | minutes to lock | packets/hour (both ways) | NAT expiries | unreachable s |\n|---|---|---|---|---|---|---|---|\n{}",
        lines.join("\n")
    );
}

#[test]
fn loss_does_not_teach_a_false_nat_timeout() {
    // 5% loss each way: some replies go missing. Missing replies followed by a reply
    // from the same address are loss, not NAT expiry, and must not drag the interval down.
    let mut s = HeartbeatScenario::background(secs(120), DAY, 2);
    s.loss = 0.05;
    let r = run(&s);
    assert!(
        r.final_interval < secs(120) && r.final_interval >= secs(90),
        "{:?}",
        r.final_interval
    );
    assert_eq!(r.nat_expiries_after_lock, 0);
}

#[test]
fn foreground_caps_the_interval() {
    let mut s = HeartbeatScenario::background(secs(120), Duration::from_secs(4 * 3600), 3);
    s.foreground = true;
    let r = run(&s);
    assert_eq!(r.final_interval, secs(60));
    assert_eq!(r.nat_expiries, 0);
}
