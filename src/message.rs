//! A published message, shared by every queue it was routed to.
//!
//! The content header is kept as the raw bytes the publisher sent (class,
//! weight, body size, property flags and properties) and re-sent verbatim on
//! delivery: properties are decoded only where a feature needs them, and the
//! client's header table order is preserved. Small messages live in a single
//! allocation; bodies above `INLINE_BODY_MAX` stay zero-copy slices of the
//! read buffer.
//!
//! Owns: one message and reading its properties from the raw header. May
//! use: `protocol`, `ops`.

use amq_protocol::protocol::BasicProperties;
use bytes::{BufMut, Bytes, BytesMut};
use triomphe::ThinArc;

use crate::protocol::codec::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_OVERHEAD, put_frame_header,
};

/// Bodies up to this size are copied next to the message's metadata in one
/// allocation, so a queue of small messages does not pin whole read buffers.
pub const INLINE_BODY_MAX: usize = 4096;

/// Where the parts of a message start, and its body when that is large.
#[derive(Debug)]
struct Meta {
    rk_at: u16,
    hdr_at: u16,
    body_at: u32,
    /// A large body, kept as the slice the publisher's frames arrived in
    /// (boxed: rare, and a queue of small messages should not pay for it).
    big_body: Option<Box<Bytes>>,
}

/// An immutable message, cheap to clone (a reference count): every queue a
/// message is routed to holds the same one. One allocation holds the
/// reference count, the offsets and the bytes
/// (exchange | routing key | content header | body when inline), behind a
/// one-word pointer.
#[derive(Clone)]
pub struct Message(ThinArc<Meta, u8>);

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("exchange", &String::from_utf8_lossy(self.exchange()))
            .field("routing_key", &String::from_utf8_lossy(self.routing_key()))
            .field("body_len", &self.body_len())
            .finish()
    }
}

thread_local! {
    /// Scratch space to assemble a message's bytes before the one copy into
    /// its allocation.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Message {
    /// Builds a message from its parts; `header` is the content header payload.
    pub fn new(exchange: &[u8], routing_key: &[u8], header: &[u8], body: Bytes) -> Message {
        let inline = body.len() <= INLINE_BODY_MAX;
        let rk_at = exchange.len() as u16;
        let hdr_at = rk_at + routing_key.len() as u16;
        let body_at = hdr_at as u32 + header.len() as u32;
        let (big_body, inline_body): (_, &[u8]) = if inline {
            (None, &body)
        } else {
            (Some(Box::new(body.clone())), &[])
        };
        let meta = Meta {
            rk_at,
            hdr_at,
            body_at,
            big_body,
        };
        SCRATCH.with(|s| {
            let mut data = s.borrow_mut();
            data.clear();
            data.extend_from_slice(exchange);
            data.extend_from_slice(routing_key);
            data.extend_from_slice(header);
            data.extend_from_slice(inline_body);
            let m = Message(ThinArc::from_header_and_slice(meta, &data));
            if data.capacity() > 64 * 1024 {
                *data = Vec::new();
            }
            m
        })
    }

    fn meta(&self) -> &Meta {
        &self.0.header.header
    }

    fn data(&self) -> &[u8] {
        &self.0.slice
    }

    /// The exchange the message was published to.
    pub fn exchange(&self) -> &[u8] {
        &self.data()[..self.meta().rk_at as usize]
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &[u8] {
        let m = self.meta();
        &self.data()[m.rk_at as usize..m.hdr_at as usize]
    }

    /// The raw content header payload.
    pub fn header(&self) -> &[u8] {
        let m = self.meta();
        &self.data()[m.hdr_at as usize..m.body_at as usize]
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        match &self.meta().big_body {
            Some(b) => b,
            None => &self.data()[self.meta().body_at as usize..],
        }
    }

    /// The body as shared bytes (a copy only for small, inline bodies).
    pub fn body_bytes(&self) -> Bytes {
        match &self.meta().big_body {
            Some(b) => (**b).clone(),
            None => Bytes::copy_from_slice(self.body()),
        }
    }

    /// Body size in bytes.
    pub fn body_len(&self) -> usize {
        self.body().len()
    }

    /// Whether delivery-mode is 2 (persistent), read straight from the raw
    /// header: content-type, content-encoding and headers come before it.
    pub fn is_persistent(&self) -> bool {
        header_octet(self.header(), 0x1000) == Some(2)
    }

    /// Whether the message carries a user_id property (read from the raw
    /// header: messages without one pay no decoding).
    pub fn has_user_id(&self) -> bool {
        let h = self.header();
        h.len() >= 14 && u16::from_be_bytes([h[12], h[13]]) & 0x0010 != 0
    }

    /// Whether the headers table may hold a `CC` or `BCC` key (RabbitMQ's
    /// sender-selected distribution): the headers flag is set and the key's
    /// short-string encoding occurs in the raw header. Messages without
    /// them pay one flag test, or one byte search when they have headers.
    pub fn may_have_cc(&self) -> bool {
        let h = self.header();
        if h.len() < 14 || u16::from_be_bytes([h[12], h[13]]) & 0x2000 == 0 {
            return false;
        }
        let rest = &h[14..];
        rest.windows(3).any(|w| w == b"\x02CC") || rest.windows(4).any(|w| w == b"\x03BCC")
    }

    /// Whether the reply-to property is set (read from the property flags).
    pub fn has_reply_to(&self) -> bool {
        let h = self.header();
        h.len() >= 14 && u16::from_be_bytes([h[12], h[13]]) & 0x0200 != 0
    }

    /// The priority property (0 when absent), read from the raw header.
    pub fn priority(&self) -> u8 {
        header_priority(self.header())
    }

    /// The expiration property as a TTL in milliseconds: None when absent
    /// (read from the property flags, no decoding), else parsed.
    pub fn expiration(&self) -> Option<Result<u64, String>> {
        header_expiration(self.header())
    }

    /// Decodes the properties (for the features that need them).
    pub fn properties(&self) -> Option<BasicProperties> {
        parse_properties(self.header())
    }

    /// Writes the content header and body frames for a delivery on `channel`,
    /// splitting the body to fit `frame_max`.
    pub fn write_content(&self, out: &mut BytesMut, channel: u16, frame_max: u32) {
        let header = self.header();
        let body = self.body();
        let max_payload = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
        let frames = body.len().div_ceil(max_payload);
        out.reserve(header.len() + body.len() + FRAME_OVERHEAD * (1 + frames));
        put_frame_header(out, FRAME_HEADER, channel, header.len());
        out.put_slice(header);
        out.put_u8(FRAME_END);
        for chunk in body.chunks(max_payload) {
            put_frame_header(out, FRAME_BODY, channel, chunk.len());
            out.put_slice(chunk);
            out.put_u8(FRAME_END);
        }
    }
}

/// Encodes a content header payload (class basic) for a body of `size`
/// bytes with the given properties.
pub fn content_header(props: &BasicProperties, size: u64) -> Option<Vec<u8>> {
    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&size.to_be_bytes());
    let ctx = amq_protocol::frame::WriteContext::from(Vec::new());
    let ctx = amq_protocol::protocol::basic::gen_properties(props)(ctx).ok()?;
    header.extend_from_slice(&ctx.write);
    Some(header)
}

/// The expiration property of a raw content header payload, in
/// milliseconds (`Err` when it is not a valid expiration). Only decodes the
/// properties when the expiration flag is set.
pub fn header_expiration(h: &[u8]) -> Option<Result<u64, String>> {
    if h.len() < 14 || u16::from_be_bytes([h[12], h[13]]) & 0x0100 == 0 {
        return None;
    }
    let p = parse_properties(h)?;
    p.expiration()
        .as_ref()
        .map(|e| parse_expiration(e.as_str()))
}

/// The priority property of a raw content header payload (0 when absent).
pub fn header_priority(header: &[u8]) -> u8 {
    header_octet(header, 0x0800).unwrap_or(0)
}

/// The value of delivery-mode (flag 0x1000) or priority (0x0800) in a raw
/// content header payload, skipping the variable-size properties before
/// them (content-type, content-encoding, headers; delivery-mode before
/// priority) without decoding anything.
fn header_octet(h: &[u8], flag: u16) -> Option<u8> {
    if h.len() < 14 {
        return None;
    }
    let flags = u16::from_be_bytes([h[12], h[13]]);
    if flags & flag == 0 {
        return None;
    }
    let mut at = 14;
    for bit in [0x8000u16, 0x4000] {
        if flags & bit != 0 {
            at += 1 + *h.get(at)? as usize;
        }
    }
    if flags & 0x2000 != 0 {
        let len = h.get(at..at + 4)?;
        at += 4 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    }
    if flag == 0x0800 && flags & 0x1000 != 0 {
        at += 1;
    }
    h.get(at).copied()
}

/// What `header_put_long` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// The key was there and is kept (`overwrite` false).
    Kept,
    /// The new content header payload.
    Spliced(Vec<u8>),
    /// Not done in place (the key holds another type, or the header does
    /// not walk cleanly): decode and re-encode instead.
    Fallback,
}

/// Sets `key` to the signed 64-bit integer `value` in the headers table of
/// a raw content header payload without decoding the other properties:
/// the table is walked entry by entry (values skipped by their type), a
/// present `l` value is overwritten in place (if `overwrite`), a missing
/// key is appended, and a missing table is inserted where it belongs.
pub fn header_put_long(h: &[u8], key: &str, value: i64, overwrite: bool) -> Put {
    if key.len() > 255 {
        return Put::Fallback;
    }
    let Some((flags, at, table)) = headers_table(h) else {
        return Put::Fallback;
    };
    let entry = |out: &mut Vec<u8>| {
        out.push(key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.push(b'l');
        out.extend_from_slice(&value.to_be_bytes());
    };
    let entry_len = 1 + key.len() + 1 + 8;
    let Some(range) = table else {
        let mut out = Vec::with_capacity(h.len() + 4 + entry_len);
        out.extend_from_slice(&h[..at]);
        out.extend_from_slice(&(entry_len as u32).to_be_bytes());
        entry(&mut out);
        out.extend_from_slice(&h[at..]);
        out[12..14].copy_from_slice(&(flags | 0x2000).to_be_bytes());
        return Put::Spliced(out);
    };
    match table_find(&h[range.clone()], key.as_bytes()) {
        None => Put::Fallback,
        Some(Some(_)) if !overwrite => Put::Kept,
        Some(Some((vat, _))) if h[range.start + vat] != b'l' => Put::Fallback,
        Some(Some((vat, _))) => {
            let mut out = h.to_vec();
            let v = range.start + vat + 1;
            out[v..v + 8].copy_from_slice(&value.to_be_bytes());
            Put::Spliced(out)
        }
        Some(None) => {
            let mut out = Vec::with_capacity(h.len() + entry_len);
            out.extend_from_slice(&h[..at]);
            out.extend_from_slice(&((range.len() + entry_len) as u32).to_be_bytes());
            out.extend_from_slice(&h[range.clone()]);
            entry(&mut out);
            out.extend_from_slice(&h[range.end..]);
            Put::Spliced(out)
        }
    }
}

/// The long-string value of `key` in a raw content header payload's headers
/// table, found by walking the table (None if absent or of another type).
pub fn header_string(h: &[u8], key: &str) -> Option<String> {
    let table = &h[headers_table(h)?.2?];
    let (vat, size) = table_find(table, key.as_bytes())??;
    if table[vat] != b'S' {
        return None;
    }
    std::str::from_utf8(table.get(vat + 5..vat + size)?)
        .ok()
        .map(str::to_owned)
}

/// A content header payload's property flags, where its headers table's
/// length field is (or would go: after content-type and content-encoding),
/// and the table's bytes when it has one.
fn headers_table(h: &[u8]) -> Option<(u16, usize, Option<std::ops::Range<usize>>)> {
    if h.len() < 14 {
        return None;
    }
    let flags = u16::from_be_bytes([h[12], h[13]]);
    let mut at = 14usize;
    for bit in [0x8000u16, 0x4000] {
        if flags & bit != 0 {
            at += 1 + *h.get(at)? as usize;
        }
    }
    if at > h.len() {
        return None;
    }
    if flags & 0x2000 == 0 {
        return Some((flags, at, None));
    }
    let len = h.get(at..at + 4)?;
    let start = at + 4;
    let end = start + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    h.get(start..end)?;
    Some((flags, at, Some(start..end)))
}

/// Where `key`'s value is in a headers table: its offset and length (type
/// octet included); `Some(None)` when the table has no such key, `None`
/// when the table does not walk cleanly to its end.
fn table_find(table: &[u8], key: &[u8]) -> Option<Option<(usize, usize)>> {
    let mut i = 0usize;
    while i < table.len() {
        let klen = *table.get(i)? as usize;
        let k = table.get(i + 1..i + 1 + klen)?;
        let vat = i + 1 + klen;
        let size = field_value_len(table.get(vat..)?)?;
        if k == key {
            return Some(Some((vat, size)));
        }
        i = vat + size;
    }
    (i == table.len()).then_some(None)
}

/// Bytes of one field value (type octet included) at the start of `v`.
fn field_value_len(v: &[u8]) -> Option<usize> {
    let long = |at: usize| -> Option<usize> {
        let b = v.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = match *v.first()? {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' | b'U' => 2,
        b'I' | b'i' | b'f' => 4,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        b'S' | b'A' | b'F' | b'x' => 4 + long(1)?,
        _ => return None,
    };
    (v.len() > n).then_some(1 + n)
}

/// Parses a content header payload's properties; `None` if malformed.
pub fn parse_properties(header: &[u8]) -> Option<BasicProperties> {
    use amq_protocol::frame::parsing::parse_content_header;
    crate::protocol::table_guard::check_content_header(header).ok()?;
    parse_content_header(header).ok().map(|(_, h)| h.properties)
}

/// Whether a content header's properties decode (what a publish must
/// pass), without decoding them in the common case: properties without a
/// headers table are checked in place (short strings in bounds and UTF-8,
/// octets and the timestamp present), as the decoder would; with a headers
/// table, or flag bits the fast path does not know, the decoder decides.
pub fn properties_valid(header: &[u8]) -> bool {
    if header.len() < 14 {
        return parse_properties(header).is_some();
    }
    let flags = u16::from_be_bytes([header[12], header[13]]);
    if flags & (0x2000 | 0x0003) != 0 {
        return parse_properties(header).is_some();
    }
    let mut at = 14;
    for bit in (2..16).rev() {
        let mask = 1u16 << bit;
        if flags & mask == 0 {
            continue;
        }
        let size = match mask {
            0x1000 | 0x0800 => 1,
            0x0040 => 8,
            _ => {
                let Some(&len) = header.get(at) else {
                    return false;
                };
                let Some(text) = header.get(at + 1..at + 1 + len as usize) else {
                    return false;
                };
                if std::str::from_utf8(text).is_err() {
                    return false;
                }
                1 + len as usize
            }
        };
        if header.len() < at + size {
            return false;
        }
        at += size;
    }
    true
}

/// Reads the class id and body size from a content header payload.
pub fn header_class_and_size(header: &[u8]) -> Option<(u16, u64)> {
    if header.len() < 14 {
        return None;
    }
    let class = u16::from_be_bytes([header[0], header[1]]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&header[4..12]);
    Some((class, u64::from_be_bytes(size)))
}

/// Parses a message's expiration property (milliseconds, a decimal integer
/// as Erlang reads one); errors are RabbitMQ's texts.
pub fn parse_expiration(s: &str) -> Result<u64, String> {
    let invalid = |why: String| format!("invalid expiration '{s}': {why}");
    let bytes = s.as_bytes();
    let (neg, digits) = match bytes.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return Err(invalid("no_integer".into()));
    }
    if end < digits.len() {
        return Err(invalid(format!(
            "{{leftover_string,\"{}\"}}",
            &digits[end..]
        )));
    }
    let shown = if neg {
        format!("-{digits}")
    } else {
        digits.to_owned()
    };
    if neg && digits.bytes().any(|b| b != b'0') {
        return Err(invalid(format!("{{value_negative,{shown}}}")));
    }
    match digits.parse::<u64>() {
        Ok(n) if n <= MAX_EXPIRATION => Ok(n),
        _ => Err(invalid(format!("{{value_too_large,{shown}}}"))),
    }
}

/// The largest TTL accepted in a message's expiration property.
const MAX_EXPIRATION: u64 = 4_294_967_295_000;

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast check agrees with the decoder on every header: valid ones
    /// with each property, and thousands of truncated and mutated ones.
    #[test]
    fn properties_valid_agrees_with_the_decoder() {
        let full = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_delivery_mode(2)
            .with_priority(5)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_expiration("60000".into())
            .with_message_id("m".into())
            .with_timestamp(1_700_000_000)
            .with_type("t".into())
            .with_user_id("u".into())
            .with_app_id("a".into())
            .with_cluster_id("x".into());
        let mut headers = amq_protocol::types::FieldTable::default();
        headers.insert("k".into(), amq_protocol::types::AMQPValue::LongInt(1));
        let samples = [
            content_header(&BasicProperties::default(), 3).unwrap(),
            content_header(&full, 3).unwrap(),
            content_header(&full.clone().with_headers(headers), 3).unwrap(),
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for sample in &samples {
            assert!(properties_valid(sample));
            for cut in 0..sample.len() {
                let h = &sample[..cut];
                assert_eq!(
                    properties_valid(h),
                    parse_properties(h).is_some(),
                    "cut {cut}"
                );
            }
            for _ in 0..5000 {
                let mut h = sample.clone();
                for _ in 0..1 + next() % 3 {
                    let at = (next() as usize) % h.len();
                    h[at] = next() as u8;
                }
                assert_eq!(
                    properties_valid(&h),
                    parse_properties(&h).is_some(),
                    "mutated {h:?}"
                );
            }
        }
    }

    #[test]
    fn expirations_parse_as_rabbitmq_reads_them() {
        assert_eq!(parse_expiration("100"), Ok(100));
        assert_eq!(parse_expiration("+5"), Ok(5));
        assert_eq!(parse_expiration("007"), Ok(7));
        assert_eq!(parse_expiration("0"), Ok(0));
        let e = |s: &str| parse_expiration(s).unwrap_err();
        assert_eq!(e("abc"), "invalid expiration 'abc': no_integer");
        assert_eq!(e(""), "invalid expiration '': no_integer");
        assert_eq!(e(" 5"), "invalid expiration ' 5': no_integer");
        assert_eq!(e("-5"), "invalid expiration '-5': {value_negative,-5}");
        assert_eq!(
            e("1.5"),
            "invalid expiration '1.5': {leftover_string,\".5\"}"
        );
        assert!(e("99999999999999999999").contains("value_too_large"));
    }

    fn header(size: u64) -> Vec<u8> {
        let mut h = vec![0, 60, 0, 0];
        h.extend_from_slice(&size.to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h
    }

    #[test]
    fn parts_come_back_as_they_went_in() {
        let m = Message::new(b"ex", b"rk.a", &header(3), Bytes::from_static(b"abc"));
        assert_eq!(m.exchange(), b"ex");
        assert_eq!(m.routing_key(), b"rk.a");
        assert_eq!(m.header(), &header(3)[..]);
        assert_eq!(m.body(), b"abc");
        assert_eq!(header_class_and_size(m.header()), Some((60, 3)));
    }

    #[test]
    fn a_large_body_is_split_into_frames_of_frame_max() {
        let body = Bytes::from(vec![7u8; 10_000]);
        let m = Message::new(b"", b"q", &header(10_000), body);
        let mut out = BytesMut::new();
        m.write_content(&mut out, 1, 4096);
        let mut buf = out;
        let mut total = 0;
        let mut frames = 0;
        while let Some(f) = crate::protocol::codec::parse_frame(&mut buf, 4096).unwrap() {
            if let crate::protocol::codec::Frame::Body { payload, .. } = f {
                assert!(payload.len() <= 4088);
                total += payload.len();
                frames += 1;
            }
        }
        assert_eq!(total, 10_000);
        assert_eq!(frames, 3);
    }
}

#[cfg(test)]
mod put_tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    /// Every property set the splice must walk past, with and without a
    /// headers table of every field type.
    fn cases() -> Vec<BasicProperties> {
        let mut nested = FieldArray::default();
        nested.push(AMQPValue::LongInt(7));
        nested.push(AMQPValue::LongString(LongString::from("a")));
        let rich = table(&[
            ("bool", AMQPValue::Boolean(true)),
            ("i8", AMQPValue::ShortShortInt(-1)),
            ("u8", AMQPValue::ShortShortUInt(1)),
            ("i16", AMQPValue::ShortInt(-2)),
            ("i32", AMQPValue::LongInt(-3)),
            ("i64", AMQPValue::LongLongInt(-4)),
            ("f32", AMQPValue::Float(1.5)),
            ("f64", AMQPValue::Double(2.5)),
            ("ts", AMQPValue::Timestamp(99)),
            ("str", AMQPValue::LongString(LongString::from("hello"))),
            ("arr", AMQPValue::FieldArray(nested)),
            (
                "tbl",
                AMQPValue::FieldTable(table(&[("in", AMQPValue::LongInt(1))])),
            ),
            ("void", AMQPValue::Void),
            ("bytes", AMQPValue::ByteArray(vec![1u8, 2, 3].into())),
        ]);
        let base = BasicProperties::default();
        vec![
            base.clone(),
            base.clone().with_delivery_mode(2).with_priority(4),
            base.clone()
                .with_content_type("text/plain".into())
                .with_content_encoding("gzip".into())
                .with_delivery_mode(1)
                .with_expiration("1000".into())
                .with_message_id("m".into()),
            base.clone().with_headers(FieldTable::default()),
            base.clone()
                .with_content_type("a/b".into())
                .with_headers(rich)
                .with_priority(9)
                .with_app_id("app".into()),
        ]
    }

    #[test]
    fn put_long_matches_decode_insert_encode_for_every_property_shape() {
        for props in cases() {
            let h = content_header(&props, 5).unwrap();
            let Put::Spliced(out) = header_put_long(&h, "x-stream-offset", 42, true) else {
                panic!("not spliced: {props:?}");
            };
            let mut want = props.clone();
            let mut hs = props.headers().clone().unwrap_or_default();
            hs.insert("x-stream-offset".into(), AMQPValue::LongLongInt(42));
            want = want.with_headers(hs);
            assert_eq!(parse_properties(&out), Some(want.clone()), "{props:?}");
            assert_eq!(header_class_and_size(&out), Some((60, 5)));
            // Set again: overwritten in place, same length.
            let Put::Spliced(again) = header_put_long(&out, "x-stream-offset", -7, true) else {
                panic!("not overwritten");
            };
            assert_eq!(again.len(), out.len());
            let got = parse_properties(&again).unwrap();
            assert_eq!(
                got.headers()
                    .as_ref()
                    .unwrap()
                    .inner()
                    .get("x-stream-offset"),
                Some(&AMQPValue::LongLongInt(-7))
            );
            assert_eq!(
                header_put_long(&out, "x-stream-offset", 1, false),
                Put::Kept
            );
        }
    }

    #[test]
    fn put_long_falls_back_on_another_type_or_a_broken_table() {
        let props = BasicProperties::default().with_headers(table(&[(
            "k",
            AMQPValue::LongString(LongString::from("v")),
        )]));
        let h = content_header(&props, 0).unwrap();
        assert_eq!(header_put_long(&h, "k", 1, true), Put::Fallback);
        assert_eq!(header_put_long(&h, "k", 1, false), Put::Kept);
        let mut broken = h.clone();
        let n = broken.len();
        broken[n - 2] = b'?';
        assert_eq!(header_put_long(&broken, "z", 1, true), Put::Fallback);
        assert_eq!(header_put_long(&h[..16], "z", 1, true), Put::Fallback);
    }
}

#[cfg(test)]
mod string_tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldTable, LongString};

    #[test]
    fn header_string_finds_a_long_string_past_other_entries() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongLongInt(1));
        t.insert("f".into(), AMQPValue::LongString(LongString::from("blue")));
        t.insert("n".into(), AMQPValue::LongInt(2));
        let props = BasicProperties::default()
            .with_content_type("t".into())
            .with_headers(t);
        let h = content_header(&props, 1).unwrap();
        assert_eq!(header_string(&h, "f").as_deref(), Some("blue"));
        assert_eq!(header_string(&h, "n"), None);
        assert_eq!(header_string(&h, "missing"), None);
        let plain = content_header(&BasicProperties::default(), 1).unwrap();
        assert_eq!(header_string(&plain, "f"), None);
    }
}
