//! Subscriptions: Subscribe (first, last, next, an offset, a timestamp),
//! Credit (in chunks, as the protocol counts it), Unsubscribe, and Deliver.
//!
//! A subscription reads the log from its next offset on tokio's blocking
//! pool, `READ_BYTES` at a time and only when it has delivered all it read
//! and has credit, so a subscriber far behind holds one batch in memory.
//! What is read is sent as osiris chunks of consecutive entries (at most
//! `CHUNK_BYTES` of data, within the frame max): the chunk header (magic
//! and version 0x50, type 0 user, entry and record counts, first entry's
//! timestamp, epoch 0, first offset, CRC-32 of the data, data length, no
//! trailer, no Bloom filter), then each entry as a simple entry (a 0 bit,
//! its 31-bit size, its bytes) holding the AMQP 1.0 message. Only durable
//! entries are read. Each Deliver takes one credit. A subscription with
//! `filter.N` properties reads only the chunks whose Bloom filter may hold
//! one of its values (and, with `match-unfiltered`, chunks with messages
//! without one); as in RabbitMQ, the client checks each message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use super::codec::{Fields, Out};
use super::connection::{Conn, End, Res};
use super::sac::{self, GroupKey, Update};
use super::{code, key};
use crate::auth::Access;
use crate::queue::Queue;
use crate::store::stream::{Chunk, ChunkRead, ReadFilter, StreamLog};

/// How much one read takes from the log at most.
const READ_BYTES: usize = 1 << 20;

/// Data bytes of one delivered chunk at most (one entry larger than this
/// goes alone).
const CHUNK_BYTES: usize = 256 * 1024;

/// The osiris chunk header's size.
const CHUNK_HEADER: usize = 48;

/// A subscription.
pub struct Subscription {
    pub queue: Arc<Queue>,
    log: Arc<StreamLog>,
    /// The offset of the next entry to deliver.
    next: u64,
    /// Chunks the client will take.
    credit: u32,
    /// Chunks read and not wholly delivered yet (`next` is in the first).
    pending: VecDeque<Chunk>,
    /// The offset the next read starts at: reads have looked at
    /// everything before it.
    read_to: u64,
    /// Buffers of earlier reads, for later reads to reuse once their
    /// chunks are delivered (at most two: one being delivered, one read
    /// into; none once it has caught up).
    spare: VecDeque<Bytes>,
    /// A read is under way.
    reading: bool,
    /// Tells this subscription's reads from an earlier one's of the same id.
    token: u64,
    /// `filter.N` / `match-unfiltered`: chunks that cannot match are skipped.
    filter: Option<Arc<ReadFilter>>,
    /// Its single-active-consumer group, if any.
    pub group: Option<GroupKey>,
    /// Delivers (false while another member of its group is active).
    active: bool,
    /// The correlation id of the ConsumerUpdate it was sent, unanswered.
    update: Option<u32>,
    /// That ConsumerUpdate told it to step down (active = 0).
    stepping_down: bool,
}

/// A finished read.
pub struct ReadDone {
    id: u8,
    token: u64,
    from: u64,
    got: std::io::Result<ChunkRead>,
}

static TOKENS: AtomicU64 = AtomicU64::new(1);

impl Conn {
    pub async fn subscribe(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let id = f.u8()?;
        let name = f.string()?;
        let kind = f.u16()?;
        let value = match kind {
            4 | 5 => Some(f.u64()?),
            _ => None,
        };
        let credit = f.u16()?;
        let props = f.string_map()?;
        let filter = read_filter(&props);
        let (group, partition) = self.group_of(&name, &props);
        let c = match self.stream_queue(&name) {
            _ if self.subs.contains_key(&id) => code::SUBSCRIPTION_ID_ALREADY_EXISTS,
            None => code::STREAM_DOES_NOT_EXIST,
            Some(_) if !self.allowed(Access::Read, &name) => code::ACCESS_REFUSED,
            Some(_) if group == Some(None) => code::PRECONDITION_FAILED,
            Some(q) => match start_offset(q.stream().ok_or(End::Done)?.log(), kind, value) {
                None => code::PRECONDITION_FAILED,
                Some(next) => {
                    let log = q.stream().ok_or(End::Done)?.log().clone();
                    let sub = Subscription {
                        queue: q,
                        log,
                        next,
                        credit: credit as u32,
                        pending: VecDeque::new(),
                        read_to: next,
                        spare: VecDeque::new(),
                        reading: false,
                        token: TOKENS.fetch_add(1, Ordering::Relaxed),
                        filter,
                        group: group.clone().flatten(),
                        active: group.is_none(),
                        update: None,
                        stepping_down: false,
                    };
                    self.subs.insert(id, sub);
                    code::OK
                }
            },
        };
        self.respond(key::SUBSCRIBE, corr, c).await?;
        if c == code::OK
            && let Some(sub) = self.subs.get(&id)
            && let Some(g) = sub.group.clone()
        {
            // Whether it is active arrives through sac_tx, after this reply.
            sac::join(g, partition, self.sac_tx.clone(), id, sub.token);
        }
        if c == code::OK {
            self.flush().await?;
            self.pump(id).await?;
        }
        Ok(())
    }

    /// Credit: more chunks for a subscription (an unknown one gets the
    /// only response this command has).
    pub async fn credit(&mut self, f: &mut Fields) -> Res {
        let id = f.u8()?;
        let credit = f.u16()?;
        let Some(sub) = self.subs.get_mut(&id) else {
            let mut o = Out::new(key::CREDIT | 0x8000, 1);
            o.u16(code::SUBSCRIPTION_ID_DOES_NOT_EXIST).u8(id);
            return self.send(&o.finish()).await;
        };
        sub.credit = sub
            .credit
            .saturating_add(credit as u32)
            .min(u16::MAX as u32);
        self.pump(id).await
    }

    pub async fn unsubscribe(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let id = f.u8()?;
        let removed = self.subs.remove(&id);
        if let Some(s) = &removed {
            s.leave_group();
        }
        let c = if removed.is_some() {
            code::OK
        } else {
            code::SUBSCRIPTION_ID_DOES_NOT_EXIST
        };
        self.respond(key::UNSUBSCRIBE, corr, c).await
    }

    /// Every subscription: deliver what credit allows, read more.
    pub async fn pump_all(&mut self) -> Res {
        let ids: Vec<u8> = self.subs.keys().copied().collect();
        for id in ids {
            self.pump(id).await?;
        }
        Ok(())
    }

    /// Delivers chunks of what subscription `id` has read while it has
    /// credit; starts a read when it has delivered everything.
    pub async fn pump(&mut self, id: u8) -> Res {
        let limit = self.frame_limit();
        loop {
            let Some(sub) = self.subs.get_mut(&id) else {
                return Ok(());
            };
            if sub.credit == 0 || !sub.active || sub.queue.is_deleted() {
                return Ok(());
            }
            // The next read runs while the last chunk read goes out.
            if sub.pending.len() <= 1 {
                start_read(sub, id, &self.reads_tx);
            }
            if sub.pending.is_empty() {
                // Caught up: the frame memory goes until there is more.
                self.deliver_buf = BytesMut::new();
                return Ok(());
            }
            // A whole chunk: as another reader of the stream sent it, or
            // sent and shared for the others.
            let whole = sub
                .pending
                .front()
                .filter(|c| c.first == sub.next)
                .map(|c| (c.first, c.end()));
            if let Some((first, end)) = whole
                && let Some(body) = sub.log.rendering(first)
            {
                sub.pending.pop_front();
                sub.next = end;
                sub.credit -= 1;
                self.send(&deliver_head(id, body.len())).await?;
                self.send(&body).await?;
                continue;
            }
            let buf = match whole {
                Some(_) => BytesMut::new(),
                None => std::mem::take(&mut self.deliver_buf),
            };
            let frame = next_chunk(sub, id, limit, buf);
            if frame.len() <= DELIVER_HEAD {
                self.deliver_buf = frame;
                continue;
            }
            sub.credit -= 1;
            match whole {
                Some((first, end)) if sub.next == end => {
                    let frame = frame.freeze();
                    sub.log.keep_rendering(first, frame.slice(DELIVER_HEAD..));
                    self.send(&frame).await?;
                }
                _ => {
                    self.send(&frame).await?;
                    self.deliver_buf = frame;
                }
            }
        }
    }

    /// A read finished: its entries wait for credit.
    pub async fn read_done(&mut self, done: ReadDone) -> Res {
        let Some(sub) = self.subs.get_mut(&done.id) else {
            return Ok(());
        };
        if sub.token != done.token {
            return Ok(());
        }
        sub.reading = false;
        match done.got {
            Ok(ChunkRead {
                chunks,
                scanned,
                buffer,
            }) if sub.read_to == done.from => {
                if let Some(b) = buffer {
                    if sub.spare.len() == 2 {
                        sub.spare.pop_front();
                    }
                    sub.spare.push_back(b);
                }
                // Reads go on past everything this one looked at (its
                // filter may have skipped chunks). With nothing pending,
                // delivery goes on from the first chunk read (retention
                // may have removed what it was at), or past everything
                // looked at.
                sub.read_to = scanned.max(chunks.last().map_or(0, |c| c.end()));
                if sub.pending.is_empty() {
                    sub.next = sub.next.max(chunks.first().map_or(scanned, |c| c.first));
                }
                let next = sub.next;
                sub.pending
                    .extend(chunks.into_iter().filter(|c| c.end() > next));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(stream = %sub.queue.name.escape_debug(), "stream read failed: {e}");
                return Ok(());
            }
        }
        self.pump(done.id).await
    }
}

impl Subscription {
    /// Leaves its single-active-consumer group (the next member becomes
    /// active).
    pub fn leave_group(&self) {
        if let Some(g) = &self.group {
            sac::leave(g, self.token);
        }
    }
}

impl Conn {
    /// The group Subscribe's properties ask for: None without
    /// `single-active-consumer: true`, Some(None) when it has no `name`;
    /// with the stream's index among the partitions of the super stream
    /// its `super-stream` property names (0 when it names none, or one the
    /// stream is not a partition of: a plain group).
    fn group_of(
        &self,
        stream: &str,
        props: &[(String, String)],
    ) -> (Option<Option<GroupKey>>, usize) {
        let get = |k: &str| props.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
        if get("single-active-consumer") != Some("true") {
            return (None, 0);
        }
        let Some(vhost) = self.vhost.as_ref() else {
            return (None, 0);
        };
        let partition = get("super-stream")
            .and_then(|s| self.partitions_of(s).iter().position(|p| p == stream))
            .unwrap_or(0);
        let key = get("name").map(|n| (vhost.name.to_string(), stream.to_owned(), n.to_owned()));
        (Some(key), partition)
    }

    /// What its group tells a subscription: become active, or step down.
    pub async fn group_update(&mut self, u: Update) -> Res {
        let (sub_id, token, active) = match u {
            Update::Activate { sub, token } => (sub, token, true),
            Update::StepDown { sub, token } => (sub, token, false),
        };
        self.correlation += 1;
        let corr = self.correlation;
        let Some(sub) = self.subs.get_mut(&sub_id).filter(|s| s.token == token) else {
            return Ok(());
        };
        sub.update = Some(corr);
        sub.stepping_down = !active;
        if !active {
            // No more deliveries from the moment it is told.
            sub.active = false;
        }
        let mut o = Out::new(key::CONSUMER_UPDATE, 1);
        o.u32(corr).u8(sub_id).u8(active as u8);
        self.send(&o.finish()).await
    }

    /// The client's answer to ConsumerUpdate: for an activation, the offset
    /// to start from (type 0: where the subscription is); for a step-down,
    /// the group may now activate another member.
    pub async fn consumer_update_response(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let _code = f.u16()?;
        let kind = f.u16()?;
        let value = match kind {
            4 | 5 => Some(f.u64()?),
            _ => None,
        };
        let found = self.subs.iter_mut().find(|(_, s)| s.update == Some(corr));
        let Some((id, sub)) = found else {
            return Ok(());
        };
        let id = *id;
        sub.update = None;
        if sub.stepping_down {
            sub.stepping_down = false;
            if let Some(g) = &sub.group {
                sac::stepped_down(g, sub.token);
            }
            return Ok(());
        }
        if kind != 0
            && let Some(next) = start_offset(&sub.log, kind, value)
        {
            sub.next = next;
            sub.read_to = next;
            sub.pending.clear();
        }
        sub.active = true;
        self.pump(id).await
    }
}

/// The chunk filter Subscribe's properties ask for (`filter.0`, `filter.1`,
/// ... and `match-unfiltered`), as RabbitMQ applies it: whole chunks that
/// hold no wanted value are skipped; the client checks each message.
fn read_filter(props: &[(String, String)]) -> Option<Arc<ReadFilter>> {
    let values: Vec<&[u8]> = props
        .iter()
        .filter(|(k, _)| k.starts_with("filter."))
        .map(|(_, v)| v.as_bytes())
        .collect();
    if values.is_empty() {
        return None;
    }
    let unfiltered = props
        .iter()
        .any(|(k, v)| k == "match-unfiltered" && v == "true");
    Some(Arc::new(ReadFilter::new(values, unfiltered)))
}

/// The offset a subscription starts at; None for an unknown type.
fn start_offset(log: &StreamLog, kind: u16, value: Option<u64>) -> Option<u64> {
    Some(match (kind, value) {
        (1, _) => log.first_offset(),
        (2, _) => log.last_chunk_offset(),
        (3, _) => log.next_offset(),
        (4, Some(n)) => n.max(log.first_offset()),
        (5, Some(ts)) => log.offset_at_timestamp((ts as i64).max(0) as u64),
        _ => return None,
    })
}

/// Starts a read of durable entries after those read so far, if none is
/// under way and there are any.
fn start_read(sub: &mut Subscription, id: u8, tx: &tokio::sync::mpsc::UnboundedSender<ReadDone>) {
    if sub.reading {
        return;
    }
    if sub.read_to >= sub.log.durable_offset() {
        sub.spare.clear();
        return;
    }
    sub.reading = true;
    let mut reuse = None;
    for _ in 0..sub.spare.len() {
        match sub.spare.pop_front().map(Bytes::try_into_mut) {
            Some(Ok(b)) => {
                reuse = Some(b);
                break;
            }
            Some(Err(b)) => sub.spare.push_back(b),
            None => break,
        }
    }
    let (log, from, token, tx) = (sub.log.clone(), sub.read_to, sub.token, tx.clone());
    let filter = sub.filter.clone();
    tokio::task::spawn_blocking(move || {
        let got = log.read_chunks(from, READ_BYTES, filter.as_deref(), reuse);
        let _ = tx.send(ReadDone {
            id,
            token,
            from,
            got,
        });
    });
}

/// Bytes of a Deliver frame before its chunk: size, key, version and
/// subscription id.
const DELIVER_HEAD: usize = 9;

/// The start of a Deliver frame for subscription `id` whose chunk takes
/// `chunk_len` bytes.
fn deliver_head(id: u8, chunk_len: usize) -> [u8; DELIVER_HEAD] {
    let mut h = [0; DELIVER_HEAD];
    h[..4].copy_from_slice(&((DELIVER_HEAD - 4 + chunk_len) as u32).to_be_bytes());
    h[4..6].copy_from_slice(&key::DELIVER.to_be_bytes());
    h[6..8].copy_from_slice(&1u16.to_be_bytes());
    h[8] = id;
    h
}

/// Builds, in `buf`, the Deliver frame for the entries of the first
/// pending chunk from the subscription's next offset on (within
/// `frame_limit`; what does not fit goes in the next one) and moves past
/// them. The frame has no more than `DELIVER_HEAD` bytes if that chunk
/// held nothing left to send.
fn next_chunk(sub: &mut Subscription, id: u8, frame_limit: usize, buf: BytesMut) -> BytesMut {
    let budget = CHUNK_BYTES.min(frame_limit.saturating_sub(CHUNK_HEADER + 16));
    let Some(chunk) = sub.pending.front() else {
        return Out::within(buf, key::DELIVER, 1).into_inner();
    };
    let mut d = Deliver::new(buf, id, chunk.data_len());
    let mut next = sub.next;
    let walked = chunk.entries_from(sub.next, |offset, ts, data| {
        let msg = crate::queue::stream::entry_as_amqp10(data).unwrap_or_else(|| {
            tracing::error!(offset, "stream entry does not decode; delivered empty");
            std::borrow::Cow::Borrowed(&[][..])
        });
        if d.count > 0 && (d.data_len + 4 + msg.len() > budget || d.count == u16::MAX as usize) {
            return false;
        }
        d.push(offset, ts, &msg);
        next = offset + 1;
        true
    });
    if let Err(e) = walked {
        tracing::error!(stream = %sub.queue.name.escape_debug(), "{e}; skipped");
        next = chunk.end();
    }
    if next >= chunk.end() {
        sub.pending.pop_front();
    }
    sub.next = next;
    if d.count == 0 {
        return Out::within(d.out.into_inner(), key::DELIVER, 1).into_inner();
    }
    d.finish()
}

/// A Deliver (v1) frame being built: subscription id and one osiris chunk
/// (header, then each entry as a simple entry: a 0 bit, its 31-bit size,
/// its bytes), the entries written straight into the frame.
struct Deliver {
    out: Out,
    /// Where the chunk header starts.
    header: usize,
    count: usize,
    data_len: usize,
}

impl Deliver {
    fn new(buf: BytesMut, id: u8, capacity: usize) -> Deliver {
        let mut out = Out::within(buf, key::DELIVER, 1);
        out.reserve(CHUNK_HEADER + 1 + capacity);
        out.u8(id);
        let header = out.len();
        out.raw(&[0; CHUNK_HEADER]);
        Deliver {
            out,
            header,
            count: 0,
            data_len: 0,
        }
    }

    /// Adds an entry: the chunk's first entry gives its offset and
    /// timestamp.
    #[inline]
    fn push(&mut self, offset: u64, timestamp: u64, msg: &[u8]) {
        if self.count == 0 {
            let h = self.header;
            self.out.set(h + 8, &(timestamp as i64).to_be_bytes());
            self.out.set(h + 24, &offset.to_be_bytes());
        }
        self.out.u32(msg.len() as u32 & 0x7fff_ffff).raw(msg);
        self.count += 1;
        self.data_len += 4 + msg.len();
    }

    /// The frame: magic and version 0x50, type 0 (user), entry and record
    /// counts, timestamp, epoch 0, first offset, CRC-32 of the data, data
    /// length, no trailer, no Bloom filter.
    fn finish(mut self) -> BytesMut {
        let h = self.header;
        let crc = crc32fast::hash(self.out.since(h + CHUNK_HEADER));
        let n = self.count as u16;
        self.out.set(h, &[0x50, 0]);
        self.out.set(h + 2, &n.to_be_bytes());
        self.out.set(h + 4, &(n as u32).to_be_bytes());
        self.out.set(h + 32, &crc.to_be_bytes());
        self.out.set(h + 36, &(self.data_len as u32).to_be_bytes());
        self.out.into_inner()
    }
}

/// A Deliver frame for `entries` (offset, timestamp, message), in order.
#[cfg(test)]
fn deliver_frame(id: u8, entries: &[(u64, u64, Bytes)]) -> Bytes {
    let mut d = Deliver::new(BytesMut::new(), id, 0);
    for (offset, ts, m) in entries {
        d.push(*offset, *ts, m);
    }
    d.finish().freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deliver_frame_holds_an_osiris_chunk() {
        let entries = vec![
            (10, 1_000, Bytes::from_static(b"ab")),
            (11, 1_001, Bytes::from_static(b"cde")),
        ];
        let f = deliver_frame(3, &entries);
        let mut p = Fields::new(f);
        p.u32().unwrap(); // size
        assert_eq!(p.u16().unwrap(), key::DELIVER);
        assert_eq!(p.u16().unwrap(), 1);
        assert_eq!(p.u8().unwrap(), 3);
        assert_eq!(p.u8().unwrap(), 0x50);
        assert_eq!(p.u8().unwrap(), 0);
        assert_eq!(p.u16().unwrap(), 2);
        assert_eq!(p.u32().unwrap(), 2);
        assert_eq!(p.i64().unwrap(), 1_000);
        assert_eq!(p.u64().unwrap(), 0);
        assert_eq!(p.u64().unwrap(), 10);
        let crc = p.u32().unwrap();
        let len = p.u32().unwrap();
        assert_eq!(len, 4 + 2 + 4 + 3);
        assert_eq!(p.u32().unwrap(), 0);
        assert_eq!(p.u32().unwrap(), 0);
        assert_eq!(p.remaining(), len as usize);
        let a = p.bytes().unwrap();
        let b = p.bytes().unwrap();
        assert_eq!((&a[..], &b[..]), (&b"ab"[..], &b"cde"[..]));
        let data = [&[0, 0, 0, 2][..], b"ab", &[0, 0, 0, 3], b"cde"].concat();
        assert_eq!(crc, crc32fast::hash(&data));
    }
}
