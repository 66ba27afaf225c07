//! The QoS engine's unit tests, in virtual time: schedules, Karn's rule, the window,
//! reconnects, recovery, and the rules that tell a queue at the peer from a loss.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain<K: Copy + Eq + Hash + Debug>(s: &mut Sender<K>) -> Vec<SenderEvent<K>> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Runs the timer loop until `until`, returning (time, event) pairs.
fn run_until(s: &mut Sender<u32>, until: Instant) -> Vec<(Instant, SenderEvent<u32>)> {
    let mut out = vec![];
    while let Some(t) = s.poll_timeout() {
        if t > until {
            break;
        }
        s.handle_timeout(t);
        out.extend(drain(s).into_iter().map(|e| (t, e)));
    }
    out
}

#[test]
fn rtt_estimator_follows_rfc6298() {
    let mut r = RttEstimator::default();
    assert_eq!(r.rto(ms(1000), ms(200), ms(3000)), ms(1000));
    r.on_sample(ms(100));
    assert_eq!(r.srtt(), Some(ms(100)));
    assert_eq!(r.rto(ms(1000), ms(200), ms(3000)), ms(300)); // 100 + 4 * 50
    for _ in 0..50 {
        r.on_sample(ms(100));
    }
    assert_eq!(
        r.rto(ms(1000), ms(200), ms(3000)),
        ms(200),
        "variance decays to the floor"
    );
}

#[test]
fn adaptive_schedule_fast_then_stepped_then_failed() {
    let t0 = Instant::now();
    let cfg = AdaptiveConfig {
        give_up: Duration::from_secs(30),
        ..AdaptiveConfig::default()
    };
    let mut s = Sender::new(
        QosConfig {
            schedule: Schedule::Adaptive(cfg),
            window: 8,
            retransmit: true,
        },
        t0,
    );
    s.on_rtt_sample(ms(100)); // rto = 300 ms
    s.try_send(1u32, t0).unwrap();
    let events = run_until(&mut s, t0 + Duration::from_secs(60));
    let times: Vec<u64> = events
        .iter()
        .map(|(t, _)| (*t - t0).as_millis() as u64)
        .collect();
    // 4 fast retries at the RTO, then +1 s steps from rto+1s, capped at 8 s, failed at 30 s.
    assert_eq!(
        times,
        vec![
            300, 600, 900, 1200, 2500, 4800, 8100, 12400, 17700, 24000, 30000
        ],
        "{events:?}"
    );
    assert!(matches!(
        events.last().unwrap().1,
        SenderEvent::Failed {
            key: 1,
            transmissions: 11,
            ..
        }
    ));
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.stats().failed, 1);
}

#[test]
fn recovery_hint_carries_to_next_message_and_clears_on_ack() {
    let t0 = Instant::now();
    let mut s = Sender::new(QosConfig::default(), t0);
    s.on_rtt_sample(ms(100));
    s.try_send(1u32, t0).unwrap();
    run_until(&mut s, t0 + Duration::from_secs(15));
    let hint = s.recovery_hint().expect("slow phase sets a hint");
    assert!(hint >= Duration::from_secs(4), "{hint:?}");
    // A second message during the outage skips straight to the learned interval.
    let t1 = t0 + Duration::from_secs(15);
    s.try_send(2u32, t1).unwrap();
    let events = run_until(&mut s, t1 + Duration::from_millis(1300));
    let for_two = events
        .iter()
        .filter(|(_, e)| *e == SenderEvent::Retransmit(2))
        .count();
    assert_eq!(for_two, 4, "fast phase still probes at the RTO");
    s.handle_timeout(t1 + Duration::from_millis(1300));
    let next = s.entries[&2].deadline.unwrap() - (t1 + Duration::from_millis(1200));
    assert!(
        next >= hint,
        "slow phase resumes from the hint: {next:?} < {hint:?}"
    );
    // The path comes back: the hint is gone.
    s.on_ack(1, t1 + Duration::from_secs(2)).unwrap();
    assert_eq!(s.recovery_hint(), None);
}

#[test]
fn an_ack_after_an_outage_resends_slow_phase_messages_at_once() {
    let t0 = Instant::now();
    let mut s = Sender::new(QosConfig::default(), t0);
    s.on_rtt_sample(ms(100));
    s.try_send(1u32, t0).unwrap();
    run_until(&mut s, t0 + Duration::from_secs(10)); // deep in the slow phase
    assert!(s.recovery_hint().is_some());
    let t1 = t0 + Duration::from_secs(10);
    s.try_send(2u32, t1).unwrap();
    s.on_ack(2, t1 + ms(100)).unwrap(); // the path is back
    assert_eq!(
        s.poll_timeout(),
        Some(t1 + ms(100)),
        "message 1 is due immediately"
    );
    s.handle_timeout(t1 + ms(100));
    assert_eq!(drain(&mut s), vec![SenderEvent::Retransmit(1)]);
    // ... and probes at the RTO again rather than at the slow interval.
    assert_eq!(s.poll_timeout(), Some(t1 + ms(100) + s.rto()));
}

#[test]
fn over_a_reliable_stream_only_give_up_and_reconnect_resend() {
    let t0 = Instant::now();
    let mut s = Sender::new(QosConfig::over_reliable_stream(), t0);
    s.try_send(1u32, t0).unwrap();
    let events = run_until(&mut s, t0 + Duration::from_secs(119));
    assert!(
        events.is_empty(),
        "no retransmission within the connection: {events:?}"
    );
    assert_eq!(
        s.on_reconnect(t0 + Duration::from_secs(60)),
        vec![1],
        "a new connection resends"
    );
    let events = run_until(&mut s, t0 + Duration::from_secs(200));
    assert!(
        matches!(events[..], [(_, SenderEvent::Failed { key: 1, .. })]),
        "{events:?}"
    );
    assert_eq!(
        events[0].0,
        t0 + Duration::from_secs(120),
        "give-up counts from the first send"
    );
}

#[test]
fn karn_rule_and_window() {
    let t0 = Instant::now();
    let mut s = Sender::new(
        QosConfig {
            window: 2,
            ..QosConfig::default()
        },
        t0,
    );
    s.try_send(1u32, t0).unwrap();
    s.try_send(2u32, t0).unwrap();
    assert_eq!(s.try_send(3, t0), Err(SendError::WindowFull(2)));
    assert_eq!(s.try_send(2, t0), Err(SendError::AlreadyPending));
    let a = s.on_ack(1, t0 + ms(80)).unwrap();
    assert_eq!(a.rtt_sample, Some(ms(80)));
    s.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(drain(&mut s), vec![SenderEvent::Retransmit(2)]);
    let a = s.on_ack(2, t0 + Duration::from_millis(1100)).unwrap();
    assert_eq!(
        (a.transmissions, a.rtt_sample),
        (2, None),
        "no sample from a retransmitted message"
    );
    assert_eq!(
        s.on_ack(2, t0 + Duration::from_millis(1200)),
        None,
        "duplicate ACK is ignored"
    );
    assert!(s.has_room());
}

#[test]
fn reconnect_resends_everything_in_order() {
    let t0 = Instant::now();
    let mut s = Sender::new(QosConfig::default(), t0);
    for k in [5u32, 3, 9] {
        s.try_send(k, t0).unwrap();
    }
    s.on_ack(3, t0 + ms(10));
    assert_eq!(s.on_reconnect(t0 + ms(20)), vec![5, 9]);
    assert_eq!(s.in_flight(), 2);
    assert!(s.cancel(&5));
    assert_eq!(s.on_reconnect(t0 + ms(30)), vec![9]);
}

#[test]
fn fixed_schedule_matches_mobileimsdk() {
    let t0 = Instant::now();
    let mut s = Sender::new(QosConfig::mobileimsdk(), t0);
    s.try_send(1u32, t0 + ms(1000)).unwrap(); // age 4 s at the first scan
    s.try_send(2u32, t0 + ms(3000)).unwrap(); // age 2 s at the first scan: skipped
    let events = run_until(&mut s, t0 + Duration::from_secs(30));
    let at = |secs| t0 + Duration::from_secs(secs);
    assert_eq!(
        events,
        vec![
            (at(5), SenderEvent::Retransmit(1)),
            (at(10), SenderEvent::Retransmit(1)),
            (at(10), SenderEvent::Retransmit(2)),
            (
                at(15),
                SenderEvent::Failed {
                    key: 1,
                    transmissions: 3,
                    elapsed: Duration::from_secs(14)
                }
            ),
            (at(15), SenderEvent::Retransmit(2)),
            (
                at(20),
                SenderEvent::Failed {
                    key: 2,
                    transmissions: 3,
                    elapsed: Duration::from_secs(17)
                }
            ),
        ]
    );
    assert_eq!(s.poll_timeout(), None, "an empty fixed sender sleeps");
}

fn uplink_sender(t0: Instant, srtt: Duration) -> Sender<u32> {
    let mut s = Sender::new(QosConfig::uplink(), t0);
    for _ in 0..20 {
        s.on_rtt_sample(srtt); // rto at its 100 ms floor
    }
    s
}

fn retransmitted(events: &[(Instant, SenderEvent<u32>)]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            SenderEvent::Retransmit(k) => Some(*k),
            _ => None,
        })
        .collect()
}

/// A burst waits at a busy peer that answers it in order, one every 3 ms: the tail
/// waits longer than the RTO but is not copied, since the answers keep coming and
/// take far longer than the path's RTT. Only the head of the queue (fewer than
/// [`QUEUED_BEHIND`] unanswered ahead) may be copied at its timer: a few copies per
/// RTO, none twice.
#[test]
fn a_burst_queued_at_a_slow_peer_is_not_copied() {
    let t0 = Instant::now();
    let mut s = uplink_sender(t0, ms(5));
    for k in 0..200u32 {
        s.try_send(k, t0).unwrap();
    }
    let mut copies = vec![];
    for k in 0..200u32 {
        let at = t0 + ms(5 + 3 * k as u64);
        copies.extend(retransmitted(&run_until(&mut s, at)));
        let acked = s.on_ack(k, at).expect("pending");
        assert!(acked.transmissions <= 2, "message {k} was copied twice");
    }
    // The queue drains in 600 ms: six RTOs of 100 ms.
    assert!(
        copies.len() <= QUEUED_BEHIND * 6,
        "{} copies: {copies:?}",
        copies.len()
    );
    assert!(
        s.stats().waited > 150,
        "the tail waited: {}",
        s.stats().waited
    );
}

/// The busy peer stalls for longer than the RTO before it answers (a long commit),
/// so the oldest messages are probed; then it answers the burst in order, one every
/// 3 ms, the originals first. An answer to a probed message cannot say which copy it
/// answers, so it must not make the messages sent before the probe look lost.
#[test]
fn answers_to_probed_messages_do_not_make_the_queue_look_lost() {
    let t0 = Instant::now();
    let mut s = uplink_sender(t0, ms(5));
    for k in 0..200u32 {
        s.try_send(k, t0).unwrap();
    }
    let probes = retransmitted(&run_until(&mut s, t0 + ms(300)));
    assert!(!probes.is_empty(), "the stall is longer than the RTO");
    let probed: std::collections::BTreeSet<u32> = probes.iter().copied().collect();
    let mut copies = vec![];
    for k in 0..200u32 {
        let at = t0 + ms(300 + 3 * k as u64);
        copies.extend(retransmitted(&run_until(&mut s, at)));
        s.on_ack(k, at).expect("pending");
    }
    let never_probed: Vec<u32> = copies
        .iter()
        .copied()
        .filter(|k| !probed.contains(k))
        .collect();
    // The head of the queue (fewer than QUEUED_BEHIND unanswered ahead) may be
    // copied at its timer; with the answers taken as the probes', the whole queue
    // looked lost (68 messages copied).
    assert!(
        never_probed.len() <= 2 * QUEUED_BEHIND,
        "queued messages copied: {never_probed:?}"
    );
}

/// A sparse stream on a lossy path: the last answer was slow (its packet was lost
/// and repaired), and a message with nothing unanswered ahead of it times out. It is
/// lost, not queued: copied at its timer.
#[test]
fn a_slow_answer_on_a_sparse_stream_does_not_hold_back_a_copy() {
    let t0 = Instant::now();
    let mut s = uplink_sender(t0, ms(40));
    s.try_send(1u32, t0).unwrap();
    s.try_send(2u32, t0 + ms(50)).unwrap();
    s.try_send(3u32, t0 + ms(60)).unwrap();
    // 1 answered after 90 ms: over twice the path's 40 ms (its ACK was delayed).
    assert!(run_until(&mut s, t0 + ms(90)).is_empty());
    s.on_ack(1, t0 + ms(90));
    // 2 and 3 time out at 150 and 160 ms, an answer 60 ms ago, nothing after them
    // answered: without the depth bound they were taken as queued.
    let ev = run_until(&mut s, t0 + ms(170));
    assert_eq!(retransmitted(&ev), vec![2, 3], "lost, not queued");
}

/// A message lost on a steady path is still copied at its timer: a message sent after
/// it was answered (in-order peer), or the answers come at the path's RTT.
#[test]
fn a_lost_message_is_still_copied_at_its_timer() {
    let t0 = Instant::now();
    // Lost, with a later one answered.
    let mut s = uplink_sender(t0, ms(40));
    s.try_send(1u32, t0).unwrap();
    s.try_send(2u32, t0 + ms(1)).unwrap();
    s.on_ack(2, t0 + ms(41));
    let ev = run_until(&mut s, t0 + ms(150));
    assert_eq!(retransmitted(&ev), vec![1]);
    // Lost last, right after one answered at the path's RTT.
    let mut s = uplink_sender(t0, ms(40));
    s.try_send(1u32, t0).unwrap();
    s.try_send(2u32, t0 + ms(1)).unwrap();
    s.on_ack(1, t0 + ms(40));
    let ev = run_until(&mut s, t0 + ms(150));
    assert_eq!(retransmitted(&ev), vec![2]);
}

/// A peer that answers nothing gets a few probes of its oldest messages per RTO, not
/// a copy of the whole window; each answer pays for two more copies.
#[test]
fn a_silent_peer_gets_probes_per_rto_not_the_window() {
    let t0 = Instant::now();
    let mut s = uplink_sender(t0, ms(5));
    for k in 0..100u32 {
        s.try_send(k, t0).unwrap();
    }
    let first = retransmitted(&run_until(&mut s, t0 + ms(150)));
    assert_eq!(first.len(), COPIES_WITHOUT_ANSWERS, "{first:?}");
    assert_eq!(
        first,
        (0..COPIES_WITHOUT_ANSWERS as u32).collect::<Vec<_>>()
    );
    // The next round probes the oldest again (as TCP does after a timeout).
    let second = retransmitted(&run_until(&mut s, t0 + ms(250)));
    assert_eq!(second, first);
    // Each answer pays for two more copies.
    s.on_ack(first[0], t0 + ms(251));
    let third = retransmitted(&run_until(&mut s, t0 + ms(350)));
    assert!(third.len() <= COPIES_WITHOUT_ANSWERS + 2, "{}", third.len());
    assert!(s.in_flight() == 99);
}
