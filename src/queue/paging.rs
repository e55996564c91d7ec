//! A queue's ready messages, paged to disk when the queue grows long.
//!
//! `ReadyList` keeps messages in order. While the bodies held in memory stay
//! under the queue's limit it is a plain deque; beyond it the newest
//! in-memory messages are written to the queue's page files (one write per
//! file for a batch) and only their position stays in memory, about 40
//! bytes a message. When the head of the queue reaches paged messages, a
//! batch of them is read back with one read. Transient and persistent
//! messages are paged alike. Recovered messages stay in the message store
//! until the head reaches them, and are read back the same way
//! (`read_back`: one algorithm for page files and store segments).
//!
//! No disk I/O happens here: writes, reads and deletions are handed to the
//! paging I/O threads (`io`), so a queue's lock is never held across a
//! disk access. A write is handed over with its buffer, which serves the
//! records until it is written. A read completes later: meanwhile the head
//! is *loading* (`Front::Loading`), and the queue delivers again when the
//! read's callback installs the messages (`install`). The next batch is
//! asked for when half of the last one has been taken, so a consumer
//! draining a paged queue rarely waits.
//!
//! Page files are chunks of at most `chunk_bytes` (the memory limit,
//! between 64 KiB and 4 MiB), numbered in write order. Each counts the
//! messages in it not yet read back, and is deleted when that reaches
//! zero, so a queue with a standing backlog while traffic flows through
//! it uses about its paged backlog plus a chunk of disk, not its total
//! throughput. Page files are scratch space, deleted with the queue
//! (persistent messages are recovered from the message store, not from
//! page files).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;

use crate::message::Message;
use crate::queue::consumer::QueuedMessage;
use crate::store::disk::Disk;
use crate::store::record;
use crate::store::{Loc, MessageStore};

pub mod io;
mod pager;
mod read_back;
pub use io::{OnRead, ReadDone};
use pager::Pager;

#[derive(Debug)]
enum Slot {
    Mem(Message),
    Paged {
        /// The page file (chunk) number.
        chunk: u32,
        /// Offset of the record in it.
        offset: u32,
        len: u32,
        /// Body bytes, so a message lost to a read error leaves
        /// `body_bytes` right.
        body: u32,
    },
    /// A recovered message still in the message store's segment `seg`.
    Stored {
        seg: u32,
        offset: u32,
        len: u32,
    },
}

#[derive(Debug)]
struct Entry {
    slot: Slot,
    /// Enqueue order, with `REDELIVERED` as its top bit.
    seq: u64,
    /// Message store id; 0 for none (ids start at 1).
    stored: u64,
    /// Expiry (see `QueuedMessage::deadline`); 0 for none.
    deadline: u64,
}

/// The bit of `Entry::seq` that holds the redelivered flag.
const REDELIVERED: u64 = 1 << 63;

impl Entry {
    fn seq(&self) -> u64 {
        self.seq & !REDELIVERED
    }
}

/// Where and when a queue pages.
#[derive(Debug, Clone)]
pub struct PagingConfig {
    /// Directory for page files.
    pub dir: PathBuf,
    /// Bytes of message data a queue keeps in memory before paging.
    pub limit: usize,
    /// The file system page files are on (a test may slow it or fail it).
    pub disk: Arc<dyn Disk>,
}

/// What `ReadyList::take_front` found at the head.
#[derive(Debug)]
pub enum Front {
    /// The head message, taken.
    Msg(QueuedMessage),
    /// The head was on disk and was dropped unread (no body was wanted):
    /// its store id, if persistent.
    Dropped(Option<u64>),
    /// The head is on disk and being read back: try again when the read
    /// completes (the list's `OnRead` is called).
    Loading,
    /// No messages.
    Empty,
}

/// A read back in progress: its number, the file, and the records asked
/// for (offset, length).
#[derive(Debug)]
struct Reading {
    ticket: u64,
    file: read_back::DiskFile,
    records: Vec<(u32, u32)>,
}

/// A queue's ready messages in order, some of them possibly on disk.
pub struct ReadyList {
    /// Identifies the list to its read callbacks (and names its page files).
    id: u64,
    entries: VecDeque<Entry>,
    mem_bytes: usize,
    /// Body bytes of all ready messages (x-max-length-bytes; recovered
    /// messages count once read).
    body_bytes: usize,
    pager: Option<Pager>,
    /// Recovered messages still in the store: how many, and the store.
    in_store: usize,
    /// Entries with a store id (so a queue of transient messages answers
    /// `oldest_stored` at once).
    persistent: usize,
    store: Option<Arc<MessageStore>>,
    /// Where completed reads go.
    on_read: OnRead,
    /// The read in progress, if any.
    reading: Option<Reading>,
    next_ticket: u64,
    /// Messages of the last read batch not yet taken, and how many of them
    /// may remain when the next batch is asked for.
    runway: usize,
    ahead_at: usize,
}

impl std::fmt::Debug for ReadyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyList")
            .field("id", &self.id)
            .field("len", &self.entries.len())
            .field("paged", &self.paged())
            .finish_non_exhaustive()
    }
}

/// Memory a message accounts for (data plus bookkeeping).
fn cost(m: &Message) -> usize {
    m.exchange().len() + m.routing_key().len() + m.header().len() + m.body_len() + 96
}

fn to_entry(m: QueuedMessage) -> Entry {
    Entry {
        slot: Slot::Mem(m.msg),
        seq: m.seq | if m.redelivered { REDELIVERED } else { 0 },
        stored: m.stored.unwrap_or(0),
        deadline: m.deadline,
    }
}

static LIST_IDS: AtomicU64 = AtomicU64::new(1);

impl ReadyList {
    /// A list that pages beyond `paging`'s limit (never, if None); reads
    /// back from disk complete through `on_read`.
    pub fn new(paging: Option<PagingConfig>, on_read: OnRead) -> ReadyList {
        let id = LIST_IDS.fetch_add(1, Ordering::Relaxed);
        ReadyList {
            id,
            entries: VecDeque::new(),
            mem_bytes: 0,
            body_bytes: 0,
            in_store: 0,
            persistent: 0,
            store: None,
            pager: paging.map(|cfg| Pager::new(cfg, id)),
            on_read,
            reading: None,
            next_ticket: 1,
            runway: 0,
            ahead_at: 0,
        }
    }

    /// The id its read callbacks carry.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of ready messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Messages currently paged out (or not yet read back from the store).
    pub fn paged(&self) -> usize {
        self.pager.as_ref().map_or(0, |p| p.paged) + self.in_store
    }

    /// Appends a recovered message that stays in `store` until the head of
    /// the queue reaches it.
    pub fn push_stored(
        &mut self,
        store: &Arc<MessageStore>,
        loc: Loc,
        seq: u64,
        stored: u64,
        redelivered: bool,
        deadline: u64,
    ) {
        if self.store.is_none() {
            self.store = Some(store.clone());
        }
        self.entries.push_back(Entry {
            slot: Slot::Stored {
                seg: loc.seg,
                offset: loc.offset,
                len: loc.len,
            },
            seq: seq | if redelivered { REDELIVERED } else { 0 },
            stored,
            deadline,
        });
        self.in_store += 1;
        self.persistent += 1;
    }

    /// Appends a message (paging out the newest ones if over the limit).
    pub fn push_back(&mut self, m: QueuedMessage) {
        self.mem_bytes += cost(&m.msg);
        self.body_bytes += m.msg.body_len();
        self.persistent += usize::from(m.stored.is_some());
        self.entries.push_back(to_entry(m));
        if let Some(p) = &self.pager
            && self.mem_bytes > p.cfg.limit
            && !p.failed
        {
            self.page_out();
        }
    }

    /// Puts a message at the head.
    pub fn push_front(&mut self, m: QueuedMessage) {
        self.mem_bytes += cost(&m.msg);
        self.body_bytes += m.msg.body_len();
        self.persistent += usize::from(m.stored.is_some());
        self.entries.push_front(to_entry(m));
    }

    /// Sequence number of the head.
    pub fn front_seq(&self) -> Option<u64> {
        self.entries.front().map(Entry::seq)
    }

    /// Expiry of the head message (0: none, or no message).
    pub fn front_deadline(&self) -> u64 {
        self.entries.front().map_or(0, |e| e.deadline)
    }

    /// Body bytes of the ready messages.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes
    }

    /// Inserts a message before the first one with a higher sequence number.
    pub fn insert_by_seq(&mut self, m: QueuedMessage) {
        let pos = self.entries.partition_point(|x| x.seq() < m.seq);
        self.mem_bytes += cost(&m.msg);
        self.body_bytes += m.msg.body_len();
        self.persistent += usize::from(m.stored.is_some());
        self.entries.insert(pos, to_entry(m));
    }

    /// Takes the head message if it is in memory (`Front::Msg`). A head on
    /// disk is read back in the background (`Front::Loading`) unless
    /// `need_body` is false: then it is dropped unread (`Front::Dropped`),
    /// as expiry and length limits do when nothing is dead-lettered.
    ///
    /// A message that cannot be read back (an I/O error or a damaged record)
    /// is logged and dropped with its counts; the next one is tried, so an
    /// error costs the messages it hit and nothing else.
    pub fn take_front(&mut self, need_body: bool) -> Front {
        let Some(head) = self.entries.front() else {
            return Front::Empty;
        };
        if !matches!(head.slot, Slot::Mem(_)) {
            if !need_body {
                let stored = self.drop_head();
                return Front::Dropped(stored);
            }
            if !self.head_ready() {
                return if self.entries.is_empty() {
                    Front::Empty
                } else {
                    Front::Loading
                };
            }
        }
        let Some(Entry {
            slot: Slot::Mem(msg),
            seq,
            stored,
            deadline,
        }) = self.entries.pop_front()
        else {
            unreachable!("head_ready leaves the head in memory");
        };
        self.persistent -= usize::from(stored != 0);
        let (seq, redelivered) = (seq & !REDELIVERED, seq & REDELIVERED != 0);
        self.mem_bytes = self.mem_bytes.saturating_sub(cost(&msg));
        self.body_bytes = self.body_bytes.saturating_sub(msg.body_len());
        let cap = self.entries.capacity();
        if cap > 4096 && self.entries.len() < cap / 8 {
            // A drained queue gives back the memory its backlog needed.
            self.entries.shrink_to(self.entries.len() * 2);
        }
        self.taken_from_runway();
        Front::Msg(QueuedMessage {
            msg,
            seq,
            redelivered,
            stored: (stored != 0).then_some(stored),
            deadline,
        })
    }

    /// The head message if it is in memory (see `take_front`); `None`
    /// when the list is empty or its head is loading.
    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        match self.take_front(true) {
            Front::Msg(m) => Some(m),
            _ => None,
        }
    }

    /// Whether a read back is in progress.
    pub fn is_loading(&self) -> bool {
        self.reading.is_some()
    }

    /// Drops the head entry, on disk, keeping the counts right; returns
    /// its store id.
    fn drop_head(&mut self) -> Option<u64> {
        let e = self.entries.pop_front()?;
        self.forget_on_disk(&e);
        (e.stored != 0).then_some(e.stored)
    }

    /// Counts an on-disk entry as gone (dropped or lost).
    fn forget_on_disk(&mut self, e: &Entry) {
        self.persistent -= usize::from(e.stored != 0);
        match e.slot {
            Slot::Paged { body, chunk, .. } => {
                if let Some(p) = &mut self.pager {
                    p.paged = p.paged.saturating_sub(1);
                    p.release(chunk, 1);
                    if p.paged == 0 {
                        p.reset();
                    }
                }
                self.body_bytes = self.body_bytes.saturating_sub(body as usize);
            }
            Slot::Stored { .. } => self.in_store = self.in_store.saturating_sub(1),
            Slot::Mem(_) => {}
        }
    }

    /// Store ids of all ready messages.
    pub fn stored_ids(&self) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|e| e.stored != 0)
            .map(|e| e.stored)
            .collect()
    }

    /// The oldest store id among the ready messages, near enough: the
    /// lowest of the first 64 stored ones from the head (ids follow publish
    /// order, give or take concurrent publishers). O(1) for a queue without
    /// persistent messages.
    pub fn oldest_stored(&self) -> Option<u64> {
        if self.persistent == 0 {
            return None;
        }
        self.entries
            .iter()
            .filter(|e| e.stored != 0)
            .take(64)
            .map(|e| e.stored)
            .min()
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.in_store = 0;
        self.persistent = 0;
        self.mem_bytes = 0;
        self.body_bytes = 0;
        self.reading = None;
        self.runway = 0;
        if let Some(p) = &mut self.pager {
            p.paged = 0;
            p.reset();
        }
    }

    /// Writes the newest in-memory messages to page files until the
    /// memory they hold is back to half the limit.
    fn page_out(&mut self) {
        let Some(p) = &mut self.pager else { return };
        p.sweep();
        if p.failed {
            return;
        }
        let target = p.cfg.limit / 2;
        // The newest in-memory messages, back to front, until enough is freed.
        let mut start = self.entries.len();
        let mut freed = 0;
        while start > 1 && self.mem_bytes - freed > target {
            match &self.entries[start - 1].slot {
                Slot::Mem(m) => freed += cost(m),
                Slot::Paged { .. } | Slot::Stored { .. } => break,
            }
            start -= 1;
        }
        if start == self.entries.len() {
            return;
        }
        let (writes, spans) = encode_pages(p, self.entries.range(start..));
        p.write(writes);
        for (e, (chunk, offset, len, body)) in self.entries.range_mut(start..).zip(spans) {
            e.slot = Slot::Paged {
                chunk,
                offset,
                len,
                body,
            };
        }
        p.paged += self.entries.len() - start;
        self.mem_bytes -= freed;
    }
}

/// Where a paged message's record is: page file, offset, length, and its
/// body bytes (the fields of `Slot::Paged`).
type PagedAt = (u32, u32, u32, u32);

/// The page-file records of `entries` (all in memory), for `p` to write:
/// records go to the current page file until it is full, then to new
/// ones, one buffer (and one write) per file. Returns the writes (file,
/// buffer, messages in it) and each message's (file, offset, length, body
/// bytes).
fn encode_pages(
    p: &Pager,
    entries: std::collections::vec_deque::Iter<'_, Entry>,
) -> (Vec<(u32, BytesMut, usize)>, Vec<PagedAt>) {
    let mut writes: Vec<(u32, BytesMut, usize)> = Vec::new();
    let (mut chunk, mut at) = match p.chunks.back() {
        Some(c) if (c.len as usize) < p.chunk_bytes => (c.no, c.len as usize),
        _ => (p.next_chunk, 0),
    };
    let mut buf = BytesMut::new();
    let mut count = 0;
    let mut spans = Vec::with_capacity(entries.len());
    for e in entries {
        if let Slot::Mem(m) = &e.slot {
            if at + buf.len() >= p.chunk_bytes && at + buf.len() > 0 {
                if !buf.is_empty() {
                    writes.push((chunk, std::mem::take(&mut buf), count));
                }
                chunk = chunk.wrapping_add(1);
                (at, count) = (0, 0);
            }
            let before = buf.len();
            record::encode_enqueue(
                &mut buf,
                0,
                &[],
                m.exchange(),
                m.routing_key(),
                m.header(),
                m.body(),
            );
            count += 1;
            spans.push((
                chunk,
                u32::try_from(at + before).unwrap_or(u32::MAX),
                (buf.len() - before) as u32,
                u32::try_from(m.body_len()).unwrap_or(u32::MAX),
            ));
        }
    }
    if !buf.is_empty() {
        writes.push((chunk, buf, count));
    }
    (writes, spans)
}

#[cfg(test)]
mod tests;
