//! Publishers: DeclarePublisher, Publish (v1, and v2 with a filter value),
//! PublishConfirm once the entries are durable (one frame per publisher
//! for all its ids the durable offset passed, as RabbitMQ batches them),
//! PublishError, QueryPublisherSequence, DeletePublisher.
//!
//! Deduplication: a publisher declared with a reference has its highest
//! publishing id per stream; a message whose id is not above it is
//! confirmed and not appended. Each appended entry carries (reference, id)
//! into its chunk's trailer, so the highest id is durable exactly when the
//! entries are and survives a crash (as osiris keeps writer sequences in
//! its chunks); the stream's tracked map also keeps it under
//! `sequence_key(reference)` (written within `tracking::FLUSH_DELAY_MS` of
//! the confirm, and at shutdown), which outlives segments that retention
//! removes.

use std::collections::VecDeque;
use std::sync::Arc;

use super::codec::{Fields, Out};
use super::connection::{Conn, Res};
use super::{code, key};
use crate::auth::Access;
use crate::queue::Queue;
use crate::queue::stream::{FORMAT_AMQP10, publisher_key as sequence_key};

/// A declared publisher.
pub struct Publisher {
    pub queue: Arc<Queue>,
    reference: Option<String>,
    /// Highest publishing id appended (or found stored) for the reference
    /// (None: nothing yet, so no id is a duplicate).
    highest: Option<u64>,
    /// Publishing ids waiting for their entry to be durable: (id, offset;
    /// None for a duplicate, confirmed at once).
    pending: VecDeque<(u64, Option<u64>)>,
}

impl Publisher {
    /// Up to `max` publishing ids, in order, whose entries are durable
    /// (None: none); records the reference's highest confirmed id.
    fn settled(&mut self, max: usize) -> Option<Vec<u64>> {
        let stream = self.queue.stream()?;
        let mut ids = Vec::new();
        while let Some((pid, offset)) = self.pending.front().copied() {
            if offset.is_some_and(|o| !stream.is_settled(o)) || ids.len() >= max {
                break;
            }
            ids.push(pid);
            self.pending.pop_front();
        }
        if let Some(r) = &self.reference
            && let Some(top) = ids.iter().max()
        {
            stream.set_tracked(&self.queue, &sequence_key(r), *top, true);
        }
        (!ids.is_empty()).then_some(ids)
    }
}

impl Conn {
    pub async fn declare_publisher(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let id = f.u8()?;
        let reference = f.string()?;
        let name = f.string()?;
        let reference = (!reference.is_empty()).then_some(reference);
        let c = match self.stream_queue(&name) {
            _ if self.publishers.contains_key(&id) => code::PRECONDITION_FAILED,
            _ if reference.as_ref().is_some_and(|r| r.len() > 256) => code::PRECONDITION_FAILED,
            None => code::STREAM_DOES_NOT_EXIST,
            Some(_) if !self.allowed(Access::Write, &name) => code::ACCESS_REFUSED,
            Some(queue) => {
                let highest = reference
                    .as_deref()
                    .and_then(|r| queue.stream()?.tracked(&sequence_key(r)));
                let p = Publisher {
                    queue,
                    reference,
                    highest,
                    pending: VecDeque::new(),
                };
                self.publishers.insert(id, p);
                code::OK
            }
        };
        self.respond(key::DECLARE_PUBLISHER, corr, c).await
    }

    /// Publish: appends each message (unless it is a duplicate); confirms
    /// follow when the stream's durable offset passes them.
    pub async fn publish(&mut self, f: &mut Fields, version: u16) -> Res {
        let id = f.u8()?;
        let n = f.count(12)?;
        let max = self.broker.config.amqp.max_message_size;
        let Some(p) = self.publishers.get_mut(&id) else {
            let ids = read_ids(f, n, version)?;
            return self
                .publish_error(id, &ids, code::PUBLISHER_DOES_NOT_EXIST)
                .await;
        };
        let stream = p.queue.stream().cloned();
        let Some(stream) = stream.filter(|_| !p.queue.is_deleted()) else {
            let ids = read_ids(f, n, version)?;
            return self
                .publish_error(id, &ids, code::STREAM_DOES_NOT_EXIST)
                .await;
        };
        let mut refused = Vec::new();
        let mut entry = Vec::new();
        for _ in 0..n {
            let pid = f.u64()?;
            let filter = if version >= 2 {
                Some(f.string()?)
            } else {
                None
            };
            let msg = f.bytes()?;
            if p.reference.is_some() && p.highest.is_some_and(|h| pid <= h) {
                p.pending.push_back((pid, None));
                continue;
            }
            if msg.len() as u64 > max {
                refused.push(pid);
                continue;
            }
            entry.clear();
            entry.push(FORMAT_AMQP10);
            entry.extend_from_slice(&msg);
            let filter = filter
                .as_deref()
                .filter(|v| !v.is_empty())
                .map(str::as_bytes);
            let writer = p.reference.as_deref().map(|r| (r, pid));
            let offset = stream.append(&entry, filter, writer);
            p.highest = Some(p.highest.map_or(pid, |h| h.max(pid)));
            p.pending.push_back((pid, Some(offset)));
        }
        if !refused.is_empty() {
            self.publish_error(id, &refused, code::PRECONDITION_FAILED)
                .await?;
        }
        self.confirm().await
    }

    /// Sends PublishError for `ids` with `code`.
    async fn publish_error(&mut self, publisher: u8, ids: &[u64], c: u16) -> Res {
        let mut o = Out::new(key::PUBLISH_ERROR, 1);
        o.u8(publisher).u32(ids.len() as u32);
        for id in ids {
            o.u64(*id).u16(c);
        }
        self.send(&o.finish()).await
    }

    /// Sends PublishConfirm for every publisher's ids whose entries are
    /// durable; records the references' highest confirmed ids.
    pub async fn confirm(&mut self) -> Res {
        let max_ids = (self.frame_limit() / 8).clamp(16, 8192);
        let mut frames = Vec::new();
        for (id, p) in self.publishers.iter_mut() {
            while let Some(ids) = p.settled(max_ids) {
                let mut o = Out::new(key::PUBLISH_CONFIRM, 1);
                o.u8(*id).u32(ids.len() as u32);
                ids.iter().for_each(|i| {
                    o.u64(*i);
                });
                frames.push(o.finish());
            }
        }
        for f in frames {
            self.send(&f).await?;
        }
        Ok(())
    }

    /// The largest frame we may send (the negotiated frame max, or 1 MiB).
    pub fn frame_limit(&self) -> usize {
        match self.frame_max.load(std::sync::atomic::Ordering::Relaxed) {
            0 => 1 << 20,
            n => n as usize,
        }
    }

    pub async fn query_publisher_sequence(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let reference = f.string()?;
        let name = f.string()?;
        let (c, seq) = match self.stream_queue(&name) {
            None => (code::STREAM_DOES_NOT_EXIST, 0),
            Some(q) => {
                let stored = q
                    .stream()
                    .and_then(|s| s.tracked(&sequence_key(&reference)));
                let live = self
                    .publishers
                    .values()
                    .filter(|p| {
                        Arc::ptr_eq(&p.queue, &q) && p.reference.as_ref() == Some(&reference)
                    })
                    .filter_map(|p| p.highest)
                    .max();
                (code::OK, stored.unwrap_or(0).max(live.unwrap_or(0)))
            }
        };
        let mut o = Out::response(key::QUERY_PUBLISHER_SEQUENCE, corr, c);
        o.u64(seq);
        self.send(&o.finish()).await
    }

    /// Publishing ids of all publishers not confirmed yet.
    pub fn unconfirmed(&self) -> usize {
        self.publishers.values().map(|p| p.pending.len()).sum()
    }

    pub async fn delete_publisher(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let id = f.u8()?;
        let c = if self.publishers.remove(&id).is_some() {
            code::OK
        } else {
            code::PUBLISHER_DOES_NOT_EXIST
        };
        self.respond(key::DELETE_PUBLISHER, corr, c).await
    }
}

/// The publishing ids of a Publish frame's messages (to refuse them all).
fn read_ids(f: &mut Fields, n: usize, version: u16) -> Result<Vec<u64>, super::codec::FrameError> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(f.u64()?);
        if version >= 2 {
            f.string()?;
        }
        f.bytes()?;
    }
    Ok(ids)
}
