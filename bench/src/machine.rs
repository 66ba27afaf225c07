//! What the machine spent on an open-loop latency phase: the servers' and the load
//! generator's CPU per message, how busy the cores were, UDP datagrams per message,
//! and how long the servers' threads waited on the run queue per wake-up.
//!
//! The latency phases run the servers and the load generator on the same cores, so a
//! tail at "50 % of capacity" is partly the cores' queue, not the server's: these
//! numbers say how busy the machine was while the latency was measured, which the
//! capacity phase's CPU per message does not (small batches and few coalesced packets
//! cost more per message than the capacity phase's).

use serde::{Deserialize, Serialize};

/// Counters read at the start and at the end of a phase.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// CPU seconds of the servers.
    server_cpu: f64,
    /// CPU seconds of this process (the load generator).
    generator_cpu: f64,
    /// `/proc/stat`'s `cpu` line: busy and total jiffies of all cores.
    busy: u64,
    total: u64,
    /// UDP datagrams sent by the whole machine (`/proc/net/snmp`, `OutDatagrams`): on
    /// loopback, every packet of both sides once.
    udp_out: u64,
    /// The servers' threads: nanoseconds waited on a run queue, and times run
    /// (`/proc/<pid>/task/*/schedstat`).
    runq_wait_ns: u64,
    runs: u64,
}

impl Sample {
    /// Reads the counters now, for the servers `pids`.
    pub(crate) fn now(pids: &[u32]) -> Sample {
        let (busy, total) = cores_jiffies().unwrap_or((0, 0));
        let (runq_wait_ns, runs) = pids
            .iter()
            .map(|&p| schedstat_of(p))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        Sample {
            server_cpu: pids
                .iter()
                .filter_map(|&p| crate::serverproc::cpu_secs_of(p).ok())
                .sum(),
            generator_cpu: crate::serverproc::cpu_secs_of(std::process::id()).unwrap_or(0.0),
            busy,
            total,
            udp_out: udp_out_datagrams().unwrap_or(0),
            runq_wait_ns,
            runs,
        }
    }

    /// What was spent from `self` to `end`, per message of `messages`.
    pub(crate) fn until(&self, end: &Sample, messages: u64) -> PhaseCost {
        let per = |x: f64| x / messages.max(1) as f64;
        let total = end.total.saturating_sub(self.total);
        let runs = end.runs.saturating_sub(self.runs);
        PhaseCost {
            server_us_per_msg: per(end.server_cpu - self.server_cpu) * 1e6,
            generator_us_per_msg: per(end.generator_cpu - self.generator_cpu) * 1e6,
            cores_busy: if total == 0 {
                0.0
            } else {
                end.busy.saturating_sub(self.busy) as f64 / total as f64
            },
            udp_datagrams_per_msg: per(end.udp_out.saturating_sub(self.udp_out) as f64),
            server_runq_wait_us: if runs == 0 {
                0.0
            } else {
                end.runq_wait_ns.saturating_sub(self.runq_wait_ns) as f64 / runs as f64 / 1e3
            },
        }
    }
}

/// What a latency phase cost the machine (see the module's doc).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PhaseCost {
    /// The servers' CPU per message, µs.
    pub server_us_per_msg: f64,
    /// The load generator's CPU per message, µs.
    pub generator_us_per_msg: f64,
    /// Busy share of all the machine's cores (1.0 = every core busy all the time).
    pub cores_busy: f64,
    /// UDP datagrams sent on the machine (both sides) per message.
    pub udp_datagrams_per_msg: f64,
    /// Mean time a server thread waited on a run queue before each time it ran, µs.
    pub server_runq_wait_us: f64,
}

/// Busy and total jiffies of all cores from `/proc/stat` (idle and iowait are not busy).
fn cores_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// `OutDatagrams` of the `Udp:` lines of `/proc/net/snmp`.
fn udp_out_datagrams() -> Option<u64> {
    parse_udp_out(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

fn parse_udp_out(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "OutDatagrams")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Run-queue wait (ns) and run count of every thread of `pid` (0 if unreadable).
fn schedstat_of(pid: u32) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    dir.filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            let mut f = s.split_whitespace().skip(1).map(|x| x.parse::<u64>().ok());
            Some((f.next()??, f.next()??))
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_counts_idle_and_iowait_as_not_busy() {
        let (busy, total) = parse_cpu_line("cpu  100 5 50 800 20 3 7 15 0 0").unwrap();
        assert_eq!(total, 1000);
        assert_eq!(busy, 180);
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn udp_out_datagrams_is_read_by_its_column_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 10 0 0 42 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(parse_udp_out(snmp), Some(42));
    }

    #[test]
    fn a_phase_cost_divides_by_the_messages() {
        let a = Sample {
            server_cpu: 1.0,
            generator_cpu: 0.5,
            busy: 100,
            total: 200,
            udp_out: 1000,
            runq_wait_ns: 0,
            runs: 10,
        };
        let b = Sample {
            server_cpu: 2.0,
            generator_cpu: 1.0,
            busy: 250,
            total: 400,
            udp_out: 5000,
            runq_wait_ns: 2_000_000,
            runs: 1010,
        };
        let c = a.until(&b, 1000);
        assert!((c.server_us_per_msg - 1000.0).abs() < 1e-6);
        assert!((c.generator_us_per_msg - 500.0).abs() < 1e-6);
        assert!((c.cores_busy - 0.75).abs() < 1e-9);
        assert!((c.udp_datagrams_per_msg - 4.0).abs() < 1e-9);
        assert!((c.server_runq_wait_us - 2.0).abs() < 1e-9);
        // this process and /proc are readable on Linux
        let now = Sample::now(&[std::process::id()]);
        assert!(now.total > 0 && now.runs > 0);
    }
}
