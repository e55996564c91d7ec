//! The on-disk record format of the message store.
//!
//! Every record is `[u32 length][u32 crc32 of body][body]`, big-endian; the
//! body starts with a type octet. A torn write (crash mid-append) leaves a
//! record whose length runs past the end of the file or whose checksum does
//! not match, so recovery can tell exactly where the good data ends.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A message stored for one or more durable queues.
pub const ENQUEUE: u8 = 1;
/// Messages acknowledged (or dropped) from one queue.
pub const ACK: u8 = 2;
/// Messages delivered (not yet acked) from one queue: they come back with
/// redelivered=true after a restart.
pub const DELIVERED: u8 = 3;
/// A queue was deleted or purged: its messages up to an id are gone.
pub const DROP_QUEUE: u8 = 4;
/// An ENQUEUE whose queue count is a u32: a message routed to more than
/// 65,535 durable queues.
pub const ENQUEUE_WIDE: u8 = 5;
/// Messages returned to one queue (a quorum queue's delivery count goes up
/// by one for each record: it survives a restart).
pub const RETURNED: u8 = 6;
/// How often messages were returned to one queue, as a total: each id
/// appears that many times. Written by compaction after the copy of a
/// message it moves; recovery keeps the larger of this and what it counted.
pub const RETURNS: u8 = 7;
/// Messages dead-lettered at least once that no queue has taken yet: they
/// stay held by their queue (not ready). The ids come in pairs: id, then
/// the dead-letter reason's code.
pub const DISCARDED: u8 = 8;

/// Bytes before a record body.
pub const HEADER_LEN: usize = 8;

/// A queue, as records name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    /// Vhost name.
    pub vhost: String,
    /// Queue name.
    pub queue: String,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A message for some queues.
    Enqueue {
        /// Store-wide message id.
        id: u64,
        /// The durable queues it went to.
        queues: Vec<QueueKey>,
        /// Exchange name.
        exchange: Bytes,
        /// Routing key.
        routing_key: Bytes,
        /// Raw content header.
        header: Bytes,
        /// Body.
        body: Bytes,
    },
    /// Acks, deliveries, or a queue drop.
    QueueOp {
        /// ACK, DELIVERED or DROP_QUEUE.
        kind: u8,
        /// The queue.
        queue: QueueKey,
        /// Message ids (for DROP_QUEUE: one id, the highest dropped).
        ids: Vec<u64>,
    },
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    let n = s.len().min(255);
    out.put_u8(n as u8);
    out.put_slice(&s[..n]);
}

fn begin(out: &mut BytesMut) -> usize {
    let at = out.len();
    out.put_u64(0); // length + crc, filled in by `finish`
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let body_len = out.len() - at - HEADER_LEN;
    let crc = crc32fast::hash(&out[at + HEADER_LEN..]);
    out[at..at + 4].copy_from_slice(&(body_len as u32).to_be_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
}

/// Appends an ENQUEUE record.
pub fn encode_enqueue(
    out: &mut BytesMut,
    id: u64,
    queues: &[(&str, &str)],
    exchange: &[u8],
    routing_key: &[u8],
    header: &[u8],
    body: &[u8],
) {
    let at = begin(out);
    out.reserve(32 + exchange.len() + routing_key.len() + header.len() + body.len());
    match u16::try_from(queues.len()) {
        Ok(n) => {
            out.put_u8(ENQUEUE);
            out.put_u64(id);
            out.put_u16(n);
        }
        Err(_) => {
            out.put_u8(ENQUEUE_WIDE);
            out.put_u64(id);
            out.put_u32(queues.len() as u32);
        }
    }
    for (v, q) in queues {
        put_str(out, v.as_bytes());
        put_str(out, q.as_bytes());
    }
    put_str(out, exchange);
    put_str(out, routing_key);
    out.put_u32(header.len() as u32);
    out.put_slice(header);
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    finish(out, at);
}

/// Appends an ACK, DELIVERED or DROP_QUEUE record.
pub fn encode_queue_op(out: &mut BytesMut, kind: u8, vhost: &str, queue: &str, ids: &[u64]) {
    let at = begin(out);
    out.put_u8(kind);
    put_str(out, vhost.as_bytes());
    put_str(out, queue.as_bytes());
    out.put_u32(ids.len() as u32);
    for id in ids {
        out.put_u64(*id);
    }
    finish(out, at);
}

/// What reading the next record found.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// A good record and its total size.
    Record(Record, usize),
    /// A record whose checksum or contents are wrong but whose length is
    /// plausible: skip `usize` bytes.
    Corrupt(usize),
    /// The rest of the data cannot be a complete record (torn tail).
    Torn,
    /// No more data.
    End,
}

/// Reads the record at the start of `data`.
pub fn next(data: &Bytes) -> Next {
    if data.is_empty() {
        return Next::End;
    }
    if data.len() < HEADER_LEN {
        return Next::Torn;
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    if len == 0 || data.len() < HEADER_LEN + len {
        return Next::Torn;
    }
    let body = data.slice(HEADER_LEN..HEADER_LEN + len);
    if crc32fast::hash(&body) != crc {
        return Next::Corrupt(HEADER_LEN + len);
    }
    match decode_body(body) {
        Some(r) => Next::Record(r, HEADER_LEN + len),
        None => Next::Corrupt(HEADER_LEN + len),
    }
}

fn get_str(b: &mut Bytes) -> Option<Bytes> {
    if b.is_empty() {
        return None;
    }
    let n = b.get_u8() as usize;
    (b.len() >= n).then(|| b.split_to(n))
}

fn get_string(b: &mut Bytes) -> Option<String> {
    get_str(b).map(|s| String::from_utf8_lossy(&s).into_owned())
}

fn get_blob(b: &mut Bytes) -> Option<Bytes> {
    if b.len() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.len() >= n).then(|| b.split_to(n))
}

fn decode_body(mut b: Bytes) -> Option<Record> {
    let kind = b.first().copied()?;
    b.advance(1);
    match kind {
        ENQUEUE | ENQUEUE_WIDE => {
            if b.len() < 12 {
                return None;
            }
            let id = b.get_u64();
            let n = if kind == ENQUEUE {
                b.get_u16() as usize
            } else {
                b.get_u32() as usize
            };
            // Each queue takes at least two bytes: a bad count cannot make
            // the vector huge.
            if n > b.len() / 2 {
                return None;
            }
            let mut queues = Vec::with_capacity(n);
            for _ in 0..n {
                queues.push(QueueKey {
                    vhost: get_string(&mut b)?,
                    queue: get_string(&mut b)?,
                });
            }
            let exchange = get_str(&mut b)?;
            let routing_key = get_str(&mut b)?;
            let header = get_blob(&mut b)?;
            let body = get_blob(&mut b)?;
            Some(Record::Enqueue {
                id,
                queues,
                exchange,
                routing_key,
                header,
                body,
            })
        }
        ACK | DELIVERED | DROP_QUEUE | RETURNED | RETURNS | DISCARDED => {
            let queue = QueueKey {
                vhost: get_string(&mut b)?,
                queue: get_string(&mut b)?,
            };
            if b.len() < 4 {
                return None;
            }
            let n = b.get_u32() as usize;
            if b.len() != n * 8 {
                return None;
            }
            let ids = (0..n).map(|_| b.get_u64()).collect();
            Some(Record::QueueOp { kind, queue, ids })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_for_more_than_65535_queues_decodes_with_all_of_them() {
        let names: Vec<String> = (0..70_000).map(|i| format!("q{i}")).collect();
        let queues: Vec<(&str, &str)> = names.iter().map(|n| ("/", n.as_str())).collect();
        let mut out = BytesMut::new();
        encode_enqueue(&mut out, 7, &queues, b"x", b"rk", b"h", b"body");
        match next(&out.freeze()) {
            Next::Record(
                Record::Enqueue {
                    id, queues, body, ..
                },
                _,
            ) => {
                assert_eq!(id, 7);
                assert_eq!(queues.len(), 70_000);
                assert_eq!(queues[69_999].queue, "q69999");
                assert_eq!(&body[..], b"body");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn records_round_trip() {
        let mut out = BytesMut::new();
        encode_enqueue(
            &mut out,
            7,
            &[("/", "q1"), ("/", "q2")],
            b"ex",
            b"rk",
            b"hdr",
            b"body",
        );
        encode_queue_op(&mut out, ACK, "/", "q1", &[7, 8]);
        let data = out.freeze();
        let Next::Record(r, n) = next(&data) else {
            panic!()
        };
        assert!(matches!(r, Record::Enqueue { id: 7, ref queues, .. } if queues.len() == 2));
        let rest = data.slice(n..);
        let Next::Record(r2, n2) = next(&rest) else {
            panic!()
        };
        assert_eq!(
            r2,
            Record::QueueOp {
                kind: ACK,
                queue: QueueKey {
                    vhost: "/".into(),
                    queue: "q1".into()
                },
                ids: vec![7, 8]
            }
        );
        assert_eq!(next(&rest.slice(n2..)), Next::End);
    }

    #[test]
    fn a_torn_tail_and_a_flipped_byte_are_told_apart() {
        let mut out = BytesMut::new();
        encode_enqueue(&mut out, 1, &[("/", "q")], b"", b"q", b"h", b"hello");
        let full = out.freeze();
        for cut in 1..full.len() {
            assert_eq!(next(&full.slice(..cut)), Next::Torn, "cut at {cut}");
        }
        let mut bad = full.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(next(&Bytes::from(bad)), Next::Corrupt(full.len()));
    }
}
