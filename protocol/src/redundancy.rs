//! When to send a second copy of a QoS datagram: on a lossy path only.
//!
//! A send is done when it reached the server *and* its answer came back: two trips
//! through the loss, against one for a push (a lost delivery ACK only costs a re-push).
//! At 50 % loss one attempt of a send succeeds a quarter of the time, one push half the
//! time, so without help the uplink's tail is the longer one whatever the timers do.
//! A second copy of each datagram, a little later so it travels in its own packet, makes
//! each leg fail only when both copies are lost: at 50 % loss an attempt then succeeds
//! 56 % of the time (0.75 × 0.75). The client copies its sends; the server repeats its
//! latest send results once when no newer one follows (the tail of a burst has nothing
//! behind it to carry them).
//!
//! Copies cost bytes, so they are made only while the path is measured lossy:
//! [`LossMeter`] turns the transport's cumulative packet counts (QUIC's `sent_packets`
//! and `lost_packets`) into a smoothed loss rate, with hysteresis so one lost packet on
//! a clean path does not switch copies on.

use std::time::Duration;

/// Copies go on at this smoothed loss rate or above.
pub const ON_AT: f64 = 0.10;
/// ... and off again below this one.
pub const OFF_BELOW: f64 = 0.05;
/// Packets a window must hold before its loss rate counts (fewer say too little).
pub const MIN_WINDOW_PACKETS: u64 = 10;

/// A smoothed loss rate from cumulative packet counts, and whether copies are on.
#[derive(Debug, Clone, Default)]
pub struct LossMeter {
    /// Counts at the start of the current window.
    base: Option<(u64, u64)>,
    estimate: f64,
    on: bool,
}

impl LossMeter {
    /// Feeds the transport's cumulative counts (packets sent, packets declared lost);
    /// call now and then (the drivers do once a second). Counts that went back (a new
    /// connection) start a new window.
    pub fn on_counts(&mut self, sent: u64, lost: u64) {
        let Some((sent0, lost0)) = self.base else {
            self.base = Some((sent, lost));
            return;
        };
        if sent < sent0 || lost < lost0 {
            self.base = Some((sent, lost));
            return;
        }
        let (ds, dl) = (sent - sent0, lost - lost0);
        if ds < MIN_WINDOW_PACKETS {
            return; // keep collecting
        }
        let ratio = (dl as f64 / ds as f64).min(1.0);
        self.estimate = if self.estimate == 0.0 && !self.on {
            ratio
        } else {
            (self.estimate + ratio) / 2.0
        };
        self.base = Some((sent, lost));
        if self.on {
            self.on = self.estimate >= OFF_BELOW;
        } else {
            self.on = self.estimate >= ON_AT;
        }
    }

    /// The smoothed loss rate (0 before any full window).
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// Whether QoS datagrams should be sent twice.
    pub fn redundant(&self) -> bool {
        self.on
    }
}

/// How long after the original its copy goes: long enough that the two do not share a
/// packet (or a short burst of loss), short against the retransmission timeout. A
/// quarter of the smoothed RTT, within 10–50 ms (20 ms before any sample).
pub fn copy_delay(srtt: Option<Duration>) -> Duration {
    srtt.map_or(Duration::from_millis(20), |r| {
        (r / 4).clamp(Duration::from_millis(10), Duration::from_millis(50))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_follow_the_measured_loss_with_hysteresis() {
        let mut m = LossMeter::default();
        m.on_counts(0, 0);
        assert!(!m.redundant());
        // A clean path: one loss in 100 packets.
        m.on_counts(100, 1);
        assert!(!m.redundant(), "1 % loss: no copies");
        // Too few packets to judge: nothing changes.
        m.on_counts(105, 4);
        assert!(!m.redundant());
        // 30 % loss.
        m.on_counts(205, 34);
        m.on_counts(305, 64);
        assert!(m.redundant(), "loss {}", m.estimate());
        // Loss falls to 7 %: between the thresholds, copies stay on.
        m.on_counts(405, 71);
        m.on_counts(505, 78);
        assert!(m.redundant(), "hysteresis, loss {}", m.estimate());
        // Clean again.
        for i in 1..=4 {
            m.on_counts(505 + i * 100, 78);
        }
        assert!(!m.redundant(), "loss {}", m.estimate());
        // A new connection: the counts start over, without a jump.
        m.on_counts(3, 0);
        m.on_counts(20, 10);
        assert!(m.redundant(), "50 % on the new connection");
    }

    #[test]
    fn the_copy_goes_a_quarter_rtt_later_within_bounds() {
        assert_eq!(copy_delay(None), Duration::from_millis(20));
        assert_eq!(
            copy_delay(Some(Duration::from_millis(100))),
            Duration::from_millis(25)
        );
        assert_eq!(
            copy_delay(Some(Duration::from_millis(8))),
            Duration::from_millis(10)
        );
        assert_eq!(
            copy_delay(Some(Duration::from_secs(1))),
            Duration::from_millis(50)
        );
    }
}
