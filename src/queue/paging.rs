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
use crate::store::record;
use crate::store::{Loc, MessageStore};

mod pager;
mod read_back;
use pager::{CHUNK_MAX, CHUNK_MIN, Pager};

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
}

/// A queue's ready messages in order, some of them possibly on disk.
#[derive(Debug, Default)]
pub struct ReadyList {
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

static PAGE_FILE_IDS: AtomicU64 = AtomicU64::new(1);

impl ReadyList {
    /// A list that pages beyond `paging`'s limit (never, if None).
    pub fn new(paging: Option<PagingConfig>) -> ReadyList {
        ReadyList {
            entries: VecDeque::new(),
            mem_bytes: 0,
            body_bytes: 0,
            in_store: 0,
            persistent: 0,
            store: None,
            pager: paging.map(|cfg| Pager {
                chunk_bytes: cfg.limit.clamp(CHUNK_MIN, CHUNK_MAX),
                cfg,
                id: PAGE_FILE_IDS.fetch_add(1, Ordering::Relaxed),
                chunks: VecDeque::new(),
                next_chunk: 0,
                paged: 0,
                failed: false,
            }),
        }
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

    /// Takes the head message, reading it (and the paged ones after it) back
    /// from disk if needed.
    ///
    /// A message that cannot be read back (an I/O error or a damaged record)
    /// is logged and dropped with its counts; the next one is tried, so an
    /// error costs the messages it hit and nothing else. `None` only when
    /// the list is empty.
    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        let (msg, seq, stored, deadline) = loop {
            let e = self.entries.pop_front()?;
            match e.slot {
                Slot::Mem(msg) => break (msg, e.seq, e.stored, e.deadline),
                slot => self.entries.push_front(Entry { slot, ..e }),
            }
            if !self.read_back_head() {
                self.drop_unreadable_head();
            }
            // Entries that failed were dropped; the head is now in memory,
            // or the start of the next run on disk.
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
        Some(QueuedMessage {
            msg,
            seq,
            redelivered,
            stored: (stored != 0).then_some(stored),
            deadline,
        })
    }

    /// Drops the head entry, on disk and unreadable (no page files or no
    /// store to read it from), keeping the counts right.
    fn drop_unreadable_head(&mut self) {
        let Some(e) = self.entries.pop_front() else {
            return;
        };
        self.persistent -= usize::from(e.stored != 0);
        if let Slot::Paged { body, chunk, .. } = e.slot {
            if let Some(p) = &mut self.pager {
                p.paged = p.paged.saturating_sub(1);
                p.release(chunk, 1);
            }
            self.body_bytes = self.body_bytes.saturating_sub(body as usize);
        } else if let Slot::Stored { .. } = e.slot {
            self.in_store = self.in_store.saturating_sub(1);
        }
        tracing::error!("a queued message cannot be read back from disk and is lost");
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

    /// Drops the entries among the first `n` that could not be loaded
    /// into memory (rather than loop on them).
    fn drop_unloaded(&mut self, n: usize) {
        let mut i = 0;
        let mut gone = 0;
        self.entries.retain(|e| {
            i += 1;
            let keep = i > n || matches!(e.slot, Slot::Mem(_));
            gone += usize::from(!keep && e.stored != 0);
            keep
        });
        self.persistent -= gone;
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.in_store = 0;
        self.persistent = 0;
        self.mem_bytes = 0;
        self.body_bytes = 0;
        if let Some(p) = &mut self.pager {
            p.paged = 0;
            p.reset();
        }
    }

    /// Writes the newest in-memory messages to page files until the
    /// memory they hold is back to half the limit.
    fn page_out(&mut self) {
        let Some(p) = &mut self.pager else { return };
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
        if let Err(e) = p.write(writes) {
            tracing::error!(
                "cannot page queue messages to {}: {e}; keeping them in memory",
                p.cfg.dir.display()
            );
            p.failed = true;
            return;
        }
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
