//! Reading a ready list's head back into memory: paged messages from the
//! queue's page files and recovered messages from the message store's
//! segments, with one algorithm for both. The run of on-disk entries at
//! the head that sit in one file, in order and within `PAGE_IN_BYTES`, is
//! read with one read; when that read fails each record is read on its
//! own, so a bad spot costs only the records on it. A record that cannot
//! be read or decoded is logged and dropped with its counts.

use std::os::unix::fs::FileExt;

use bytes::Bytes;

use super::{ReadyList, Slot, cost};
use crate::message::Message;
use crate::store::MessageStore;
use crate::store::record::{self, Next, Record};

/// Bytes read back per read.
const PAGE_IN_BYTES: usize = 1 << 20;

/// The file an on-disk entry's record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskFile {
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

/// An open file records are read back from.
enum Source<'a> {
    /// A page file (`None`: no longer open).
    Page(Option<&'a std::fs::File>),
    /// A segment of the message store.
    Store(&'a MessageStore, u32),
}

impl Source<'_> {
    /// `len` bytes at `offset`.
    fn read(&self, offset: u32, len: usize) -> std::io::Result<Bytes> {
        match self {
            Source::Page(Some(f)) => {
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, u64::from(offset))?;
                Ok(Bytes::from(buf))
            }
            Source::Page(None) => Err(std::io::Error::other("page file lost")),
            Source::Store(store, seg) => store.read_span(*seg, offset, len),
        }
    }
}

impl ReadyList {
    /// Reads the run of on-disk entries at the head back into memory (see
    /// the module doc). Those that cannot be read are logged and dropped
    /// with their counts. False if nothing could be tried (no page file or
    /// store to read from).
    pub(super) fn read_back_head(&mut self) -> bool {
        let Some((file, first, end, n)) = self.head_run() else {
            return false;
        };
        let Some((read, err)) = self.read_run(file, first, end, n) else {
            return false;
        };
        let mut loaded = 0;
        let mut lost_body = 0usize;
        let mut lost = Vec::new();
        for (e, m) in self.entries.range_mut(..n).zip(read) {
            let Some(m) = m else {
                if let Some((_, offset, _)) = e.slot.on_disk() {
                    lost.push(offset);
                }
                if let Slot::Paged { body, .. } = e.slot {
                    lost_body += body as usize;
                }
                continue;
            };
            self.mem_bytes += cost(&m);
            if let Slot::Stored { .. } = e.slot {
                // Recovered messages' bodies count once read.
                self.body_bytes += m.body_len();
            }
            e.slot = Slot::Mem(m);
            loaded += 1;
        }
        for offset in lost {
            self.log_lost(file, offset, err.as_ref());
        }
        self.body_bytes = self.body_bytes.saturating_sub(lost_body);
        self.read_back_done(file, n);
        if loaded < n {
            // Drop entries that could not be read rather than loop on them.
            self.drop_unloaded(n);
        }
        true
    }

    /// The run of on-disk entries at the head that one read brings back:
    /// in the head's file, in order, their records within `PAGE_IN_BYTES`
    /// of the first (the head's own always counts). Returns the file, the
    /// span `first..end` the run covers, and its length.
    fn head_run(&self) -> Option<(DiskFile, u32, u64, usize)> {
        let (file, first, _) = self.entries.front()?.slot.on_disk()?;
        let mut n = 0;
        let mut end = u64::from(first);
        for e in &self.entries {
            let Some((f, offset, len)) = e.slot.on_disk() else {
                break;
            };
            let (offset, len) = (u64::from(offset), u64::from(len));
            if n > 0
                && (f != file
                    || offset < end
                    || (offset + len - u64::from(first)) as usize > PAGE_IN_BYTES)
            {
                break;
            }
            end = offset + len;
            n += 1;
        }
        Some((file, first, end, n))
    }

    /// Reads the `n` entries at the head, all in `file` within
    /// `first..end`: one message (or `None`) each, and the error of the
    /// one read if it failed. `None` when there is no page file or store
    /// to read from.
    fn read_run(
        &self,
        file: DiskFile,
        first: u32,
        end: u64,
        n: usize,
    ) -> Option<(Vec<Option<Message>>, Option<std::io::Error>)> {
        let source = match file {
            DiskFile::Page(chunk) => Source::Page(self.pager.as_ref()?.file(chunk)),
            DiskFile::Store(seg) => Source::Store(self.store.as_deref()?, seg),
        };
        let data = source.read(first, (end - u64::from(first)) as usize);
        let mut out = Vec::with_capacity(n);
        for e in self.entries.range(..n) {
            let Some((_, offset, len)) = e.slot.on_disk() else {
                break;
            };
            out.push(match &data {
                Ok(d) => decode_message(d, (offset - first) as usize, len),
                // The run's read failed: try this record on its own, so a
                // bad spot costs only the records on it.
                Err(_) => source
                    .read(offset, len as usize)
                    .ok()
                    .and_then(|d| decode_message(&d, 0, len)),
            });
        }
        Some((out, data.err()))
    }

    /// `n` entries of `file` were read back (or lost): they are no longer
    /// on disk, and a page file with none left unread is deleted.
    fn read_back_done(&mut self, file: DiskFile, n: usize) {
        match file {
            DiskFile::Store(_) => self.in_store -= n,
            DiskFile::Page(chunk) => {
                let Some(p) = &mut self.pager else {
                    return;
                };
                p.paged -= n;
                p.release(chunk, n);
                if p.paged == 0 {
                    // Nothing paged: no page file is needed (whatever the
                    // counts say).
                    p.reset();
                }
            }
        }
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

/// The message in the enqueue record at `data[at..at + len]`.
fn decode_message(data: &Bytes, at: usize, len: u32) -> Option<Message> {
    match record::next(&data.slice(at..at + len as usize)) {
        Next::Record(
            Record::Enqueue {
                exchange,
                routing_key,
                header,
                body,
                ..
            },
            _,
        ) => Some(Message::new(
            &exchange,
            &routing_key,
            &header,
            Bytes::copy_from_slice(&body),
        )),
        _ => None,
    }
}
