//! One stream-protocol connection. Two tasks: a reader task that reads
//! frames (each bounded by the frame max before it is allocated) into a
//! channel of `FRAMES_QUEUED` frames, and the connection's own task that
//! owns the socket's write half and everything else: it handles the
//! commands, sends confirms and deliveries when the durable watch fires,
//! collects the disk reads it started (on tokio's blocking pool), and
//! sends heartbeats.
//!
//! Memory per connection is bounded: at most `FRAMES_QUEUED` frames read
//! ahead, one read batch per subscription, and what one write has in
//! flight (writes are awaited: a client that does not read stops its
//! connection, and the reader task then stops reading its socket). While
//! the streams' write backlog is over `BACKLOG_MAX`, the task takes no
//! frames, so publishers stop being read. A write that makes no progress
//! for two heartbeat intervals (at least 30 s) ends the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::codec::{Fields, FrameError, Out, read_frame};
use super::publish::Publisher;
use super::subscribe::{ReadDone, Subscription};
use super::{code, key};
use crate::broker::Broker;
use crate::vhost::VHost;

/// Frames the reader task may read ahead of the connection task.
const FRAMES_QUEUED: usize = 8;

/// Publishing ids a connection may have waiting for confirms; beyond, its
/// frames are not read until confirms catch up.
const UNCONFIRMED_MAX: usize = 100_000;

/// The shortest time a write may wait for a client to read.
const WRITE_TIMEOUT_MIN: Duration = Duration::from_secs(30);

/// The frame max until Open succeeds (RabbitMQ's `initial_frame_max`).
pub const INITIAL_FRAME_MAX: u32 = 8192;

/// Why the connection ends.
#[derive(Debug)]
pub enum End {
    /// Closed cleanly (or the peer went away).
    Done,
    /// Close the connection with this code and reason.
    Close(u16, String),
}

pub type Res<T = ()> = Result<T, End>;

impl From<FrameError> for End {
    fn from(e: FrameError) -> End {
        match e {
            FrameError::Closed | FrameError::Io(_) => End::Done,
            FrameError::TooLarge(n) => End::Close(
                code::FRAME_TOO_LARGE,
                format!("frame of {n} bytes is over the frame max"),
            ),
            FrameError::Malformed => End::Close(code::UNKNOWN_FRAME, "malformed frame".into()),
        }
    }
}

impl From<std::io::Error> for End {
    fn from(_: std::io::Error) -> End {
        End::Done
    }
}

/// The socket's write half: a TCP one, or a TLS stream's.
type Writer = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// A connection's state.
pub struct Conn {
    pub broker: Arc<Broker>,
    pub peer: SocketAddr,
    pub user: String,
    pub vhost: Option<Arc<VHost>>,
    /// The negotiated frame max (0: none), shared with the reader task.
    pub frame_max: Arc<AtomicU32>,
    pub heartbeat: u32,
    out: BufWriter<Writer>,
    /// Connected over TLS (Metadata then advertises the TLS port).
    pub tls: bool,
    frames: mpsc::Receiver<Result<Bytes, FrameError>>,
    pub last_read: Instant,
    pub publishers: HashMap<u8, Publisher>,
    pub subs: HashMap<u8, Subscription>,
    /// Memory Deliver frames are built in, kept between them.
    pub deliver_buf: bytes::BytesMut,
    pub reads_tx: mpsc::UnboundedSender<ReadDone>,
    /// Where other connections tell this one a subscription became active.
    pub sac_tx: mpsc::UnboundedSender<super::sac::Update>,
    pub correlation: u32,
}

/// An open stream connection as the broker sees it: counted with the
/// others, and closed at shutdown or when its vhost is deleted.
#[derive(Debug)]
pub struct StreamClient {
    id: u64,
    vhost: String,
    close: mpsc::UnboundedSender<String>,
    stats: crate::ops::stats::ConnStats,
}

impl crate::broker::Client for StreamClient {
    fn id(&self) -> u64 {
        self.id
    }
    fn vhost_name(&self) -> Option<String> {
        Some(self.vhost.clone())
    }
    fn close(&self, _code: u16, text: String) {
        let _ = self.close.send(text);
    }
    fn stats(&self) -> &crate::ops::stats::ConnStats {
        &self.stats
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// One of `[limits] max_handshaking_connections`, shared with AMQP: taken
/// at accept, given back when the handshake ends.
struct Handshaking(Arc<Broker>);

impl Handshaking {
    fn take(broker: &Arc<Broker>) -> Option<Handshaking> {
        let max = broker.config.limits.max_handshaking_connections;
        let prev = broker.handshaking.fetch_add(1, Ordering::AcqRel);
        let slot = Handshaking(broker.clone());
        (max == 0 || prev < max).then_some(slot)
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one accepted socket until it closes.
pub async fn run(broker: Arc<Broker>, socket: TcpStream, peer: SocketAddr) {
    let Some(slot) = Handshaking::take(&broker) else {
        refuse_handshaking(peer);
        return;
    };
    let (r, w) = socket.into_split();
    serve(broker, slot, r, Box::new(w), peer, false).await;
}

/// Serves one socket accepted on the TLS port: the TLS handshake (within
/// the handshake timeout, holding a handshake slot), then the protocol.
pub async fn run_tls(
    broker: Arc<Broker>,
    acceptor: TlsAcceptor,
    socket: TcpStream,
    peer: SocketAddr,
) {
    let Some(slot) = Handshaking::take(&broker) else {
        refuse_handshaking(peer);
        return;
    };
    let timeout = Duration::from_secs(broker.config.amqp.handshake_timeout.max(1));
    let stream = match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, "stream protocol: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "stream protocol: TLS handshake timed out");
            return;
        }
    };
    let (r, w) = tokio::io::split(stream);
    serve(broker, slot, r, Box::new(w), peer, true).await;
}

fn refuse_handshaking(peer: SocketAddr) {
    tracing::warn!(%peer, "closing a new stream connection: too many connections are in their handshake (limits.max_handshaking_connections)");
}

async fn serve<R: AsyncRead + Unpin + Send + 'static>(
    broker: Arc<Broker>,
    slot: Handshaking,
    r: R,
    w: Writer,
    peer: SocketAddr,
    tls: bool,
) {
    let frame_max = Arc::new(AtomicU32::new(INITIAL_FRAME_MAX));
    let (tx, frames) = mpsc::channel(FRAMES_QUEUED);
    let reader = tokio::spawn(read_loop(r, frame_max.clone(), tx));
    let (reads_tx, mut reads_rx) = mpsc::unbounded_channel();
    let (sac_tx, mut sac_rx) = mpsc::unbounded_channel();
    let (close_tx, mut close_rx) = mpsc::unbounded_channel();
    let mut c = Conn {
        broker,
        peer,
        user: String::new(),
        vhost: None,
        frame_max,
        heartbeat: 0,
        out: BufWriter::with_capacity(64 * 1024, w),
        tls,
        frames,
        last_read: Instant::now(),
        publishers: HashMap::new(),
        subs: HashMap::new(),
        deliver_buf: bytes::BytesMut::new(),
        reads_tx,
        sac_tx,
        correlation: 0,
    };
    let timeout = Duration::from_secs(c.broker.config.amqp.handshake_timeout.max(1));
    let handshake = tokio::time::timeout(timeout, c.handshake()).await;
    drop(slot);
    let id = c.broker.next_connection_id();
    let end = match handshake {
        Ok(Ok(())) => {
            let vhost = c
                .vhost
                .as_ref()
                .map_or(String::new(), |v| v.name.to_string());
            let client = StreamClient {
                id,
                vhost,
                close: close_tx,
                stats: Default::default(),
            };
            c.broker.register(Arc::new(client));
            let end = c.main_loop(&mut reads_rx, &mut sac_rx, &mut close_rx).await;
            c.broker.unregister(id);
            end
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(End::Done),
    };
    if let Err(End::Close(code, reason)) = end {
        tracing::info!(peer = %c.peer, code, "closing stream connection: {reason}");
        c.send_close(code, &reason).await;
    }
    c.cleanup();
    reader.abort();
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    max: Arc<AtomicU32>,
    tx: mpsc::Sender<Result<Bytes, FrameError>>,
) {
    loop {
        let f = read_frame(&mut r, max.load(Ordering::Relaxed)).await;
        let end = f.is_err();
        if tx.send(f).await.is_err() || end {
            return;
        }
    }
}

impl Conn {
    /// The next frame from the reader task.
    pub async fn next_frame(&mut self) -> Res<Bytes> {
        match self.frames.recv().await {
            Some(Ok(f)) => {
                self.last_read = Instant::now();
                Ok(f)
            }
            Some(Err(e)) => Err(e.into()),
            None => Err(End::Done),
        }
    }

    /// Queues a frame for the socket (flushed after each event). A write
    /// that cannot go on for `write_timeout` (a client that stopped
    /// reading) ends the connection.
    pub async fn send(&mut self, frame: &[u8]) -> Res {
        let limit = self.write_timeout();
        match tokio::time::timeout(limit, self.out.write_all(frame)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(End::Done),
        }
    }

    /// Writes what is buffered (within `write_timeout`).
    pub async fn flush(&mut self) -> Res {
        let limit = self.write_timeout();
        match tokio::time::timeout(limit, self.out.flush()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(End::Done),
        }
    }

    /// How long a write may wait for the client to read: two heartbeat
    /// intervals, at least `WRITE_TIMEOUT_MIN`.
    fn write_timeout(&self) -> Duration {
        Duration::from_secs(2 * self.heartbeat as u64).max(WRITE_TIMEOUT_MIN)
    }

    /// Sends Close and waits briefly for its response.
    async fn send_close(&mut self, code: u16, reason: &str) {
        self.correlation += 1;
        let mut o = Out::new(key::CLOSE, 1);
        o.u32(self.correlation).u16(code).string(reason);
        let frame = o.finish();
        let sent = async {
            self.send(&frame).await?;
            self.flush().await
        };
        if !matches!(
            tokio::time::timeout(Duration::from_secs(1), sent).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let wait = async {
            while let Ok(f) = self.next_frame().await {
                if f.len() >= 2 && u16::from_be_bytes([f[0], f[1]]) == key::CLOSE | 0x8000 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        let _ = self.out.shutdown().await;
    }

    async fn main_loop(
        &mut self,
        reads: &mut mpsc::UnboundedReceiver<ReadDone>,
        sac: &mut mpsc::UnboundedReceiver<super::sac::Update>,
        closing: &mut mpsc::UnboundedReceiver<String>,
    ) -> Res {
        let mut durable = crate::queue::stream::durable_watch();
        let beat = Duration::from_secs(self.heartbeat.max(1) as u64);
        let mut tick = tokio::time::interval(beat.min(Duration::from_millis(500)));
        let mut last_beat = Instant::now();
        loop {
            let backlogged =
                crate::queue::stream::is_backlogged() || self.unconfirmed() > UNCONFIRMED_MAX;
            tokio::select! {
                f = self.frames.recv(), if !backlogged => match f {
                    Some(Ok(frame)) => {
                        self.last_read = Instant::now();
                        self.dispatch(frame).await?;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(End::Done),
                },
                _ = durable.changed() => {
                    self.confirm().await?;
                    self.pump_all().await?;
                },
                Some(done) = reads.recv() => self.read_done(done).await?,
                Some(u) = sac.recv() => self.group_update(u).await?,
                Some(text) = closing.recv() => return Err(End::Close(code::OK, text)),
                _ = tick.tick() => {
                    self.check_deleted().await?;
                    self.pump_all().await?;
                    if self.heartbeat > 0 && last_beat.elapsed() >= beat {
                        last_beat = Instant::now();
                        self.send(&Out::new(key::HEARTBEAT, 1).finish()).await?;
                        if self.last_read.elapsed() > beat * 2 {
                            return Err(End::Done);
                        }
                    }
                }
            }
            self.flush().await?;
        }
    }

    /// Handles one frame after Open.
    async fn dispatch(&mut self, frame: Bytes) -> Res {
        let mut f = Fields::new(frame);
        let k = f.u16().map_err(End::from)?;
        let version = f.u16().map_err(End::from)?;
        match k {
            key::DECLARE_PUBLISHER => self.declare_publisher(&mut f).await,
            key::PUBLISH => self.publish(&mut f, version).await,
            key::QUERY_PUBLISHER_SEQUENCE => self.query_publisher_sequence(&mut f).await,
            key::DELETE_PUBLISHER => self.delete_publisher(&mut f).await,
            key::SUBSCRIBE => self.subscribe(&mut f).await,
            key::CREDIT => self.credit(&mut f).await,
            key::STORE_OFFSET => self.store_offset(&mut f),
            key::QUERY_OFFSET => self.query_offset(&mut f).await,
            key::UNSUBSCRIBE => self.unsubscribe(&mut f).await,
            key::CREATE => self.create(&mut f).await,
            key::DELETE => self.delete(&mut f).await,
            key::METADATA => self.metadata(&mut f).await,
            key::STREAM_STATS => self.stream_stats(&mut f).await,
            key::EXCHANGE_COMMAND_VERSIONS => self.exchange_command_versions(&mut f).await,
            key::CREATE_SUPER_STREAM => self.create_super_stream(&mut f).await,
            key::DELETE_SUPER_STREAM => self.delete_super_stream(&mut f).await,
            key::PARTITIONS => self.partitions(&mut f).await,
            key::ROUTE => self.route(&mut f).await,
            0x801a => self.consumer_update_response(&mut f).await,
            key::HEARTBEAT => Ok(()),
            key::CLOSE => self.close_requested(&mut f).await,
            k if k & 0x8000 != 0 => Ok(()), // a response (to our Close, say)
            k => Err(End::Close(
                code::UNKNOWN_FRAME,
                format!("unknown command {k:#06x}"),
            )),
        }
    }

    /// The client closes: answer and end.
    pub async fn close_requested(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        self.send(&Out::response(key::CLOSE, corr, code::OK).finish())
            .await?;
        self.flush().await?;
        let _ = self.out.shutdown().await;
        Err(End::Done)
    }

    /// ExchangeCommandVersions: the commands and versions warren serves.
    pub async fn exchange_command_versions(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let versions: &[(u16, u16, u16)] = &[
            (key::DECLARE_PUBLISHER, 1, 1),
            (key::PUBLISH, 1, 2),
            (key::QUERY_PUBLISHER_SEQUENCE, 1, 1),
            (key::DELETE_PUBLISHER, 1, 1),
            (key::SUBSCRIBE, 1, 1),
            (key::DELIVER, 1, 1),
            (key::CREDIT, 1, 1),
            (key::STORE_OFFSET, 1, 1),
            (key::QUERY_OFFSET, 1, 1),
            (key::UNSUBSCRIBE, 1, 1),
            (key::CREATE, 1, 1),
            (key::DELETE, 1, 1),
            (key::METADATA, 1, 1),
            (key::METADATA_UPDATE, 1, 1),
            (key::HEARTBEAT, 1, 1),
            (key::CLOSE, 1, 1),
            (key::EXCHANGE_COMMAND_VERSIONS, 1, 1),
            (key::STREAM_STATS, 1, 1),
            (key::ROUTE, 1, 1),
            (key::PARTITIONS, 1, 1),
            (key::CREATE_SUPER_STREAM, 1, 1),
            (key::DELETE_SUPER_STREAM, 1, 1),
            (key::CONSUMER_UPDATE, 1, 1),
        ];
        let mut o = Out::response(key::EXCHANGE_COMMAND_VERSIONS, corr, code::OK);
        o.u32(versions.len() as u32);
        for (k, min, max) in versions {
            o.u16(*k).u16(*min).u16(*max);
        }
        self.send(&o.finish()).await
    }

    /// Sends a response that is only a code.
    pub async fn respond(&mut self, k: u16, corr: u32, code: u16) -> Res {
        self.send(&Out::response(k, corr, code).finish()).await
    }

    /// Whether the user may `access` the stream `name` in the vhost.
    pub fn allowed(&self, access: crate::auth::Access, name: &str) -> bool {
        let Some(v) = &self.vhost else { return false };
        self.broker
            .permissions(&self.user, &v.name)
            .is_some_and(|p| p.allows(access, name))
    }

    /// The stream queue `name` in the connection's vhost.
    pub fn stream_queue(&self, name: &str) -> Option<Arc<crate::queue::Queue>> {
        let q = self.vhost.as_ref()?.queue(name)?;
        q.stream()?;
        (!q.is_deleted()).then_some(q)
    }

    /// Publishers and subscriptions on streams deleted since: they go, and
    /// the client gets MetadataUpdate (once per stream).
    async fn check_deleted(&mut self) -> Res {
        let mut gone: Vec<String> = Vec::new();
        self.publishers.retain(|_, p| {
            let keep = !p.queue.is_deleted();
            if !keep {
                gone.push(p.queue.name.clone());
            }
            keep
        });
        self.subs.retain(|_, s| {
            let keep = !s.queue.is_deleted();
            if !keep {
                s.leave_group();
                gone.push(s.queue.name.clone());
            }
            keep
        });
        gone.sort();
        gone.dedup();
        for name in gone {
            let mut o = Out::new(key::METADATA_UPDATE, 1);
            o.u16(code::STREAM_DOES_NOT_EXIST).string(&name);
            self.send(&o.finish()).await?;
        }
        Ok(())
    }

    /// Leaves nothing behind: publishers' pending sequences are recorded
    /// by their confirms; subscriptions just stop.
    fn cleanup(&mut self) {
        self.publishers.clear();
        for s in self.subs.values() {
            s.leave_group();
        }
        self.subs.clear();
    }
}
