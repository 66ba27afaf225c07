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
//! a clean path does not switch copies on. And only while the congestion window has room
//! for them: at 50 % loss and 300 ms RTT QUIC's window sits at its minimum (two packets a
//! round trip), lost packets hold the window until they are declared lost, and doubling
//! the datagrams only lengthens the queue in front of it (measured: a median uplink of
//! 44 s with copies against 5.8 s without). So the meter also compares the window's
//! capacity (`cwnd / RTT`, bytes a second) with the bytes sent: copies go on only where
//! that headroom is at least [`HEADROOM_TO_START`] and stay on while it is at least
//! [`HEADROOM_TO_KEEP`]. The thresholds are measured, not derived: through `tern-netsim`
//! with copies on, the headroom stayed at 16–80 at 30 % and 50 % loss with 100 ms RTT
//! (where copies halved the uplink's median) and at 2.4–8.6 at 50 % loss with 300 ms
//! (where they made it worse).

use std::time::{Duration, Instant};

/// Copies go on at this smoothed loss rate or above.
pub const ON_AT: f64 = 0.10;
/// ... and off again below this one.
pub const OFF_BELOW: f64 = 0.05;
/// Packets a window must hold before its loss rate counts (fewer say too little).
pub const MIN_WINDOW_PACKETS: u64 = 10;

/// What the transport says about its path (QUIC: `Connection::stats()`); the counts
/// are cumulative over the connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathSample {
    /// Packets sent.
    pub sent: u64,
    /// Packets declared lost.
    pub lost: u64,
    /// UDP payload bytes sent.
    pub bytes: u64,
    /// The congestion window, bytes.
    pub cwnd: u64,
    /// Smoothed RTT.
    pub rtt: Duration,
}

impl PathSample {
    /// The sample of a QUIC connection now.
    #[cfg(feature = "quinn")]
    pub fn of(conn: &quinn::Connection) -> Self {
        let s = conn.stats();
        PathSample {
            sent: s.path.sent_packets,
            lost: s.path.lost_packets,
            bytes: s.udp_tx.bytes,
            cwnd: s.path.cwnd,
            rtt: s.path.rtt,
        }
    }

    /// Bytes a second the congestion window lets through.
    fn capacity_per_sec(&self) -> f64 {
        self.cwnd as f64 / self.rtt.as_secs_f64().max(0.001)
    }
}

/// The window's capacity (bytes a second) over the bytes sent a second must be at least
/// this for copies to go on...
pub const HEADROOM_TO_START: f64 = 12.0;
/// ... and at least this for them to stay on (the rate then includes them).
pub const HEADROOM_TO_KEEP: f64 = 8.0;

/// A smoothed loss rate from cumulative packet counts, and whether copies are on.
#[derive(Debug, Clone, Default)]
pub struct LossMeter {
    /// The sample at the start of the current window, and when it was taken.
    base: Option<(PathSample, Instant)>,
    estimate: f64,
    /// The window's capacity over the bytes sent, in the last window.
    headroom: f64,
    lossy: bool,
    fits: bool,
}

impl LossMeter {
    /// Feeds a sample of the path; call now and then (the drivers do once a second).
    /// Counts that went back (a new connection) start a new window.
    pub fn on_sample(&mut self, s: PathSample, now: Instant) {
        let Some((b, at)) = self.base else {
            self.base = Some((s, now));
            return;
        };
        if s.sent < b.sent || s.lost < b.lost || s.bytes < b.bytes {
            self.base = Some((s, now));
            return;
        }
        let (ds, dl) = (s.sent - b.sent, s.lost - b.lost);
        if ds < MIN_WINDOW_PACKETS {
            return; // keep collecting
        }
        let ratio = (dl as f64 / ds as f64).min(1.0);
        self.estimate = if self.estimate == 0.0 && !self.lossy {
            ratio
        } else {
            (self.estimate + ratio) / 2.0
        };
        self.lossy = if self.lossy {
            self.estimate >= OFF_BELOW
        } else {
            self.estimate >= ON_AT
        };
        let secs = now.saturating_duration_since(at).as_secs_f64().max(0.001);
        let rate = (s.bytes - b.bytes) as f64 / secs;
        self.headroom = s.capacity_per_sec() / rate.max(1.0);
        let need = if self.redundant() {
            HEADROOM_TO_KEEP
        } else {
            HEADROOM_TO_START
        };
        self.fits = self.headroom >= need;
        self.base = Some((s, now));
    }

    /// The smoothed loss rate (0 before any full window).
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// The congestion window's capacity (bytes a second) over the rate of bytes sent,
    /// in the last window.
    pub fn headroom(&self) -> f64 {
        self.headroom
    }

    /// Whether the path is measured lossy (whether or not the window has room for
    /// copies: for what costs no extra packet, like results riding in a datagram that
    /// goes anyway).
    pub fn lossy(&self) -> bool {
        self.lossy
    }

    /// Whether QoS datagrams should be sent twice: the path is lossy and the
    /// congestion window has room for the copies.
    pub fn redundant(&self) -> bool {
        self.lossy && self.fits
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

    /// A roomy path (a 120 KB window at 100 ms: 1.2 MB a second) with these
    /// cumulative counts, `bytes` sent so far.
    fn sample(sent: u64, lost: u64, bytes: u64) -> PathSample {
        PathSample {
            sent,
            lost,
            bytes,
            cwnd: 120_000,
            rtt: Duration::from_millis(100),
        }
    }

    #[test]
    fn copies_follow_the_measured_loss_with_hysteresis() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = LossMeter::default();
        m.on_sample(sample(0, 0, 0), at(0));
        assert!(!m.redundant());
        // A clean path: one loss in 100 packets.
        m.on_sample(sample(100, 1, 50), at(1));
        assert!(!m.redundant(), "1 % loss: no copies");
        // Too few packets to judge: nothing changes.
        m.on_sample(sample(105, 4, 52), at(2));
        assert!(!m.redundant());
        // 30 % loss.
        m.on_sample(sample(205, 34, 100), at(3));
        m.on_sample(sample(305, 64, 150), at(4));
        assert!(m.redundant(), "loss {}", m.estimate());
        // Loss falls to 7 %: between the thresholds, copies stay on.
        m.on_sample(sample(405, 71, 200), at(5));
        m.on_sample(sample(505, 78, 250), at(6));
        assert!(m.redundant(), "hysteresis, loss {}", m.estimate());
        // Clean again.
        for i in 1..=4 {
            m.on_sample(sample(505 + i * 100, 78, 250 + i * 50), at(6 + i));
        }
        assert!(!m.redundant(), "loss {}", m.estimate());
        // A new connection: the counts start over, without a jump.
        m.on_sample(sample(3, 0, 1), at(11));
        m.on_sample(sample(20, 10, 10), at(12));
        assert!(m.redundant(), "50 % on the new connection");
    }

    #[test]
    fn no_copies_where_the_congestion_window_has_no_room_for_them() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // 50 % loss, and QUIC's window at its minimum: 2.4 KB per 300 ms, 8 KB a
        // second, while 1 KB a second is sent: headroom 8.
        let tight = |sent, lost, bytes| PathSample {
            cwnd: 2_400,
            rtt: Duration::from_millis(300),
            ..sample(sent, lost, bytes)
        };
        let mut m = LossMeter::default();
        m.on_sample(tight(0, 0, 0), at(0));
        m.on_sample(tight(20, 10, 1_000), at(1));
        assert!(!m.redundant(), "copies would only lengthen the queue");
        assert!((m.headroom() - 8.0).abs() < 0.01);
        // The same loss at 100 ms: 24 KB a second, headroom 24.
        let roomy = |sent, lost, bytes| PathSample {
            rtt: Duration::from_millis(100),
            ..tight(sent, lost, bytes)
        };
        m.on_sample(roomy(40, 20, 2_000), at(2));
        assert!(m.redundant());
        // With copies on, 2 KB a second: headroom 12, still enough to keep them.
        m.on_sample(roomy(60, 30, 4_000), at(3));
        assert!(m.redundant());
        // The window shrinks under it (headroom 4): copies stop.
        m.on_sample(tight(80, 40, 6_000), at(4));
        assert!(!m.redundant());
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
