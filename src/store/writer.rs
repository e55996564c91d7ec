//! The writer thread: group commit. It takes everything appended since its
//! last write (records compaction copied forward first), writes it to the
//! current segment with one write, fsyncs once, then advances the durable
//! sequence number that publisher confirms wait for. It starts a new
//! segment when the current one is full, retries failed writes (cutting
//! the file back first, so the log never holds a partial record), stops
//! confirming for good after a failed fsync, and runs reclaim after each
//! write.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;

use super::disk::AppendFile;
use super::live::Seg;
use super::{MessageStore, segment_path, supervised};

/// What the writer found when it looked at the pending records.
enum Batch {
    /// Stopping, with nothing left to write.
    Stop,
    /// Nothing to write after waiting a while.
    Idle,
    /// Records to write: the buffer, the sequence number of its last
    /// record, the next message id after it, and the ids its records name.
    Write(BytesMut, u64, u64, Vec<u64>),
}

impl MessageStore {
    /// Starts the writer (appending to `file`, the current segment, empty)
    /// and the compactor threads.
    pub(super) fn spawn_threads(
        self: &Arc<Self>,
        file: Box<dyn AppendFile>,
    ) -> std::io::Result<()> {
        let s = self.clone();
        let handle = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || supervised("message store writer", move || s.run_writer(file, 0)))?;
        *self.writer.lock() = Some(handle);
        let s = self.clone();
        let handle = std::thread::Builder::new()
            .name("warren-compact".into())
            .spawn(move || supervised("message store compactor", move || s.run_compactor()))?;
        *self.compactor.lock() = Some(handle);
        Ok(())
    }

    fn run_writer(self: Arc<Self>, mut file: Box<dyn AppendFile>, mut written: u64) {
        loop {
            let (buf, seq, next_id, named) = match self.next_batch() {
                Batch::Stop => break,
                Batch::Idle => {
                    self.reclaim();
                    continue;
                }
                Batch::Write(buf, seq, next_id, named) => (buf, seq, next_id, named),
            };
            if !self.write_copies(&mut *file, &mut written) {
                return;
            }
            if buf.is_empty() {
                continue;
            }
            if !self.write_retrying(&mut file, &mut written, &buf) {
                return;
            }
            // An fsync error is never retried: the kernel may have dropped
            // the dirty pages already, so a later successful fsync proves
            // nothing. Stop confirming and let the process recover.
            if !self.sync_or_fail(&mut *file) {
                return;
            }
            written += buf.len() as u64;
            self.live.lock().written(next_id, &named, &[]);
            self.durable.send_replace(seq);
            if written >= self.segment_max
                && let Some(f) = self.start_next_segment()
            {
                file = f;
                written = 0;
            }
            self.reclaim();
        }
        self.sync_or_fail(&mut *file);
    }

    /// Waits for pending records (up to 100 ms) and takes them.
    fn next_batch(&self) -> Batch {
        let mut p = self.pending.lock();
        if p.buf.is_empty() && p.copies.is_empty() {
            if self.stopping.load(Ordering::Acquire) {
                return Batch::Stop;
            }
            self.wake.wait_for(&mut p, Duration::from_millis(100));
            if p.buf.is_empty() && p.copies.is_empty() {
                return Batch::Idle;
            }
        }
        self.backlog.store(0, Ordering::Relaxed);
        Batch::Write(
            std::mem::take(&mut p.buf),
            p.seq,
            p.next_id,
            std::mem::take(&mut p.named),
        )
    }

    /// Syncs `file` if fsync is on. A failure is fatal: the store stops
    /// confirming and `on_fatal` runs; returns false then.
    fn sync_or_fail(&self, file: &mut dyn AppendFile) -> bool {
        if self.fsync
            && let Err(e) = file.sync_data()
        {
            self.failed.store(true, Ordering::Release);
            (self.on_fatal.0)(&e);
            return false;
        }
        true
    }

    /// Writes `buf` at the end of `file`, retrying until it goes through.
    /// Returns false when the store stops (or a fatal fsync error happens)
    /// first.
    ///
    /// A failed write may have written part of the buffer: cut the file
    /// back to the last good record before trying again, so the log never
    /// holds a partial or doubled copy. Confirms wait meanwhile; reclaiming
    /// goes on, so acked space is freed even while the disk is full.
    fn write_retrying(
        &self,
        file: &mut Box<dyn AppendFile>,
        written: &mut u64,
        buf: &[u8],
    ) -> bool {
        while let Err(e) = file.write_all(buf) {
            tracing::error!(
                "message store: cannot write to {}: {e}; retrying",
                self.dir.display()
            );
            // Never append after a tail of unknown content: retry the
            // cut until it works.
            while let Err(e) = file.set_len(*written) {
                tracing::error!(
                    "message store: cannot cut the segment back after a failed write: {e}; retrying"
                );
                if self.stopping.load(Ordering::Acquire) {
                    return false;
                }
                std::thread::sleep(self.retry_delay);
            }
            if self.stopping.load(Ordering::Acquire) {
                return false;
            }
            // Move on to a fresh segment, so that the one just cut back
            // stops being the current one and can be deleted as soon as
            // what it holds is acked: on a full disk, that may be where
            // the only reclaimable space is.
            if *written > 0
                && file.sync_data().is_ok()
                && let Some(f) = self.start_next_segment()
            {
                *file = f;
                *written = 0;
            }
            self.reclaim();
            // Copies may fit where the buffer does not, and free a
            // whole segment once written.
            if !self.write_copies(&mut **file, written) {
                return false;
            }
            self.reclaim();
            std::thread::sleep(self.retry_delay);
        }
        true
    }

    /// Writes and syncs the records compaction copied forward, ahead of
    /// the rest; then the messages count as living in the current segment.
    /// A failed write is cut back and the copies dropped (their segments
    /// will be compacted again). Returns false after a fatal fsync error.
    fn write_copies(&self, file: &mut dyn AppendFile, written: &mut u64) -> bool {
        let (copies, moved) = {
            let mut p = self.pending.lock();
            if p.copies.is_empty() {
                return true;
            }
            (std::mem::take(&mut p.copies), std::mem::take(&mut p.moved))
        };
        if file.write_all(&copies).is_err() {
            // Never append after a tail of unknown content.
            while file.set_len(*written).is_err() {
                if self.stopping.load(Ordering::Acquire) {
                    return false;
                }
                std::thread::sleep(self.retry_delay);
            }
            let mut live = self.live.lock();
            for (_, from) in moved {
                if let Some(s) = live.segments.get_mut(&from) {
                    s.compacted_at = u64::MAX;
                }
            }
            return true;
        }
        if !self.sync_or_fail(file) {
            return false;
        }
        *written += copies.len() as u64;
        let mut live = self.live.lock();
        let placed = live.placed;
        live.written(placed, &[], &moved);
        true
    }

    /// Opens the next segment and makes it the current one. The file is
    /// created, and its directory entry synced, before any id goes to it;
    /// if that fails (no file descriptors, no space) the current segment
    /// stays current and `None` is returned.
    fn start_next_segment(&self) -> Option<Box<dyn AppendFile>> {
        let next = self.live.lock().current + 1;
        let path = segment_path(&self.dir, next);
        match self
            .disk
            .open_append(&path)
            .and_then(|f| self.disk.sync_dir(&self.dir).map(|()| f))
        {
            Ok(f) => {
                let mut live = self.live.lock();
                live.current = next;
                live.segments.insert(next, Seg::new());
                drop(live);
                // A segment just became old enough to compact.
                self.compact_wake.notify_one();
                Some(f)
            }
            Err(e) => {
                tracing::error!(
                    "message store: cannot start segment {next}: {e}; still writing to the current one"
                );
                None
            }
        }
    }
}
