//! One client connection: accepting it (TCP or TLS), the protocol header,
//! the frame loop, heartbeats, and closing (in both directions). The
//! handshake itself is in `handshake`, frame reading in `reader`.
//!
//! The connection's task reads frames, keeps per-channel state (`Channel`)
//! and runs the method handlers in `channel` and `handlers`. Outbound frames
//! go through the shared `ConnectionHandle`, whose writer task batches them.

use ahash::AHashMap as HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{AMQPClass, connection as conn_m};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use crate::ops::alarms::Alarms;
use crate::protocol::codec::{FRAME_MIN_SIZE, Frame, HEARTBEAT, PROTOCOL_HEADER};
use crate::protocol::error::{AmqpError, AmqpResult, Scope, code};
use crate::protocol::methods::{Method, decode, ids, write_method};
use crate::queue::Got;
use crate::session::channel::Channel;
use crate::session::context::ConnCtx;
use crate::session::flow::wait_unless_released;
use crate::session::handshake::{Handshake, Peer, handshake};
use crate::session::method_ids::{
    BASIC_PUBLISH, CHANNEL_CLOSE, CHANNEL_CLOSE_OK, InMethod, MethodId,
};
use crate::session::outbound::{ConnEvent, ConnectionHandle};
use crate::session::reader::{Reader, close_ok_method};
use crate::session::server::HandshakeSlot;
use crate::session::tls::TlsSession;

/// Longest a publishing connection pauses for one flow-control wait.
const FLOW_PAUSE_MAX: Duration = Duration::from_millis(20);

/// How often a connection looks for deliveries past their consumer timeout.
const CONSUMER_TIMEOUT_CHECK: Duration = Duration::from_secs(1);

/// How long a closed connection's socket stays open for the client to read
/// the last frames and close its side.
const LINGER: Duration = Duration::from_secs(3);

/// How long the writer may take to flush the last frames once lingering ends.
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// Serves one plain TCP client connection until it closes.
/// `slot` counts it against `[limits] max_handshaking_connections` until
/// connection.open.
pub async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr, slot: HandshakeSlot) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    // The socket's own halves: no lock between the reader and the writer task.
    let (rd, wr) = stream.into_split();
    serve_stream(broker, rd, wr, Peer { peer, local }, None, slot).await;
}

/// Serves one TLS client connection: the TLS handshake (within the AMQP
/// handshake timeout), then the same as `serve`.
pub async fn serve_tls(
    broker: Arc<Broker>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    slot: HandshakeSlot,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let timeout = Duration::from_secs(broker.config.amqp.handshake_timeout);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let session = crate::session::tls::session(tls.get_ref().1);
    tracing::debug!(%peer, protocol = %session.protocol, cipher = %session.cipher,
        peer_cert = ?session.peer_cert_subject, "TLS established");
    let (rd, wr) = tokio::io::split(tls);
    serve_stream(broker, rd, wr, Peer { peer, local }, Some(session), slot).await;
}

/// Runs the AMQP connection over any byte stream (a TCP socket's halves, or
/// a TLS stream's); generic, so the plain TCP path has no indirection.
async fn serve_stream<R, W>(
    broker: Arc<Broker>,
    mut rd: R,
    mut wr: W,
    ends: Peer,
    tls: Option<TlsSession>,
    slot: HandshakeSlot,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let id = broker.next_connection_id();
    let peer = ends.peer;
    let timeout = Duration::from_secs(broker.config.amqp.handshake_timeout);
    if !protocol_header(&mut rd, &mut wr, timeout, peer).await {
        return;
    }
    let (handle, events) = ConnectionHandle::new(id, FRAME_MIN_SIZE);
    let meta = broker.durability.meta.get().cloned();
    let writer = tokio::spawn(handle.clone().run_writer(wr, meta));
    let mut reader = Reader::new(rd);
    let hs = tokio::time::timeout(
        timeout,
        handshake(&broker, &handle, &mut reader, ends, tls.as_ref()),
    )
    .await;
    drop(slot);
    let linger = match hs {
        Ok(Ok(Some(hs))) => run_opened(&broker, &handle, events, hs, reader, peer).await,
        // A refused login without authentication_failure_close: the
        // socket just closes, as from RabbitMQ.
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::info!(%peer, "handshake failed: {}", e.to_string().escape_debug());
            handle.write(|out| write_method(out, 0, &close_method(&e)));
            // As after any connection.close warren sends: the client answers
            // close-ok before it lets go of the socket.
            let linger = reader.await_close_ok(&handle).await;
            linger.then_some(reader)
        }
        Err(_) => {
            tracing::info!(%peer, "handshake timed out");
            None
        }
    };
    finish(&handle, writer, linger).await;
}

/// Reads the protocol header, which comes before anything else; a wrong
/// one is answered with the header warren speaks, and the socket closed.
/// Returns whether the connection goes on.
async fn protocol_header<R, W>(rd: &mut R, wr: &mut W, timeout: Duration, peer: SocketAddr) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut header = [0u8; 8];
    match tokio::time::timeout(timeout, rd.read_exact(&mut header)).await {
        // The second form is the 0-9 header some old clients send; RabbitMQ accepts it.
        Ok(Ok(_)) if &header == PROTOCOL_HEADER || &header == b"AMQP\x01\x01\x00\x09" => true,
        Ok(Ok(_)) => {
            tracing::info!(%peer, "bad protocol header {:?}; closing", String::from_utf8_lossy(&header));
            let _ = wr.write_all(PROTOCOL_HEADER).await;
            let _ = wr.shutdown().await;
            false
        }
        _ => false,
    }
}

/// Runs an opened connection's frame loop to its end, then releases what
/// it holds and unregisters it. Returns the reader if the peer may still be
/// there (see `finish`).
async fn run_opened<R: AsyncRead + Unpin>(
    broker: &Arc<Broker>,
    handle: &Arc<ConnectionHandle>,
    events: mpsc::UnboundedReceiver<ConnEvent>,
    hs: Handshake,
    reader: Reader<R>,
    peer: SocketAddr,
) -> Option<Reader<R>> {
    let id = handle.id;
    tracing::info!(%peer, id, user = %hs.user.escape_debug(), vhost = %hs.vhost.name.escape_debug(), "connection opened");
    let mut conn = Connection {
        ctx: ConnCtx::new(broker.clone(), handle.clone(), hs.vhost, hs.user),
        channels: HashMap::new(),
        channel_max: hs.channel_max,
        heartbeat: hs.heartbeat,
        reader,
        peer,
    };
    let peer_alive = conn.run(events).await;
    conn.cleanup();
    broker.unregister(id);
    tracing::info!(%peer, id, "connection closed");
    peer_alive.then_some(conn.reader)
}

/// Closes a connection's socket without destroying what is in flight.
///
/// As RabbitMQ does, the socket stays open after close-ok until the client
/// closes its side, for at most `LINGER`: whatever the client still sends
/// is read and discarded, and every further connection.close is answered
/// with close-ok (a client closing from several threads at once waits for
/// one close-ok per close). Then the writer flushes and shuts the socket.
/// Closing a socket with unread bytes in its receive buffer makes the
/// kernel send a reset, which can destroy a close-ok the client has not
/// read yet (clients then report EOF or EPIPE instead of a clean close).
/// `reader` is `None` when the peer is known to be gone.
async fn finish<R: AsyncRead + Unpin>(
    handle: &ConnectionHandle,
    writer: tokio::task::JoinHandle<()>,
    reader: Option<Reader<R>>,
) {
    if let Some(mut r) = reader {
        let _ = tokio::time::timeout(LINGER, r.linger(handle)).await;
    }
    handle.close_writer();
    let abort = writer.abort_handle();
    if tokio::time::timeout(WRITER_GRACE, writer).await.is_err() {
        // A client that reads nothing: give up on it.
        abort.abort();
    }
}

/// connection.close for an error.
pub fn close_method(e: &AmqpError) -> AMQPClass {
    AMQPClass::Connection(conn_m::AMQPMethod::Close(conn_m::Close {
        reply_code: e.code,
        reply_text: e.text.as_str().into(),
        class_id: e.class_id,
        method_id: e.method_id,
    }))
}

struct Connection<R> {
    ctx: ConnCtx,
    channels: HashMap<u16, Channel>,
    channel_max: u16,
    heartbeat: u16,
    reader: Reader<R>,
    peer: SocketAddr,
}

/// How the frame loop ended.
enum End {
    /// The client closed the connection (close-ok already sent).
    Closed,
    /// The peer went away: end of stream, a failed write, missed heartbeats.
    Gone,
    /// Warren closes the connection with this error.
    Error(AmqpError),
}

/// What the frame loop keeps between turns.
struct LoopState {
    /// Heartbeats: every half interval.
    ticker: tokio::time::Interval,
    /// Consumer timeouts: every `CONSUMER_TIMEOUT_CHECK`.
    timeout_check: tokio::time::Interval,
    /// When the client last showed it is alive.
    last_recv: Instant,
    /// The writer's byte count at the last heartbeat tick.
    written_at_tick: u64,
    /// The message store's synced sequence (confirms wait for it).
    durable_rx: Option<watch::Receiver<u64>>,
    /// The same, watched for the store's backlog to shrink.
    backlog_rx: Option<watch::Receiver<u64>>,
    /// Streams making entries durable (confirms may wait for them).
    stream_rx: watch::Receiver<u64>,
    /// Resource alarms.
    alarms: watch::Receiver<Alarms>,
    /// The connection is blocked by an alarm.
    blocked: bool,
    /// The connection whose backlog holds reading back (see `hold`).
    hold: Option<Arc<ConnectionHandle>>,
    /// The writer's byte count while held back by the own backlog.
    written_while_held: u64,
}

impl LoopState {
    /// Whether the client's socket is read this turn: not while an alarm
    /// blocks it, a backlog holds it back, or the store is behind.
    fn reads(&self, store_held: bool) -> bool {
        !self.blocked && self.hold.is_none() && !store_held
    }
}

impl<R: AsyncRead + Unpin> Connection<R> {
    /// Runs the connection until it ends; returns whether the peer may
    /// still be there (so its last frames are worth draining).
    async fn run(&mut self, mut events: mpsc::UnboundedReceiver<ConnEvent>) -> bool {
        match self.frame_loop(&mut events).await {
            End::Closed => true,
            End::Gone => false,
            End::Error(e) => {
                tracing::info!(peer = %self.peer, "closing connection: {}", e.text.escape_debug());
                self.ctx.send(0, close_method(&e));
                self.reader.await_close_ok(&self.ctx.handle).await
            }
        }
    }

    /// Reads and handles frames until the connection ends. Each turn:
    /// handle what is buffered, send due confirms, apply flow control, then
    /// wait for bytes or anything else that needs the connection.
    async fn frame_loop(&mut self, events: &mut mpsc::UnboundedReceiver<ConnEvent>) -> End {
        let mut st = self.loop_state();
        loop {
            if let Err(end) = self.handle_buffered(&mut st.hold) {
                return end;
            }
            self.flush_confirms();
            self.ctx
                .handle
                .channel_count
                .store(self.channels.len() as u32, Ordering::Relaxed);
            self.pause_for_queue_flow().await;
            let store_held = self.store_held();
            self.update_blocked(&mut st);
            self.keep_alive_while_not_reading(&mut st, store_held);
            if let Some(end) = self.wait(&mut st, events, store_held).await {
                return end;
            }
        }
    }

    /// The frame loop's timers and subscriptions, at its start.
    fn loop_state(&self) -> LoopState {
        let hb = self.heartbeat as u64;
        let tick = if hb == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(hb * 500)
        };
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut timeout_check = tokio::time::interval(CONSUMER_TIMEOUT_CHECK);
        timeout_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let store = self.ctx.broker.durability.store();
        LoopState {
            ticker,
            timeout_check,
            last_recv: Instant::now(),
            written_at_tick: 0,
            durable_rx: store.map(|s| s.subscribe()),
            backlog_rx: store.map(|s| s.subscribe()),
            stream_rx: crate::queue::stream::durable_watch(),
            alarms: self.ctx.broker.alarms.subscribe(),
            blocked: false,
            hold: None,
            written_while_held: 0,
        }
    }

    /// Handles every complete frame already buffered; stops early once a
    /// reply fills a backlog (`hold`). `Err`: the connection ends.
    fn handle_buffered(&mut self, hold: &mut Option<Arc<ConnectionHandle>>) -> Result<(), End> {
        *hold = match hold.take() {
            Some(h) if !h.is_drained() => Some(h),
            _ => self.hold(),
        };
        self.retry_get();
        if let Err(e) = self.finish_define() {
            return Err(End::Error(e));
        }
        while hold.is_none() && self.ctx.get_wait.is_none() && self.ctx.define_wait.is_none() {
            match self.reader.next_buffered() {
                Ok(Some(frame)) => match self.handle_frame_gated(frame) {
                    Ok(true) => {}
                    Ok(false) => return Err(End::Closed),
                    Err(e) => return Err(End::Error(e)),
                },
                Ok(None) => break,
                Err(e) => return Err(End::Error(e)),
            }
            *hold = self.hold();
        }
        Ok(())
    }

    /// A definitions change the cluster has made: its channel goes on
    /// (replies, or ends in the change's error).
    fn finish_define(&mut self) -> AmqpResult<bool> {
        if self
            .ctx
            .define_wait
            .as_ref()
            .is_none_or(|p| p.done.is_none())
        {
            return Ok(true);
        }
        let Some(p) = self.ctx.define_wait.take() else {
            return Ok(true);
        };
        let outcome = p.done.unwrap_or(Ok(0));
        let result = match self.channels.get_mut(&p.channel).filter(|ch| !ch.closing) {
            Some(ch) => (p.then)(ch, &mut self.ctx, outcome),
            None => Ok(()),
        };
        let result = match p.method {
            Some(m) => result.map_err(|e| e.in_method(m)),
            None => result,
        };
        self.after_channel_result(p.channel, result)
    }

    /// A basic.get that found its queue's next message being read back
    /// from disk is tried again; until it is answered (get-ok or
    /// get-empty), nothing more from the client is handled, so replies keep
    /// their order.
    fn retry_get(&mut self) {
        let Some(pg) = self.ctx.get_wait.take() else {
            return;
        };
        let Some(ch) = self.channels.get(&pg.channel).filter(|ch| !ch.closing) else {
            return;
        };
        let shared = ch.shared.clone();
        let id = self.ctx.handle.id;
        let got = crate::session::outbound::replying_for(id, || pg.queue.get(&*shared, pg.no_ack));
        match got {
            Got::Message => {}
            Got::Empty => crate::session::handlers::basic::send_get_empty(&self.ctx, pg.channel),
            Got::Loading => self.ctx.get_wait = Some(pg),
        }
    }

    /// Flow control: don't read more publishes until the queue's consumers
    /// catch up. Bounded, so a connection that also consumes from that
    /// queue still gets to read its acks.
    async fn pause_for_queue_flow(&mut self) {
        if let Some(q) = self.ctx.flow_wait.take() {
            wait_unless_released(q.drained(), || q.is_pressured(), FLOW_PAUSE_MAX).await;
        }
    }

    /// The message store's writer is behind (a disk slower than the
    /// publishers): a connection that publishes reads nothing more until it
    /// has caught up, so the writer's buffer is bounded.
    fn store_held(&self) -> bool {
        self.ctx.published
            && (crate::queue::paging::io::is_backlogged()
                || crate::queue::stream::is_backlogged()
                || self
                    .ctx
                    .broker
                    .durability
                    .store()
                    .is_some_and(|s| s.is_backlogged()))
    }

    /// Alarms: a connection that publishes is not read from while an alarm
    /// is on (RabbitMQ's connection.blocked); consumers go on. Clients that
    /// asked are told when this changes.
    fn update_blocked(&mut self, st: &mut LoopState) {
        let alarm = *st.alarms.borrow_and_update();
        let should_block = alarm.any() && self.ctx.published;
        if should_block == st.blocked {
            return;
        }
        st.blocked = should_block;
        if self.ctx.handle.blocked_notify.load(Ordering::Relaxed) {
            let m = if st.blocked {
                conn_m::AMQPMethod::Blocked(conn_m::Blocked {
                    reason: alarm.reason().into(),
                })
            } else {
                conn_m::AMQPMethod::Unblocked(conn_m::Unblocked {})
            };
            self.ctx.send(0, AMQPClass::Connection(m));
        }
        tracing::info!(peer = %self.peer, "connection {}", if st.blocked { "blocked" } else { "unblocked" });
    }

    /// While the socket is not read, the peer's heartbeats wait in it: the
    /// peer counts as alive. Held back by its own backlog, though, only
    /// while the writer gets bytes out to it, so a peer that is gone is
    /// still noticed after two heartbeats.
    fn keep_alive_while_not_reading(&self, st: &mut LoopState, store_held: bool) {
        let own_hold = st
            .hold
            .as_ref()
            .is_some_and(|h| Arc::ptr_eq(h, &self.ctx.handle));
        if own_hold {
            let written = self.ctx.handle.bytes_written();
            if written != st.written_while_held {
                st.written_while_held = written;
                st.last_recv = Instant::now();
            }
        } else if !st.reads(store_held)
            || self.ctx.get_wait.is_some()
            || self.ctx.define_wait.is_some()
        {
            st.last_recv = Instant::now();
        }
    }

    /// Waits for the next thing the connection must act on: bytes from the
    /// client (unless reading is held back), the store syncing confirms,
    /// events from queues and the writer, a held-back reason going away,
    /// consumer timeouts, alarms and heartbeats. `Some`: the connection ends.
    async fn wait(
        &mut self,
        st: &mut LoopState,
        events: &mut mpsc::UnboundedReceiver<ConnEvent>,
        store_held: bool,
    ) -> Option<End> {
        let waiting_for_store = !self.ctx.confirms_due.is_empty() && st.durable_rx.is_some();
        let loading = self.ctx.get_wait.as_ref().map(|g| g.queue.clone());
        let mut define = self.ctx.define_wait.take();
        let defining = define.as_ref().is_some_and(|p| p.done.is_none());
        let reads = st.reads(store_held) && loading.is_none() && define.is_none();
        tokio::select! {
            biased;
            done = async {
                match define.as_mut() {
                    Some(p) => (&mut p.rx).await,
                    None => std::future::pending().await,
                }
            }, if defining => {
                if let Some(p) = define.as_mut() {
                    p.done = Some(done.unwrap_or_else(|_| Err(AmqpError::connection(
                        code::INTERNAL_ERROR,
                        "a definitions change was lost",
                    ))));
                }
            }
            synced = async {
                match st.durable_rx.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            }, if waiting_for_store => {
                if !synced {
                    st.durable_rx = None;
                }
            }
            _ = st.stream_rx.changed(), if store_held || !self.ctx.confirms_due.is_empty() => {}
            ev = events.recv() => match ev {
                Some(ConnEvent::Writable) => self.redispatch_all(),
                Some(ConnEvent::WriteFailed) | None => return Some(End::Gone),
                Some(ConnEvent::Close(code, text)) => {
                    return Some(End::Error(AmqpError::connection(code, text)));
                }
            },
            _ = async {
                if let Some(h) = &st.hold {
                    h.drained(Duration::from_secs(1)).await;
                }
            }, if st.hold.is_some() => {}
            _ = async {
                match st.backlog_rx.as_mut() {
                    Some(rx) => {
                        let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }, if store_held => {}
            _ = async {
                if let Some(q) = &loading {
                    let loaded = q.loaded();
                    tokio::pin!(loaded);
                    loaded.as_mut().enable();
                    if q.is_loading() {
                        let _ = tokio::time::timeout(Duration::from_millis(200), loaded).await;
                    }
                }
            }, if loading.is_some() => {}
            ok = self.reader.fill(), if reads => {
                if !ok {
                    return Some(End::Gone);
                }
                st.last_recv = Instant::now();
            }
            _ = st.timeout_check.tick(), if self.has_unacked() => {
                if let Err(e) = self.check_consumer_timeouts() {
                    return Some(End::Error(e));
                }
            }
            changed = st.alarms.changed() => {
                if changed.is_err() {
                    return Some(End::Gone);
                }
            }
            _ = st.ticker.tick() => {
                if let Some(end) = self.heartbeat_tick(st) {
                    return Some(end);
                }
            }
        }
        self.ctx.define_wait = define;
        None
    }

    /// Every half heartbeat interval: ends the connection after two
    /// intervals without a frame from the client, and sends a heartbeat if
    /// nothing else went out since the last tick.
    fn heartbeat_tick(&self, st: &mut LoopState) -> Option<End> {
        let hb = self.heartbeat as u64;
        if hb == 0 {
            return None;
        }
        if st.last_recv.elapsed() > Duration::from_secs(hb * 2) {
            tracing::warn!(peer = %self.peer, "missed heartbeats from client, timeout: {hb}s");
            return Some(End::Gone);
        }
        let written = self.ctx.handle.bytes_written();
        if written == st.written_at_tick && self.ctx.handle.pending_bytes() == 0 {
            self.ctx
                .handle
                .write(|out| out.extend_from_slice(&HEARTBEAT));
        }
        st.written_at_tick = self.ctx.handle.bytes_written();
        None
    }

    /// `handle_frame`, then gating what the connection writes next on the
    /// definitions changes the frame made (its own replies already were;
    /// a `nowait` method wrote none) and forgetting them (see outbound.rs).
    fn handle_frame_gated(&mut self, frame: Frame) -> AmqpResult<bool> {
        crate::store::meta::take_appended();
        let id = self.ctx.handle.id;
        let r = crate::session::outbound::replying_for(id, || self.handle_frame(frame));
        let (first, last) = crate::store::meta::take_appended();
        if last > 0 {
            self.ctx.handle.gate_on_changes(first, last);
        }
        r
    }

    /// Handles one frame. `Ok(false)`: the connection is closed.
    fn handle_frame(&mut self, frame: Frame) -> AmqpResult<bool> {
        match frame {
            Frame::Heartbeat { channel: 0 } => Ok(true),
            Frame::Heartbeat { channel } => Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("heartbeat frame on channel {channel}; heartbeats belong on channel 0"),
            )),
            Frame::Method {
                channel: 0,
                payload,
            } => self.connection_method(payload),
            Frame::Method { channel, payload } => self.channel_method(channel, payload),
            Frame::Header { channel, payload } => {
                self.content_frame(channel, "content header", |ch, ctx| {
                    ch.handle_header(ctx, payload)
                })
            }
            Frame::Body { channel, payload } => {
                self.content_frame(channel, "content body", |ch, ctx| {
                    ch.handle_body(ctx, payload)
                })
            }
        }
    }

    /// A method frame on a channel: close and close-ok are the frame loop's
    /// (it owns the channel table), as is channel.open; the rest goes to
    /// the channel.
    fn channel_method(&mut self, channel: u16, payload: bytes::Bytes) -> AmqpResult<bool> {
        let method_id = ids(&payload);
        if self.channels.get(&channel).is_some_and(|ch| ch.closing) {
            self.on_closing_channel(channel, method_id);
            return Ok(true);
        }
        let method = decode(payload)?;
        if method_id == CHANNEL_CLOSE
            && let Some(mut ch) = self.channels.remove(&channel)
        {
            ch.flush_confirms(&self.ctx);
            ch.shutdown(&mut self.ctx);
            self.ctx.send(channel, crate::session::channel::close_ok());
            return Ok(true);
        }
        if !self.channels.contains_key(&channel) {
            self.check_channel_count()?;
            return self
                .open_channel(channel, method)
                .map_err(|e| e.in_method(method_id));
        }
        let result = match self.channels.get_mut(&channel) {
            Some(ch) => ch.handle_method(&mut self.ctx, method),
            None => Ok(()),
        };
        if let Some(p) = self.ctx.define_wait.as_mut()
            && p.method.is_none()
        {
            p.method = Some(method_id);
        }
        self.after_channel_result(channel, result.map_err(|e| e.in_method(method_id)))
    }

    /// Only close and close-ok matter on a closing channel (spec 4.2.2).
    fn on_closing_channel(&mut self, channel: u16, method_id: MethodId) {
        match method_id {
            CHANNEL_CLOSE_OK => {
                self.channels.remove(&channel);
            }
            CHANNEL_CLOSE => {
                self.ctx.send(channel, crate::session::channel::close_ok());
            }
            _ => {}
        }
    }

    /// A content header or body frame (`what`): handled by its channel
    /// (ignored on a closing one); errors are basic.publish's.
    fn content_frame(
        &mut self,
        channel: u16,
        what: &str,
        handle: impl FnOnce(&mut Channel, &mut ConnCtx) -> AmqpResult<()>,
    ) -> AmqpResult<bool> {
        match self.channels.get_mut(&channel) {
            Some(ch) if ch.closing => Ok(true),
            Some(ch) => {
                let r = handle(ch, &mut self.ctx).map_err(|e| e.in_method(BASIC_PUBLISH));
                self.after_channel_result(channel, r)
            }
            None => Err(unexpected_frame(what, channel)),
        }
    }

    /// Any channel number from 1 to 65535 may be used; `channel_max` limits
    /// how many channels are open at once (RabbitMQ 3.10's rule: opening
    /// one more is a connection error 530 with class and method 0).
    fn check_channel_count(&self) -> AmqpResult<()> {
        let open = self.channels.len();
        if open >= usize::from(self.channel_max) {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!(
                    "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                    self.channel_max
                ),
            ));
        }
        Ok(())
    }

    /// Turns a channel error into channel.close; passes connection errors up.
    fn after_channel_result(&mut self, channel: u16, r: AmqpResult<()>) -> AmqpResult<bool> {
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.scope == Scope::Connection => Err(e),
            Err(e) => {
                tracing::debug!(peer = %self.peer, channel, "channel error: {}", e.text.escape_debug());
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.flush_confirms(&self.ctx);
                    ch.shutdown(&mut self.ctx);
                    ch.closing = true;
                }
                self.ctx
                    .send(channel, crate::session::channel::close_method(&e));
                Ok(true)
            }
        }
    }

    fn open_channel(&mut self, channel: u16, method: Method) -> AmqpResult<bool> {
        match method {
            Method::Other(AMQPClass::Channel(
                amq_protocol::protocol::channel::AMQPMethod::Open(_),
            )) => {
                self.channels
                    .insert(channel, Channel::new(channel, self.ctx.handle.clone()));
                self.ctx.send(
                    channel,
                    AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::OpenOk(
                        amq_protocol::protocol::channel::OpenOk {},
                    )),
                );
                Ok(true)
            }
            _ => Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "expected 'channel.open'",
            )),
        }
    }

    /// A method frame on channel 0 once the connection is open.
    fn connection_method(&mut self, payload: bytes::Bytes) -> AmqpResult<bool> {
        let method_id = ids(&payload);
        match decode(payload)? {
            Method::Other(AMQPClass::Connection(conn_m::AMQPMethod::Close(c))) => {
                tracing::debug!(peer = %self.peer, "client closed the connection: {} {}", c.reply_code, c.reply_text.as_str().escape_debug());
                self.flush_confirms();
                self.cleanup();
                self.ctx.send(0, close_ok_method());
                Ok(false)
            }
            Method::Other(AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(_))) => Ok(false),
            Method::Other(AMQPClass::Connection(conn_m::AMQPMethod::UpdateSecret(_))) => {
                self.ctx.send(
                    0,
                    AMQPClass::Connection(conn_m::AMQPMethod::UpdateSecretOk(
                        conn_m::UpdateSecretOk {},
                    )),
                );
                Ok(true)
            }
            _ => Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "unexpected method in connection state running",
            )
            .in_method(method_id)),
        }
    }

    /// Sends due confirms; channels still waiting for the message store
    /// stay in `confirms_due`.
    fn flush_confirms(&mut self) {
        let mut waiting = Vec::new();
        for id in std::mem::take(&mut self.ctx.confirms_due) {
            if let Some(ch) = self.channels.get_mut(&id)
                && ch.flush_confirms(&self.ctx)
            {
                waiting.push(id);
            }
        }
        self.ctx.confirms_due = waiting;
    }

    fn has_unacked(&self) -> bool {
        self.channels
            .values()
            .any(|ch| !ch.closing && ch.shared.unacked_count() > 0)
    }

    /// Closes (406) every channel holding a delivery unacked for longer than
    /// its consumer timeout; its unacked messages are requeued, as when any
    /// channel closes.
    fn check_consumer_timeouts(&mut self) -> AmqpResult<()> {
        let default = self.ctx.broker.config.limits.consumer_timeout;
        let now = crate::ops::clock::coarse_ms();
        let late: Vec<(u16, u64)> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.closing)
            .filter_map(|(&id, ch)| ch.shared.timed_out(now, default).map(|t| (id, t)))
            .collect();
        for (channel, limit) in late {
            tracing::warn!(peer = %self.peer, channel,
                "consumer ack timed out on channel {channel} ({limit} ms); closing it");
            let e = AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "delivery acknowledgement on channel {channel} timed out. Timeout value used: {limit} ms. This timeout value can be configured, see consumers doc guide to learn more"
                ),
            );
            self.after_channel_result(channel, Err(e))?;
        }
        Ok(())
    }

    /// The outbound cap, for every writer: while this connection's own
    /// backlog (deliveries, basic.get-ok, returns, method replies) or that
    /// of a connection its direct replies go to is over the cap, its
    /// socket is not read, until that backlog is below LOW_WATER.
    fn hold(&mut self) -> Option<Arc<ConnectionHandle>> {
        if self.ctx.handle.over_cap() {
            return Some(self.ctx.handle.clone());
        }
        self.ctx
            .reply_wait
            .take()
            .filter(|t| t.over_cap() && !t.is_closing())
    }

    fn redispatch_all(&mut self) {
        for ch in self.channels.values() {
            ch.redispatch();
        }
    }

    /// Releases everything the connection holds: channels (requeueing unacked
    /// messages) and exclusive queues. Idempotent.
    fn cleanup(&mut self) {
        for (_, mut ch) in self.channels.drain() {
            ch.shutdown(&mut self.ctx);
        }
        for q in std::mem::take(&mut self.ctx.exclusive_queues) {
            self.ctx.vhost.remove_queue(&q);
        }
    }
}

fn unexpected_frame(what: &str, channel: u16) -> AmqpError {
    AmqpError::connection(
        code::UNEXPECTED_FRAME,
        format!("{what} frame on channel {channel}, which is not open"),
    )
}
