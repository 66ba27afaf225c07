//! Which server node to try next, when there are several.
//!
//! `ClientConfig::server` may name several nodes of a cluster, comma-separated, and each
//! host name may resolve to several addresses. Every QUIC handshake asks [`Servers`]
//! for an address: the last one that worked while it keeps working (a node's sessions
//! and caches are warm), else the next in turn, so that reconnect attempts (which race
//! with each other, see `connection::connect_racing`) spread over the nodes instead of
//! knocking on a dead one. A node that says it is going away (`Kickout
//! SERVER_SHUTDOWN`, a rolling restart) is skipped on the next attempt, and the client
//! reconnects at once instead of waiting out its backoff.
//!
//! The state is plain data behind a mutex; the only I/O is name resolution.

use std::net::SocketAddr;
use std::sync::Mutex;

/// The comma-separated entries of a `server` setting, trimmed, empty ones dropped.
pub fn entries(server: &str) -> Vec<String> {
    server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The first entry of a `server` setting (for the TCP and WebSocket defaults).
pub fn first(server: &str) -> String {
    entries(server).into_iter().next().unwrap_or_default()
}

#[derive(Debug, Default)]
struct State {
    /// The address that last completed a handshake, while nothing says it failed.
    last_good: Option<SocketAddr>,
    /// An address that said it is going away: not tried next.
    avoid: Option<SocketAddr>,
    /// The connection to `last_good` was lost: one more attempt goes there (the
    /// network may have blinked), the attempts racing beside it go elsewhere.
    retry_once: bool,
    /// Turn for the next address when there is no good one.
    cursor: usize,
    /// Addresses found by the last resolution.
    known: usize,
}

/// The server addresses of one client.
#[derive(Debug)]
pub struct Servers {
    entries: Vec<String>,
    state: Mutex<State>,
}

/// An address to try, with the host name its TLS certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Where to send the handshake.
    pub addr: SocketAddr,
    /// The `host:port` entry it came from.
    pub entry: String,
}

impl Servers {
    /// The addresses of a `server` setting.
    pub fn new(server: &str) -> Self {
        Servers {
            entries: entries(server),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every address the entries resolve to, in order (an entry that does not resolve
    /// is skipped; `Err` only when none does).
    pub async fn resolve(&self) -> Result<Vec<Candidate>, String> {
        let mut out = vec![];
        let mut errors = vec![];
        for entry in &self.entries {
            match tokio::net::lookup_host(entry.as_str()).await {
                Ok(addrs) => out.extend(addrs.map(|addr| Candidate {
                    addr,
                    entry: entry.clone(),
                })),
                Err(e) => errors.push(format!("resolve {entry}: {e}")),
            }
        }
        if out.is_empty() {
            return Err(if errors.is_empty() {
                format!("{} resolves to nothing", self.entries.join(","))
            } else {
                errors.join("; ")
            });
        }
        Ok(out)
    }

    /// The address the next handshake goes to.
    pub async fn pick(&self) -> Result<Candidate, String> {
        let all = self.resolve().await?;
        let mut st = self.state();
        st.known = all.len();
        Ok(choose(&mut st, all))
    }

    /// A handshake to `addr` completed.
    pub fn connected(&self, addr: SocketAddr) {
        let mut st = self.state();
        st.last_good = Some(addr);
        if st.avoid == Some(addr) {
            st.avoid = None;
        }
    }

    /// A handshake to `addr` failed, or its connection died: try another next.
    pub fn failed(&self, addr: SocketAddr) {
        let mut st = self.state();
        if st.last_good == Some(addr) {
            st.last_good = None;
        }
    }

    /// Whether there is more than one address to try (then handshakes race over them).
    pub fn several(&self) -> bool {
        self.entries.len() > 1 || self.state().known > 1
    }

    /// The current connection was lost: the first attempt goes back to its node, the
    /// rest in turn to the others (the node may be dead).
    pub fn lost(&self) {
        let mut st = self.state();
        st.retry_once = st.last_good.is_some();
    }

    /// The node of the current connection said it is going away: the next attempt goes
    /// elsewhere. Returns whether there is an elsewhere (then reconnect at once).
    pub fn going_away(&self) -> bool {
        let mut st = self.state();
        st.avoid = st.last_good.take();
        st.known > 1
    }
}

fn choose(st: &mut State, all: Vec<Candidate>) -> Candidate {
    if let Some(good) = st.last_good {
        if let Some(c) = all.iter().find(|c| c.addr == good) {
            if st.retry_once {
                st.retry_once = false;
                st.last_good = None;
            }
            return c.clone();
        }
    }
    let n = all.len();
    for _ in 0..n {
        let c = &all[st.cursor % n];
        st.cursor = st.cursor.wrapping_add(1);
        if Some(c.addr) != st.avoid || n == 1 {
            return c.clone();
        }
    }
    all[0].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(ports: &[u16]) -> Vec<Candidate> {
        ports
            .iter()
            .map(|p| Candidate {
                addr: format!("127.0.0.1:{p}").parse().unwrap(),
                entry: format!("127.0.0.1:{p}"),
            })
            .collect()
    }

    #[test]
    fn entries_are_split_and_trimmed() {
        assert_eq!(entries(" a:1, b:2 ,,c:3"), vec!["a:1", "b:2", "c:3"]);
        assert_eq!(first("a:1,b:2"), "a:1");
        assert_eq!(entries("a:1"), vec!["a:1"]);
    }

    #[test]
    fn prefers_the_last_good_rotates_otherwise_and_skips_a_leaving_node() {
        let s = Servers::new("x");
        let mut st = s.state();
        let all = cands(&[1, 2, 3]);
        // No good one yet: in turn.
        assert_eq!(choose(&mut st, all.clone()).addr.port(), 1);
        assert_eq!(choose(&mut st, all.clone()).addr.port(), 2);
        drop(st);
        // Node 2 worked: it stays the choice.
        s.connected(all[1].addr);
        let mut st = s.state();
        st.known = 3;
        for _ in 0..3 {
            assert_eq!(choose(&mut st, all.clone()).addr.port(), 2);
        }
        drop(st);
        // It goes away: never next, and there is somewhere else to go.
        assert!(s.going_away());
        let mut st = s.state();
        for _ in 0..6 {
            assert_ne!(choose(&mut st, all.clone()).addr.port(), 2);
        }
        drop(st);
        // A lost connection: one attempt goes back, the next ones in turn.
        s.connected(all[2].addr);
        s.lost();
        let mut st = s.state();
        assert_eq!(choose(&mut st, all.clone()).addr.port(), 3);
        let next = choose(&mut st, all.clone()).addr.port();
        let after = choose(&mut st, all.clone()).addr.port();
        assert_ne!(next, after, "in turn after the one retry");
        drop(st);
        // A failure of the good one clears it.
        s.connected(all[0].addr);
        s.failed(all[0].addr);
        assert!(s.state().last_good.is_none());
    }

    #[test]
    fn a_single_server_is_always_tried() {
        let s = Servers::new("x");
        let all = cands(&[7]);
        s.connected(all[0].addr);
        let mut st = s.state();
        st.known = 1;
        drop(st);
        assert!(!s.going_away(), "nowhere else to go: back off as before");
        let mut st = s.state();
        assert_eq!(choose(&mut st, all.clone()).addr.port(), 7);
    }

    #[tokio::test]
    async fn every_entry_resolves_and_a_bad_one_is_skipped() {
        // An entry without a port fails at once, without asking DNS.
        let s = Servers::new("127.0.0.1:1, no-port-given, 127.0.0.1:3");
        let all = s.resolve().await.unwrap();
        let ports: Vec<u16> = all.iter().map(|c| c.addr.port()).collect();
        assert_eq!(ports, vec![1, 3]);
        assert!(Servers::new("no-port-given").resolve().await.is_err());
    }
}
