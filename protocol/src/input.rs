//! The read side of a session's connection, read by the session loop itself (feature
//! `quinn`).
//!
//! Over QUIC, [`Input::recv`] reads the connection's datagrams and the session stream
//! inside the loop's own `select!`, with no task between quinn and the loop: quinn's
//! wake-up reaches the session's task directly. The frames used to come through two
//! reader tasks and a channel ([`Link::spawn_readers`], which the client still uses): a
//! channel send, a task wake-up and often a hop to the other core per frame, three
//! times for every relayed message (its send, the receiver's ACK, the sender's ACK of
//! the receipt), and two tasks and a channel held by every idle session. `recv` is
//! cancel-safe: the reads in progress are kept in the `Input`, not in its future.
//!
//! A byte-stream link (TLS, WebSocket) keeps its reader task behind a channel: its read
//! half is an `AsyncRead` whose `read_buf` needs a buffer held across the wait, and the
//! task's is released between frames ([`crate::io::pump_chunks`]).
//!
//! Measured against the reader tasks (docs/bench/analysis.md, eleventh round): msg/s
//! level, 2.2 KB less per idle session. A loop turns for every reply, push and timer,
//! and a poll of a quinn read takes the connection's lock, so [`Gated`] polls a read
//! only once quinn woke it. Two other forms measured lower: the reads made anew and
//! polled at every turn (0.99× over three runs), and each read a boxed future in a
//! `FuturesUnordered` (allocations per datagram; 0.98× over six).
//!
//! Memory stays bounded by what the peer sent, as it was with the channel's 16 slots:
//! stream frames are decoded one at a time from the buffered chunk (a chunk of tiny
//! frames is never expanded into a queue of decoded ones), and a datagram's frames (at
//! most a datagram's worth) are queued before the next read. The buffer is released
//! whenever it holds no partial frame, so an idle session holds none.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, Stream, StreamExt};
use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;

use crate::frame;
use crate::io::{Inbound, datagram_events, read_quic_chunk, stream_ended};
use crate::link::{Link, Reader, spawn_stream_reader};

/// What a session reads its peer's frames from (see the module docs).
pub struct Input {
    source: Source,
    /// Frames of a datagram not handed out yet.
    queued: VecDeque<Inbound>,
    max_body: usize,
}

enum Source {
    /// QUIC: the connection's datagrams and the session stream, read directly.
    Quic {
        /// Ends after the connection's error (fused: `None` from then on).
        datagrams: Gated<BoxStream<'static, Result<Bytes, quinn::ConnectionError>>>,
        /// The session stream's chunks.
        chunks: Gated<BoxStream<'static, Result<Option<Bytes>, String>>>,
        /// Stream bytes read and not yet decoded (at most one partial frame once the
        /// whole frames before it are handed out).
        buf: BytesMut,
        /// The stream ended or sent bytes that are not a frame: reported once, then
        /// nothing more is read from it.
        done: bool,
    },
    /// A byte stream, read by its own task.
    Channel(mpsc::Receiver<Inbound>),
}

/// A stream polled only once it woke (or yielded): a session loop turns for every
/// reply, push and timer, and polling quinn's reads at each turn takes the connection's
/// lock. Like `FuturesUnordered` for one stream, without an allocation per item.
struct Gated<S> {
    stream: S,
    flag: Arc<Flag>,
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<S: Stream + Unpin> Gated<S> {
    fn new(stream: S) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gated {
            stream,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        match Pin::new(&mut self.stream).poll_next(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(item) => {
                // More may be ready without a wake-up.
                self.flag.woken.store(true, Ordering::Release);
                Poll::Ready(item)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn datagrams(conn: quinn::Connection) -> BoxStream<'static, Result<Bytes, quinn::ConnectionError>> {
    futures_util::stream::unfold(Some(conn), |conn| async move {
        let conn = conn?;
        match conn.read_datagram().await {
            Ok(d) => Some((Ok(d), Some(conn))),
            Err(e) => Some((Err(e), None)),
        }
    })
    .fuse()
    .boxed()
}

fn chunks(recv: quinn::RecvStream) -> BoxStream<'static, Result<Option<Bytes>, String>> {
    futures_util::stream::unfold(Some(recv), |recv| async move {
        let mut recv = recv?;
        let read = read_quic_chunk(&mut recv).await;
        // Only a chunk is followed by more: an end or an error is the last item.
        let more = matches!(read, Ok(Some(_)));
        Some((read, more.then_some(recv)))
    })
    .fuse()
    .boxed()
}

impl Input {
    /// The input of a session on `link`: `buf` holds stream bytes already read past the
    /// login frame. A byte stream gets its reader task (and a channel of `capacity`
    /// frames) here.
    pub fn new(
        link: &Link,
        reader: Reader,
        buf: BytesMut,
        max_body: usize,
        capacity: usize,
    ) -> Self {
        let source = match (link, reader) {
            (Link::Quic { conn, .. }, Reader::Quic(recv)) => Source::Quic {
                datagrams: Gated::new(datagrams(conn.clone())),
                chunks: Gated::new(chunks(recv)),
                buf,
                done: false,
            },
            (_, Reader::Stream(read)) => {
                let (tx, rx) = mpsc::channel(capacity);
                spawn_stream_reader(read, buf, max_body, tx);
                Source::Channel(rx)
            }
            (Link::Stream { .. }, Reader::Quic(_)) => {
                unreachable!("a stream link is read from its stream")
            }
        };
        Input {
            source,
            queued: VecDeque::new(),
            max_body,
        }
    }

    /// The next frame (or the event that ends the session: `Invalid`, `Closed`).
    /// `None` once the input is over. Cancel-safe: dropped before it completes, it
    /// loses nothing.
    pub async fn recv(&mut self) -> Option<Inbound> {
        let Input {
            source,
            queued,
            max_body,
        } = self;
        let (datagrams, chunks, buf, done) = match source {
            Source::Channel(rx) => return rx.recv().await,
            Source::Quic {
                datagrams,
                chunks,
                buf,
                done,
            } => (datagrams, chunks, buf, done),
        };
        loop {
            if let Some(event) = queued.pop_front() {
                return Some(event);
            }
            if !*done {
                match frame::decode_buf(buf, *max_body) {
                    Ok(Some((_, f))) => return Some(Inbound::Frame(Box::new(f))),
                    Ok(None) => {
                        if buf.is_empty() && buf.capacity() > 0 {
                            *buf = BytesMut::new();
                        }
                    }
                    Err(e) => {
                        *done = true;
                        return Some(Inbound::Invalid(e));
                    }
                }
            }
            let stream_open = !*done;
            tokio::select! {
                Some(d) = std::future::poll_fn(|cx| datagrams.poll_next(cx)) => match d {
                    Ok(d) => queued.extend(datagram_events(&d, *max_body)),
                    // The connection is gone: said once (unless the stream already
                    // ended the input), then the input is over.
                    Err(_) if *done => return None,
                    Err(e) => {
                        *done = true;
                        return Some(Inbound::Closed(format!("connection lost: {e}")));
                    }
                },
                Some(read) = std::future::poll_fn(|cx| chunks.poll_next(cx)), if stream_open => match read {
                    Ok(Some(bytes)) => buf.extend_from_slice(&bytes),
                    Ok(None) => {
                        *done = true;
                        return Some(stream_ended(buf));
                    }
                    Err(e) => {
                        *done = true;
                        return Some(Inbound::Closed(e));
                    }
                },
                else => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::frame::Frame;
    use crate::pb;

    const MAX_BODY: usize = 64 * 1024;

    /// A QUIC connection over loopback with its session stream open: the server's
    /// `Input` and the client's connection and stream send side.
    async fn pair() -> (Input, quinn::Connection, quinn::SendStream, quinn::Endpoint) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        crypto.alpn_protocols = vec![crate::ALPN.to_vec()];
        let config = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap(),
        ));
        let server = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(crate::io::client_config(roots).unwrap());
        let addr = server.local_addr().unwrap();
        let connecting = client.connect(addr, "localhost").unwrap();
        let (server_conn, conn) = tokio::join!(
            async { server.accept().await.unwrap().await.unwrap() },
            connecting
        );
        let conn = conn.unwrap();
        let mut send = conn.open_bi().await.unwrap().0;
        // A stream is announced to the peer with its first bytes.
        send.write_all(&heartbeat(1).to_bytes(0)).await.unwrap();
        let (server_send, recv) = server_conn.accept_bi().await.unwrap();
        let link = Link::Quic {
            conn: server_conn,
            send: server_send,
        };
        let input = Input::new(&link, Reader::Quic(recv), BytesMut::new(), MAX_BODY, 16);
        (input, conn, send, client)
    }

    fn heartbeat(interval_ms: u32) -> Frame {
        Frame::Heartbeat(pb::Heartbeat {
            interval_ms,
            quiet: false,
        })
    }

    /// The heartbeat's interval, and whether it came in a datagram.
    fn interval(event: Option<Inbound>) -> (u32, bool) {
        match event {
            Some(Inbound::Frame(f)) => match *f {
                Frame::Heartbeat(h) => (h.interval_ms, false),
                other => panic!("unexpected frame {other:?}"),
            },
            Some(Inbound::Datagram(f)) => match *f {
                Frame::Heartbeat(h) => (h.interval_ms, true),
                other => panic!("unexpected frame {other:?}"),
            },
            other => panic!("unexpected event {other:?}"),
        }
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_gated_stream_is_polled_only_after_it_woke_or_yielded() {
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polls.clone();
        let stream = futures_util::stream::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            rx.poll_recv(cx)
        });
        let mut gated = Gated::new(Box::pin(stream));
        let task = Arc::new(Count::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let polls_now = || polls.load(Ordering::Relaxed);

        // First poll: polled, nothing there.
        assert!(gated.poll_next(&mut cx).is_pending());
        assert_eq!(polls_now(), 1);
        // Polled again with no wake-up in between (another branch of the loop woke the
        // task): the stream is not polled.
        assert!(gated.poll_next(&mut cx).is_pending());
        assert_eq!(polls_now(), 1);
        // An item wakes the stream, which wakes the task; the next poll yields it.
        tx.send(7).unwrap();
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
        assert_eq!(gated.poll_next(&mut cx), Poll::Ready(Some(7)));
        // After an item the stream is polled again without a wake-up (more may be
        // there): here one more is.
        tx.send(8).unwrap();
        assert_eq!(gated.poll_next(&mut cx), Poll::Ready(Some(8)));
        assert!(gated.poll_next(&mut cx).is_pending());
        let before = polls_now();
        assert!(gated.poll_next(&mut cx).is_pending());
        assert_eq!(polls_now(), before, "not polled without a wake-up");
    }

    #[tokio::test]
    async fn reads_datagrams_and_stream_frames_and_loses_nothing_when_dropped() {
        let (mut input, conn, mut send, _client) = pair().await;
        assert_eq!(interval(input.recv().await), (1, false));

        // Dropped while waiting (another branch of the loop won), many times over:
        // nothing is lost.
        for _ in 0..5 {
            let waited = tokio::time::timeout(Duration::from_millis(10), input.recv()).await;
            assert!(waited.is_err(), "nothing was sent yet");
        }

        // A datagram holding two frames: both, in order, as datagram frames.
        let mut two = heartbeat(2).to_bytes(0).to_vec();
        two.extend_from_slice(&heartbeat(3).to_bytes(0));
        conn.send_datagram(two.into()).unwrap();
        assert_eq!(interval(input.recv().await), (2, true));
        assert_eq!(interval(input.recv().await), (3, true));

        // A stream frame split across two writes, and three whole frames in one write:
        // each comes out once, in order.
        let bytes = heartbeat(4).to_bytes(0);
        send.write_all(&bytes[..3]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), input.recv()).await;
        assert!(waited.is_err(), "half a frame is not a frame");
        send.write_all(&bytes[3..]).await.unwrap();
        assert_eq!(interval(input.recv().await), (4, false));
        let mut three = Vec::new();
        for i in 5..8 {
            three.extend_from_slice(&heartbeat(i).to_bytes(0));
        }
        send.write_all(&three).await.unwrap();
        for i in 5..8 {
            assert_eq!(interval(input.recv().await), (i, false));
        }

        // Bytes that are not a frame, in a datagram: reported, and the input goes on.
        conn.send_datagram(vec![0xff; 40].into()).unwrap();
        assert!(matches!(input.recv().await, Some(Inbound::Invalid(_))));
        conn.send_datagram(heartbeat(8).to_bytes(0)).unwrap();
        assert_eq!(interval(input.recv().await), (8, true));

        // The stream finished between frames, then the connection closed: said once
        // each, then the input is over.
        send.finish().unwrap();
        match input.recv().await {
            Some(Inbound::Closed(why)) => assert_eq!(why, "stream finished"),
            other => panic!("unexpected event {other:?}"),
        }
        conn.close(0u32.into(), b"bye");
        assert!(input.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_that_ends_inside_a_frame_or_is_not_frames_is_reported() {
        let (mut input, conn, mut send, _client) = pair().await;
        assert_eq!(interval(input.recv().await), (1, false));
        let bytes = heartbeat(2).to_bytes(0);
        send.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        send.finish().unwrap();
        match input.recv().await {
            Some(Inbound::Closed(why)) => assert!(why.contains("inside a frame"), "{why}"),
            other => panic!("unexpected event {other:?}"),
        }
        // The connection lost: reported once, as the end of the input.
        drop(send);
        conn.close(0u32.into(), b"bye");
        assert!(input.recv().await.is_none());

        let (mut input, _conn, mut send, _client) = pair().await;
        assert_eq!(interval(input.recv().await), (1, false));
        send.write_all(&[0xff; 40]).await.unwrap();
        assert!(matches!(input.recv().await, Some(Inbound::Invalid(_))));
        // Nothing more is read from that stream.
        send.write_all(&heartbeat(3).to_bytes(0)).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), input.recv()).await;
        assert!(
            waited.is_err(),
            "the stream is not read past bytes that are not a frame"
        );
    }
}
