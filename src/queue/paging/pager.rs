//! A queue's page files: chunks of at most `chunk_bytes`, numbered in
//! write order, each deleted once every message in it was read back or
//! dropped (see the module above). The pager only keeps the books: the
//! writes, reads and deletions run on the paging I/O threads (`io`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::PagingConfig;
use super::io::{self, PageWrite};

/// Smallest and largest page file.
pub(super) const CHUNK_MIN: usize = 64 << 10;
pub(super) const CHUNK_MAX: usize = 4 << 20;

#[derive(Debug)]
pub(super) struct Pager {
    pub(super) cfg: PagingConfig,
    /// This list's page files are `<id>.<chunk>.page`; its I/O goes to
    /// the paging thread this id picks.
    pub(super) id: u64,
    /// Page files, oldest first (chunk numbers increasing).
    pub(super) chunks: VecDeque<Chunk>,
    /// The next chunk's number.
    pub(super) next_chunk: u32,
    /// A page file is full beyond this.
    pub(super) chunk_bytes: usize,
    pub(super) paged: usize,
    /// A write failed: nothing more is paged out.
    pub(super) failed: bool,
    /// Buffers handed to the paging thread that it has not written yet,
    /// or failed to write (their records are read from here).
    pub(super) in_flight: VecDeque<Arc<PageWrite>>,
}

/// One page file.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) no: u32,
    /// Bytes handed over for it.
    pub(super) len: u64,
    /// Messages in it not yet read back or dropped; at zero it is deleted.
    pub(super) unread: usize,
}

impl Pager {
    pub(super) fn new(cfg: PagingConfig, id: u64) -> Pager {
        Pager {
            chunk_bytes: cfg.limit.clamp(CHUNK_MIN, CHUNK_MAX),
            cfg,
            id,
            chunks: VecDeque::new(),
            next_chunk: 0,
            paged: 0,
            failed: false,
            in_flight: VecDeque::new(),
        }
    }

    pub(super) fn path(&self, chunk: u32) -> PathBuf {
        self.cfg.dir.join(format!("{}.{chunk}.page", self.id))
    }

    /// Hands each buffer to the paging thread, to be appended to its page
    /// file (the current one or new ones, numbered in order), and counts
    /// its messages as unread.
    pub(super) fn write(&mut self, writes: Vec<(u32, BytesMut, usize)>) {
        for (no, buf, count) in writes {
            if self.chunks.back().is_none_or(|c| c.no != no) {
                self.chunks.push_back(Chunk {
                    no,
                    len: 0,
                    unread: 0,
                });
                self.next_chunk = no.wrapping_add(1);
            }
            let path = self.path(no);
            let last = self.chunks.len() - 1; // not empty: pushed above
            let c = &mut self.chunks[last];
            let len = buf.len() as u64;
            let w = io::write(
                self.id,
                self.cfg.disk.clone(),
                path,
                no,
                c.len,
                buf.freeze(),
            );
            c.len += len;
            c.unread += count;
            self.in_flight.push_back(w);
        }
    }

    /// Forgets buffers the paging thread has written; notes a failed one
    /// (paging stops: what is in memory stays there).
    pub(super) fn sweep(&mut self) {
        self.in_flight.retain(|w| !w.is_written());
        if !self.failed && self.in_flight.iter().any(|w| w.has_failed()) {
            self.failed = true;
        }
    }

    /// The record at `offset..offset + len` of page file `chunk` while it
    /// is still (or, the write having failed, only) in a buffer.
    pub(super) fn buffered(&self, chunk: u32, offset: u32, len: u32) -> Option<Bytes> {
        self.in_flight
            .iter()
            .filter(|w| w.chunk == chunk)
            .find_map(|w| w.record(u64::from(offset), u64::from(len)))
    }

    /// `n` messages of page file `chunk` were read back or dropped; a file
    /// with none left unread is deleted.
    pub(super) fn release(&mut self, chunk: u32, n: usize) {
        let Some(i) = self.chunks.iter().position(|c| c.no == chunk) else {
            return;
        };
        let c = &mut self.chunks[i];
        c.unread = c.unread.saturating_sub(n);
        if c.unread == 0
            && let Some(c) = self.chunks.remove(i)
        {
            self.delete(c.no);
        }
    }

    fn delete(&mut self, chunk: u32) {
        self.in_flight.retain(|w| w.chunk != chunk);
        io::delete(self.id, self.cfg.disk.clone(), self.path(chunk));
    }

    /// Deletes every page file (nothing paged any more).
    pub(super) fn reset(&mut self) {
        while let Some(c) = self.chunks.pop_front() {
            self.delete(c.no);
        }
        self.in_flight.clear();
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.reset();
    }
}
