//! The outbound side of a connection: a shared buffer that any task may append
//! encoded frames to, and a writer task that flushes it to the socket.
//!
//! Frames from many sources (the connection's own replies, deliveries made by
//! publishers' tasks) accumulate in one buffer; the writer swaps it out and
//! writes it with one syscall, so many frames cost one write. The writer is
//! woken only when the buffer goes from empty to non-empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

/// The outbound cap of a connection. Above this many unwritten bytes, queues
/// stop delivering to the connection, its socket is not read (so basic.get,
/// returns and method replies stop too), and publishers of direct replies to
/// it pause, until the writer is below `LOW_WATER`. So whatever the client
/// does, its buffer holds at most this plus one reply.
pub const HIGH_WATER: usize = 1 << 20;
/// The writer wakes the connection again when the backlog drops below this.
pub const LOW_WATER: usize = HIGH_WATER / 4;

thread_local! {
    /// The connection whose frame this thread is handling (0: none): only
    /// its replies wait for the definitions changes the frame made. Bytes
    /// written meanwhile to other connections (deliveries, cancels) and
    /// bytes written outside a frame (the handshake) are not gated on them.
    static REPLYING_FOR: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs `f` (the handling of one of connection `id`'s frames) with that
/// connection's replies gated on the definitions changes `f` makes.
pub fn replying_for<R>(id: u64, f: impl FnOnce() -> R) -> R {
    let outer = REPLYING_FOR.with(|c| c.replace(id));
    let r = f();
    REPLYING_FOR.with(|c| c.set(outer));
    r
}

/// Events other tasks send to a connection's task.
#[derive(Debug)]
pub enum ConnEvent {
    /// The socket backlog drained: queues may deliver to this connection again.
    Writable,
    /// Writing to the socket failed: the connection is gone.
    WriteFailed,
    /// An administrator or the broker closes the connection.
    Close(u16, String),
}

/// What a connection is, once its handshake is done (for listings).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Client address.
    pub peer: std::net::SocketAddr,
    /// The listener's address the client connected to.
    pub local: std::net::SocketAddr,
    /// Authenticated user.
    pub user: String,
    /// Opened vhost.
    pub vhost: String,
    /// The client's connection.start-ok properties.
    pub client_properties: amq_protocol::types::FieldTable,
    /// When the connection was opened.
    pub connected_at: std::time::SystemTime,
    /// Negotiated channel_max.
    pub channel_max: u16,
    /// Negotiated heartbeat (seconds).
    pub heartbeat: u16,
    /// The SASL mechanism the client logged in with.
    pub auth_mechanism: String,
    /// TLS details, for connections to the TLS listener.
    pub tls: Option<crate::session::tls::TlsSession>,
}

/// What every part of the broker may hold to reach one client connection.
#[derive(Debug)]
pub struct ConnectionHandle {
    /// Broker-unique connection id.
    pub id: u64,
    buf: Mutex<BytesMut>,
    notify: Notify,
    pending: AtomicUsize,
    written: AtomicU64,
    closing: AtomicBool,
    throttled: AtomicBool,
    /// Definitions change (sequence number) that the bytes in `buf` may
    /// not be sent before (see `write`).
    meta_gate: AtomicU64,
    /// This connection's own definitions changes not yet checked by the
    /// writer (ranges of sequence numbers): if one could not be written,
    /// the connection is closed with 541 instead of sending its replies.
    meta_own: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// Woken when the backlog falls below LOW_WATER, and when the writer ends.
    drained: Notify,
    /// Negotiated frame_max (bytes, including frame overhead).
    pub frame_max: AtomicU32,
    /// The client advertised `consumer_cancel_notify`.
    pub cancel_notify: AtomicBool,
    /// The client advertised `connection.blocked`.
    pub blocked_notify: AtomicBool,
    /// Set once the handshake completes.
    pub info: std::sync::OnceLock<ConnInfo>,
    /// Open channels.
    pub channel_count: AtomicU32,
    events: mpsc::UnboundedSender<ConnEvent>,
    /// Message counters (management API, metrics).
    pub stats: crate::ops::stats::ConnStats,
    /// The connection's channels, for listings (dead ones pruned on open).
    channels: Mutex<Vec<std::sync::Weak<crate::session::delivery::ChannelShared>>>,
}

impl ConnectionHandle {
    /// Creates a handle and the receiver for its events.
    pub fn new(id: u64, frame_max: u32) -> (Arc<Self>, mpsc::UnboundedReceiver<ConnEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let h = ConnectionHandle {
            id,
            buf: Mutex::new(BytesMut::with_capacity(16 * 1024)),
            notify: Notify::new(),
            pending: AtomicUsize::new(0),
            written: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            throttled: AtomicBool::new(false),
            meta_gate: AtomicU64::new(0),
            meta_own: Mutex::new(std::collections::VecDeque::new()),
            drained: Notify::new(),
            frame_max: AtomicU32::new(frame_max),
            cancel_notify: AtomicBool::new(false),
            info: std::sync::OnceLock::new(),
            blocked_notify: AtomicBool::new(false),
            channel_count: AtomicU32::new(0),
            events: tx,
            stats: Default::default(),
            channels: Mutex::new(Vec::new()),
        };
        (Arc::new(h), rx)
    }

    /// Appends frames to the outbound buffer and wakes the writer if needed.
    #[inline]
    pub fn write<R>(&self, f: impl FnOnce(&mut BytesMut) -> R) -> R {
        // A reply written after a definitions change (declare-ok) must not
        // leave before the change is on disk: raise the gate first, under
        // the same lock the writer takes the bytes under.
        // Almost every write follows no definitions change: one
        // thread-local read, and the connection check only after a change.
        let (first, meta) = match crate::store::meta::appended_on_this_thread() {
            (_, 0) => (0, 0),
            _ if REPLYING_FOR.with(std::cell::Cell::get) != self.id => (0, 0),
            changes => changes,
        };
        let (r, was_empty, added) = {
            let mut buf = self.buf.lock();
            if meta > 0 {
                self.meta_gate.fetch_max(meta, Ordering::Relaxed);
                self.note_own_change(first, meta);
            }
            let before = buf.len();
            let r = f(&mut buf);
            let added = buf.len() - before;
            // Counted before the lock is released: the writer cannot take
            // and subtract these bytes before they were added (the count
            // used to underflow when it did).
            if added > 0 {
                self.pending.fetch_add(added, Ordering::SeqCst);
            }
            (r, before == 0, added)
        };
        if added > 0 && was_empty {
            self.notify.notify_one();
        }
        r
    }

    /// After one of this connection's frames made definitions changes
    /// `first..=last`: whatever it writes from now on waits for them, and
    /// their failure closes it with 541, even when the frame itself wrote
    /// nothing (a `nowait` method).
    pub fn gate_on_changes(&self, first: u64, last: u64) {
        let _buf = self.buf.lock();
        self.meta_gate.fetch_max(last, Ordering::Relaxed);
        self.note_own_change(first, last);
    }

    /// Remembers changes `first..=last` as this connection's, merging with
    /// the range before (one frame usually appends one change).
    fn note_own_change(&self, first: u64, last: u64) {
        let mut own = self.meta_own.lock();
        match own.back_mut() {
            Some(r) if first <= r.1 + 1 => r.1 = r.1.max(last),
            _ => own.push_back((first, last)),
        }
    }

    /// Once the definitions log has settled up to `gate` (the gate of the
    /// bytes just taken): the error of this connection's first failed
    /// change among those the bytes wait for, if any. Later changes are
    /// checked with the bytes that wait for them.
    fn own_change_failed(&self, meta: &crate::store::meta::MetaLog, gate: u64) -> Option<String> {
        let mut own = self.meta_own.lock();
        let mut failure = None;
        while let Some(&(first, last)) = own.front() {
            if last > gate {
                break;
            }
            own.pop_front();
            if failure.is_none() {
                failure = meta.failure(first, last);
            }
        }
        failure
    }

    /// Whether queues may hand this connection more deliveries now. When not,
    /// the connection is marked so that the writer wakes it once drained.
    #[inline]
    pub fn can_accept_deliveries(&self) -> bool {
        self.can_accept_deliveries_then(|| {})
    }

    /// `can_accept_deliveries`, running `between` after the first look at
    /// the backlog (tests use it to make the writer drain at the worst time).
    ///
    /// The flag is set before the backlog is looked at again, and both sides
    /// use SeqCst: either the writer's `swap` sees the flag (and sends
    /// Writable) or this second load sees what the writer drained. Setting
    /// the flag after a single load lost the wakeup when the writer drained
    /// in between, and deliveries stalled until something else was written.
    #[inline]
    fn can_accept_deliveries_then(&self, between: impl FnOnce()) -> bool {
        if self.pending.load(Ordering::SeqCst) < HIGH_WATER {
            return true;
        }
        between();
        self.throttled.store(true, Ordering::SeqCst);
        // A flag left set when this returns true costs one spare Writable.
        self.pending.load(Ordering::SeqCst) < HIGH_WATER
    }

    /// Accounts for `n` bytes the writer put on the socket; wakes the
    /// connection if it was throttled and the backlog fell below LOW_WATER.
    fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        let left = self
            .pending
            .fetch_sub(n, Ordering::SeqCst)
            .saturating_sub(n);
        if left < LOW_WATER {
            if self.throttled.swap(false, Ordering::SeqCst) {
                self.send_event(ConnEvent::Writable);
            }
            if left + n >= LOW_WATER {
                self.drained.notify_waiters();
            }
        }
    }

    /// Whether the backlog is over the outbound cap.
    pub fn over_cap(&self) -> bool {
        self.pending.load(Ordering::SeqCst) >= HIGH_WATER
    }

    /// Waits until the backlog is below LOW_WATER or the connection is
    /// closing (or `max` has passed: the caller looks again).
    pub async fn drained(&self, max: std::time::Duration) {
        crate::session::flow::wait_unless_released(
            self.drained.notified(),
            || !self.is_drained(),
            max,
        )
        .await;
    }

    /// Whether a connection held back by this backlog may go on.
    pub fn is_drained(&self) -> bool {
        self.pending.load(Ordering::SeqCst) < LOW_WATER || self.is_closing()
    }

    /// Total bytes written to the socket so far (for heartbeat decisions).
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Unwritten bytes.
    pub fn pending_bytes(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The vhost the connection opened, once open.
    pub fn vhost_name(&self) -> Option<String> {
        self.info.get().map(|i| i.vhost.clone())
    }

    /// Sends an event to the connection's task (ignored if it is gone).
    pub fn send_event(&self, ev: ConnEvent) {
        let _ = self.events.send(ev);
    }

    /// Records a newly opened channel (for listings).
    pub fn add_channel(&self, ch: &Arc<crate::session::delivery::ChannelShared>) {
        self.stats.channels_opened.fetch_add(1, Ordering::Relaxed);
        let mut list = self.channels.lock();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(ch));
    }

    /// The connection's open channels, by number.
    pub fn channels(&self) -> Vec<Arc<crate::session::delivery::ChannelShared>> {
        let mut out: Vec<_> = self
            .channels
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|c| c.state.lock().open)
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// Asks the writer to flush what is buffered and then shut the socket.
    pub fn close_writer(&self) {
        self.closing.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether the connection is closing or closed.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Runs the writer until the connection closes or the socket fails.
    pub async fn run_writer<W: AsyncWrite + Unpin>(
        self: Arc<Self>,
        socket: W,
        meta: Option<Arc<crate::store::meta::MetaLog>>,
    ) {
        self.write_loop(socket, meta).await;
        // Nobody waits for this connection's backlog any more.
        self.closing.store(true, Ordering::Release);
        self.drained.notify_waiters();
    }

    /// Waits until the definitions log has settled up to `gate`. False if
    /// a change of this connection's could not be written (it was undone):
    /// its reply must not go, and the connection is closed with 541
    /// INTERNAL_ERROR instead.
    async fn gate_passed(
        &self,
        gate: u64,
        settled: &mut tokio::sync::watch::Receiver<u64>,
        log: &crate::store::meta::MetaLog,
    ) -> bool {
        while *settled.borrow_and_update() < gate {
            if settled.changed().await.is_err() {
                break;
            }
        }
        let Some(e) = self.own_change_failed(log, gate) else {
            return true;
        };
        self.send_event(ConnEvent::Close(
            crate::protocol::error::code::INTERNAL_ERROR,
            crate::store::meta::refusal(&e),
        ));
        false
    }

    async fn write_loop<W: AsyncWrite + Unpin>(
        &self,
        mut socket: W,
        meta: Option<Arc<crate::store::meta::MetaLog>>,
    ) {
        let mut settled = meta.as_ref().map(|m| m.subscribe());
        let mut spare = BytesMut::with_capacity(16 * 1024);
        // Written since the last flush. A TCP socket's flush does nothing;
        // a TLS stream may hold the last record until flushed, so the writer
        // flushes whenever it is about to wait.
        let mut unflushed = false;
        loop {
            let (swapped, gate) = {
                let mut buf = self.buf.lock();
                if buf.is_empty() {
                    (false, 0)
                } else {
                    std::mem::swap(&mut *buf, &mut spare);
                    (true, self.meta_gate.load(Ordering::Relaxed))
                }
            };
            // These bytes include a reply to a definitions change: send them
            // once the change is on disk, or not at all if it failed.
            if swapped
                && gate > 0
                && let (Some(rx), Some(log)) = (settled.as_mut(), meta.as_deref())
                && !self.gate_passed(gate, rx, log).await
            {
                self.wrote(spare.len());
                spare.clear();
                continue;
            }
            if !swapped {
                if unflushed {
                    unflushed = false;
                    if socket.flush().await.is_err() {
                        self.closing.store(true, Ordering::Release);
                        self.send_event(ConnEvent::WriteFailed);
                        return;
                    }
                    // More may have been queued meanwhile.
                    continue;
                }
                if self.closing.load(Ordering::Acquire) {
                    // Frames written just before closing still go out.
                    if !self.buf.lock().is_empty() {
                        continue;
                    }
                    break;
                }
                self.notify.notified().await;
                continue;
            }
            if socket.write_all(&spare).await.is_err() {
                self.closing.store(true, Ordering::Release);
                self.send_event(ConnEvent::WriteFailed);
                return;
            }
            unflushed = true;
            self.wrote(spare.len());
            spare.clear();
            // Don't keep a huge buffer around after a burst.
            if spare.capacity() > 4 * HIGH_WATER {
                spare = BytesMut::with_capacity(16 * 1024);
            }
        }
        let _ = socket.flush().await;
        let _ = socket.shutdown().await;
    }
}

impl crate::broker::Client for ConnectionHandle {
    fn id(&self) -> u64 {
        self.id
    }

    fn vhost_name(&self) -> Option<String> {
        ConnectionHandle::vhost_name(self)
    }

    fn close(&self, code: u16, text: String) {
        self.send_event(ConnEvent::Close(code, text));
    }

    fn stats(&self) -> &crate::ops::stats::ConnStats {
        &self.stats
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle with `n` unwritten bytes.
    fn backlogged(n: usize) -> (Arc<ConnectionHandle>, mpsc::UnboundedReceiver<ConnEvent>) {
        let (h, rx) = ConnectionHandle::new(1, 4096);
        h.write(|out| out.extend_from_slice(&vec![0u8; n]));
        (h, rx)
    }

    #[test]
    fn a_writer_draining_between_the_check_and_the_flag_still_wakes_the_connection() {
        let (h, mut rx) = backlogged(HIGH_WATER);
        // The writer puts everything on the socket right after the first
        // look at the backlog, before the throttled flag is set.
        let accepted = h.can_accept_deliveries_then(|| h.wrote(HIGH_WATER));
        let woken = matches!(rx.try_recv(), Ok(ConnEvent::Writable));
        assert!(
            accepted || woken,
            "refused deliveries and nothing will wake the connection"
        );
    }

    #[test]
    fn a_throttled_connection_is_woken_once_the_backlog_falls_below_low_water() {
        let (h, mut rx) = backlogged(HIGH_WATER);
        assert!(!h.can_accept_deliveries());
        h.wrote(HIGH_WATER - LOW_WATER);
        assert!(rx.try_recv().is_err(), "woken at LOW_WATER, not below it");
        h.wrote(1);
        assert!(matches!(rx.try_recv(), Ok(ConnEvent::Writable)));
        assert!(h.can_accept_deliveries());
    }
}
