//! A small AMQP 1.0 codec: the primitive types and the bare message's
//! sections (header, delivery- and message-annotations, properties,
//! application-properties, data / amqp-sequence / amqp-value body, footer),
//! as stream-protocol clients encode a message (RabbitMQ's streams store
//! messages in this form). No transfer frames, no performatives.
//!
//! Decoding never panics and never allocates more than the input holds:
//! every length is checked against what is left, and nesting is bounded.

use bytes::{BufMut, Bytes};

/// An AMQP 1.0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// null
    Null,
    /// boolean
    Bool(bool),
    /// ubyte
    Ubyte(u8),
    /// ushort
    Ushort(u16),
    /// uint
    Uint(u32),
    /// ulong
    Ulong(u64),
    /// byte
    Byte(i8),
    /// short
    Short(i16),
    /// int
    Int(i32),
    /// long
    Long(i64),
    /// float
    Float(f32),
    /// double
    Double(f64),
    /// char (a UTF-32 code point)
    Char(char),
    /// timestamp, milliseconds since the Unix epoch
    Timestamp(i64),
    /// uuid
    Uuid([u8; 16]),
    /// binary
    Binary(Bytes),
    /// string (UTF-8)
    String(String),
    /// symbol (ASCII)
    Symbol(String),
    /// list
    List(Vec<Value>),
    /// map, in its encoded order
    Map(Vec<(Value, Value)>),
    /// array (elements of one type)
    Array(Vec<Value>),
    /// a described value: descriptor, value
    Described(Box<Value>, Box<Value>),
}

/// Why a message does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

type R<T> = Result<T, DecodeError>;

/// Deepest nesting of lists, maps, arrays and described values accepted.
const MAX_DEPTH: usize = 32;

/// The message header section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// Durable (AMQP 0-9-1 delivery mode 2).
    pub durable: Option<bool>,
    /// Priority.
    pub priority: Option<u8>,
    /// Time to live in milliseconds.
    pub ttl: Option<u32>,
    /// First acquirer.
    pub first_acquirer: Option<bool>,
    /// Delivery count.
    pub delivery_count: Option<u32>,
}

/// The properties section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// message-id (ulong, uuid, binary or string).
    pub message_id: Option<Value>,
    /// user-id.
    pub user_id: Option<Bytes>,
    /// to.
    pub to: Option<String>,
    /// subject.
    pub subject: Option<String>,
    /// reply-to.
    pub reply_to: Option<String>,
    /// correlation-id (as message-id).
    pub correlation_id: Option<Value>,
    /// content-type (a symbol).
    pub content_type: Option<String>,
    /// content-encoding (a symbol).
    pub content_encoding: Option<String>,
    /// absolute-expiry-time, ms.
    pub absolute_expiry_time: Option<i64>,
    /// creation-time, ms.
    pub creation_time: Option<i64>,
    /// group-id.
    pub group_id: Option<String>,
    /// group-sequence.
    pub group_sequence: Option<u32>,
    /// reply-to-group-id.
    pub reply_to_group_id: Option<String>,
}

/// A message body.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Body {
    /// No body section.
    #[default]
    Empty,
    /// One or more data sections.
    Data(Vec<Bytes>),
    /// One or more amqp-sequence sections.
    Sequence(Vec<Vec<Value>>),
    /// One amqp-value section.
    Value(Value),
}

/// A bare message with its annotations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// header
    pub header: Option<Header>,
    /// delivery-annotations
    pub delivery_annotations: Option<Vec<(Value, Value)>>,
    /// message-annotations
    pub message_annotations: Option<Vec<(Value, Value)>>,
    /// properties
    pub properties: Option<Properties>,
    /// application-properties
    pub application_properties: Option<Vec<(Value, Value)>>,
    /// the body
    pub body: Body,
    /// footer
    pub footer: Option<Vec<(Value, Value)>>,
}

const HEADER: u64 = 0x70;
const DELIVERY_ANN: u64 = 0x71;
const MESSAGE_ANN: u64 = 0x72;
const PROPERTIES: u64 = 0x73;
const APP_PROPS: u64 = 0x74;
const DATA: u64 = 0x75;
const SEQUENCE: u64 = 0x76;
const AMQP_VALUE: u64 = 0x77;
const FOOTER: u64 = 0x78;

/// A cursor over input bytes.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.at.checked_add(n).ok_or(DecodeError("length"))?;
        let s = self
            .data
            .get(self.at..end)
            .ok_or(DecodeError("truncated"))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Decodes one value (with its constructor).
fn decode_value(inp: &mut Input<'_>, depth: usize) -> R<Value> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("nesting too deep"));
    }
    let code = inp.u8()?;
    if code == 0x00 {
        let d = decode_value(inp, depth + 1)?;
        let v = decode_value(inp, depth + 1)?;
        return Ok(Value::Described(Box::new(d), Box::new(v)));
    }
    decode_body(inp, code, depth)
}

/// Decodes a value's bytes after its format code.
fn decode_body(inp: &mut Input<'_>, code: u8, depth: usize) -> R<Value> {
    Ok(match code {
        0x40 => Value::Null,
        0x41 => Value::Bool(true),
        0x42 => Value::Bool(false),
        0x56 => Value::Bool(inp.u8()? != 0),
        0x50 => Value::Ubyte(inp.u8()?),
        0x60 => Value::Ushort(u16::from_be_bytes(inp.array()?)),
        0x70 => Value::Uint(inp.u32()?),
        0x52 => Value::Uint(inp.u8()? as u32),
        0x43 => Value::Uint(0),
        0x80 => Value::Ulong(u64::from_be_bytes(inp.array()?)),
        0x53 => Value::Ulong(inp.u8()? as u64),
        0x44 => Value::Ulong(0),
        0x51 => Value::Byte(inp.u8()? as i8),
        0x61 => Value::Short(i16::from_be_bytes(inp.array()?)),
        0x71 => Value::Int(i32::from_be_bytes(inp.array()?)),
        0x54 => Value::Int(inp.u8()? as i8 as i32),
        0x81 => Value::Long(i64::from_be_bytes(inp.array()?)),
        0x55 => Value::Long(inp.u8()? as i8 as i64),
        0x72 => Value::Float(f32::from_be_bytes(inp.array()?)),
        0x82 => Value::Double(f64::from_be_bytes(inp.array()?)),
        0x73 => Value::Char(char::from_u32(inp.u32()?).ok_or(DecodeError("char"))?),
        0x83 => Value::Timestamp(i64::from_be_bytes(inp.array()?)),
        0x98 => Value::Uuid(inp.array()?),
        0xa0 | 0xb0 | 0xa1 | 0xb1 | 0xa3 | 0xb3 => variable(inp, code)?,
        0x45 => Value::List(Vec::new()),
        0xc0 | 0xd0 | 0xc1 | 0xd1 => compound(inp, code, depth)?,
        0xe0 | 0xf0 => array(inp, code, depth)?,
        _ => return Err(DecodeError("unknown format code")),
    })
}

/// binary, string, symbol.
fn variable(inp: &mut Input<'_>, code: u8) -> R<Value> {
    let len = if code & 0xf0 == 0xa0 {
        inp.u8()? as usize
    } else {
        inp.u32()? as usize
    };
    let b = inp.take(len)?;
    Ok(match code & 0x0f {
        0x00 => Value::Binary(Bytes::copy_from_slice(b)),
        0x01 => Value::String(String::from_utf8(b.to_vec()).map_err(|_| DecodeError("utf8"))?),
        _ => Value::Symbol(String::from_utf8(b.to_vec()).map_err(|_| DecodeError("symbol"))?),
    })
}

/// Size and count of a list, map or array: one octet each (code 0x?0 with
/// high nibble c/e) or four.
fn size_count(inp: &mut Input<'_>, small: bool) -> R<(usize, usize)> {
    if small {
        let size = inp.u8()? as usize;
        let count = inp.u8()? as usize;
        Ok((size, count))
    } else {
        let size = inp.u32()? as usize;
        let count = inp.u32()? as usize;
        Ok((size, count))
    }
}

/// list8/32, map8/32.
fn compound(inp: &mut Input<'_>, code: u8, depth: usize) -> R<Value> {
    let small = code & 0xf0 == 0xc0;
    let (size, count) = size_count(inp, small)?;
    let counted = if small { 1 } else { 4 };
    let body = inp.take(size.checked_sub(counted).ok_or(DecodeError("size"))?)?;
    // Each element takes at least one byte: a count beyond the size is a lie.
    if count > body.len() {
        return Err(DecodeError("count"));
    }
    let mut sub = Input { data: body, at: 0 };
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(decode_value(&mut sub, depth + 1)?);
    }
    if code & 0x0f == 0 {
        return Ok(Value::List(items));
    }
    if count % 2 != 0 {
        return Err(DecodeError("odd map"));
    }
    let mut it = items.into_iter();
    let mut pairs = Vec::with_capacity(count / 2);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    Ok(Value::Map(pairs))
}

/// array8/32: one constructor, then `count` bodies.
fn array(inp: &mut Input<'_>, code: u8, depth: usize) -> R<Value> {
    let small = code == 0xe0;
    let (size, count) = size_count(inp, small)?;
    let counted = if small { 1 } else { 4 };
    let body = inp.take(size.checked_sub(counted).ok_or(DecodeError("size"))?)?;
    let mut sub = Input { data: body, at: 0 };
    let elem = sub.u8()?;
    if elem == 0x00 || elem == 0xe0 || elem == 0xf0 {
        return Err(DecodeError("unsupported array element"));
    }
    // Fixed-width zero-byte elements (null, true, list0...) could claim any
    // count: bound it by the bytes, as for lists.
    if count > body.len() {
        return Err(DecodeError("count"));
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(decode_body(&mut sub, elem, depth + 1)?);
    }
    Ok(Value::Array(items))
}

/// Encodes one value in its smallest form.
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.put_u8(0x40),
        Value::Bool(b) => out.put_u8(if *b { 0x41 } else { 0x42 }),
        Value::Ubyte(n) => out.put_slice(&[0x50, *n]),
        Value::Ushort(n) => {
            out.put_u8(0x60);
            out.put_u16(*n)
        }
        Value::Uint(0) => out.put_u8(0x43),
        Value::Uint(n) if *n < 256 => out.put_slice(&[0x52, *n as u8]),
        Value::Uint(n) => {
            out.put_u8(0x70);
            out.put_u32(*n)
        }
        Value::Ulong(0) => out.put_u8(0x44),
        Value::Ulong(n) if *n < 256 => out.put_slice(&[0x53, *n as u8]),
        Value::Ulong(n) => {
            out.put_u8(0x80);
            out.put_u64(*n)
        }
        _ => encode_signed_or_other(v, out),
    }
}

fn encode_signed_or_other(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Byte(n) => out.put_slice(&[0x51, *n as u8]),
        Value::Short(n) => {
            out.put_u8(0x61);
            out.put_i16(*n)
        }
        Value::Int(n) if (-128..128).contains(n) => out.put_slice(&[0x54, *n as i8 as u8]),
        Value::Int(n) => {
            out.put_u8(0x71);
            out.put_i32(*n)
        }
        Value::Long(n) if (-128..128).contains(n) => out.put_slice(&[0x55, *n as i8 as u8]),
        Value::Long(n) => {
            out.put_u8(0x81);
            out.put_i64(*n)
        }
        Value::Float(f) => {
            out.put_u8(0x72);
            out.put_f32(*f)
        }
        Value::Double(f) => {
            out.put_u8(0x82);
            out.put_f64(*f)
        }
        Value::Char(c) => {
            out.put_u8(0x73);
            out.put_u32(*c as u32)
        }
        Value::Timestamp(t) => {
            out.put_u8(0x83);
            out.put_i64(*t)
        }
        Value::Uuid(u) => {
            out.put_u8(0x98);
            out.put_slice(u)
        }
        Value::Binary(b) => put_variable(out, 0xa0, b),
        Value::String(s) => put_variable(out, 0xa1, s.as_bytes()),
        Value::Symbol(s) => put_variable(out, 0xa3, s.as_bytes()),
        _ => encode_compound(v, out),
    }
}

fn put_variable(out: &mut Vec<u8>, small: u8, b: &[u8]) {
    if b.len() < 256 {
        out.put_slice(&[small, b.len() as u8]);
    } else {
        out.put_u8(small + 0x10);
        out.put_u32(b.len() as u32);
    }
    out.put_slice(b);
}

fn encode_compound(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::List(items) if items.is_empty() => out.put_u8(0x45),
        Value::List(items) => {
            let mut body = Vec::new();
            items.iter().for_each(|i| encode_value(i, &mut body));
            put_compound(out, 0xc0, items.len(), &body);
        }
        Value::Map(pairs) => {
            let mut body = Vec::new();
            for (k, v) in pairs {
                encode_value(k, &mut body);
                encode_value(v, &mut body);
            }
            put_compound(out, 0xc1, pairs.len() * 2, &body);
        }
        Value::Array(items) => encode_array(items, out),
        Value::Described(d, v) => {
            out.put_u8(0x00);
            encode_value(d, out);
            encode_value(v, out);
        }
        _ => unreachable!("scalars are encoded by encode_value"),
    }
}

fn put_compound(out: &mut Vec<u8>, small: u8, count: usize, body: &[u8]) {
    if body.len() < 255 && count < 256 {
        out.put_slice(&[small, body.len() as u8 + 1, count as u8]);
    } else {
        out.put_u8(small + 0x10);
        out.put_u32(body.len() as u32 + 4);
        out.put_u32(count as u32);
    }
    out.put_slice(body);
}

/// Arrays are written in the 32-bit form, each element in its first
/// element's (full-width) encoding: elements keep their constructor's
/// width, so small forms cannot be mixed.
fn encode_array(items: &[Value], out: &mut Vec<u8>) {
    let mut body = Vec::new();
    let mut code = 0x40;
    for (i, item) in items.iter().enumerate() {
        let mut one = Vec::new();
        encode_wide(item, &mut one);
        if i == 0 {
            code = one[0];
            body.push(code);
        }
        body.extend_from_slice(&one[1..]);
    }
    if items.is_empty() {
        body.push(code);
    }
    out.put_u8(0xf0);
    out.put_u32(body.len() as u32 + 4);
    out.put_u32(items.len() as u32);
    out.put_slice(&body);
}

/// A value in a fixed-width (non-compact) encoding, for array elements.
fn encode_wide(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Uint(n) => {
            out.put_u8(0x70);
            out.put_u32(*n)
        }
        Value::Ulong(n) => {
            out.put_u8(0x80);
            out.put_u64(*n)
        }
        Value::Int(n) => {
            out.put_u8(0x71);
            out.put_i32(*n)
        }
        Value::Long(n) => {
            out.put_u8(0x81);
            out.put_i64(*n)
        }
        Value::Bool(b) => out.put_slice(&[0x56, *b as u8]),
        Value::Binary(b) => put_wide_variable(out, 0xb0, b),
        Value::String(s) => put_wide_variable(out, 0xb1, s.as_bytes()),
        Value::Symbol(s) => put_wide_variable(out, 0xb3, s.as_bytes()),
        Value::List(items) => {
            let mut body = Vec::new();
            items.iter().for_each(|i| encode_value(i, &mut body));
            out.put_u8(0xd0);
            out.put_u32(body.len() as u32 + 4);
            out.put_u32(items.len() as u32);
            out.put_slice(&body);
        }
        other => encode_value(other, out),
    }
}

fn put_wide_variable(out: &mut Vec<u8>, code: u8, b: &[u8]) {
    out.put_u8(code);
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

/// Decodes one value from `data` (all of it).
pub fn decode_one(data: &[u8]) -> Result<Value, DecodeError> {
    let mut inp = Input { data, at: 0 };
    let v = decode_value(&mut inp, 0)?;
    if !inp.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(v)
}

impl Message {
    /// Decodes a message's sections, in any order; a section that is not a
    /// described value of a known message descriptor is an error.
    pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
        let mut inp = Input { data, at: 0 };
        let mut m = Message::default();
        while !inp.is_empty() {
            let Value::Described(d, v) = decode_value(&mut inp, 0)? else {
                return Err(DecodeError("section is not described"));
            };
            m.add_section(section_code(&d)?, *v)?;
        }
        Ok(m)
    }

    fn add_section(&mut self, code: u64, v: Value) -> R<()> {
        match (code, v) {
            (HEADER, Value::List(l)) => self.header = Some(Header::from_list(l)),
            (DELIVERY_ANN, Value::Map(m)) => self.delivery_annotations = Some(m),
            (MESSAGE_ANN, Value::Map(m)) => self.message_annotations = Some(m),
            (PROPERTIES, Value::List(l)) => self.properties = Some(Properties::from_list(l)),
            (APP_PROPS, Value::Map(m)) => self.application_properties = Some(m),
            (DATA, Value::Binary(b)) => match &mut self.body {
                Body::Data(v) => v.push(b),
                body @ Body::Empty => *body = Body::Data(vec![b]),
                _ => return Err(DecodeError("mixed body sections")),
            },
            (SEQUENCE, Value::List(l)) => match &mut self.body {
                Body::Sequence(v) => v.push(l),
                body @ Body::Empty => *body = Body::Sequence(vec![l]),
                _ => return Err(DecodeError("mixed body sections")),
            },
            (AMQP_VALUE, v) if self.body == Body::Empty => self.body = Body::Value(v),
            (FOOTER, Value::Map(m)) => self.footer = Some(m),
            _ => return Err(DecodeError("bad section")),
        }
        Ok(())
    }

    /// Encodes the sections that are present, in the standard order.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Some(h) = &self.header {
            section(out, HEADER, &h.to_list());
        }
        let maps = [
            (DELIVERY_ANN, &self.delivery_annotations),
            (MESSAGE_ANN, &self.message_annotations),
        ];
        for (code, m) in maps {
            if let Some(m) = m {
                section(out, code, &Value::Map(m.clone()));
            }
        }
        if let Some(p) = &self.properties {
            section(out, PROPERTIES, &p.to_list());
        }
        if let Some(m) = &self.application_properties {
            section(out, APP_PROPS, &Value::Map(m.clone()));
        }
        match &self.body {
            Body::Empty => {}
            Body::Data(parts) => parts
                .iter()
                .for_each(|b| section(out, DATA, &Value::Binary(b.clone()))),
            Body::Sequence(seqs) => seqs
                .iter()
                .for_each(|s| section(out, SEQUENCE, &Value::List(s.clone()))),
            Body::Value(v) => section(out, AMQP_VALUE, v),
        }
        if let Some(m) = &self.footer {
            section(out, FOOTER, &Value::Map(m.clone()));
        }
    }
}

fn section(out: &mut Vec<u8>, code: u64, v: &Value) {
    out.put_slice(&[0x00, 0x53, code as u8]);
    encode_value(v, out);
}

/// A section's descriptor: its ulong code, or its symbolic name.
fn section_code(d: &Value) -> R<u64> {
    match d {
        Value::Ulong(n) => Ok(*n),
        Value::Symbol(s) => Ok(match s.as_str() {
            "amqp:header:list" => HEADER,
            "amqp:delivery-annotations:map" => DELIVERY_ANN,
            "amqp:message-annotations:map" => MESSAGE_ANN,
            "amqp:properties:list" => PROPERTIES,
            "amqp:application-properties:map" => APP_PROPS,
            "amqp:data:binary" => DATA,
            "amqp:amqp-sequence:list" => SEQUENCE,
            "amqp:amqp-value:*" => AMQP_VALUE,
            "amqp:footer:map" => FOOTER,
            _ => return Err(DecodeError("unknown section")),
        }),
        _ => Err(DecodeError("bad descriptor")),
    }
}

/// A list field: None when absent or null.
fn field(l: &[Value], i: usize) -> Option<&Value> {
    l.get(i).filter(|v| **v != Value::Null)
}

fn as_bool(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

fn as_u32(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Uint(n) => Some(*n),
        _ => None,
    }
}

fn as_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) | Value::Symbol(s) => Some(s.clone()),
        _ => None,
    }
}

fn as_ts(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Timestamp(t) => Some(*t),
        _ => None,
    }
}

/// Trailing nulls are left off a list (as the spec allows).
fn trimmed(mut l: Vec<Value>) -> Value {
    while l.last() == Some(&Value::Null) {
        l.pop();
    }
    Value::List(l)
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    v.map_or(Value::Null, f)
}

impl Header {
    fn from_list(l: Vec<Value>) -> Header {
        Header {
            durable: as_bool(field(&l, 0)),
            priority: match field(&l, 1) {
                Some(Value::Ubyte(p)) => Some(*p),
                _ => None,
            },
            ttl: as_u32(field(&l, 2)),
            first_acquirer: as_bool(field(&l, 3)),
            delivery_count: as_u32(field(&l, 4)),
        }
    }

    fn to_list(&self) -> Value {
        trimmed(vec![
            opt(self.durable, Value::Bool),
            opt(self.priority, Value::Ubyte),
            opt(self.ttl, Value::Uint),
            opt(self.first_acquirer, Value::Bool),
            opt(self.delivery_count, Value::Uint),
        ])
    }
}

impl Properties {
    fn from_list(l: Vec<Value>) -> Properties {
        Properties {
            message_id: field(&l, 0).cloned(),
            user_id: match field(&l, 1) {
                Some(Value::Binary(b)) => Some(b.clone()),
                _ => None,
            },
            to: as_str(field(&l, 2)),
            subject: as_str(field(&l, 3)),
            reply_to: as_str(field(&l, 4)),
            correlation_id: field(&l, 5).cloned(),
            content_type: as_str(field(&l, 6)),
            content_encoding: as_str(field(&l, 7)),
            absolute_expiry_time: as_ts(field(&l, 8)),
            creation_time: as_ts(field(&l, 9)),
            group_id: as_str(field(&l, 10)),
            group_sequence: as_u32(field(&l, 11)),
            reply_to_group_id: as_str(field(&l, 12)),
        }
    }

    fn to_list(&self) -> Value {
        let s = |v: &Option<String>| opt(v.clone(), Value::String);
        let sym = |v: &Option<String>| opt(v.clone(), Value::Symbol);
        trimmed(vec![
            self.message_id.clone().unwrap_or(Value::Null),
            opt(self.user_id.clone(), Value::Binary),
            s(&self.to),
            s(&self.subject),
            s(&self.reply_to),
            self.correlation_id.clone().unwrap_or(Value::Null),
            sym(&self.content_type),
            sym(&self.content_encoding),
            opt(self.absolute_expiry_time, Value::Timestamp),
            opt(self.creation_time, Value::Timestamp),
            s(&self.group_id),
            opt(self.group_sequence, Value::Uint),
            s(&self.reply_to_group_id),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            header: Some(Header {
                durable: Some(true),
                priority: Some(4),
                ttl: Some(60_000),
                ..Header::default()
            }),
            delivery_annotations: None,
            message_annotations: Some(vec![(
                Value::Symbol("x-basic-type".into()),
                Value::String("t".into()),
            )]),
            properties: Some(Properties {
                message_id: Some(Value::String("m-1".into())),
                content_type: Some("text/plain".into()),
                creation_time: Some(1_700_000_000_000),
                user_id: Some(Bytes::from_static(b"guest")),
                ..Properties::default()
            }),
            application_properties: Some(vec![
                (Value::String("n".into()), Value::Long(-5_000_000_000)),
                (Value::String("s".into()), Value::String("x".repeat(300))),
                (Value::String("b".into()), Value::Bool(false)),
                (Value::String("d".into()), Value::Double(1.5)),
            ]),
            body: Body::Data(vec![Bytes::from(vec![7u8; 1000])]),
            footer: Some(vec![(Value::Symbol("f".into()), Value::Uint(1))]),
        }
    }

    #[test]
    fn a_message_round_trips() {
        let m = sample();
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(Message::decode(&out).unwrap(), m);
    }

    #[test]
    fn values_round_trip_in_every_width() {
        let values = vec![
            Value::Null,
            Value::Uint(0),
            Value::Uint(200),
            Value::Uint(70_000),
            Value::Ulong(u64::MAX),
            Value::Int(-1),
            Value::Int(i32::MIN),
            Value::Long(i64::MIN),
            Value::Byte(-3),
            Value::Short(-300),
            Value::Ushort(65_000),
            Value::Ubyte(9),
            Value::Float(2.5),
            Value::Char('é'),
            Value::Timestamp(-1),
            Value::Uuid([3; 16]),
            Value::Binary(Bytes::from(vec![1u8; 256])),
            Value::Symbol("sym".into()),
            Value::List(vec![]),
            Value::List(vec![Value::String("a".repeat(300)), Value::Null]),
            Value::Map(vec![(Value::String("k".into()), Value::List(vec![]))]),
            Value::Array(vec![Value::Int(1), Value::Int(-70_000)]),
            Value::Array(vec![Value::Symbol("a".into()), Value::Symbol("bc".into())]),
            Value::Described(Box::new(Value::Ulong(5)), Box::new(Value::Bool(true))),
        ];
        for v in values {
            let mut out = Vec::new();
            encode_value(&v, &mut out);
            assert_eq!(decode_one(&out).unwrap(), v, "{v:?}");
        }
    }

    #[test]
    fn symbolic_descriptors_and_amqp_value_bodies_decode() {
        let mut out = vec![0x00, 0xa3, 16];
        out.extend_from_slice(b"amqp:data:binary");
        encode_value(&Value::Binary(Bytes::from_static(b"hi")), &mut out);
        let m = Message::decode(&out).unwrap();
        assert_eq!(m.body, Body::Data(vec![Bytes::from_static(b"hi")]));
        let mut out = Vec::new();
        section(&mut out, AMQP_VALUE, &Value::String("v".into()));
        assert_eq!(
            Message::decode(&out).unwrap().body,
            Body::Value(Value::String("v".into()))
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut good = Vec::new();
        sample().encode(&mut good);
        // Every truncation, and every single-byte corruption, either decodes
        // or is refused: none panics.
        for n in 0..good.len() {
            let _ = Message::decode(&good[..n]);
            let mut bad = good.clone();
            bad[n] ^= 0xff;
            let _ = Message::decode(&bad);
        }
        assert!(Message::decode(&good[..good.len() - 1]).is_err());
        // Lists that claim more elements than bytes, huge lengths, deep nests.
        assert!(decode_one(&[0xd0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40]).is_err());
        assert!(decode_one(&[0xb0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_one(&[0xf0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40]).is_err());
        let deep: Vec<u8> = std::iter::repeat_n([0x00u8, 0x44], 100).flatten().collect();
        assert!(decode_one(&deep).is_err());
        assert!(Message::decode(&[0x40]).is_err());
        assert!(decode_one(&[0xa1, 2, 0xff, 0xfe]).is_err());
    }
}
