//! A stream queue (`x-queue-type: stream`): an append-only log that many
//! consumers read, each from its own offset, and that consumption never
//! shortens (retention by size and age removes whole old segments).
//!
//! Publishes append to the stream's log (`store::stream`); the log's
//! writer thread makes them durable in group-committed chunks, then wakes
//! the confirms waiting on them and the stream's consumers. Each consumer
//! is a cursor: the entries it is about to receive are read from the log
//! on a stream reader thread (`warren-stream-r`; recent chunks come from
//! the log's tail cache, older ones from disk), a bounded batch at a time,
//! so a consumer far behind holds at most one batch in memory and shares
//! the segment files with every other reader. Prefetch works as credit:
//! a consumer holds at most its prefetch count of unacked deliveries, and
//! each ack lets one more go, as RabbitMQ's streams do over AMQP 0-9-1.

pub mod args;
pub mod tracking;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};

use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::message::Message;
use crate::queue::Queue;
use crate::queue::consumer::{Consumer, QueuedMessage};
use crate::store::disk::Disk;
use crate::store::stream::{Entry, ReadFilter, StreamLog, StreamOptions};
use args::{Start, StartAt, StreamArgs};
use tracking::Tracked;

/// How much one read hands a consumer at most (whole chunks are read;
/// entries before the consumer's offset are skipped).
const READ_BYTES: usize = 256 * 1024;

/// Bytes appended to all streams and not yet taken by their writers.
static BACKLOG: AtomicUsize = AtomicUsize::new(0);

/// Beyond this many unwritten bytes in all streams, publishing connections
/// are not read until the writers catch up (as for the message store).
pub const BACKLOG_MAX: usize = 32 << 20;

/// Whether publishers must wait for the stream writers.
pub fn is_backlogged() -> bool {
    BACKLOG.load(Ordering::Relaxed) > BACKLOG_MAX
}

/// Counts batches made durable by any stream: connections with confirms
/// waiting on a stream watch it.
static DURABLE: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// Subscribes to "some stream made more entries durable".
pub fn durable_watch() -> watch::Receiver<u64> {
    DURABLE.subscribe()
}

/// Tells confirm waiters that a stream made entries durable.
pub fn note_durable() {
    DURABLE.send_modify(|n| *n = n.wrapping_add(1));
}

/// Where streams keep their logs: one directory per stream under `dir`.
#[derive(Debug, Clone)]
pub struct Streams {
    /// The streams directory (`<data-dir>/streams`).
    pub dir: PathBuf,
    /// The file system (tests use a simulated one).
    pub disk: Arc<dyn Disk>,
    /// Sync each written chunk before confirming it.
    pub fsync: bool,
}

impl Streams {
    /// The directory of stream `name` in `vhost`: a hash of both (names may
    /// hold any character and be longer than a file name may be).
    pub fn dir_of(&self, vhost: &str, name: &str) -> PathBuf {
        self.dir.join(dir_name(vhost, name))
    }

    /// Opens (or recovers) the log of stream `name` in `vhost`.
    pub fn open(&self, vhost: &str, name: &str, args: StreamArgs) -> std::io::Result<Arc<Stream>> {
        let cell: Arc<OnceLock<Weak<Stream>>> = Arc::default();
        let weak = cell.clone();
        let on_durable = Arc::new(move || {
            note_durable();
            if let Some(s) = weak.get().and_then(Weak::upgrade) {
                s.on_durable();
            }
        });
        let opts = StreamOptions {
            fsync: self.fsync,
            segment_max: args.segment_bytes,
            max_bytes: args.max_bytes,
            max_age_ms: args.max_age_ms,
            ..StreamOptions::default()
        };
        let dir = self.dir_of(vhost, name);
        let log = StreamLog::open(self.disk.clone(), dir.clone(), opts, on_durable)?;
        let tracked = Tracked::open(self.disk.clone(), &dir);
        let s = Stream::new(log, args, tracked);
        let _ = cell.set(Arc::downgrade(&s));
        Ok(s)
    }

    /// Removes the directories of streams that no longer exist (deleted
    /// while the broker went down before their files were removed), so a
    /// new stream of the same name starts empty. `keep`: (vhost, name) of
    /// the streams that exist.
    pub fn remove_orphans(&self, keep: &[(String, String)]) {
        let keep: std::collections::HashSet<String> =
            keep.iter().map(|(v, n)| dir_name(v, n)).collect();
        let Ok(names) = self.disk.list(&self.dir) else {
            return;
        };
        for n in names.into_iter().filter(|n| !keep.contains(n)) {
            let path = self.dir.join(&n);
            tracing::info!("removing the log of a deleted stream: {}", path.display());
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// The tracked-map key under which a stream-protocol publisher reference's
/// highest publishing id is kept (a consumer name cannot start with NUL
/// over either protocol's clients).
pub fn publisher_key(reference: &str) -> String {
    format!("\u{0}publisher\u{0}{reference}")
}

/// A stable 128-bit FNV-1a hash of vhost and name, in hex.
fn dir_name(vhost: &str, name: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in vhost.bytes().chain([0u8]).chain(name.bytes()) {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("{h:032x}")
}

/// A stream queue's log and its consumers' cursors.
#[derive(Debug)]
pub struct Stream {
    log: Arc<StreamLog>,
    /// Its queue (set once the queue exists), to deliver from the writer's
    /// durability callback.
    queue: OnceLock<Weak<Queue>>,
    readers: Mutex<Vec<Reader>>,
    args: Mutex<StreamArgs>,
    deleted: AtomicBool,
    /// This stream's share of `BACKLOG`.
    accounted: AtomicUsize,
    /// Positions of consumers whose offsets the broker tracks.
    tracked: Mutex<Tracked>,
}

/// One consumer's position in the stream.
#[derive(Debug)]
struct Reader {
    consumer: Arc<Consumer>,
    /// The offset of the next entry to deliver.
    next: u64,
    /// Entries read and not yet delivered, from `next` on.
    ready: VecDeque<Entry>,
    /// The head of `ready`, decoded, when a delivery of it was declined.
    decoded: Option<QueuedMessage>,
    /// A read for this consumer is under way.
    reading: bool,
    /// Its position is tracked under its consumer tag.
    tracked: bool,
    /// What it asked to receive (None: everything).
    filter: Option<Arc<Filter>>,
}

impl Stream {
    /// A stream over `log`, with its effective retention.
    pub fn new(log: Arc<StreamLog>, args: StreamArgs, mut tracked: Tracked) -> Arc<Stream> {
        // Publisher sequences recorded with the entries may be newer than
        // the tracking file (written a moment after each confirm).
        for (reference, seq) in log.writer_sequences() {
            let key = publisher_key(reference);
            let cur = tracked.next.get(&key).copied();
            if cur.is_none_or(|c| c < *seq) {
                tracked.next.insert(key, *seq);
                tracked.dirty = true;
            }
        }
        Arc::new(Stream {
            log,
            queue: OnceLock::new(),
            readers: Mutex::new(Vec::new()),
            args: Mutex::new(args),
            deleted: AtomicBool::new(false),
            accounted: AtomicUsize::new(0),
            tracked: Mutex::new(tracked),
        })
    }

    /// Ties the stream to its queue.
    pub fn attach(&self, queue: Weak<Queue>) {
        let _ = self.queue.set(queue);
    }

    /// The log made more entries durable: consumers may have more.
    fn on_durable(&self) {
        self.settle_backlog();
        if let Some(q) = self.queue.get().and_then(Weak::upgrade) {
            self.dispatch(&q);
        }
    }

    /// Gives back to `BACKLOG` what the writer has taken since (an append
    /// counted here after the writer took it is given back at the next
    /// write, which every append is followed by).
    fn settle_backlog(&self) {
        let pending = self.log.backlog_bytes();
        let acc = self.accounted.load(Ordering::Relaxed);
        if acc > pending {
            self.accounted.fetch_sub(acc - pending, Ordering::Relaxed);
            BACKLOG.fetch_sub(acc - pending, Ordering::Relaxed);
        }
    }

    /// Whether a publish appended at `offset` may be confirmed: it is
    /// durable, or the stream was deleted (its messages with it, as for
    /// any deleted queue).
    pub fn is_settled(&self, offset: u64) -> bool {
        self.log.durable_offset() > offset || self.deleted.load(Ordering::Acquire)
    }

    /// Its log.
    pub fn log(&self) -> &Arc<StreamLog> {
        &self.log
    }

    /// Its effective retention and segment size.
    pub fn args(&self) -> StreamArgs {
        *self.args.lock()
    }

    /// Applies new retention (a policy changed).
    pub fn set_args(&self, args: StreamArgs) {
        *self.args.lock() = args;
        self.log.set_retention(args.max_bytes, args.max_age_ms);
    }

    /// Appends a message; returns its offset (a confirm waits until the
    /// log's durable offset passes it).
    pub fn publish(&self, msg: &Message) -> u64 {
        let mut buf = BytesMut::with_capacity(
            3 + msg.exchange().len()
                + msg.routing_key().len()
                + 4
                + msg.header().len()
                + msg.body_len(),
        );
        encode(msg, &mut buf);
        let filter = filter_value(msg);
        self.append(&buf, filter.as_deref().map(str::as_bytes), None)
    }

    /// Appends an entry already in the stored form (`FORMAT_AMQP10` and an
    /// AMQP 1.0 message, as a stream-protocol client sent it), with its
    /// filter value and, for a publisher with a reference, (reference,
    /// publishing id), recorded durably with the entry for deduplication
    /// (see `publisher_key`); returns its offset.
    pub fn append(&self, entry: &[u8], filter: Option<&[u8]>, writer: Option<(&str, u64)>) -> u64 {
        let offset = self
            .log
            .append_entry(entry, crate::store::wall_ms(), filter, writer);
        self.accounted.fetch_add(entry.len(), Ordering::Relaxed);
        BACKLOG.fetch_add(entry.len(), Ordering::Relaxed);
        offset
    }

    /// Whether the stream was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The value tracked under `key` (a consumer's next offset, or a
    /// publisher's highest sequence: see `streamproto`).
    pub fn tracked(&self, key: &str) -> Option<u64> {
        self.tracked.lock().next.get(key).copied()
    }

    /// Sets the value tracked under `key` (written within
    /// `tracking::FLUSH_DELAY_MS`); `only_up`: never lowers it.
    pub fn set_tracked(&self, queue: &Arc<Queue>, key: &str, value: u64, only_up: bool) {
        let mut t = self.tracked.lock();
        let cur = t.next.get(key).copied();
        if cur == Some(value) || (only_up && cur.is_some_and(|c| c > value)) {
            return;
        }
        t.next.insert(key.to_owned(), value);
        t.dirty = true;
        if !t.scheduled {
            t.scheduled = true;
            let at = crate::ops::clock::now_ms() + tracking::FLUSH_DELAY_MS;
            let kind = crate::queue::timers::Kind::StreamOffsets;
            crate::queue::timers::schedule(at, kind, Arc::downgrade(queue));
        }
    }

    /// Entries kept (what queue.declare-ok and listings report).
    pub fn message_count(&self) -> u64 {
        self.log.len()
    }

    /// Attached consumers.
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.readers
            .lock()
            .iter()
            .map(|r| r.consumer.clone())
            .collect()
    }

    /// Attaches a consumer starting at `start` (after its tracked position,
    /// if it is tracked and has one), and delivers what it may.
    pub fn add_consumer(
        &self,
        queue: &Arc<Queue>,
        consumer: Arc<Consumer>,
        start: Start,
        filter: Option<Filter>,
    ) {
        let log = &self.log;
        let kept = if start.tracked {
            let tag = consumer.tag_str();
            self.tracked.lock().next.get(&tag).copied()
        } else {
            None
        };
        let next = match kept {
            Some(n) => n.max(log.first_offset()),
            None => Self::resolve(log, start.at),
        };
        let mut readers = self.readers.lock();
        readers.push(Reader {
            consumer,
            next,
            ready: VecDeque::new(),
            decoded: None,
            reading: false,
            tracked: start.tracked,
            filter: filter.map(Arc::new),
        });
        self.dispatch_locked(queue, &mut readers);
    }

    /// The offset `at` names now.
    fn resolve(log: &StreamLog, at: StartAt) -> u64 {
        match at {
            StartAt::First => log.first_offset(),
            StartAt::Last => log.last_chunk_offset(),
            StartAt::Next => log.next_offset(),
            StartAt::Offset(n) => n.max(log.first_offset()),
            StartAt::Timestamp(ms) => log.offset_at_timestamp(ms),
        }
    }

    /// `consumer` acked the message at `offset`: a tracked consumer's
    /// position moves past it (written within `tracking::FLUSH_DELAY_MS`).
    pub fn acked(&self, queue: &Arc<Queue>, consumer: &Arc<Consumer>, offset: u64) {
        let is_tracked = self
            .readers
            .lock()
            .iter()
            .any(|r| r.tracked && Arc::ptr_eq(&r.consumer, consumer));
        if !is_tracked {
            return;
        }
        // The consumer resumes after its last ack.
        self.set_tracked(queue, &consumer.tag_str(), offset + 1, true);
    }

    /// Writes the tracked positions, if they changed, on a reader thread
    /// (the timer thread does no I/O).
    pub fn flush_offsets(&self) {
        let snapshot = {
            let mut t = self.tracked.lock();
            t.scheduled = false;
            if !t.dirty || self.deleted.load(Ordering::Acquire) {
                return;
            }
            t.snapshot()
        };
        spawn_read(Box::new(move || {
            if let Err(e) = snapshot.write() {
                tracing::warn!("writing a stream's tracked offsets: {e}");
            }
        }));
    }

    /// Writes the tracked positions now, on this thread (shutdown).
    pub fn write_offsets_now(&self) {
        let snapshot = {
            let mut t = self.tracked.lock();
            if !t.dirty || self.deleted.load(Ordering::Acquire) {
                return;
            }
            t.snapshot()
        };
        if let Err(e) = snapshot.write() {
            tracing::warn!("writing a stream's tracked offsets: {e}");
        }
    }

    /// Detaches a consumer; whether it was attached.
    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        let mut readers = self.readers.lock();
        let before = readers.len();
        readers.retain(|r| !Arc::ptr_eq(&r.consumer, consumer));
        readers.len() != before
    }

    /// Delivers to every consumer what its credit allows, and starts reads
    /// for consumers that have delivered all they had read.
    pub fn dispatch(&self, queue: &Arc<Queue>) {
        let mut readers = self.readers.lock();
        self.dispatch_locked(queue, &mut readers);
    }

    fn dispatch_locked(&self, queue: &Arc<Queue>, readers: &mut [Reader]) {
        if self.deleted.load(Ordering::Acquire) {
            return;
        }
        let durable = self.log.durable_offset();
        for r in readers.iter_mut() {
            self.feed(queue, r, durable);
        }
    }

    fn feed(&self, queue: &Arc<Queue>, r: &mut Reader, durable: u64) {
        loop {
            if r.decoded.is_none() {
                let Some(e) = r.ready.pop_front() else { break };
                match decode(&e) {
                    Some((_, value))
                        if r.filter
                            .as_ref()
                            .is_some_and(|f| !f.wants(value.as_deref())) =>
                    {
                        r.next = e.offset + 1;
                        continue;
                    }
                    Some((m, _)) => r.decoded = Some(m),
                    None => {
                        tracing::error!(queue = %queue.name.escape_debug(), offset = e.offset, "stream entry does not decode; skipped");
                        r.next = e.offset + 1;
                        continue;
                    }
                }
            }
            let Some(offset) = r.decoded.as_ref().map(|m| m.seq) else {
                break;
            };
            let Reader {
                consumer, decoded, ..
            } = r;
            if !consumer.try_deliver(queue, || decoded.take()) {
                return;
            }
            r.next = offset + 1;
        }
        if !r.reading && r.next < durable && r.consumer.is_active() {
            r.reading = true;
            self.start_read(queue, r.consumer.clone(), r.filter.clone(), r.next);
        }
    }

    /// Reads entries from `from` for `consumer` on a reader thread; the
    /// result goes to `read_done`.
    fn start_read(
        &self,
        queue: &Arc<Queue>,
        consumer: Arc<Consumer>,
        filter: Option<Arc<Filter>>,
        from: u64,
    ) {
        let log = self.log.clone();
        let queue: Weak<Queue> = Arc::downgrade(queue);
        spawn_read(Box::new(move || {
            let chunks = filter.as_ref().map(|f| &f.chunks);
            let got = log.read_filtered(from, READ_BYTES, chunks);
            if let Some(q) = queue.upgrade()
                && let Some(s) = q.stream()
            {
                s.read_done(&q, &consumer, from, got);
            }
        }));
    }

    fn read_done(
        &self,
        queue: &Arc<Queue>,
        consumer: &Arc<Consumer>,
        from: u64,
        got: std::io::Result<(Vec<Entry>, u64)>,
    ) {
        let mut readers = self.readers.lock();
        let Some(r) = readers
            .iter_mut()
            .find(|r| Arc::ptr_eq(&r.consumer, consumer))
        else {
            return;
        };
        r.reading = false;
        match got {
            Ok((entries, scanned)) if r.next == from => {
                // Retention may have removed what the consumer was at, or
                // its filter skipped chunks: it goes on from the first
                // entry read, or past everything looked at.
                r.next = r.next.max(entries.first().map_or(scanned, |e| e.offset));
                let next = r.next;
                r.ready
                    .extend(entries.into_iter().filter(|e| e.offset >= next));
            }
            Ok(_) => {}
            Err(e) => {
                // Tried again on the next publish or ack.
                tracing::warn!(queue = %queue.name.escape_debug(), offset = from, "stream read failed: {e}");
                return;
            }
        }
        let durable = self.log.durable_offset();
        self.feed(queue, r, durable);
    }

    /// The stream was deleted: no more deliveries, its files go; returns
    /// its consumers.
    pub fn delete(&self) -> Vec<Arc<Consumer>> {
        self.deleted.store(true, Ordering::Release);
        let readers = std::mem::take(&mut *self.readers.lock());
        self.log.delete_in_background();
        // Publishes still waiting for the disk are settled now (they went
        // with the stream): wake their connections to confirm them.
        note_durable();
        let acc = self.accounted.swap(0, Ordering::Relaxed);
        BACKLOG.fetch_sub(acc, Ordering::Relaxed);
        readers.into_iter().map(|r| r.consumer).collect()
    }
}

/// The first byte of a stored entry: an AMQP 0-9-1 message (`encode`).
pub const FORMAT_AMQP091: u8 = 0;
/// The first byte of a stored entry: an AMQP 1.0 message as a stream
/// protocol client sent it.
pub const FORMAT_AMQP10: u8 = 1;

/// An entry: the format byte (`FORMAT_AMQP091`), exchange and routing key
/// (each a length octet and bytes), the content header (length and bytes),
/// the body.
fn encode(msg: &Message, buf: &mut BytesMut) {
    buf.put_u8(FORMAT_AMQP091);
    buf.put_u8(msg.exchange().len() as u8);
    buf.put_slice(msg.exchange());
    buf.put_u8(msg.routing_key().len() as u8);
    buf.put_slice(msg.routing_key());
    buf.put_u32(msg.header().len() as u32);
    buf.put_slice(msg.header());
    buf.put_slice(msg.body());
}

/// The message an entry holds, with its offset added to its headers as
/// `x-stream-offset` (a signed 64-bit integer, after the publisher's own).
fn decode(e: &Entry) -> Option<(QueuedMessage, Option<String>)> {
    match *e.data.first()? {
        FORMAT_AMQP091 => decode_091(e),
        FORMAT_AMQP10 => decode_10(e),
        _ => None,
    }
}

/// An AMQP 1.0 entry as AMQP 0-9-1 consumers get it (RabbitMQ's mapping,
/// `protocol::amqp10_map`), with an empty exchange and routing key (the
/// stream protocol publishes to the stream, not through an exchange).
fn decode_10(e: &Entry) -> Option<(QueuedMessage, Option<String>)> {
    let data = &e.data[1..];
    let m = crate::protocol::amqp10::Message::decode(data).ok()?;
    let (props, body) = crate::protocol::amqp10_map::to_091(&m, data);
    let mut headers = props.headers().clone().unwrap_or_default();
    let filter = headers
        .inner()
        .get(FILTER_VALUE)
        .and_then(crate::protocol::fields::string);
    headers.insert(
        "x-stream-offset".into(),
        AMQPValue::LongLongInt(i64::try_from(e.offset).unwrap_or(i64::MAX)),
    );
    let props = props.with_headers(headers);
    let header = crate::message::content_header(&props, body.len() as u64)?;
    let m = QueuedMessage {
        msg: Message::new(b"", b"", &header, body),
        seq: e.offset,
        redelivered: false,
        stored: None,
        deadline: 0,
    };
    Some((m, filter))
}

/// An entry's message as AMQP 1.0 (what stream-protocol consumers get):
/// as stored for `FORMAT_AMQP10`, converted for `FORMAT_AMQP091`. None: the
/// entry does not decode.
#[inline]
pub fn entry_as_amqp10(data: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    match *data.first()? {
        FORMAT_AMQP10 => Some(std::borrow::Cow::Borrowed(&data[1..])),
        FORMAT_AMQP091 => amqp091_as_amqp10(data).map(std::borrow::Cow::Owned),
        _ => None,
    }
}

/// An AMQP 0-9-1 entry converted to AMQP 1.0.
#[cold]
fn amqp091_as_amqp10(data: &[u8]) -> Option<Vec<u8>> {
    let e = Entry {
        offset: 0,
        timestamp: 0,
        data: Bytes::copy_from_slice(data),
    };
    let (q, _) = decode_091_parts(&e)?;
    let props = q.msg.properties()?;
    let m = crate::protocol::amqp10_map::from_091(&props, q.msg.body_bytes());
    let mut out = Vec::with_capacity(data.len() + 64);
    m.encode(&mut out);
    Some(out)
}

/// Where an AMQP 0-9-1 entry's exchange, routing key and content header
/// are, and where its body starts.
type Parts = (
    std::ops::Range<usize>,
    std::ops::Range<usize>,
    std::ops::Range<usize>,
    usize,
);

fn entry_parts(d: &[u8]) -> Option<Parts> {
    let mut at = 1usize;
    let mut take = |n: usize| -> Option<std::ops::Range<usize>> {
        let r = at..at.checked_add(n)?;
        (r.end <= d.len()).then(|| {
            at = r.end;
            r
        })
    };
    let xl = d[take(1)?.start] as usize;
    let x = take(xl)?;
    let kl = d[take(1)?.start] as usize;
    let k = take(kl)?;
    let hl = take(4)?;
    let hl = u32::from_be_bytes(d[hl].try_into().ok()?) as usize;
    let h = take(hl)?;
    Some((x, k, h, at))
}

/// An AMQP 0-9-1 entry's message as published (no offset header).
fn decode_091_parts(e: &Entry) -> Option<(QueuedMessage, Option<String>)> {
    let d = &e.data;
    let (x, k, h, at) = entry_parts(d)?;
    let body: Bytes = d.slice(at..);
    let m = QueuedMessage {
        msg: Message::new(&d[x], &d[k], &d[h], body),
        seq: e.offset,
        redelivered: false,
        stored: None,
        deadline: 0,
    };
    Some((m, None))
}

fn decode_091(e: &Entry) -> Option<(QueuedMessage, Option<String>)> {
    use crate::message::{Put, header_put_long, header_string};
    let d = &e.data;
    let (x, k, h, at) = entry_parts(d)?;
    let offset = i64::try_from(e.offset).unwrap_or(i64::MAX);
    // The offset header is spliced into the stored content header, the other
    // properties left as they are (no decode and re-encode per delivery).
    if let Put::Spliced(header) = header_put_long(&d[h.clone()], "x-stream-offset", offset, true) {
        let filter = header_string(&d[h], FILTER_VALUE);
        let m = QueuedMessage {
            msg: Message::new(&d[x], &d[k], &header, d.slice(at..)),
            seq: e.offset,
            redelivered: false,
            stored: None,
            deadline: 0,
        };
        return Some((m, filter));
    }
    let (mut q, _) = decode_091_parts(e)?;
    let props = q.msg.properties()?;
    let mut headers = props.headers().clone().unwrap_or_else(FieldTable::default);
    let filter = headers
        .inner()
        .get(FILTER_VALUE)
        .and_then(crate::protocol::fields::string);
    headers.insert(
        "x-stream-offset".into(),
        AMQPValue::LongLongInt(i64::try_from(e.offset).unwrap_or(i64::MAX)),
    );
    let props = props.with_headers(headers);
    let body = q.msg.body_bytes();
    let header = crate::message::content_header(&props, body.len() as u64)?;
    q.msg = Message::new(q.msg.exchange(), q.msg.routing_key(), &header, body);
    Some((q, filter))
}

/// The header a publisher sets a message's filter value in.
const FILTER_VALUE: &str = "x-stream-filter-value";

/// A message's filter value, read only when it has headers.
fn filter_value(msg: &Message) -> Option<String> {
    let h = msg.header();
    // Property flags are at 12..14; bit 13 says headers are present.
    if h.len() < 14 || u16::from_be_bytes([h[12], h[13]]) & 0x2000 == 0 {
        return None;
    }
    let props = msg.properties()?;
    let headers = props.headers().as_ref()?;
    crate::protocol::fields::string(headers.inner().get(FILTER_VALUE)?)
}

/// What a filtering consumer receives (x-stream-filter and
/// x-stream-match-unfiltered, as in RabbitMQ 3.13): whole chunks without
/// a wanted value are skipped unread, and the rest is checked message by
/// message, so the consumer gets exactly the messages it asked for.
#[derive(Debug)]
pub struct Filter {
    values: Vec<String>,
    match_unfiltered: bool,
    chunks: ReadFilter,
}

impl Filter {
    /// A filter for `values` (and messages without a value when
    /// `match_unfiltered`).
    pub fn new(values: Vec<String>, match_unfiltered: bool) -> Filter {
        let chunks = ReadFilter::new(values.iter().map(|v| v.as_bytes()), match_unfiltered);
        Filter {
            values,
            match_unfiltered,
            chunks,
        }
    }

    fn wants(&self, value: Option<&str>) -> bool {
        match value {
            Some(v) => self.values.iter().any(|w| w == v),
            None => self.match_unfiltered,
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on one of the stream reader threads.
fn spawn_read(job: Job) {
    static READERS: LazyLock<std::sync::mpsc::Sender<Job>> = LazyLock::new(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..2 {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("warren-stream-r{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A panic costs the read it hit, not the thread.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                            tracing::error!("a stream read panicked");
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a stream reader thread: {e}");
            }
        }
        tx
    });
    if READERS.send(job).is_err() {
        tracing::error!("no stream reader thread is running");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_decodes_with_its_offset_header() {
        let props = amq_protocol::protocol::BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers({
                let mut t = FieldTable::default();
                t.insert("a".into(), AMQPValue::LongInt(1));
                t.insert(FILTER_VALUE.into(), AMQPValue::LongString("red".into()));
                t
            });
        let header = crate::message::content_header(&props, 5).unwrap();
        let msg = Message::new(b"x", b"key", &header, Bytes::from_static(b"hello"));
        assert_eq!(filter_value(&msg).as_deref(), Some("red"));
        let mut buf = BytesMut::new();
        encode(&msg, &mut buf);
        let e = Entry {
            offset: 42,
            timestamp: 0,
            data: buf.freeze(),
        };
        let (q, filter) = decode(&e).unwrap();
        assert_eq!(filter.as_deref(), Some("red"));
        assert_eq!(q.seq, 42);
        assert_eq!(q.msg.exchange(), b"x");
        assert_eq!(q.msg.routing_key(), b"key");
        assert_eq!(q.msg.body(), b"hello");
        let p = q.msg.properties().unwrap();
        assert_eq!(p.content_type().as_ref().unwrap().as_str(), "text/plain");
        let h = p.headers().clone().unwrap();
        assert_eq!(h.inner().get("a"), Some(&AMQPValue::LongInt(1)));
        assert_eq!(
            h.inner().get("x-stream-offset"),
            Some(&AMQPValue::LongLongInt(42))
        );
        let cut = Entry {
            offset: 1,
            timestamp: 0,
            data: e.data.slice(..5),
        };
        assert!(decode(&cut).is_none());
        let unknown = Entry {
            offset: 1,
            timestamp: 0,
            data: Bytes::from_static(&[9, 0, 0]),
        };
        assert!(decode(&unknown).is_none());
    }

    #[test]
    fn an_amqp10_entry_decodes_for_amqp091_consumers() {
        use crate::protocol::amqp10::{Body, Message as M10, Properties, Value};
        let m = M10 {
            properties: Some(Properties {
                content_type: Some("text/plain".into()),
                ..Properties::default()
            }),
            application_properties: Some(vec![(Value::String("k".into()), Value::Int(3))]),
            body: Body::Data(vec![Bytes::from_static(b"hi")]),
            ..M10::default()
        };
        let mut data = vec![FORMAT_AMQP10];
        m.encode(&mut data);
        let e = Entry {
            offset: 7,
            timestamp: 0,
            data: data.into(),
        };
        let (q, _) = decode(&e).unwrap();
        assert_eq!(q.msg.body(), b"hi");
        let p = q.msg.properties().unwrap();
        assert_eq!(p.content_type().as_ref().unwrap().as_str(), "text/plain");
        let h = p.headers().clone().unwrap();
        assert_eq!(h.inner().get("k"), Some(&AMQPValue::LongInt(3)));
        assert_eq!(
            h.inner().get("x-stream-offset"),
            Some(&AMQPValue::LongLongInt(7))
        );
    }
}
