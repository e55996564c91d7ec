//! Stream logs: the append-only log on disk behind each stream queue
//! (RabbitMQ-style streams, Kafka-style logs).
//!
//! Every entry gets the next offset (0, 1, 2, ...) and keeps it for good:
//! consumers address entries by offset, across restarts. A log lives in its
//! own directory as segment files named after the first offset they hold,
//! `{first_offset:020}.seg`. A segment is a run of chunks, each holding the
//! entries of one group commit:
//!
//! ```text
//! chunk   = header data trailer
//! header  = magic "WSTR" | version u8 | flags u8 | trailer length u16
//!           | first offset u64 | entry count u32 | timestamp u64 (its newest entry's)
//!           | data length u32 | crc32 of data and trailer u32
//!           | Bloom filter (24 bytes) | crc32 of the 60 bytes before u32
//! data    = entry*        entry = length u32 | timestamp u64 | bytes
//! trailer = count u16 | (name length u16 | name | sequence u64)*
//! ```
//!
//! All big-endian. The trailer (version 2; a version 1 chunk has none)
//! records, for each named writer (a stream-protocol publisher with a
//! reference) with entries in the chunk, the highest publishing id among
//! them: deduplication state that is durable exactly when those entries
//! are, and that recovery reads back with them (`writer_sequences`). The header carries its own checksum so that a length or
//! count is trusted only once it is known to be what was written; the data
//! checksum catches a torn write. At open, recovery reads every chunk back
//! and cuts the log at the first one that fails a check (later segments
//! go too), so the log on disk is always a contiguous run of offsets.
//!
//! Memory holds one small index entry per chunk (where it is and what it
//! covers), never entry bodies, except a bounded cache of the most recently
//! written chunks, from which live consumers read without touching the disk.
//!
//! `append` only copies into a buffer. One writer thread per log
//! (`warren-stream-w`; a writer shared by all logs is a later improvement)
//! takes everything appended while it was busy, writes it as chunks with
//! one write, syncs once, and only then counts it durable and calls the
//! log's `on_durable` hook. Retention (by total size and by age) deletes
//! whole segments from the oldest end, never the one being written.
//!
//! May use `schema`, `message`, `protocol`, `ops` (it uses none of them):
//! it knows nothing of queues or consumers.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::{Condvar, Mutex};

use super::disk::{AppendFile, Disk, ReadFile};
use super::{FatalHook, supervised, wall_ms};

/// The default segment size (RabbitMQ's `x-stream-max-segment-size-bytes`).
pub const DEFAULT_SEGMENT_MAX: u64 = 500_000_000;

/// Bytes of a chunk header.
pub const CHUNK_HEADER_LEN: usize = 64;

/// Bytes before each entry's data in a chunk: length and timestamp.
pub const ENTRY_HEADER_LEN: usize = 12;

/// The largest entry `append` takes: a chunk's data length is a u32.
pub const MAX_ENTRY: usize = u32::MAX as usize - ENTRY_HEADER_LEN;

const MAGIC: [u8; 4] = *b"WSTR";
/// The newest chunk format: 2 has a trailer. Chunks without one are
/// written as version 1, which older builds read.
const VERSION: u8 = 2;

/// A chunk's trailer stays under this size: a chunk takes no entry of a
/// writer new to it beyond.
const TRAILER_MAX: usize = 32 << 10;

/// A chunk takes no more entries once its data reaches this size...
const CHUNK_MAX_BYTES: usize = 1 << 20;
/// ...or holds this many entries, so that a reader starting in the middle
/// of a chunk reads (and skips) little.
const CHUNK_MAX_ENTRIES: u32 = 4096;

/// Directories of logs being removed by `delete_in_background`.
static DELETING: std::sync::LazyLock<Mutex<std::collections::HashSet<PathBuf>>> =
    std::sync::LazyLock::new(Default::default);
/// Signalled (with `DELETING`'s lock) when a removal is done.
static DELETED: Condvar = Condvar::new();

/// Recovery reads segments in windows of this size.
const SCAN_WINDOW: usize = 4 << 20;

/// How a stream log runs.
pub struct StreamOptions {
    /// Sync (fdatasync) each written batch before it counts as durable.
    pub fsync: bool,
    /// A new segment file is started rather than grow the current one
    /// beyond this many bytes (x-stream-max-segment-size-bytes).
    pub segment_max: u64,
    /// Retention by size (x-max-length-bytes): while the segments hold more
    /// than this, the oldest is deleted (never the one being written).
    pub max_bytes: Option<u64>,
    /// Retention by age (x-max-age, ms): a segment whose newest entry is
    /// older than this is deleted (never the one being written).
    pub max_age_ms: Option<u64>,
    /// Called when an fsync fails (the default logs and aborts the process).
    pub on_fatal: FatalHook,
    /// Delay between retries of a failed write.
    pub retry_delay: Duration,
    /// How often an idle writer applies retention by age.
    pub retention_interval: Duration,
    /// Bytes of recently written chunks kept in memory for reads.
    pub tail_cache_bytes: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            fsync: true,
            segment_max: DEFAULT_SEGMENT_MAX,
            max_bytes: None,
            max_age_ms: None,
            on_fatal: Box::new(abort_on_fsync_failure),
            retry_delay: Duration::from_millis(100),
            retention_interval: Duration::from_secs(1),
            tail_cache_bytes: 4 << 20,
        }
    }
}

/// What happens when an fsync fails in a running broker: log and abort, so
/// that recovery (which trusts only what reads back) runs at the next start.
fn abort_on_fsync_failure(e: &io::Error) {
    tracing::error!(
        "stream log: fsync failed ({e}); what was written since the last sync may not be on disk. \
         Stopping warren so that recovery can run from what is on disk."
    );
    std::process::abort();
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its offset in the log.
    pub offset: u64,
    /// The timestamp it was appended with (wall-clock ms).
    pub timestamp: u64,
    /// What was appended.
    pub data: Bytes,
}

/// What `StreamLog::read_chunks` read.
#[derive(Debug)]
pub struct ChunkRead {
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
    /// The offset the read looked up to (its filter may have skipped
    /// chunks after the last one read): a reader goes on from there.
    pub scanned: u64,
    /// The memory chunks were read into, if any were read from disk: once
    /// they are all dropped, `Bytes::try_into_mut` gets it back for
    /// another read.
    pub buffer: Option<Bytes>,
}

/// A chunk as read (`StreamLog::read_chunks`): checked, its entries in
/// their stored layout.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The offset of its first entry.
    pub first: u64,
    /// How many entries it holds.
    pub count: u32,
    data: Bytes,
}

impl Chunk {
    /// The offset after its last entry.
    pub fn end(&self) -> u64 {
        self.first + u64::from(self.count)
    }

    /// Bytes of its entries (their lengths and timestamps included).
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Visits its entries from offset `from` on, in order, with their
    /// offset, timestamp and bytes, until `visit` returns false. Err if the
    /// chunk's entries do not fit its data (they were checked when read:
    /// not expected).
    pub fn entries_from(
        &self,
        from: u64,
        mut visit: impl FnMut(u64, u64, &[u8]) -> bool,
    ) -> io::Result<()> {
        walk_entries(&self.data, self.count, |i, ts, range| {
            let offset = self.first + u64::from(i);
            offset < from || visit(offset, ts, &self.data[range])
        })
        .map_err(|_| {
            invalid_data(format!(
                "stream chunk at offset {} is malformed",
                self.first
            ))
        })
    }
}

/// Bytes of a chunk's filter (a Bloom filter of the filter values of its
/// entries; RabbitMQ's default x-stream-filter-size-bytes).
pub const FILTER_BYTES: usize = 16;

/// A chunk has entries that carry a filter value.
const HAS_FILTERED: u8 = 1;
/// A chunk has entries without one.
const HAS_UNFILTERED: u8 = 2;

/// The two bits a filter value sets in a chunk's Bloom filter.
fn filter_bits(value: &[u8]) -> [usize; 2] {
    let h = crc32fast::hash(value);
    let g = crc32fast::hash(&[value, b"\x01"].concat());
    let bits = FILTER_BYTES * 8;
    [h as usize % bits, g as usize % bits]
}

/// What a filtered reader wants (x-stream-filter, x-stream-match-unfiltered).
#[derive(Debug, Clone, Default)]
pub struct ReadFilter {
    bits: Vec<[usize; 2]>,
    match_unfiltered: bool,
}

impl ReadFilter {
    /// Chunks that may hold an entry with one of `values`, and with
    /// `match_unfiltered` chunks holding entries without a value.
    pub fn new<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
        match_unfiltered: bool,
    ) -> ReadFilter {
        ReadFilter {
            bits: values.into_iter().map(filter_bits).collect(),
            match_unfiltered,
        }
    }

    /// Whether a chunk with this filter and flags may hold what it wants.
    fn may_match(&self, bloom: &[u8; FILTER_BYTES], flags: u8) -> bool {
        let set = |b: usize| bloom[b / 8] & (1 << (b % 8)) != 0;
        (self.match_unfiltered && flags & HAS_UNFILTERED != 0)
            || (flags & HAS_FILTERED != 0 && self.bits.iter().any(|[a, b]| set(*a) && set(*b)))
    }
}

/// A chunk header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    first: u64,
    count: u32,
    /// Bytes of trailer after the data.
    trailer_len: u16,
    /// HAS_FILTERED | HAS_UNFILTERED.
    flags: u8,
    /// The Bloom filter of its entries' filter values.
    bloom: [u8; FILTER_BYTES],
    ts: u64,
    data_len: u32,
    data_crc: u32,
}

/// What a header's bytes turned out to be.
enum Parsed {
    Chunk(Header),
    /// Not a chunk header (torn, corrupt, or zeros).
    Bad,
    /// A valid header of a format this build does not know.
    Newer(u8),
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = if self.trailer_len > 0 { 2 } else { 1 };
        b[5] = self.flags;
        b[6..8].copy_from_slice(&self.trailer_len.to_be_bytes());
        b[8..16].copy_from_slice(&self.first.to_be_bytes());
        b[16..20].copy_from_slice(&self.count.to_be_bytes());
        b[20..28].copy_from_slice(&self.ts.to_be_bytes());
        b[28..32].copy_from_slice(&self.data_len.to_be_bytes());
        b[32..36].copy_from_slice(&self.data_crc.to_be_bytes());
        b[36..36 + FILTER_BYTES].copy_from_slice(&self.bloom);
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Parsed {
        if b.len() < CHUNK_HEADER_LEN || b[0..4] != MAGIC {
            return Parsed::Bad;
        }
        if crc32fast::hash(&b[..60]) != be_u32(b, 60) {
            return Parsed::Bad;
        }
        if b[4] > VERSION {
            return Parsed::Newer(b[4]);
        }
        let mut bloom = [0u8; FILTER_BYTES];
        bloom.copy_from_slice(&b[36..36 + FILTER_BYTES]);
        let h = Header {
            first: be_u64(b, 8),
            count: be_u32(b, 16),
            trailer_len: u16::from_be_bytes([b[6], b[7]]),
            flags: b[5],
            bloom,
            ts: be_u64(b, 20),
            data_len: be_u32(b, 28),
            data_crc: be_u32(b, 32),
        };
        let room = u64::from(h.count) * ENTRY_HEADER_LEN as u64;
        if !(b[4] == 2 || (b[4] == 1 && h.trailer_len == 0))
            || h.count == 0
            || u64::from(h.data_len) < room
            || h.first.checked_add(u64::from(h.count)).is_none()
        {
            return Parsed::Bad;
        }
        Parsed::Chunk(h)
    }
}

/// A chunk's entries do not add up to what its header says.
#[derive(Debug)]
struct Malformed;

/// Walks the `count` entries of a chunk's data, calling `visit` with each
/// one's index, timestamp and byte range until it returns false. Walked to
/// the end, the entries must fill the data exactly.
fn walk_entries(
    data: &[u8],
    count: u32,
    mut visit: impl FnMut(u32, u64, std::ops::Range<usize>) -> bool,
) -> Result<(), Malformed> {
    let mut at = 0usize;
    for i in 0..count {
        let head_end = at.checked_add(ENTRY_HEADER_LEN).ok_or(Malformed)?;
        let head = data.get(at..head_end).ok_or(Malformed)?;
        let len = be_u32(head, 0) as usize;
        let ts = be_u64(head, 4);
        let end = head_end.checked_add(len).ok_or(Malformed)?;
        if end > data.len() {
            return Err(Malformed);
        }
        if !visit(i, ts, head_end..end) {
            return Ok(());
        }
        at = end;
    }
    if at == data.len() {
        Ok(())
    } else {
        Err(Malformed)
    }
}

/// Decodes a chunk trailer into `into`, keeping each writer's highest
/// sequence.
fn read_trailer(
    t: &[u8],
    into: &mut std::collections::HashMap<String, u64>,
) -> Result<(), Malformed> {
    if t.is_empty() {
        return Ok(());
    }
    let n = u16::from_be_bytes(
        t.get(0..2)
            .ok_or(Malformed)?
            .try_into()
            .map_err(|_| Malformed)?,
    );
    let mut at = 2usize;
    for _ in 0..n {
        let len = t.get(at..at + 2).ok_or(Malformed)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        at += 2;
        let name = t.get(at..at + len).ok_or(Malformed)?;
        let name = std::str::from_utf8(name).map_err(|_| Malformed)?;
        at += len;
        let seq = be_u64(t.get(at..at + 8).ok_or(Malformed)?, 0);
        at += 8;
        let e = into.entry(name.to_owned()).or_insert(seq);
        *e = (*e).max(seq);
    }
    if at == t.len() {
        Ok(())
    } else {
        Err(Malformed)
    }
}

/// Bytes a writer adds to a trailer.
fn trailer_item_len(name: &str) -> usize {
    2 + name.len() + 8
}

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// The segments in `dir`, by first offset. Only names this module writes
/// count: anything else in the directory is left alone.
fn list_segments(disk: &dyn Disk, dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = disk
        .list(dir)?
        .iter()
        .filter_map(|name| name.strip_suffix(".seg"))
        .filter(|s| s.len() == 20 && s.bytes().all(|c| c.is_ascii_digit()))
        .filter_map(|s| s.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// The length of an open file. The `Disk` trait has no size call, so it is
/// found with one-byte reads: doubling, then bisecting (about 2·log2(size)
/// reads, once per segment at open).
fn file_size(f: &dyn ReadFile) -> io::Result<u64> {
    let has = |at: u64| -> io::Result<bool> {
        let mut b = [0u8; 1];
        match f.read_exact_at(&mut b, at) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    };
    if !has(0)? {
        return Ok(0);
    }
    // Byte `lo` exists, byte `hi` does not.
    let (mut lo, mut hi) = (0u64, 1u64);
    while has(hi)? {
        lo = hi;
        hi = hi.saturating_mul(2);
        if hi == u64::MAX {
            break;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if has(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo + 1)
}

/// Reads a file in large windows, so that recovery costs a few reads per
/// window rather than two per chunk.
struct Window<'a> {
    file: &'a dyn ReadFile,
    size: u64,
    at: u64,
    buf: Vec<u8>,
}

impl Window<'_> {
    /// Bytes `pos..pos + len`, which the caller has checked lie in the file.
    fn get(&mut self, pos: u64, len: usize) -> io::Result<&[u8]> {
        let end = pos + len as u64;
        if pos < self.at || end > self.at + self.buf.len() as u64 {
            let want = (len.max(SCAN_WINDOW) as u64).min(self.size - pos) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.at = pos;
        }
        let from = (pos - self.at) as usize;
        Ok(&self.buf[from..from + len])
    }
}

/// Where one chunk is and what it covers: all that memory keeps per chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkIdx {
    first: u64,
    /// The newest timestamp of this chunk and every earlier one, so that
    /// timestamps never go backwards along the index (binary search).
    ts: u64,
    /// Where its header starts in its segment.
    pos: u64,
    count: u32,
    data_len: u32,
    trailer_len: u16,
    /// Its header's filter flags and Bloom filter.
    flags: u8,
    bloom: [u8; FILTER_BYTES],
}

impl ChunkIdx {
    fn end(&self) -> u64 {
        self.first + u64::from(self.count)
    }

    /// Bytes it takes in its segment: header, data and trailer.
    fn stored_len(&self) -> u64 {
        CHUNK_HEADER_LEN as u64 + u64::from(self.data_len) + u64::from(self.trailer_len)
    }
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    /// Its first offset (and name).
    base: u64,
    bytes: u64,
    /// The newest timestamp in it (retention by age).
    newest_ts: u64,
    /// Opened at the first read from disk.
    reader: Option<Arc<dyn ReadFile>>,
}

impl Segment {
    fn new(base: u64) -> Segment {
        Segment {
            base,
            bytes: 0,
            newest_ts: 0,
            reader: None,
        }
    }
}

/// What the log holds on disk, as far as it is durable.
#[derive(Debug, Default)]
struct State {
    /// Oldest first; the last is the one being written. Never empty.
    segments: VecDeque<Segment>,
    /// Every durable chunk, oldest first.
    index: VecDeque<ChunkIdx>,
    /// The data of the most recent chunks, by first offset (in order).
    cache: ChunkCache,
    /// Bytes in all segments.
    bytes: u64,
    /// The newest timestamp written so far.
    newest_ts: u64,
    max_bytes: Option<u64>,
    max_age_ms: Option<u64>,
    /// Files of deleted segments whose removal failed: tried again at the
    /// next retention pass.
    doomed: Vec<PathBuf>,
}

impl State {
    fn segment_of(&self, offset: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.base <= offset);
        self.segments.get(i.checked_sub(1)?)
    }

    fn cached(&self, first: u64) -> Option<Bytes> {
        let c = &self.cache.items;
        let i = c.binary_search_by_key(&first, |c| c.0).ok()?;
        Some(c[i].1.clone())
    }

    /// Whether retention wants the oldest segment gone. The one being
    /// written always stays: a log keeps at least its newest entries.
    fn oldest_expired(&self, now: u64) -> bool {
        let Some(oldest) = self.segments.front() else {
            return false;
        };
        if self.segments.len() < 2 {
            return false;
        }
        let too_big = self.max_bytes.is_some_and(|m| self.bytes > m);
        let too_old = self
            .max_age_ms
            .is_some_and(|age| oldest.newest_ts < now.saturating_sub(age));
        too_big || too_old
    }

    /// Forgets the oldest segment; returns its first offset.
    fn drop_oldest(&mut self) -> Option<u64> {
        let gone = self.segments.pop_front()?;
        self.bytes -= gone.bytes;
        let keep_from = self.segments.front().map_or(u64::MAX, |s| s.base);
        while self.index.front().is_some_and(|c| c.first < keep_from) {
            self.index.pop_front();
        }
        while self.cache.items.front().is_some_and(|c| c.0 < keep_from) {
            self.cache.pop_oldest();
        }
        Some(gone.base)
    }
}

/// An entry being added to a chunk that is not written yet.
#[derive(Debug)]
struct Open {
    /// Where its header goes in the pending buffer.
    at: usize,
    first: u64,
    count: u32,
    ts: u64,
    flags: u8,
    bloom: [u8; FILTER_BYTES],
    /// Named writers with entries in it, each with its highest sequence.
    writers: Vec<(String, u64)>,
    /// Bytes its trailer will take (0 without writers).
    trailer_len: usize,
    /// Its trailer is written: it takes no more entries.
    closed: bool,
}

/// What was appended and the writer has not taken yet: chunks laid out
/// in one buffer, headers left blank until the writer seals them.
#[derive(Debug, Default)]
struct Pending {
    next: u64,
    buf: BytesMut,
    chunks: Vec<Open>,
}

impl Pending {
    fn add(
        &mut self,
        offset: u64,
        data: &[u8],
        ts: u64,
        filter: Option<&[u8]>,
        writer: Option<(&str, u64)>,
    ) {
        // A name no trailer can hold is not recorded (references are at
        // most 256 bytes).
        let writer = writer.filter(|(w, _)| trailer_item_len(w) <= TRAILER_MAX / 2);
        let len = self.buf.len();
        let full = self.chunks.last().is_none_or(|c| {
            let data_len = len - c.at - CHUNK_HEADER_LEN;
            let new_writer = writer.filter(|(w, _)| !c.writers.iter().any(|(n, _)| n == w));
            c.closed
                || c.count >= CHUNK_MAX_ENTRIES
                || data_len >= CHUNK_MAX_BYTES
                || data_len + ENTRY_HEADER_LEN + data.len() > u32::MAX as usize
                || new_writer
                    .is_some_and(|(w, _)| c.trailer_len.max(2) + trailer_item_len(w) > TRAILER_MAX)
        });
        if full {
            self.close_last();
            let at = self.buf.len();
            self.buf.put_bytes(0, CHUNK_HEADER_LEN);
            self.chunks.push(Open {
                at,
                first: offset,
                count: 0,
                ts: 0,
                flags: 0,
                bloom: [0; FILTER_BYTES],
                writers: Vec::new(),
                trailer_len: 0,
                closed: false,
            });
        }
        self.buf.put_u32(data.len() as u32);
        self.buf.put_u64(ts);
        self.buf.put_slice(data);
        if let Some(c) = self.chunks.last_mut() {
            c.count += 1;
            c.ts = c.ts.max(ts);
            match filter {
                Some(v) => {
                    c.flags |= HAS_FILTERED;
                    for b in filter_bits(v) {
                        c.bloom[b / 8] |= 1 << (b % 8);
                    }
                }
                None => c.flags |= HAS_UNFILTERED,
            }
            if let Some((name, seq)) = writer {
                match c.writers.iter_mut().find(|(n, _)| n == name) {
                    Some((_, s)) => *s = (*s).max(seq),
                    None => {
                        c.trailer_len = c.trailer_len.max(2) + trailer_item_len(name);
                        c.writers.push((name.to_owned(), seq));
                    }
                }
            }
        }
    }

    /// Writes the last chunk's trailer after its data: it takes no more
    /// entries (the next one starts a chunk).
    fn close_last(&mut self) {
        let Some(c) = self.chunks.last_mut() else {
            return;
        };
        if c.closed {
            return;
        }
        c.closed = true;
        if c.writers.is_empty() {
            return;
        }
        let start = self.buf.len();
        self.buf.put_u16(c.writers.len() as u16);
        for (name, seq) in &c.writers {
            self.buf.put_u16(name.len() as u16);
            self.buf.put_slice(name.as_bytes());
            self.buf.put_u64(*seq);
        }
        debug_assert_eq!(self.buf.len() - start, c.trailer_len);
    }
}

/// A chunk ready to write: its header is filled in.
#[derive(Debug)]
struct Sealed {
    first: u64,
    count: u32,
    ts: u64,
    flags: u8,
    bloom: [u8; FILTER_BYTES],
    /// Where it starts in the batch.
    at: usize,
    /// Header, data and trailer.
    len: usize,
    trailer_len: u16,
}

/// Fills in the headers of the chunks in `buf`.
fn seal(mut buf: BytesMut, chunks: Vec<Open>) -> (Bytes, Vec<Sealed>) {
    let mut sealed = Vec::with_capacity(chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        let end = chunks.get(i + 1).map_or(buf.len(), |n| n.at);
        let body = &buf[c.at + CHUNK_HEADER_LEN..end];
        let header = Header {
            first: c.first,
            count: c.count,
            trailer_len: c.trailer_len as u16,
            flags: c.flags,
            bloom: c.bloom,
            ts: c.ts,
            data_len: (body.len() - c.trailer_len) as u32,
            data_crc: crc32fast::hash(body),
        };
        buf[c.at..c.at + CHUNK_HEADER_LEN].copy_from_slice(&header.encode());
        sealed.push(Sealed {
            first: c.first,
            count: c.count,
            ts: c.ts,
            flags: c.flags,
            bloom: c.bloom,
            at: c.at,
            len: end - c.at,
            trailer_len: c.trailer_len as u16,
        });
    }
    (buf.freeze(), sealed)
}

/// The segment the writer appends to.
struct Active {
    file: Box<dyn AppendFile>,
    /// Its length: where the next chunk goes.
    written: u64,
}

/// What the writer found when it looked at the pending entries.
enum Batch {
    /// Stopping, with nothing left to write.
    Stop,
    /// Nothing to write after waiting a while.
    Idle,
    /// Chunks to write.
    Write(BytesMut, Vec<Open>),
}

/// What recovery rebuilt from the segment files.
struct Recovered {
    segments: VecDeque<Segment>,
    index: VecDeque<ChunkIdx>,
    bytes: u64,
    newest_ts: u64,
    next: u64,
    active: Active,
    /// Each named writer's highest sequence in the kept chunks' trailers.
    writers: std::collections::HashMap<String, u64>,
}

/// What one segment's scan found.
struct Scan {
    chunks: Vec<ChunkIdx>,
    /// Where the last good chunk ends.
    valid_len: u64,
    size: u64,
    /// Writer sequences from its good chunks' trailers.
    writers: std::collections::HashMap<String, u64>,
}

/// Reads a segment's chunks back, checking each, and stops at the first
/// that does not check out: the end of the valid log. `newest_ts` carries
/// the running newest timestamp across segments.
fn scan_segment(disk: &dyn Disk, path: &Path, base: u64, newest_ts: &mut u64) -> io::Result<Scan> {
    let file = disk.open_read(path)?;
    let size = file_size(&*file)?;
    let mut win = Window {
        file: &*file,
        size,
        at: 0,
        buf: Vec::new(),
    };
    let (mut pos, mut next, mut chunks) = (0u64, base, Vec::new());
    let mut writers = std::collections::HashMap::new();
    while size - pos >= CHUNK_HEADER_LEN as u64 {
        let h = match Header::decode(win.get(pos, CHUNK_HEADER_LEN)?) {
            Parsed::Chunk(h) => h,
            Parsed::Bad => break,
            Parsed::Newer(v) => {
                return Err(invalid_data(format!(
                    "{}: chunk format {v} is newer than this warren knows ({VERSION})",
                    path.display()
                )));
            }
        };
        let body_len = h.data_len as usize + h.trailer_len as usize;
        let end = pos + CHUNK_HEADER_LEN as u64 + body_len as u64;
        if h.first != next || end > size {
            break;
        }
        let body = win.get(pos + CHUNK_HEADER_LEN as u64, body_len)?;
        let (data, trailer) = body.split_at(h.data_len as usize);
        let mut found = std::collections::HashMap::new();
        if crc32fast::hash(body) != h.data_crc
            || walk_entries(data, h.count, |_, _, _| true).is_err()
            || read_trailer(trailer, &mut found).is_err()
        {
            break;
        }
        for (w, s) in found {
            let e = writers.entry(w).or_insert(s);
            *e = (*e).max(s);
        }
        *newest_ts = (*newest_ts).max(h.ts);
        chunks.push(ChunkIdx {
            first: h.first,
            ts: *newest_ts,
            pos,
            count: h.count,
            data_len: h.data_len,
            trailer_len: h.trailer_len,
            flags: h.flags,
            bloom: h.bloom,
        });
        next += u64::from(h.count);
        pos = end;
    }
    Ok(Scan {
        chunks,
        valid_len: pos,
        size,
        writers,
    })
}

/// Removes a segment file that recovery does not keep.
fn discard(disk: &dyn Disk, dir: &Path, base: u64, why: &str) -> io::Result<()> {
    tracing::warn!(
        "stream log {}: removing segment {base:020}.seg ({why})",
        dir.display()
    );
    disk.remove(&segment_path(dir, base))
}

/// Rebuilds the log from the segments in `dir`: each is scanned in order;
/// a torn or corrupt tail is cut off (the file truncated at its last good
/// chunk, later segments removed), so that what remains is one contiguous
/// run of offsets. Empty segments other than the last are removed too
/// (a segment started just before a stop, or by a roll that failed).
fn recover(disk: &dyn Disk, dir: &Path) -> io::Result<Recovered> {
    disk.create_dir_all(dir)?;
    let mut kept: Vec<(u64, Scan)> = Vec::new();
    let (mut newest_ts, mut cut) = (0u64, false);
    for base in list_segments(disk, dir)? {
        if cut {
            discard(disk, dir, base, "after a cut")?;
            continue;
        }
        let expected = kept
            .last()
            .map(|(b, s)| s.chunks.last().map_or(*b, |c| c.end()));
        if expected.is_some_and(|e| e != base) {
            // An empty file is a roll that failed: harmless. Anything else
            // breaks the run of offsets, so the log ends before it.
            let empty = file_size(&*disk.open_read(&segment_path(dir, base))?)? == 0;
            cut = !empty;
            discard(disk, dir, base, "does not follow the previous segment")?;
            continue;
        }
        let scan = scan_segment(disk, &segment_path(dir, base), base, &mut newest_ts)?;
        if scan.valid_len < scan.size {
            tracing::warn!(
                "stream log {}: segment {base:020}.seg cut from {} to {} bytes (torn or corrupt tail)",
                dir.display(),
                scan.size,
                scan.valid_len
            );
            disk.truncate(&segment_path(dir, base), scan.valid_len)?;
            cut = true;
        }
        kept.push((base, scan));
    }
    let last = kept.pop();
    let mut nonempty = Vec::with_capacity(kept.len() + 1);
    for (base, scan) in kept {
        if scan.chunks.is_empty() {
            discard(disk, dir, base, "empty")?;
        } else {
            nonempty.push((base, scan));
        }
    }
    nonempty.extend(last);
    let kept = nonempty;
    let base = kept.last().map_or(0, |(b, _)| *b);
    let active = Active {
        file: disk.open_append(&segment_path(dir, base))?,
        written: kept.last().map_or(0, |(_, s)| s.valid_len),
    };
    // The new segment's name, and every removal, made durable.
    disk.sync_dir(dir)?;
    let mut rec = Recovered {
        segments: VecDeque::new(),
        index: VecDeque::new(),
        bytes: 0,
        newest_ts,
        next: base,
        active,
        writers: std::collections::HashMap::new(),
    };
    for (base, scan) in kept {
        for (w, s) in scan.writers {
            let e = rec.writers.entry(w).or_insert(s);
            *e = (*e).max(s);
        }
        let mut seg = Segment::new(base);
        seg.bytes = scan.valid_len;
        seg.newest_ts = scan.chunks.last().map_or(0, |c| c.ts);
        rec.bytes += seg.bytes;
        rec.next = scan.chunks.last().map_or(base, |c| c.end());
        rec.segments.push_back(seg);
        rec.index.extend(scan.chunks);
    }
    if rec.segments.is_empty() {
        rec.segments.push_back(Segment::new(0));
    }
    Ok(rec)
}

/// A chunk a read will decode, and where its data comes from.
struct Planned {
    chunk: ChunkIdx,
    /// The segment it is in (its first offset).
    segment: u64,
    cached: Option<Bytes>,
}

/// A stream's append-only log on disk. Shared as `Arc<StreamLog>`; call
/// `close` or `delete` to stop its writer thread (which holds a reference).
pub struct StreamLog {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    fsync: bool,
    segment_max: u64,
    retry_delay: Duration,
    retention_interval: Duration,
    cache_max: usize,
    on_fatal: FatalHook,
    on_durable: Arc<dyn Fn() + Send + Sync>,
    pending: Mutex<Pending>,
    /// Wakes the writer (with the pending lock).
    wake: Condvar,
    /// Bytes appended and not yet taken by the writer.
    backlog: AtomicUsize,
    state: Mutex<State>,
    /// Offsets below this are durable.
    durable: AtomicU64,
    /// The oldest offset retained.
    first: AtomicU64,
    /// An fsync failed: nothing more counts as durable.
    failed: AtomicBool,
    stopping: AtomicBool,
    /// Chunks read from segment files (not the tail cache).
    disk_reads: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Writer sequences recovery found in the chunk trailers.
    recovered_writers: std::collections::HashMap<String, u64>,
    /// Readers' renderings of whole chunks, by first offset (see
    /// `rendering`).
    renderings: Mutex<ChunkCache>,
}

/// Bytes of chunk renderings a log keeps for its readers.
const RENDERINGS_MAX: usize = 4 << 20;

/// Bytes kept by a chunk's first offset, bounded in total: the oldest put
/// goes first (the tail cache and the readers' renderings).
#[derive(Debug, Default)]
struct ChunkCache {
    items: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl ChunkCache {
    /// Keeps `data` unless it alone is over `max`, then drops the oldest
    /// until the total is within `max`.
    fn put(&mut self, first: u64, data: Bytes, max: usize) {
        if data.len() > max {
            return;
        }
        self.bytes += data.len();
        self.items.push_back((first, data));
        while self.bytes > max {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, d)) = self.items.pop_front() {
            self.bytes -= d.len();
        }
    }
}

impl std::fmt::Debug for StreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog")
            .field("dir", &self.dir)
            .field("first", &self.first_offset())
            .field("durable", &self.durable_offset())
            .finish_non_exhaustive()
    }
}

impl StreamLog {
    /// Opens (creating if missing) the log in `dir` on `disk`, recovering
    /// what is there (see `recover`: a torn or corrupt tail is cut off),
    /// applies retention and starts the writer thread. `on_durable` is
    /// called from the writer thread, with no lock held, each time more
    /// entries became durable; it must not call `close` or `delete`.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: PathBuf,
        opts: StreamOptions,
        on_durable: Arc<dyn Fn() + Send + Sync>,
    ) -> io::Result<Arc<StreamLog>> {
        // A log deleted in this directory a moment ago is still being
        // removed: its files must not be mistaken for this one's.
        {
            let mut deleting = DELETING.lock();
            while deleting.contains(&dir) {
                DELETED.wait(&mut deleting);
            }
        }
        let rec = recover(&*disk, &dir)?;
        let first = rec.segments.front().map_or(rec.next, |s| s.base);
        let log = Arc::new(StreamLog {
            disk,
            dir,
            fsync: opts.fsync,
            segment_max: opts.segment_max,
            retry_delay: opts.retry_delay,
            retention_interval: opts.retention_interval,
            cache_max: opts.tail_cache_bytes,
            on_fatal: opts.on_fatal,
            on_durable,
            renderings: Mutex::default(),
            pending: Mutex::new(Pending {
                next: rec.next,
                ..Pending::default()
            }),
            wake: Condvar::new(),
            backlog: AtomicUsize::new(0),
            state: Mutex::new(State {
                segments: rec.segments,
                index: rec.index,
                bytes: rec.bytes,
                newest_ts: rec.newest_ts,
                max_bytes: opts.max_bytes,
                max_age_ms: opts.max_age_ms,
                ..State::default()
            }),
            durable: AtomicU64::new(rec.next),
            first: AtomicU64::new(first),
            failed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            disk_reads: AtomicU64::new(0),
            writer: Mutex::new(None),
            recovered_writers: rec.writers,
        });
        // The policy may have tightened while the broker was stopped.
        log.apply_retention();
        log.spawn_writer(rec.active)?;
        Ok(log)
    }

    fn spawn_writer(self: &Arc<Self>, active: Active) -> io::Result<()> {
        let log = self.clone();
        let handle = std::thread::Builder::new()
            .name("warren-stream-w".into())
            .spawn(move || supervised("stream log writer", move || log.run_writer(active)))?;
        *self.writer.lock() = Some(handle);
        Ok(())
    }

    /// Appends one entry stamped with `timestamp` (wall-clock ms); returns
    /// its offset. Never waits for the disk: the entry joins the chunk the
    /// writer writes next (it is durable once `durable_offset` passes it).
    ///
    /// # Panics
    ///
    /// If `data` is longer than `MAX_ENTRY` (4 GiB): no AMQP message is.
    pub fn append(&self, data: &[u8], timestamp: u64) -> u64 {
        self.append_filtered(data, timestamp, None)
    }

    /// `append` with the entry's filter value (x-stream-filter-value), if
    /// it has one: chunks record which values they hold, so filtered
    /// readers skip chunks without reading them.
    pub fn append_filtered(&self, data: &[u8], timestamp: u64, filter: Option<&[u8]>) -> u64 {
        self.append_entry(data, timestamp, filter, None)
    }

    /// `append_filtered` by a named writer with its sequence number (a
    /// stream-protocol publisher's reference and publishing id): the chunk
    /// that holds the entry records the writer's highest sequence in its
    /// trailer, durable with the entry, and `writer_sequences` gives it
    /// back after a restart.
    pub fn append_entry(
        &self,
        data: &[u8],
        timestamp: u64,
        filter: Option<&[u8]>,
        writer: Option<(&str, u64)>,
    ) -> u64 {
        assert!(
            data.len() <= MAX_ENTRY,
            "stream entry of {} bytes",
            data.len()
        );
        let mut p = self.pending.lock();
        let offset = p.next;
        p.next += 1;
        // Stopped, or an fsync failed: it would never be written, so it
        // takes no memory (and is never confirmed).
        if self.stopping.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire) {
            return offset;
        }
        p.add(offset, data, timestamp, filter, writer);
        self.backlog.store(p.buf.len(), Ordering::Relaxed);
        drop(p);
        self.wake.notify_one();
        offset
    }

    /// The highest sequence of each named writer found in the chunks on
    /// disk when the log was opened (see `append_entry`).
    pub fn writer_sequences(&self) -> &std::collections::HashMap<String, u64> {
        &self.recovered_writers
    }

    /// Offsets below this are written (and synced, with fsync on):
    /// readable, and confirmable to publishers.
    pub fn durable_offset(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The offset the next `append` returns.
    pub fn next_offset(&self) -> u64 {
        self.pending.lock().next
    }

    /// The oldest offset retained (`durable_offset` when the log is empty).
    pub fn first_offset(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    /// The first offset of the newest durable chunk (RabbitMQ's "last"
    /// offset spec); `durable_offset` when the log is empty.
    pub fn last_chunk_offset(&self) -> u64 {
        let st = self.state.lock();
        st.index
            .back()
            .map_or_else(|| self.durable_offset(), |c| c.first)
    }

    /// The first offset of the first chunk with a timestamp at or after
    /// `ts`: `first_offset` when `ts` is before everything, `durable_offset`
    /// when it is after everything.
    pub fn offset_at_timestamp(&self, ts: u64) -> u64 {
        let st = self.state.lock();
        let i = st.index.partition_point(|c| c.ts < ts);
        st.index
            .get(i)
            .map_or_else(|| self.durable_offset(), |c| c.first)
    }

    /// Reads durable entries from offset `from` (raised to `first_offset`)
    /// until about `max_bytes` of entry data: always at least one entry if
    /// any is durable at or after `from`, none if none is. Whole chunks are
    /// read (entries before `from` in the first are skipped); recent ones
    /// come from memory. Blocking (disk reads): run it off async workers.
    pub fn read(&self, from: u64, max_bytes: usize) -> io::Result<Vec<Entry>> {
        self.read_filtered(from, max_bytes, None).map(|(e, _)| e)
    }

    /// `read`, skipping whole chunks that `filter` rules out (they are not
    /// read). Also returns the offset the read looked up to: a reader whose
    /// chunks were all skipped goes on from there.
    pub fn read_filtered(
        &self,
        from: u64,
        max_bytes: usize,
        filter: Option<&ReadFilter>,
    ) -> io::Result<(Vec<Entry>, u64)> {
        self.read_with(from, max_bytes, filter, |start, plan| {
            self.read_planned(start, plan, max_bytes)
        })
    }

    /// Whole chunks (those `filter` does not rule out) from the one holding
    /// `from` on, about `max_bytes` of entries (at least one chunk if there
    /// is any), as stored: a stream-protocol reader turns each into one
    /// delivery without handling its entries one by one. `reuse` is memory
    /// to read into (`ChunkRead::buffer` of an earlier read whose chunks
    /// are all gone): a reader that keeps reading maps no new pages.
    pub fn read_chunks(
        &self,
        from: u64,
        max_bytes: usize,
        filter: Option<&ReadFilter>,
        reuse: Option<BytesMut>,
    ) -> io::Result<ChunkRead> {
        let mut reuse = reuse;
        let ((chunks, buffer), scanned) = self.read_with(from, max_bytes, filter, |_, plan| {
            self.fetch_all(plan, &mut reuse)
        })?;
        Ok(ChunkRead {
            chunks,
            scanned,
            buffer,
        })
    }

    /// Planned chunks: those next to each other in one segment (and not
    /// cached) with one read, the first such run into `reuse` if it is
    /// large enough. Also returns the buffer of that first run.
    fn fetch_all(
        &self,
        plan: &[Planned],
        reuse: &mut Option<BytesMut>,
    ) -> io::Result<(Vec<Chunk>, Option<Bytes>)> {
        let mut out = Vec::with_capacity(plan.len());
        let mut first_buffer = None;
        let mut i = 0;
        while i < plan.len() {
            let p = &plan[i];
            if let Some(data) = &p.cached {
                out.push(Chunk {
                    first: p.chunk.first,
                    count: p.chunk.count,
                    data: data.clone(),
                });
                i += 1;
                continue;
            }
            // The run of chunks that follow it on disk.
            let mut j = i + 1;
            let mut end = p.chunk.pos + p.chunk.stored_len();
            while let Some(q) = plan.get(j) {
                if q.cached.is_some() || q.segment != p.segment || q.chunk.pos != end {
                    break;
                }
                end += q.chunk.stored_len();
                j += 1;
            }
            let file = self.reader(p.segment)?;
            let len = (end - p.chunk.pos) as usize;
            // (What it held is read over: only new room is zeroed.)
            let mut buf = reuse.take().unwrap_or_default();
            buf.resize(len, 0);
            file.read_exact_at(&mut buf, p.chunk.pos)?;
            self.disk_reads.fetch_add(1, Ordering::Relaxed);
            let buf = buf.freeze();
            let mut at = 0usize;
            for q in &plan[i..j] {
                let len = q.chunk.stored_len() as usize;
                out.push(Chunk {
                    first: q.chunk.first,
                    count: q.chunk.count,
                    data: self.checked(&q.chunk, buf.slice(at..at + len))?,
                });
                at += len;
            }
            first_buffer.get_or_insert(buf);
            i = j;
        }
        Ok((out, first_buffer))
    }

    /// What a reader made of the whole chunk at `first` and shared with
    /// `keep_rendering` (a stream-protocol reader keeps the chunk as it
    /// sends it): readers of the same chunks share that work and memory.
    pub fn rendering(&self, first: u64) -> Option<Bytes> {
        let r = self.renderings.lock();
        r.items
            .iter()
            .rev()
            .find(|i| i.0 == first)
            .map(|i| i.1.clone())
    }

    /// Shares a rendering of the whole chunk at `first` (chunks never
    /// change, so it stays right); the oldest go beyond a bound.
    pub fn keep_rendering(&self, first: u64, b: Bytes) {
        let mut r = self.renderings.lock();
        if !r.items.iter().any(|i| i.0 == first) {
            r.put(first, b, RENDERINGS_MAX);
        }
    }

    /// Plans a read and runs `read` on the plan, again if retention deleted
    /// a planned segment in between.
    fn read_with<T>(
        &self,
        from: u64,
        max_bytes: usize,
        filter: Option<&ReadFilter>,
        mut read: impl FnMut(u64, &[Planned]) -> io::Result<T>,
    ) -> io::Result<(T, u64)> {
        loop {
            let (start, plan, scanned) = self.plan_read(from, max_bytes, filter);
            match read(start, &plan) {
                // Retention deleted the segment between planning and
                // reading: read again from where the log now starts.
                Err(_) if self.first_offset() > start => continue,
                done => return done.map(|t| (t, scanned)),
            }
        }
    }

    /// Most chunks one filtered read looks at (skipped ones included), so
    /// that a read over a long run of unmatched chunks stays short.
    const SCAN_CHUNKS: usize = 4096;

    /// Chooses the chunks a read decodes (under the lock: no I/O), and the
    /// offset it looked up to.
    fn plan_read(
        &self,
        from: u64,
        max_bytes: usize,
        filter: Option<&ReadFilter>,
    ) -> (u64, Vec<Planned>, u64) {
        let st = self.state.lock();
        let from = from.max(self.first_offset());
        let mut plan = Vec::new();
        let mut planned = 0usize;
        let mut i = st.index.partition_point(|c| c.end() <= from);
        let mut scanned = from;
        let mut looked = 0;
        while let Some(c) = st.index.get(i) {
            if !plan.is_empty() && planned >= max_bytes || looked >= Self::SCAN_CHUNKS {
                break;
            }
            looked += 1;
            i += 1;
            scanned = c.end();
            if filter.is_some_and(|f| !f.may_match(&c.bloom, c.flags)) {
                continue;
            }
            planned += c.data_len as usize;
            plan.push(Planned {
                chunk: *c,
                segment: st.segment_of(c.first).map_or(0, |s| s.base),
                cached: st.cached(c.first),
            });
        }
        (from, plan, scanned)
    }

    fn read_planned(
        &self,
        from: u64,
        plan: &[Planned],
        max_bytes: usize,
    ) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut used = 0usize;
        let (chunks, _) = self.fetch_all(plan, &mut None)?;
        for (p, Chunk { data, .. }) in plan.iter().zip(chunks) {
            let c = &p.chunk;
            let mut full = false;
            let walked = walk_entries(&data, c.count, |i, ts, range| {
                let offset = c.first + u64::from(i);
                if offset < from {
                    return true;
                }
                if !out.is_empty() && used >= max_bytes {
                    full = true;
                    return false;
                }
                used += range.len();
                out.push(Entry {
                    offset,
                    timestamp: ts,
                    data: data.slice(range),
                });
                true
            });
            if walked.is_err() {
                return Err(invalid_data(format!(
                    "stream log {}: chunk at offset {} is malformed",
                    self.dir.display(),
                    c.first
                )));
            }
            if full {
                break;
            }
        }
        Ok(out)
    }

    /// The data of chunk `c` from its bytes as stored (header, data,
    /// trailer), if they are what the index expects and intact.
    fn checked(&self, c: &ChunkIdx, buf: Bytes) -> io::Result<Bytes> {
        let intact = match Header::decode(&buf) {
            Parsed::Chunk(h) => {
                h.first == c.first
                    && h.count == c.count
                    && h.data_len == c.data_len
                    && h.trailer_len == c.trailer_len
                    && crc32fast::hash(&buf[CHUNK_HEADER_LEN..]) == h.data_crc
            }
            _ => false,
        };
        if !intact {
            return Err(invalid_data(format!(
                "stream log {}: chunk at offset {} fails its checks on read",
                self.dir.display(),
                c.first
            )));
        }
        Ok(buf.slice(CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + c.data_len as usize))
    }

    /// The open file of a segment, opened (outside the lock) on first use.
    fn reader(&self, segment: u64) -> io::Result<Arc<dyn ReadFile>> {
        let known = self
            .state
            .lock()
            .segment_of(segment)
            .and_then(|s| s.reader.clone());
        if let Some(r) = known {
            return Ok(r);
        }
        let r: Arc<dyn ReadFile> =
            Arc::from(self.disk.open_read(&segment_path(&self.dir, segment))?);
        let mut st = self.state.lock();
        if let Some(s) = st.segments.iter_mut().find(|s| s.base == segment) {
            s.reader = Some(r.clone());
        }
        Ok(r)
    }

    /// Changes retention (a policy changed) and applies it now (this may
    /// delete files: blocking).
    pub fn set_retention(&self, max_bytes: Option<u64>, max_age_ms: Option<u64>) {
        {
            let mut st = self.state.lock();
            st.max_bytes = max_bytes;
            st.max_age_ms = max_age_ms;
        }
        self.apply_retention();
    }

    /// Bytes in the segment files.
    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    /// Segment files.
    pub fn segments(&self) -> usize {
        self.state.lock().segments.len()
    }

    /// Entries retained: `durable_offset - first_offset`.
    pub fn len(&self) -> u64 {
        // first <= durable always (segments start at durable offsets);
        // saturating for the moment between the two loads.
        self.durable_offset().saturating_sub(self.first_offset())
    }

    /// Whether no entry is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes appended and not yet taken by the writer (for back-pressure).
    pub fn backlog_bytes(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Chunks read from segment files rather than the tail cache.
    pub fn disk_reads(&self) -> u64 {
        self.disk_reads.load(Ordering::Relaxed)
    }

    /// Writes what is pending, then stops the writer (shutdown). Entries
    /// appended from now on are never written. A write that keeps failing
    /// is given up, unconfirmed.
    pub fn close(&self) {
        {
            let _p = self.pending.lock();
            self.stopping.store(true, Ordering::Release);
            self.wake.notify_one();
        }
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }

    /// Stops the writer, dropping what is pending, and removes every file
    /// of the log and its directory (the stream was deleted) on a thread of
    /// its own, so that the caller (a connection task holding its vhost's
    /// definitions lock) never waits for a disk that has stopped answering.
    /// Opening a log in the same directory waits until the removal is done.
    pub fn delete_in_background(self: &Arc<Self>) {
        {
            let mut p = self.pending.lock();
            p.buf = BytesMut::new();
            p.chunks.clear();
            self.stopping.store(true, Ordering::Release);
            self.wake.notify_one();
        }
        DELETING.lock().insert(self.dir.clone());
        let log = self.clone();
        let spawned = std::thread::Builder::new()
            .name("warren-stream-del".into())
            .spawn(move || {
                if let Err(e) = log.delete() {
                    tracing::warn!("removing a deleted stream's files: {e}");
                }
                DELETING.lock().remove(&log.dir);
                DELETED.notify_all();
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "cannot start a thread to remove a stream's files ({e}); removing them now"
            );
            if let Err(e) = self.delete() {
                tracing::warn!("removing a deleted stream's files: {e}");
            }
            DELETING.lock().remove(&self.dir);
            DELETED.notify_all();
        }
    }

    /// Stops the writer, dropping what is pending, and removes every file
    /// of the log and its directory (the stream was deleted).
    pub fn delete(&self) -> io::Result<()> {
        {
            let mut p = self.pending.lock();
            p.buf = BytesMut::new();
            p.chunks.clear();
            self.stopping.store(true, Ordering::Release);
            self.wake.notify_one();
        }
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
        *self.state.lock() = State {
            segments: VecDeque::from([Segment::new(self.durable_offset())]),
            ..State::default()
        };
        self.first.store(self.durable_offset(), Ordering::Release);
        for name in self.disk.list(&self.dir)? {
            match self.disk.remove(&self.dir.join(&name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        // The Disk trait has no directory removal; the directory is on the
        // real file system or nowhere (a simulated disk).
        match std::fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The writer thread: takes what was appended, writes and syncs it,
    /// publishes it, applies retention; by age also when idle.
    fn run_writer(&self, mut active: Active) {
        loop {
            match self.next_batch() {
                Batch::Stop => return,
                Batch::Idle => self.apply_retention(),
                Batch::Write(buf, chunks) => {
                    let (batch, sealed) = seal(buf, chunks);
                    if !self.write_batch(&mut active, &batch, &sealed) {
                        // Stopped, or an fsync failed: nothing pending
                        // will be written.
                        let mut p = self.pending.lock();
                        p.buf = BytesMut::new();
                        p.chunks.clear();
                        return;
                    }
                }
            }
        }
    }

    /// Waits for appended entries (up to the retention interval) and takes
    /// them.
    fn next_batch(&self) -> Batch {
        let mut p = self.pending.lock();
        if p.chunks.is_empty() {
            if self.stopping() {
                return Batch::Stop;
            }
            self.wake.wait_for(&mut p, self.retention_interval);
            if p.chunks.is_empty() {
                return if self.stopping() {
                    Batch::Stop
                } else {
                    Batch::Idle
                };
            }
        }
        p.close_last();
        self.backlog.store(0, Ordering::Relaxed);
        Batch::Write(std::mem::take(&mut p.buf), std::mem::take(&mut p.chunks))
    }

    /// Writes the batch's chunks, rolling to a new segment where the
    /// current one would grow beyond `segment_max`: one write and one sync
    /// per segment touched. Returns false if it stopped first (closing, or
    /// a fatal fsync error).
    fn write_batch(&self, active: &mut Active, batch: &Bytes, chunks: &[Sealed]) -> bool {
        let mut i = 0;
        while i < chunks.len() {
            if active.written > 0 && active.written + chunks[i].len as u64 > self.segment_max {
                self.roll(active, chunks[i].first);
            }
            let mut j = i + 1;
            let mut room = active.written + chunks[i].len as u64;
            while j < chunks.len() && room + chunks[j].len as u64 <= self.segment_max {
                room += chunks[j].len as u64;
                j += 1;
            }
            let run = &chunks[i..j];
            let (start, end) = (run[0].at, run[run.len() - 1].at + run[run.len() - 1].len);
            if !self.write_retrying(active, &batch[start..end]) || !self.sync_or_fail(active) {
                return false;
            }
            self.publish(active, batch, run);
            self.apply_retention();
            (self.on_durable)();
            i = j;
        }
        true
    }

    /// Makes a written run of chunks durable in memory: index, tail cache,
    /// segment size, then the durable offset (last, so a reader that sees
    /// it finds the chunks).
    fn publish(&self, active: &mut Active, batch: &Bytes, run: &[Sealed]) {
        let (Some(head), Some(last)) = (run.first(), run.last()) else {
            return;
        };
        let run_len = (last.at + last.len - head.at) as u64;
        let mut st = self.state.lock();
        for c in run {
            let ts = c.ts.max(st.newest_ts);
            st.newest_ts = ts;
            st.index.push_back(ChunkIdx {
                first: c.first,
                ts,
                pos: active.written + (c.at - head.at) as u64,
                count: c.count,
                data_len: (c.len - CHUNK_HEADER_LEN - c.trailer_len as usize) as u32,
                trailer_len: c.trailer_len,
                flags: c.flags,
                bloom: c.bloom,
            });
            // Only the chunks near the batch's end can stay in the cache:
            // copying the others would be wasted.
            if batch.len() - c.at <= self.cache_max {
                let data_end = c.at + c.len - c.trailer_len as usize;
                let data = Bytes::copy_from_slice(&batch[c.at + CHUNK_HEADER_LEN..data_end]);
                st.cache.put(c.first, data, self.cache_max);
            }
        }
        let newest = st.newest_ts;
        if let Some(seg) = st.segments.back_mut() {
            seg.bytes += run_len;
            seg.newest_ts = newest;
        }
        st.bytes += run_len;
        active.written += run_len;
        self.durable
            .store(last.first + u64::from(last.count), Ordering::Release);
    }

    /// Starts segment `base` and makes it the one written. Its directory
    /// entry is synced before any chunk goes to it, so that its chunks never
    /// count durable while a crash could lose the file. On failure the
    /// current segment stays (and grows beyond `segment_max`).
    fn roll(&self, active: &mut Active, base: u64) {
        let path = segment_path(&self.dir, base);
        let opened = self
            .disk
            .open_append(&path)
            .and_then(|f| self.disk.sync_dir(&self.dir).map(|()| f));
        match opened {
            Ok(file) => {
                self.state.lock().segments.push_back(Segment::new(base));
                *active = Active { file, written: 0 };
            }
            Err(e) => {
                tracing::error!(
                    "stream log {}: cannot start segment {base:020}.seg: {e}; still writing to the current one",
                    self.dir.display()
                );
                // Recovery would remove an empty leftover; tidy up now.
                let _ = self.disk.remove(&path);
            }
        }
    }

    /// Writes `buf` at the end of the segment, retrying until it goes
    /// through; false if the log stops first. A failed write may have left
    /// part of `buf`: the file is cut back to its last whole chunk before
    /// each retry, so the log never holds a partial or doubled chunk.
    /// Retention keeps running meanwhile: on a full disk it may free space.
    fn write_retrying(&self, active: &mut Active, buf: &[u8]) -> bool {
        let mut failures = 0u64;
        loop {
            let Err(e) = active.file.write_all(buf) else {
                if failures > 0 {
                    tracing::info!(
                        "stream log {}: writing again after {failures} failed attempt(s)",
                        self.dir.display()
                    );
                }
                return true;
            };
            if failures == 0 {
                tracing::error!(
                    "stream log {}: cannot write: {e}; retrying every {:?}",
                    self.dir.display(),
                    self.retry_delay
                );
            }
            failures += 1;
            if !self.cut_back(active) {
                return false;
            }
            self.apply_retention();
            if self.stopping() {
                return false;
            }
            std::thread::sleep(self.retry_delay);
        }
    }

    /// Cuts the segment back to its last whole chunk, retrying until it
    /// works (never append after a tail of unknown content); false if the
    /// log stops first.
    fn cut_back(&self, active: &mut Active) -> bool {
        while let Err(e) = active.file.set_len(active.written) {
            tracing::error!(
                "stream log {}: cannot cut a failed write back: {e}; retrying",
                self.dir.display()
            );
            if self.stopping() {
                return false;
            }
            std::thread::sleep(self.retry_delay);
        }
        true
    }

    /// Syncs the segment if fsync is on. A failure is fatal: an fsync error
    /// is never retried (the kernel may have dropped the dirty pages, so a
    /// later successful fsync proves nothing). Nothing more counts durable
    /// and `on_fatal` runs; returns false then.
    fn sync_or_fail(&self, active: &mut Active) -> bool {
        if !self.fsync {
            return true;
        }
        match active.file.sync_data() {
            Ok(()) => true,
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                (self.on_fatal)(&e);
                false
            }
        }
    }

    /// Deletes the oldest segments while retention wants them gone. Memory
    /// is updated first (under the lock), files removed after (without it).
    fn apply_retention(&self) {
        let now = wall_ms();
        let doomed = {
            let mut st = self.state.lock();
            let mut doomed = std::mem::take(&mut st.doomed);
            while st.oldest_expired(now) {
                let Some(base) = st.drop_oldest() else {
                    break;
                };
                doomed.push(segment_path(&self.dir, base));
            }
            if let Some(s) = st.segments.front() {
                self.first.store(s.base, Ordering::Release);
            }
            doomed
        };
        if doomed.is_empty() {
            return;
        }
        let mut failed = Vec::new();
        for path in doomed {
            match self.disk.remove(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::error!(
                        "stream log: cannot remove {}: {e}; will retry",
                        path.display()
                    );
                    failed.push(path);
                }
                _ => {}
            }
        }
        // Not fatal: a segment whose removal a crash undoes is just an
        // older segment again, before the others.
        if let Err(e) = self.disk.sync_dir(&self.dir) {
            tracing::error!(
                "stream log {}: cannot sync the directory: {e}",
                self.dir.display()
            );
        }
        if !failed.is_empty() {
            self.state.lock().doomed.extend(failed);
        }
    }

    /// The first offset of each durable chunk, for tests.
    #[cfg(test)]
    pub(crate) fn chunk_firsts(&self) -> Vec<u64> {
        self.state.lock().index.iter().map(|c| c.first).collect()
    }
}

#[cfg(test)]
mod tests;
