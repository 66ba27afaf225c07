//! One client connection, from handshake to close.
//!
//! A session is one task that owns the connection's send side and a small amount of
//! state: the push QoS engine ([`tern_protocol::qos::Sender`] keyed by inbox seq), the
//! rate limiter, and the requests in flight. Everything that can be slow happens
//! off the loop: store operations and reads run as futures the loop polls alongside its
//! queues. So a slow disk never stalls heartbeats, and a session never blocks another
//! one. Over QUIC the loop reads the peer's frames itself ([`Input`]: datagrams and the
//! session stream, no reader task between them and the loop); a byte stream is read by
//! a reader task.
//!
//! Order of a session's sends is kept by queueing each store write when its frame is
//! handled ([`crate::store::Store::store_message`] is ordered at call time), even though results may
//! come back to the client in any order (they carry the client message id).
//!
//! The files: `login` (handshake to registered session), `requests` (what the client
//! asks), `push` (push QoS and delivery ACKs), `tally` (bytes per frame kind) and `hot`
//! (the metrics every message touches); this file holds the loop that multiplexes them.

mod hot;
mod login;
mod push;
mod requests;
mod tally;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tern_protocol::frame::Frame;
use tern_protocol::input::Input;
use tern_protocol::io::Inbound;
use tern_protocol::link::{Link, Transport};
use tern_protocol::qos::Sender;
use tern_protocol::redundancy::{LossMeter, copy_delay};
use tern_protocol::{ErrorCode, pb};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use self::push::PushKey;
use self::requests::send_result;
use crate::registry::SessionCmd;
use crate::state::Shared;
use tern_protocol::rate::TokenBucket;

/// Time allowed from handshake to a complete `Login` frame.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `Login` frame (a token and a few ids): anything larger is refused before
/// the server buffers it.
pub const MAX_LOGIN_FRAME: usize = 8 * 1024;
/// A write that cannot make progress for this long ends the session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest sync page.
pub const MAX_SYNC_PAGE: u32 = 500;
/// Sync page size when the client asks for 0.
const DEFAULT_SYNC_PAGE: u32 = 200;
/// Most conversations per summaries response.
pub const MAX_SUMMARIES: u32 = 200;
/// Most recent messages per conversation summary.
pub const MAX_SUMMARY_MESSAGES: u32 = 20;
/// Reads (pages) one session may have in flight; with more, the session stops reading
/// its stream until one is answered (QUIC flow control then stops the client), so a
/// client that pipelines requests and never reads the answers holds at most this many
/// pages of server memory.
pub const MAX_READS_IN_FLIGHT: usize = 4;
/// Writes (sends, marks, recalls, group changes) one session may have in flight
/// before it stops reading its stream.
pub const MAX_WRITES_IN_FLIGHT: usize = 256;

/// The request id of a frame that asks for an answer.
fn request_id(frame: &Frame) -> Option<u64> {
    Some(match frame {
        Frame::SyncRequest(r) => r.request_id,
        Frame::SummariesRequest(r) => r.request_id,
        Frame::LogsRequest(r) => r.request_id,
        Frame::MarkRead(r) => r.request_id,
        Frame::RecallRequest(r) => r.request_id,
        Frame::PushTokenRequest(r) => r.request_id,
        Frame::HistoryRequest(r) => r.request_id,
        Frame::GroupRequest(r) => r.request_id,
        _ => return None,
    })
}

fn code_name(code: ErrorCode) -> &'static str {
    code.as_str_name()
}

/// Accepts one connection and runs its session to the end. `unauthenticated` (a slot
/// of `max_unauthenticated`) is released once the connection logged in or gave up.
pub async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    unauthenticated: tokio::sync::OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            metrics::counter!("tern_handshake_failures_total").increment(1);
            return;
        }
    };
    // Boxed: the login future is large and short-lived; inline, it would size the task
    // of every session for its whole life.
    let session = Box::pin(login::login(&shared, conn)).await;
    drop(unauthenticated);
    if let Some(session) = session {
        session.run().await;
    }
}

/// Accepts byte-stream connections on `listener` until `stop` changes: TLS over TCP
/// (the fallback where UDP is blocked) or WebSocket over TLS (browsers, networks that
/// pass only HTTPS), as `transport` says. Each takes a slot of `max_unauthenticated`
/// before any work (none free: closed at once).
pub async fn accept_streams(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    transport: Transport,
    acceptor: tokio_rustls::TlsAcceptor,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => match shared.unauthenticated.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(handle_stream(
                            shared.clone(), stream, remote, transport, acceptor.clone(), permit,
                        ));
                    }
                    Err(_) => {
                        metrics::counter!("tern_connections_refused_total", "reason" => "unauthenticated").increment(1);
                    }
                },
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(transport = transport.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}

/// Runs one byte-stream connection to the end: the TLS handshake (and for WebSocket
/// the upgrade) and the `Login` frame within [`LOGIN_TIMEOUT`] each, then the same
/// session as over QUIC, every frame on the stream.
async fn handle_stream(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    remote: std::net::SocketAddr,
    transport: Transport,
    acceptor: tokio_rustls::TlsAcceptor,
    unauthenticated: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let open = async {
        let tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(match transport {
            Transport::WebSocket => {
                let ws = tokio_tungstenite::accept_async_with_config(
                    tls,
                    Some(tern_protocol::link::websocket_config()),
                )
                .await
                .map_err(|e| e.to_string())?;
                tern_protocol::link::websocket_stream(ws)
            }
            _ => {
                let (read, write) = tokio::io::split(tls);
                let read: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin> = Box::new(read);
                let write: tern_protocol::link::StreamWriter = Box::new(write);
                (read, write)
            }
        })
    };
    let (read, write) = match timeout(LOGIN_TIMEOUT, open).await {
        Ok(Ok(halves)) => halves,
        outcome => {
            if let Ok(Err(e)) = outcome {
                tracing::debug!(%remote, transport = transport.as_str(), error = %e, "handshake failed");
            }
            metrics::counter!("tern_handshake_failures_total").increment(1);
            return;
        }
    };
    let session = Box::pin(login::login_stream(&shared, transport, read, write, remote)).await;
    drop(unauthenticated);
    if let Some(session) = session {
        session.run().await;
    }
}

/// Why a session loop ended.
enum End {
    /// Connection or stream gone.
    Gone(String),
    /// The session must close with this code (frame already sent).
    Close(ErrorCode, &'static str),
}

/// One logged-in session (see the module docs).
struct Session {
    shared: Arc<Shared>,
    /// The connection (QUIC, or a TLS byte stream): see [`Link`].
    link: Link,
    id: u64,
    user: String,
    device: String,
    platform: pb::Platform,
    cmd_rx: mpsc::Receiver<SessionCmd>,
    /// The peer's frames (QUIC: read by this loop itself, no reader task).
    input: Input,
    /// Keyed by (log number, seq).
    push_qos: Sender<PushKey, Arc<pb::TimelineEntry>>,
    /// The newest entry of each log skipped while the push window was full (at most
    /// one per log), pushed when there is room.
    tail: Vec<(PushKey, Arc<pb::TimelineEntry>)>,
    /// Large groups whose log entries this session pushed; a group's number is its
    /// index + 1.
    logs: Vec<Arc<str>>,
    /// The send budget (every frame but ACKs and heartbeats).
    bucket: TokenBucket,
    /// The flood guard for ACKs and heartbeats.
    control_bucket: TokenBucket,
    /// The highest delivery cursor this session wrote: an ACK at or below it costs no
    /// write (set by the write itself, so an ACK refused as busy is retried).
    acked_cursor: Arc<std::sync::atomic::AtomicU64>,
    /// The head of the user's timeline last told to the device (at login, in a heartbeat
    /// reply): in a cluster a quiet keepalive is answered when the head moved past it and
    /// past the device's ACKs (a push lost between nodes), and only then.
    head_told: u64,
    /// Sends and other writes in flight (each holds one small frame's worth of state).
    tasks: FuturesUnordered<BoxFuture<'static, Option<Frame>>>,
    /// Reads in flight (sync, history, summaries, logs, groups): each answer may be a
    /// full page, so at most [`MAX_READS_IN_FLIGHT`] at once.
    reads: FuturesUnordered<BoxFuture<'static, Option<Frame>>>,
    last_rx: Instant,
    /// The device's sends back in its order (datagrams arrive out of order).
    order: tern_protocol::send_order::SendOrder,
    /// The client sends in datagrams: send results go back in datagrams too (its QoS
    /// engine retransmits a send whose result was lost). A client that sends on the
    /// stream gets them on the stream.
    chat_datagrams: bool,
    /// The latest send results (encoded), repeated in the datagram of the next one while
    /// the path is measured lossy: a lost result is then usually repaired by the next
    /// send's answer instead of by the client resending the message a retransmission
    /// timeout later.
    recent_results: std::collections::VecDeque<bytes::Bytes>,
    /// The path's measured loss: while it is lossy, the latest results go once more
    /// ([`tern_protocol::redundancy`]).
    loss: LossMeter,
    loss_fed: Instant,
    /// When the latest results are repeated (lossy path, after a result datagram).
    repeat_results_at: Option<Instant>,
    /// In a cluster: this user's subject stays subscribed while the session lives.
    _cluster_watch: Option<crate::cluster::Watch>,
    /// In a cluster: the subjects of the user's large groups (their log entries).
    group_watches: GroupWatches,
}

/// The large groups whose subjects a session keeps subscribed (filled by its `Logs`
/// answer and by large-group events pushed to it).
pub(crate) type GroupWatches =
    Arc<std::sync::Mutex<std::collections::HashMap<String, crate::cluster::Watch>>>;

/// Subscribes (in the background) to the subjects of `groups` not yet in `watches`.
pub(crate) fn watch_groups(shared: &Shared, watches: &GroupWatches, groups: Vec<String>) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    let new: Vec<String> = {
        let held = watches.lock().expect("lock");
        groups
            .into_iter()
            .filter(|g| !held.contains_key(g))
            .collect()
    };
    if new.is_empty() {
        return;
    }
    let watches = watches.clone();
    tokio::spawn(async move {
        for g in new {
            match cluster.watch_group(&g).await {
                Ok(w) => {
                    watches.lock().expect("lock").insert(g, w);
                }
                Err(e) => tracing::debug!(group = %g, error = %e, "large group not subscribed"),
            }
        }
    });
}

/// How many earlier send results ride along with each new one.
const REPEATED_RESULTS: usize = 2;

impl Session {
    async fn run(mut self) {
        let end = self.run_loop().await;
        self.shared.registry.unregister(&self.user, self.id);
        metrics::gauge!("tern_sessions").set(self.shared.registry.len() as f64);
        match end {
            End::Gone(why) => {
                tracing::info!(user = %self.user, device = %self.device, session = self.id, %why, "session ended");
                self.link.close(0, b"bye");
            }
            End::Close(code, why) => {
                tracing::info!(user = %self.user, session = self.id, code = code_name(code), why, "session closed");
                // Replies already under way (e.g. results of messages the store has
                // committed) still go out before the close.
                let drain = async {
                    while let Some(reply) = self.tasks.next().await {
                        if let Some(frame) = reply {
                            let bytes = frame.to_bytes(0);
                            tally::sent_bytes(&bytes);
                            if self.link.write_stream(&bytes, WRITE_TIMEOUT).await.is_err() {
                                break;
                            }
                        }
                    }
                };
                let _ = timeout(Duration::from_secs(2), drain).await;
                self.link.finish().await;
                self.link.closed(Duration::from_millis(500)).await;
                self.link.close(code as u32, why.as_bytes());
            }
        }
    }

    /// Sends a frame: in a datagram when it is a QoS frame that fits (see
    /// [`FrameKind::prefers_datagram`](tern_protocol::FrameKind::prefers_datagram)),
    /// otherwise on the session stream.
    async fn write(&mut self, frame: &Frame, flags: u8) -> Result<(), End> {
        if let Frame::SendResult(r) = frame {
            let bytes = frame.to_bytes(flags);
            if self.chat_datagrams && self.send_result_datagram(r, &bytes) {
                return Ok(());
            }
            tally::sent_bytes(&bytes);
            return self
                .link
                .write_stream(&bytes, WRITE_TIMEOUT)
                .await
                .map_err(|e| End::Gone(e.to_string()));
        }
        tally::sent(frame);
        self.link
            .write_frame(frame, flags, WRITE_TIMEOUT)
            .await
            .map_err(|e| End::Gone(e.to_string()))
    }

    /// Sends a send result in a datagram with the latest earlier results behind it
    /// (see [`Session::recent_results`]); `false` if it must go on the stream.
    fn send_result_datagram(&mut self, r: &pb::SendResult, bytes: &bytes::Bytes) -> bool {
        let Some(max) = self.link.max_datagram_size() else {
            return false;
        };
        if bytes.len() > max {
            return false;
        }
        let mut datagram = bytes::BytesMut::from(&bytes[..]);
        // Only on a path measured lossy (window or not: they add no packet): on a clean
        // one the two results behind every answer were 66 of a message's 565 bytes on
        // the wire (`tern-bench wire`) and repaired nothing.
        if self.loss.lossy() {
            self.pack_recent_results(&mut datagram, max);
        }
        let datagram = datagram.freeze();
        if !self.link.send_datagram(datagram.clone()) {
            return false;
        }
        tally::sent_bytes(&datagram);
        if r.code == ErrorCode::Ok as i32 {
            if self.recent_results.len() == REPEATED_RESULTS {
                self.recent_results.pop_front();
            }
            self.recent_results.push_back(bytes.clone());
            if self.loss.redundant() && self.repeat_results_at.is_none() {
                self.repeat_results_at = Some(Instant::now() + copy_delay(self.link.rtt()));
            }
        }
        true
    }

    /// Appends the latest results, newest first, as far as they fit in `max` bytes.
    fn pack_recent_results(&self, datagram: &mut bytes::BytesMut, max: usize) {
        for r in self.recent_results.iter().rev() {
            if datagram.len() + r.len() <= max {
                datagram.extend_from_slice(r);
            }
        }
    }

    /// On a lossy path, the latest results once more, a little after they went: the
    /// last sends of a burst have no later answer to carry theirs, and would otherwise
    /// wait for the client's retransmission timer when an answer is lost.
    fn repeat_results(&mut self) {
        self.repeat_results_at = None;
        let Some(max) = self.link.max_datagram_size() else {
            return;
        };
        let mut datagram = bytes::BytesMut::new();
        self.pack_recent_results(&mut datagram, max);
        let datagram = datagram.freeze();
        if !datagram.is_empty() && self.link.send_datagram(datagram.clone()) {
            tally::sent_bytes(&datagram);
            metrics::counter!("tern_send_results_repeated_total").increment(1);
        }
    }

    /// Feeds the path's packet counts to the loss meter, at most once a second.
    fn measure_loss(&mut self) {
        if self.shared.config.loss_copies && self.loss_fed.elapsed() >= Duration::from_secs(1) {
            self.loss_fed = Instant::now();
            if let Some(sample) = self.link.path_sample() {
                self.loss.on_sample(sample, std::time::Instant::now());
            }
        }
    }

    /// Writes the answer of a request that finished; an `OUT_OF_ORDER` from the store
    /// also resets the send order to the store's (and sends held behind it go on).
    async fn on_reply(&mut self, frame: Frame) -> Result<(), End> {
        if let Frame::SendResult(r) = &frame {
            if r.code == ErrorCode::OutOfOrder as i32 {
                for m in self.order.resync(r.expected_send_seq) {
                    self.on_chat(m).await?;
                }
            }
        }
        self.write(&frame, 0).await
    }

    async fn run_loop(&mut self) -> End {
        let hb_timeout = self.shared.config.heartbeat_timeout;
        loop {
            let qos_at = self.push_qos.poll_timeout().map(Instant::from_std);
            let repeat_at = self.repeat_results_at;
            let idle_at = self.last_rx + hb_timeout;
            let step = tokio::select! {
                // Handlers are boxed: inline, their futures made every session's task
                // (idle ones included) as large as the largest handler.
                cmd = self.cmd_rx.recv() => Box::pin(self.on_command(cmd)).await,
                inbound = self.input.recv(),
                    if self.reads.len() < MAX_READS_IN_FLIGHT && self.tasks.len() < MAX_WRITES_IN_FLIGHT
                => match inbound {
                    Some(Inbound::Frame(f)) => {
                        self.last_rx = Instant::now();
                        tally::received(&f);
                        Box::pin(self.on_frame(*f)).await
                    }
                    Some(Inbound::Datagram(f)) => {
                        self.last_rx = Instant::now();
                        tally::received(&f);
                        self.measure_loss();
                        self.chat_datagrams |= matches!(*f, Frame::Chat(_));
                        Box::pin(self.on_frame(*f)).await
                    }
                    Some(Inbound::Invalid(e)) => {
                        tracing::info!(user = %self.user, error = %e, "bad frame");
                        metrics::counter!("tern_frames_rejected_total", "code" => code_name(e.code())).increment(1);
                        let f = Frame::error(e.code(), e.to_string(), 0);
                        match Box::pin(self.write(&f, 0)).await {
                            Ok(()) => Err(End::Close(e.code(), "bad frame")),
                            Err(end) => Err(end),
                        }
                    }

                    Some(Inbound::Closed(why)) => Err(End::Gone(why)),
                    None => Err(End::Gone("input ended".into())),
                },
                Some(reply) = self.tasks.next(), if !self.tasks.is_empty() => match reply {
                    Some(frame) => Box::pin(self.on_reply(frame)).await,
                    None => Ok(()),
                },
                Some(reply) = self.reads.next(), if !self.reads.is_empty() => match reply {
                    Some(frame) => Box::pin(self.write(&frame, 0)).await,
                    None => Ok(()),
                },
                _ = sleep_until(qos_at.unwrap_or(idle_at)), if qos_at.is_some() => Box::pin(self.on_qos_timer()).await,
                _ = sleep_until(repeat_at.unwrap_or(idle_at)), if repeat_at.is_some() => {
                    self.repeat_results();
                    Ok(())
                }
                _ = sleep_until(idle_at) => {
                    tracing::info!(user = %self.user, session = self.id, "heartbeat timeout");
                    metrics::counter!("tern_sessions_expired_total").increment(1);
                    let kick = Frame::Kickout(pb::Kickout {
                        reason: pb::KickReason::IdleTimeout as i32,
                        text: "no heartbeat".into(),
                    });
                    let _ = Box::pin(self.write(&kick, 0)).await;
                    Err(End::Close(ErrorCode::Ok, "idle timeout"))
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_command(&mut self, cmd: Option<SessionCmd>) -> Result<(), End> {
        match cmd {
            Some(SessionCmd::Push(p)) => self.push(p).await,
            Some(SessionCmd::Kick { reason, text }) => {
                metrics::counter!("tern_kickouts_total", "reason" => reason.as_str_name())
                    .increment(1);
                self.write(
                    &Frame::Kickout(pb::Kickout {
                        reason: reason as i32,
                        text,
                    }),
                    0,
                )
                .await?;
                Err(End::Close(ErrorCode::Ok, "kicked out"))
            }
            None => Err(End::Close(ErrorCode::Ok, "session queue closed")),
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        // Sends and requests spend the send budget announced at login; ACKs and
        // heartbeats (cheap, and what the server's own pushes ask for) spend a flood
        // guard of ten times that instead, so a client that paces its sends to the budget
        // is never refused however many pushes it acknowledges.
        let control = matches!(frame, Frame::DeliveryAck(_) | Frame::Heartbeat(_));
        let now = Instant::now().into_std();
        let bucket = if control {
            &mut self.control_bucket
        } else {
            &mut self.bucket
        };
        if !bucket.take(now) {
            metrics::counter!("tern_rate_limited_total").increment(1);
            if bucket.flooding() {
                tracing::warn!(user = %self.user, session = self.id, "flood: closing session");
                let f = Frame::error(ErrorCode::RateLimited, "too many frames", 0);
                self.write(&f, 0).await?;
                return Err(End::Close(ErrorCode::RateLimited, "flood"));
            }
            if let Frame::Chat(m) = frame {
                let r = send_result(m.client_msg_id, ErrorCode::RateLimited);
                return self.write(&r, 0).await;
            }
            // A refused request is answered too (the client retries it later), never
            // silently dropped; ACKs and heartbeats over the flood guard are dropped.
            if let Some(request_id) = request_id(&frame) {
                let f = Frame::error(ErrorCode::RateLimited, "over the send budget", request_id);
                return self.write(&f, 0).await;
            }
            return Ok(());
        }
        match frame {
            Frame::Chat(m) => self.on_send(m).await,
            Frame::DeliveryAck(a) => {
                self.on_delivery_ack(a);
                self.push_tails().await
            }
            // A quiet keepalive outside a cluster: arriving was its purpose (the session's
            // idle timer is reset above); QUIC's ACK is the client's answer.
            Frame::Heartbeat(h) if h.quiet && self.shared.cluster.is_none() => Ok(()),
            Frame::Heartbeat(h) => {
                // In a cluster the head goes along (a store read per heartbeat): what a
                // lost hint between nodes did not push is pulled now. A quiet keepalive
                // is answered only then: when the head moved past what the device was
                // told and acknowledged.
                let inbox_head_seq = match &self.shared.cluster {
                    Some(_) => self.shared.store.head_seq(&self.user).await.unwrap_or(0),
                    None => 0,
                };
                let acked = self.acked_cursor.load(std::sync::atomic::Ordering::Relaxed);
                if h.quiet && inbox_head_seq <= self.head_told.max(acked) {
                    return Ok(());
                }
                self.head_told = self.head_told.max(inbox_head_seq);
                let reply = Frame::HeartbeatReply(pb::HeartbeatReply {
                    observed_addr: self.link.remote_address().to_string(),
                    server_time_ms: tern_protocol::unix_ms(),
                    inbox_head_seq,
                });
                self.write(&reply, 0).await
            }
            Frame::SyncRequest(r) => {
                self.on_sync(r);
                Ok(())
            }
            Frame::SummariesRequest(r) => {
                self.on_summaries(r);
                Ok(())
            }
            Frame::LogsRequest(r) => {
                self.on_logs(r);
                Ok(())
            }
            Frame::MarkRead(r) => {
                self.on_mark_read(r);
                Ok(())
            }
            Frame::RecallRequest(r) => {
                self.on_recall(r);
                Ok(())
            }
            Frame::PushTokenRequest(r) => {
                self.on_push_token(r);
                Ok(())
            }
            Frame::HistoryRequest(r) => {
                self.on_history(r);
                Ok(())
            }
            Frame::GroupRequest(r) => {
                self.on_group(r);
                Ok(())
            }
            Frame::Logout(_) => Err(End::Close(ErrorCode::Ok, "logout")),
            other => {
                tracing::info!(user = %self.user, kind = ?other.kind(), "unexpected frame");
                metrics::counter!("tern_frames_rejected_total", "code" => "UNEXPECTED_FRAME")
                    .increment(1);
                let f = Frame::error(
                    ErrorCode::UnexpectedFrame,
                    format!("{:?} is not valid here", other.kind()),
                    0,
                );
                self.write(&f, 0).await?;
                Err(End::Close(ErrorCode::UnexpectedFrame, "unexpected frame"))
            }
        }
    }
}
