//! A queue's page files: chunks of at most `chunk_bytes`, numbered in
//! write order, each deleted once every message in it was read back or
//! dropped (see the module above).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::BytesMut;

use super::PagingConfig;

/// Smallest and largest page file.
pub(super) const CHUNK_MIN: usize = 64 << 10;
pub(super) const CHUNK_MAX: usize = 4 << 20;

#[derive(Debug)]
pub(super) struct Pager {
    pub(super) cfg: PagingConfig,
    /// This list's page files are `<id>.<chunk>.page`.
    pub(super) id: u64,
    /// Page files, oldest first (chunk numbers increasing).
    pub(super) chunks: VecDeque<Chunk>,
    /// The next chunk's number.
    pub(super) next_chunk: u32,
    /// A page file is full beyond this.
    pub(super) chunk_bytes: usize,
    pub(super) paged: usize,
    pub(super) failed: bool,
}

/// One page file.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) no: u32,
    pub(super) file: Option<File>,
    /// Bytes written to it.
    pub(super) len: u64,
    /// Messages in it not yet read back or dropped; at zero it is deleted.
    pub(super) unread: usize,
}

impl Pager {
    pub(super) fn path(&self, chunk: u32) -> PathBuf {
        self.cfg.dir.join(format!("{}.{chunk}.page", self.id))
    }

    /// Writes each buffer at the end of its page file (the current one or
    /// new ones, numbered in order), and counts its messages as unread.
    /// On an error nothing is counted: the messages stay in memory.
    pub(super) fn write(&mut self, writes: Vec<(u32, BytesMut, usize)>) -> std::io::Result<()> {
        let mut done = Vec::with_capacity(writes.len());
        for (no, buf, count) in writes {
            if self.chunks.back().is_none_or(|c| c.no != no) {
                std::fs::create_dir_all(&self.cfg.dir)?;
                let file = OpenOptions::new()
                    .create(true)
                    .read(true)
                    .write(true)
                    .truncate(true)
                    .open(self.path(no))?;
                self.chunks.push_back(Chunk {
                    no,
                    file: Some(file),
                    len: 0,
                    unread: 0,
                });
                self.next_chunk = no.wrapping_add(1);
            }
            let last = self.chunks.len() - 1; // not empty: pushed above
            let c = &mut self.chunks[last];
            let Some(f) = &c.file else {
                return Err(std::io::Error::other("page file lost"));
            };
            f.write_all_at(&buf, c.len)?;
            c.len += buf.len() as u64;
            done.push((no, count));
        }
        for (no, count) in done {
            if let Some(c) = self.chunks.iter_mut().find(|c| c.no == no) {
                c.unread += count;
            }
        }
        Ok(())
    }

    /// The open page file `chunk`, if it still exists.
    pub(super) fn file(&self, chunk: u32) -> Option<&File> {
        self.chunks
            .iter()
            .find(|c| c.no == chunk)
            .and_then(|c| c.file.as_ref())
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
            self.delete(c);
        }
    }

    pub(super) fn delete(&self, c: Chunk) {
        if c.file.is_some()
            && let Err(e) = std::fs::remove_file(self.path(c.no))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot delete page file {}: {e}", self.path(c.no).display());
        }
    }

    /// Deletes every page file (nothing paged any more).
    pub(super) fn reset(&mut self) {
        while let Some(c) = self.chunks.pop_front() {
            self.delete(c);
        }
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.reset();
    }
}
