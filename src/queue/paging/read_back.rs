//! Reading a ready list's head back into memory: paged messages from the
//! queue's page files and recovered messages from the message store's
//! segments, with one algorithm for both. The run of on-disk entries at
//! the head that sit in one file, in order and within `PAGE_IN_BYTES`, is
//! asked for with one read, which a paging I/O thread does (`io`); when
//! it completes, `install` puts the messages in place of their entries.
//! Records still in a page-out buffer are taken from it at once. A record
//! that cannot be read or decoded is logged and dropped with its counts.

use super::io::{self, ReadDone, Source};
use super::{Entry, Reading, ReadyList, Slot, cost};

/// Bytes read back per read.
const PAGE_IN_BYTES: usize = 1 << 20;

/// The file an on-disk entry's record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DiskFile {
    /// The queue's page file (chunk) of this number.
    Page(u32),
    /// The message store's segment of this number (a recovered message).
    Store(u32),
}

impl Slot {
    /// Where the record is on disk: file, offset, length (`None` while the
    /// message is in memory).
    fn on_disk(&self) -> Option<(DiskFile, u32, u32)> {
        match *self {
            Slot::Mem(_) => None,
            Slot::Paged {
                chunk, offset, len, ..
            } => Some((DiskFile::Page(chunk), offset, len)),
            Slot::Stored { seg, offset, len } => Some((DiskFile::Store(seg), offset, len)),
        }
    }
}

impl ReadyList {
    /// Whether the head is in memory. A head on disk is taken from a
    /// page-out buffer if it is still in one, else read back in the
    /// background (false: loading, or the list is empty). Entries that
    /// cannot be read at all are dropped.
    pub fn head_ready(&mut self) -> bool {
        loop {
            let Some(head) = self.entries.front() else {
                return false;
            };
            if head.slot.on_disk().is_none() {
                return true;
            }
            if self.reading.is_some() {
                return false;
            }
            if self.load_from_buffers() {
                continue;
            }
            if self.request_read(0) {
                return false;
            }
            // Nothing to read it from (no page file or store).
            if let Some(e) = self.entries.pop_front() {
                self.forget_on_disk(&e);
                tracing::error!("a queued message cannot be read back from disk and is lost");
            }
        }
    }

    /// Takes the on-disk entries at the head whose records are still in a
    /// page-out buffer from it (as many as one read would bring back);
    /// false if the head's is not.
    fn load_from_buffers(&mut self) -> bool {
        let Some(p) = &mut self.pager else {
            return false;
        };
        p.sweep();
        let mut loaded = 0;
        let mut bytes = 0usize;
        for e in &mut self.entries {
            let Slot::Paged {
                chunk, offset, len, ..
            } = e.slot
            else {
                break;
            };
            bytes += len as usize;
            if loaded > 0 && bytes > PAGE_IN_BYTES {
                break;
            }
            let Some(m) = p
                .buffered(chunk, offset, len)
                .and_then(|b| io::decode_message(&b))
            else {
                break;
            };
            self.mem_bytes += cost(&m);
            e.slot = Slot::Mem(m);
            p.paged -= 1;
            p.release(chunk, 1);
            loaded += 1;
        }
        if loaded > 0 && p.paged == 0 {
            p.reset();
        }
        loaded > 0
    }

    /// Asks for the run of on-disk entries starting at index `start` to be
    /// read back; false if there is nothing to read it from.
    fn request_read(&mut self, start: usize) -> bool {
        let Some((file, first, end, records)) = self.run_at(start) else {
            return false;
        };
        let source = match file {
            DiskFile::Page(chunk) => match &self.pager {
                Some(p) if p.chunks.iter().any(|c| c.no == chunk) => {
                    Source::Page(p.cfg.disk.clone(), p.path(chunk))
                }
                _ => return false,
            },
            DiskFile::Store(seg) => match &self.store {
                Some(s) => Source::Store(s.clone(), seg),
                None => return false,
            },
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        io::read(io::ReadRequest {
            source,
            first,
            end,
            records: records.clone(),
            list: self.id,
            ticket,
            done: self.on_read.clone(),
        });
        self.reading = Some(Reading {
            ticket,
            file,
            records,
        });
        true
    }

    /// The run of on-disk entries from index `start` that one read brings
    /// back: in one file, in order, their records within `PAGE_IN_BYTES`
    /// of the first (the first's own always counts). Returns the file, the
    /// span `first..end` the run covers, and each record's offset and length.
    #[allow(clippy::type_complexity)]
    fn run_at(&self, start: usize) -> Option<(DiskFile, u32, u64, Vec<(u32, u32)>)> {
        let (file, first, _) = self.entries.get(start)?.slot.on_disk()?;
        let mut records = Vec::new();
        let mut end = u64::from(first);
        for e in self.entries.range(start..) {
            let Some((f, offset, len)) = e.slot.on_disk() else {
                break;
            };
            let (o, l) = (u64::from(offset), u64::from(len));
            if !records.is_empty()
                && (f != file || o < end || (o + l - u64::from(first)) as usize > PAGE_IN_BYTES)
            {
                break;
            }
            end = o + l;
            records.push((offset, len));
        }
        Some((file, first, end, records))
    }

    /// A read completed: its messages replace their entries (those still
    /// in the list: some may have been dropped meanwhile); records that
    /// could not be read are logged and their entries dropped. A read
    /// that is no longer wanted (the list was cleared) is ignored.
    pub fn install(&mut self, done: ReadDone) {
        if self
            .reading
            .as_ref()
            .is_none_or(|r| r.ticket != done.ticket)
        {
            return;
        }
        let Some(Reading { file, records, .. }) = self.reading.take() else {
            return;
        };
        if let Some(p) = &mut self.pager {
            p.sweep();
        }
        let mut results = records.iter().zip(done.msgs).peekable();
        let mut installed = 0;
        let mut lost = Vec::new();
        for (i, e) in self.entries.iter_mut().enumerate() {
            let Some((f, offset, len)) = e.slot.on_disk() else {
                continue; // in memory: a requeued message, say
            };
            if f != file {
                break;
            }
            // Records of the run dropped meanwhile are skipped.
            while results.next_if(|((o, _), _)| *o < offset).is_some() {}
            let Some(((_, _), m)) = results.next_if(|((o, _), _)| *o == offset) else {
                break;
            };
            // A record the read could not get may still be in a buffer
            // whose write failed.
            let m = m.or_else(|| match (file, &self.pager) {
                (DiskFile::Page(chunk), Some(p)) => p
                    .buffered(chunk, offset, len)
                    .and_then(|b| io::decode_message(&b)),
                _ => None,
            });
            let Some(m) = m else {
                lost.push((i, offset));
                continue;
            };
            self.mem_bytes += cost(&m);
            match e.slot {
                Slot::Stored { .. } => {
                    // Recovered messages' bodies count once read.
                    self.body_bytes += m.body_len();
                    self.in_store -= 1;
                }
                Slot::Paged { chunk, .. } => {
                    if let Some(p) = &mut self.pager {
                        p.paged -= 1;
                        p.release(chunk, 1);
                    }
                }
                Slot::Mem(_) => {}
            }
            e.slot = Slot::Mem(m);
            installed += 1;
            if results.peek().is_none() {
                break;
            }
        }
        for &(_, offset) in &lost {
            self.log_lost(file, offset, done.err.as_ref());
        }
        for &(i, _) in lost.iter().rev() {
            if let Some(e) = self.entries.remove(i) {
                self.forget_on_disk(&e);
            }
        }
        if let Some(p) = &mut self.pager
            && p.paged == 0
        {
            // Nothing paged: no page file is needed (whatever the counts say).
            p.reset();
        }
        self.runway = installed;
        self.ahead_at = installed / 2;
        if installed == 0 {
            // Nothing came back; start on what is at the head now.
            self.read_ahead();
        }
    }

    /// A message was taken from memory: once half the last batch is
    /// gone, the next one is asked for.
    pub(super) fn taken_from_runway(&mut self) {
        if self.runway == 0 {
            return;
        }
        self.runway -= 1;
        if self.runway <= self.ahead_at {
            self.runway = 0;
            self.read_ahead();
        }
    }

    /// Asks for the first run on disk to be read back, if there is one and
    /// no read is in progress.
    fn read_ahead(&mut self) {
        if self.reading.is_some() || self.paged() == 0 {
            return;
        }
        let Some(start) = self
            .entries
            .iter()
            .position(|e: &Entry| e.slot.on_disk().is_some())
        else {
            return;
        };
        if start == 0 && self.load_from_buffers() {
            return;
        }
        self.request_read(start);
    }

    /// Logs a message lost because its record at `offset` of `file` could
    /// not be read (`err`: the run's read failed) or decoded.
    fn log_lost(&self, file: DiskFile, offset: u32, err: Option<&std::io::Error>) {
        match file {
            DiskFile::Store(seg) => tracing::error!(
                "cannot read a recovered message back from store segment {seg} at {offset}: {}",
                err.map_or("bad record".to_owned(), |e| e.to_string())
            ),
            DiskFile::Page(chunk) => {
                let Some(p) = &self.pager else {
                    return;
                };
                match err {
                    Some(e) => tracing::error!(
                        "cannot read a paged message back from {}: {e}; it is lost",
                        p.path(chunk).display()
                    ),
                    None => tracing::error!(
                        "a paged message in {} is unreadable; it is lost",
                        p.path(chunk).display()
                    ),
                }
            }
        }
    }
}
