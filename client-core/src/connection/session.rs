//! One connection's session: moves frames between the link and the sans-IO machines
//! that live across connections, and fires their timers (see the module docs of
//! `connection`). No protocol decision is made here.

use super::*;

/// The sans-IO state that lives across connections.
pub(super) struct Machines {
    /// Sends, sync, gaps, read marks, large-group logs.
    pub(super) sync: SyncMachine,
    pub(super) heartbeat: SmartHeartbeat,
    pub(super) backoff: Backoff,
    /// Heartbeats sent (diagnostics).
    pub(super) heartbeats_sent: u64,
}

/// One connection: moves frames between the QUIC connection and the machines, and
/// fires their timers. No protocol decision is made here.
pub(super) struct Session<'a> {
    inner: &'a Arc<Inner>,
    endpoint: &'a quinn::Endpoint,
    /// QUIC, or TLS over TCP (see [`crate::transport`]).
    pub(super) link: Link,
    login: LoginInfo,
    /// Requests of the app waiting for their answer, by request id. Dropped with the
    /// session, which tells each caller the connection was lost.
    calls: HashMap<u64, std::sync::mpsc::SyncSender<Result<Frame, String>>>,
    /// Probe connections under way (aborted when the session ends).
    probes: tokio::task::JoinSet<Result<quinn::Connection, ConnectError>>,
    /// UDP datagrams QUIC had received at the last probe tick.
    udp_rx: u64,
    /// A quiet keepalive waits for QUIC's ACK: the ACK frames and `PATH_CHALLENGE`s
    /// received before it went.
    keepalive_mark: Option<(u64, u64)>,
    /// Conversations changed since their last `ConversationUpdated`, in order (see
    /// [`Session::flush_conversations`]).
    touched: Vec<(crate::ConversationKind, String)>,
    touched_set: HashSet<(crate::ConversationKind, String)>,
    /// When `ConversationUpdated` events last went out.
    touched_at: Instant,
}

/// While a catch-up has sync pages in flight, a conversation's `ConversationUpdated`
/// goes out at most this often (each costs a read of the conversation and its last
/// message, and no app redraws five hundred conversations per page); when the catch-up
/// ends, at once.
const CONVERSATION_EVENTS_EVERY: Duration = Duration::from_millis(250);

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // The session ends: what changed is told now, not at some later update.
        self.flush_conversations();
    }
}

fn lost(e: impl std::fmt::Display) -> End {
    End::Lost(e.to_string())
}

impl<'a> Session<'a> {
    pub(super) fn new(
        inner: &'a Arc<Inner>,
        endpoint: &'a quinn::Endpoint,
        link: Link,
        login: LoginInfo,
    ) -> Self {
        Session {
            inner,
            endpoint,
            link,
            login,
            calls: HashMap::new(),
            probes: tokio::task::JoinSet::new(),
            udp_rx: 0,
            keepalive_mark: None,
            touched: Vec::new(),
            touched_set: HashSet::new(),
            // The first change (the summaries of a catch-up) is told at once.
            touched_at: Instant::now()
                .checked_sub(CONVERSATION_EVENTS_EVERY)
                .unwrap_or_else(Instant::now),
        }
    }

    async fn write(&mut self, frame: &Frame, flags: u8, m: &mut Machines) -> Result<(), End> {
        if !matches!(frame, Frame::Heartbeat(_)) {
            m.heartbeat.on_sent(Instant::now().into_std());
        }
        self.link
            .write_frame(frame, flags, WRITE_TIMEOUT)
            .await
            .map_err(lost)
    }

    /// The QUIC connection, when the session runs on QUIC.
    fn quic(&self) -> Option<&quinn::Connection> {
        match &self.link {
            Link::Quic { conn, .. } => Some(conn),
            Link::Stream { .. } => None,
        }
    }

    /// Writes on the stream whatever the frame's kind prefers.
    async fn write_reliable(
        &mut self,
        frame: &Frame,
        flags: u8,
        m: &mut Machines,
    ) -> Result<(), End> {
        m.heartbeat.on_sent(Instant::now().into_std());
        self.link
            .write_stream(&frame.to_bytes(flags), WRITE_TIMEOUT)
            .await
            .map_err(lost)
    }

    /// Runs one step of the sync machine against the store.
    fn step<T>(
        &self,
        m: &mut Machines,
        f: impl FnOnce(&mut SyncMachine, &mut Db) -> Result<T, DbError>,
    ) -> Result<T, End> {
        self.inner.with_db(|db| f(&mut m.sync, db)).map_err(lost)
    }

    /// Tells the app what the machine wants told, then sends what it wants sent. The app
    /// first: what it is told is already committed, and a write can wait on the network
    /// (a full stream on a weak path), which held messages already stored back from the
    /// app (e2e's catch-up test once saw 521 of 1,000 events trail the cursor).
    async fn drain(&mut self, m: &mut Machines) -> Result<(), End> {
        self.tell_app(m);
        while let Some(t) = m.sync.poll_transmit() {
            if t.reliable {
                self.write_reliable(&t.frame, t.flags, m).await?;
            } else {
                self.write(&t.frame, t.flags, m).await?;
            }
        }
        Ok(())
    }

    fn tell_app(&mut self, m: &mut Machines) {
        while let Some(event) = m.sync.poll_event() {
            match event {
                SyncEvent::Applied(applied) => self.publish(applied),
                SyncEvent::Status { local_id, status } => self
                    .inner
                    .emit(ClientEvent::MessageStatusChanged { local_id, status }),
                SyncEvent::Progress { stored, head } => {
                    self.inner.emit(ClientEvent::SyncProgress { stored, head })
                }
            }
        }
        if !self.touched.is_empty()
            && (!m.sync.catching_up() || self.touched_at.elapsed() >= CONVERSATION_EVENTS_EVERY)
        {
            self.flush_conversations();
        }
    }

    /// Tells the app of every conversation changed since the last time.
    fn flush_conversations(&mut self) {
        self.touched_at = Instant::now();
        self.touched_set.clear();
        for (kind, id) in std::mem::take(&mut self.touched) {
            self.inner.emit_conversation(kind, &id);
        }
    }

    pub(super) async fn run(
        &mut self,
        reader: Reader,
        buf: BytesMut,
        m: &mut Machines,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> End {
        let (tx, mut inbound) = mpsc::channel(256);
        self.link
            .spawn_readers(reader, buf, DEFAULT_MAX_FRAME_BODY, tx);
        let transport = self.link.transport();
        tracing::info!(transport = transport.as_str(), "session transport");
        let before = self
            .inner
            .diagnostics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .transport
            .clone();
        if before.as_deref() != Some(transport.as_str()) {
            self.inner.emit(ClientEvent::TransportChanged {
                transport: transport.as_str().to_owned(),
            });
        }
        // Sends go in datagrams and are retransmitted by the engine only on QUIC.
        let uplink_datagrams = self.inner.config.uplink == crate::Uplink::Datagram;
        m.sync
            .set_datagrams(self.link.has_datagrams(), uplink_datagrams);
        // NAT timeouts differ for TCP: the smart heartbeat learns a separate interval.
        let label = m.heartbeat.network().to_owned();
        let base = label.strip_suffix(TCP_LABEL).unwrap_or(&label).to_owned();
        let wanted = match transport {
            Transport::Tcp | Transport::WebSocket => format!("{base}{TCP_LABEL}"),
            Transport::Quic => base,
        };
        if wanted != label {
            m.heartbeat.network_changed(&wanted);
        }
        let now = Instant::now().into_std();
        m.heartbeat.on_connected(now);
        // QUIC shows the client its packets acknowledged: locked heartbeats go quiet.
        m.heartbeat.set_acks_observable(self.quic().is_some());
        // The handshake measured the path: the send timers start from it, not from the
        // engine's conservative initial RTO.
        if let Some(conn) = self.quic() {
            m.sync.on_rtt_sample(conn.rtt());
        }
        let mut rtt_fed = Instant::now();
        // On TCP (automatic mode), QUIC is tried again now and then.
        let reprobe = (transport == Transport::Tcp
            && self.inner.config.transport == crate::TransportMode::Auto)
            .then_some(self.inner.config.quic_reprobe);
        let mut reprobe_at = reprobe.map(|every| Instant::now() + every);
        self.update_diagnostics(m);
        let login = self.login;
        if let Err(end) = self.step(m, |sync, db| sync.on_connected(login, now, db)) {
            return end;
        }
        let mut last_probe: Option<Instant> = None;
        loop {
            if let Err(end) = self.drain(m).await {
                return end;
            }
            let probe_at = m
                .sync
                .suspect_at()
                .filter(|_| self.link.has_datagrams())
                .map(|t| {
                    let t = Instant::from_std(t);
                    last_probe.map_or(t, |p| t.max(p + PROBE_INTERVAL))
                });
            let sync_at = m.sync.poll_timeout().map(Instant::from_std);
            let hb_at = Instant::from_std(m.heartbeat.poll_timeout());
            let far = Instant::now() + Duration::from_secs(3600);
            let step = tokio::select! {
                cmd = commands.recv() => self.on_command(cmd, m).await,
                frame = inbound.recv() => match frame {
                    Some(Inbound::Frame(f) | Inbound::Datagram(f)) => {
                        // QUIC measures the path's RTT on every ACK; the send engine's own
                        // samples are rare (Karn's rule, and answers that waited behind a
                        // gap do not count), so it also learns from QUIC, once a second.
                        // The path's loss, likewise: on a lossy path sends go twice.
                        if rtt_fed.elapsed() >= Duration::from_secs(1) {
                            rtt_fed = Instant::now();
                            if let Some(conn) = self.quic() {
                                m.sync.on_rtt_sample(conn.rtt());
                                if self.inner.config.loss_copies {
                                    let sample = tern_protocol::redundancy::PathSample::of(conn);
                                    m.sync.on_path_sample(sample, Instant::now().into_std());
                                    self.update_diagnostics(m);
                                }
                            }
                        }
                        // Frames already waiting behind this one are handled with it:
                        // pushes that arrived together are stored and acknowledged
                        // together (one commit, one ACK, one receipt per sender).
                        let mut frames = vec![*f];
                        let mut after = None;
                        while frames.len() < MAX_PUSHES_TOGETHER {
                            match inbound.try_recv() {
                                Ok(Inbound::Frame(f) | Inbound::Datagram(f)) => frames.push(*f),
                                Ok(other) => {
                                    after = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        match (self.on_frames(frames, m), after) {
                            (Err(end), _) => Err(end),
                            (Ok(()), Some(Inbound::Closed(why))) => Err(End::Lost(why)),
                            (Ok(()), Some(Inbound::Invalid(e))) => {
                                Err(End::BadServer(format!("bad frame from server: {e}")))
                            }
                            (Ok(()), _) => Ok(()),
                        }
                    }
                    Some(Inbound::Closed(why)) => Err(End::Lost(why)),
                    Some(Inbound::Invalid(e)) => Err(End::BadServer(format!("bad frame from server: {e}"))),
                    None => Err(End::Lost("reader stopped".into())),
                },
                _ = sleep_until(sync_at.unwrap_or(far)), if sync_at.is_some() => {
                    let now = Instant::now().into_std();
                    self.step(m, |sync, db| sync.handle_timeout(now, db))
                }
                _ = sleep_until(hb_at) => self.on_heartbeat_timer(m).await,
                _ = sleep_until(probe_at.unwrap_or(far)), if probe_at.is_some() => {
                    last_probe = Some(Instant::now());
                    self.probe();
                    Ok(())
                }
                _ = sleep_until(reprobe_at.unwrap_or(far)), if reprobe_at.is_some() => {
                    reprobe_at = reprobe.map(|every| Instant::now() + every);
                    if self.probes.is_empty() {
                        tracing::debug!("on TCP: trying QUIC again");
                        let (inner, endpoint) = (self.inner.clone(), self.endpoint.clone());
                        self.probes.spawn(async move {
                            handshake(&inner, &endpoint, PROBE_HANDSHAKE).await
                        });
                    }
                    Ok(())
                }
                Some(done) = self.probes.join_next(), if !self.probes.is_empty() => match done {
                    Ok(Ok(conn)) => Err(End::Moved(conn)),
                    _ => Ok(()),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Starts a probe: a fresh connection and login on the same endpoint, raced against
    /// this one while it looks dead (see [`SyncMachine::path_suspect`]).
    fn probe(&mut self) {
        // QUIC packets still arrive (a slow server whose store stalls, not a dead
        // path): no probe, so an overloaded server gets no reconnect storm.
        let Some(conn) = self.quic() else {
            return;
        };
        let rx = conn.stats().udp_rx.datagrams;
        if std::mem::replace(&mut self.udp_rx, rx) != rx {
            return;
        }
        if self.probes.len() >= MAX_PROBES {
            return;
        }
        if self.probes.is_empty() {
            // The first probe goes back to this node (the path may have blinked); the
            // ones racing beside it go to the others, if there are others (the node
            // may be dead).
            self.inner.servers.lost();
        }
        tracing::debug!("path suspect: probing with a fresh connection");
        let (inner, endpoint) = (self.inner.clone(), self.endpoint.clone());
        self.probes
            .spawn(async move { handshake(&inner, &endpoint, PROBE_HANDSHAKE).await });
    }

    async fn on_command(&mut self, cmd: Option<Command>, m: &mut Machines) -> Result<(), End> {
        let now = Instant::now().into_std();
        match cmd {
            Some(Command::Flush) => self.step(m, |sync, db| sync.flush(now, db)),
            Some(Command::SendReads) => self.step(m, |sync, db| sync.send_reads(db)),
            Some(Command::Call(mut call)) => {
                let id = m.sync.next_request_id();
                if !set_request_id(&mut call.frame, id) {
                    let _ = call.reply.try_send(Err("not a request frame".into()));
                    return Ok(());
                }
                self.calls.insert(id, call.reply);
                m.sync.on_frame_sent(now);
                self.write(&call.frame, 0, m).await
            }
            Some(Command::SetForeground(f)) => {
                m.heartbeat.set_foreground(f);
                Ok(())
            }
            Some(Command::NetworkChanged(label)) => {
                m.heartbeat.network_changed(&label);
                // Migrate: a fresh socket on the new network; QUIC moves the
                // connection over. If that fails, reconnect at once.
                let socket = std::net::UdpSocket::bind("[::]:0")
                    .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"));
                if !self.link.has_datagrams() {
                    // A TCP connection cannot migrate: reconnect on the new network.
                    return Err(End::NetworkChanged);
                }
                match socket.map(|s| self.endpoint.rebind(s)) {
                    Ok(Ok(())) => {
                        tracing::info!(%label, "network changed: migrated to a new socket");
                        Ok(())
                    }
                    _ => Err(End::NetworkChanged),
                }
            }
            Some(Command::Logout) => {
                let _ = self.write(&Frame::Logout(pb::Logout {}), 0, m).await;
                self.link.finish().await;
                self.link.closed(Duration::from_millis(500)).await;
                Err(End::LoggedOut)
            }
            Some(Command::Shutdown) | None => Err(End::Shutdown),
        }
    }

    fn update_diagnostics(&self, m: &Machines) {
        let net = m.heartbeat.network().to_owned();
        let locked = m.heartbeat.network_state(&net).is_some_and(|s| s.locked());
        let mut d = self
            .inner
            .diagnostics
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *d = crate::types::Diagnostics {
            last_error: d.last_error.take(),
            transport: Some(self.link.transport().as_str().to_owned()),
            heartbeat_interval_ms: m.heartbeat.interval().as_millis() as u64,
            heartbeat_locked: locked,
            heartbeats_sent: m.heartbeats_sent,
            srtt_ms: m.sync.qos().rtt().srtt().map(|d| d.as_millis() as u64),
            in_flight: m.sync.qos().in_flight() as u64,
            sends_copied: m.sync.sends_copied(),
            network: net,
        };
    }

    /// A quiet keepalive is settled when QUIC has received an ACK frame since it went
    /// (the server's QUIC acknowledged it); a `PATH_CHALLENGE` received meanwhile means
    /// the server saw a new address: the NAT binding had expired.
    fn settle_keepalive(&mut self, m: &mut Machines) {
        let (Some((acks, challenges)), Some(conn)) = (self.keepalive_mark, self.quic()) else {
            return;
        };
        let rx = conn.stats().frame_rx;
        if rx.acks > acks {
            self.keepalive_mark = None;
            m.heartbeat
                .on_acked(Instant::now().into_std(), rx.path_challenge > challenges);
        }
    }

    async fn on_heartbeat_timer(&mut self, m: &mut Machines) -> Result<(), End> {
        if m.heartbeat.awaiting_ack() {
            self.settle_keepalive(m);
        }
        match m.heartbeat.handle_timeout(Instant::now().into_std()) {
            Some(action @ (HeartbeatAction::Send | HeartbeatAction::Keepalive)) => {
                let quiet = action == HeartbeatAction::Keepalive;
                m.heartbeats_sent += 1;
                self.update_diagnostics(m);
                self.keepalive_mark = quiet
                    .then(|| self.quic().map(|c| c.stats().frame_rx))
                    .flatten()
                    .map(|rx| (rx.acks, rx.path_challenge));
                let interval = m.heartbeat.interval().as_millis() as u32;
                self.write(
                    &Frame::Heartbeat(pb::Heartbeat {
                        interval_ms: interval,
                        quiet,
                    }),
                    0,
                    m,
                )
                .await
            }
            Some(HeartbeatAction::ConnectionLost) => {
                Err(End::Lost("heartbeat replies stopped".into()))
            }
            None => Ok(()),
        }
    }

    /// Tells the app what a store change did; the conversations it touched are told in
    /// [`Session::drain`] (at once, or paced during a catch-up).
    fn publish(&mut self, applied: Applied) {
        let mut touched = Vec::new();
        for msg in applied.new_messages {
            touched.push((msg.kind, msg.conversation.clone()));
            self.inner.emit(ClientEvent::MessageReceived(msg));
        }
        for (local_id, status) in applied.status_changes {
            self.inner
                .emit(ClientEvent::MessageStatusChanged { local_id, status });
        }
        for local_id in applied.updated {
            if let Ok(Some(msg)) = self.inner.with_db(|db| db.message(local_id)) {
                self.inner.emit(ClientEvent::MessageUpdated(msg));
            }
        }
        touched.extend(applied.conversations);
        for c in touched {
            if self.touched_set.insert(c.clone()) {
                self.touched.push(c);
            }
        }
    }

    /// A frame from the server: the sync machine's first; what it hands back is the
    /// link's (heartbeat replies, kickouts) or the answer to an app request.
    fn on_frames(&mut self, frames: Vec<Frame>, m: &mut Machines) -> Result<(), End> {
        let now = Instant::now().into_std();
        let back = self.step(m, |sync, db| sync.handle_frames(frames, now, db))?;
        for frame in back {
            self.on_frame(frame, now, m)?;
        }
        Ok(())
    }

    /// A frame the sync machine handed back: the driver's own business.
    fn on_frame(
        &mut self,
        frame: Frame,
        now: std::time::Instant,
        m: &mut Machines,
    ) -> Result<(), End> {
        let answer = |calls: &mut HashMap<_, std::sync::mpsc::SyncSender<_>>, id, f| {
            if let Some(reply) = calls.remove(&id) {
                let _ = reply.try_send(Ok(f));
            }
        };
        match frame {
            Frame::HeartbeatReply(r) => {
                if let Some(rtt) = m.heartbeat.on_reply(now, &r.observed_addr) {
                    m.sync.on_rtt_sample(rtt);
                }
                self.update_diagnostics(m);
            }
            Frame::Kickout(k) => {
                return Err(End::Kicked(
                    pb::KickReason::try_from(k.reason).unwrap_or_default(),
                    k.text,
                ));
            }
            Frame::OpResult(r) => answer(&mut self.calls, r.request_id, Frame::OpResult(r)),
            Frame::GroupResponse(r) => {
                answer(&mut self.calls, r.request_id, Frame::GroupResponse(r))
            }
            Frame::HistoryResponse(r) => {
                answer(&mut self.calls, r.request_id, Frame::HistoryResponse(r))
            }
            Frame::Error(e) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
                tracing::warn!(code = code.as_str_name(), message = %e.message, request = e.request_id, "server error");
                answer(&mut self.calls, e.request_id, Frame::Error(e));
            }
            other => tracing::debug!(kind = ?other.kind(), "ignored frame"),
        }
        Ok(())
    }
}
