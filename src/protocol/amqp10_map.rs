//! Converting messages between AMQP 0-9-1 (basic properties and a body)
//! and AMQP 1.0 (`amqp10::Message`), following RabbitMQ's mapping
//! (its `mc_amqpl` module, documented as "Inter-Protocol Property
//! Conversions"):
//!
//! | AMQP 0-9-1 | AMQP 1.0 |
//! |---|---|
//! | delivery-mode 2 / 1 | header durable true / false |
//! | priority | header priority |
//! | expiration (ms) | header ttl |
//! | message-id, correlation-id | properties message-id, correlation-id (strings) |
//! | user-id | properties user-id (binary) |
//! | reply-to | properties reply-to |
//! | content-type, content-encoding | properties (symbols) |
//! | timestamp (s) | properties creation-time (ms) |
//! | app-id | properties group-id |
//! | type | message-annotation `x-basic-type` |
//! | headers not starting with `x-` | application-properties (simple values) |
//! | headers starting with `x-` | message-annotations (symbol keys) |
//! | body | one data section |
//!
//! The reverse takes the same fields back; a body of data sections is
//! their concatenation, an amqp-value holding binary or a string is its
//! bytes, any other body is the AMQP 1.0 encoding of its sections.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString, ShortString};
use bytes::Bytes;

use super::amqp10::{Body, Header, Message, Properties, Value};

/// The AMQP 1.0 form of an AMQP 0-9-1 message.
pub fn from_091(props: &BasicProperties, body: Bytes) -> Message {
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    let header = Header {
        durable: props.delivery_mode().map(|m| m == 2),
        priority: *props.priority(),
        ttl: props
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse().ok()),
        ..Header::default()
    };
    let properties = Properties {
        message_id: s(props.message_id()).map(Value::String),
        user_id: props
            .user_id()
            .as_ref()
            .map(|u| Bytes::copy_from_slice(u.as_str().as_bytes())),
        reply_to: s(props.reply_to()),
        correlation_id: s(props.correlation_id()).map(Value::String),
        content_type: s(props.content_type()),
        content_encoding: s(props.content_encoding()),
        creation_time: props.timestamp().map(|t| (t as i64).saturating_mul(1000)),
        group_id: s(props.app_id()),
        ..Properties::default()
    };
    let (app, mut ann) = split_headers(props.headers().as_ref());
    if let Some(t) = s(props.kind()) {
        ann.push((Value::Symbol("x-basic-type".into()), Value::String(t)));
    }
    Message {
        header: Some(header),
        delivery_annotations: None,
        message_annotations: (!ann.is_empty()).then_some(ann),
        properties: Some(properties),
        application_properties: (!app.is_empty()).then_some(app),
        body: Body::Data(vec![body]),
        footer: None,
    }
}

type Pairs = Vec<(Value, Value)>;

/// Headers: `x-` ones become message annotations, the others
/// application properties (those whose values AMQP 1.0 allows there).
fn split_headers(headers: Option<&FieldTable>) -> (Pairs, Pairs) {
    let (mut app, mut ann) = (Vec::new(), Vec::new());
    for (k, v) in headers.map(|h| h.inner().iter()).into_iter().flatten() {
        let key = k.as_str();
        if key.starts_with("x-") {
            ann.push((Value::Symbol(key.to_owned()), value_from_091(v)));
        } else if let Some(v) = simple_from_091(v) {
            app.push((Value::String(key.to_owned()), v));
        }
    }
    (app, ann)
}

/// A simple (non-compound) field value as AMQP 1.0.
fn simple_from_091(v: &AMQPValue) -> Option<Value> {
    Some(match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::Byte(*n),
        AMQPValue::ShortShortUInt(n) => Value::Ubyte(*n),
        AMQPValue::ShortInt(n) => Value::Short(*n),
        AMQPValue::ShortUInt(n) => Value::Ushort(*n),
        AMQPValue::LongInt(n) => Value::Int(*n),
        AMQPValue::LongUInt(n) => Value::Uint(*n),
        AMQPValue::LongLongInt(n) => Value::Long(*n),
        AMQPValue::Float(f) => Value::Float(*f),
        AMQPValue::Double(f) => Value::Double(*f),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(t) => Value::String(t.to_owned()),
            Err(_) => Value::Binary(Bytes::copy_from_slice(s.as_bytes())),
        },
        AMQPValue::Timestamp(t) => Value::Timestamp((*t as i64).saturating_mul(1000)),
        AMQPValue::ByteArray(b) => Value::Binary(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => Value::Null,
        _ => return None,
    })
}

/// Any field value as AMQP 1.0 (arrays as lists, tables as maps).
fn value_from_091(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::FieldArray(a) => Value::List(a.as_slice().iter().map(value_from_091).collect()),
        AMQPValue::FieldTable(t) => Value::Map(
            t.inner()
                .iter()
                .map(|(k, v)| (Value::String(k.as_str().to_owned()), value_from_091(v)))
                .collect(),
        ),
        AMQPValue::DecimalValue(d) => Value::String(format!("{d:?}")),
        other => simple_from_091(other).unwrap_or(Value::Null),
    }
}

/// The AMQP 0-9-1 form of an AMQP 1.0 message: properties and body.
pub fn to_091(m: &Message, encoded: &[u8]) -> (BasicProperties, Bytes) {
    let mut p = BasicProperties::default();
    let ann = m.message_annotations.as_deref().unwrap_or_default();
    if let Some(h) = &m.header {
        if let Some(d) = h.durable {
            p = p.with_delivery_mode(if d { 2 } else { 1 });
        }
        if let Some(n) = h.priority {
            p = p.with_priority(n);
        }
        if let Some(t) = h.ttl {
            p = p.with_expiration(t.to_string().into());
        }
    }
    if let Some(props) = &m.properties {
        p = properties_to_091(p, props);
    }
    let mut headers = FieldTable::default();
    for (k, v) in ann {
        match (k, value_to_091(v, 0)) {
            (Value::Symbol(k), Some(v)) if k == "x-basic-type" => {
                if let Some(t) = super::fields::string(&v).and_then(short) {
                    p = p.with_type(t);
                }
            }
            (Value::Symbol(k), Some(v)) if k.starts_with("x-") && k.len() < 256 => {
                headers.insert(k.as_str().into(), v);
            }
            _ => {}
        }
    }
    for (k, v) in m.application_properties.as_deref().unwrap_or_default() {
        if let (Value::String(k), Some(v)) = (k, value_to_091(v, 0))
            && k.len() < 256
        {
            headers.insert(k.as_str().into(), v);
        }
    }
    if !headers.inner().is_empty() {
        p = p.with_headers(headers);
    }
    (p, body_to_091(m, encoded))
}

fn short(s: String) -> Option<ShortString> {
    (s.len() < 256).then(|| s.into())
}

fn properties_to_091(mut p: BasicProperties, props: &Properties) -> BasicProperties {
    let id = |v: &Option<Value>| match v.as_ref()? {
        Value::String(s) => short(s.clone()),
        Value::Ulong(n) => short(n.to_string()),
        Value::Uuid(u) => short(uuid_text(u)),
        Value::Binary(b) => short(String::from_utf8(b.to_vec()).ok()?),
        _ => None,
    };
    if let Some(v) = id(&props.message_id) {
        p = p.with_message_id(v);
    }
    if let Some(v) = id(&props.correlation_id) {
        p = p.with_correlation_id(v);
    }
    let text = |v: &Option<String>| v.clone().and_then(short);
    if let Some(v) = props.user_id.as_ref().and_then(|u| {
        let s = String::from_utf8(u.to_vec()).ok()?;
        short(s)
    }) {
        p = p.with_user_id(v);
    }
    if let Some(v) = text(&props.reply_to) {
        p = p.with_reply_to(v);
    }
    if let Some(v) = text(&props.content_type) {
        p = p.with_content_type(v);
    }
    if let Some(v) = text(&props.content_encoding) {
        p = p.with_content_encoding(v);
    }
    if let Some(v) = text(&props.group_id) {
        p = p.with_app_id(v);
    }
    if let Some(t) = props.creation_time {
        p = p.with_timestamp((t / 1000).max(0) as u64);
    }
    p
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// An AMQP 1.0 value as a field value (None: no AMQP 0-9-1 equivalent).
fn value_to_091(v: &Value, depth: usize) -> Option<AMQPValue> {
    Some(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Ubyte(n) => AMQPValue::ShortShortUInt(*n),
        Value::Ushort(n) => AMQPValue::ShortUInt(*n),
        Value::Uint(n) => AMQPValue::LongUInt(*n),
        Value::Ulong(n) => AMQPValue::LongLongInt(i64::try_from(*n).ok()?),
        Value::Byte(n) => AMQPValue::ShortShortInt(*n),
        Value::Short(n) => AMQPValue::ShortInt(*n),
        Value::Int(n) => AMQPValue::LongInt(*n),
        Value::Long(n) => AMQPValue::LongLongInt(*n),
        Value::Float(f) => AMQPValue::Float(*f),
        Value::Double(f) => AMQPValue::Double(*f),
        Value::Char(c) => AMQPValue::LongString(LongString::from(c.to_string().into_bytes())),
        Value::Timestamp(t) => AMQPValue::Timestamp((*t / 1000).max(0) as u64),
        Value::Uuid(u) => AMQPValue::LongString(LongString::from(uuid_text(u).into_bytes())),
        Value::Binary(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        Value::String(s) | Value::Symbol(s) => {
            AMQPValue::LongString(LongString::from(s.clone().into_bytes()))
        }
        Value::List(items) | Value::Array(items) if depth < 8 => {
            AMQPValue::FieldArray(FieldArray::from(
                items
                    .iter()
                    .filter_map(|i| value_to_091(i, depth + 1))
                    .collect::<Vec<_>>(),
            ))
        }
        Value::Map(pairs) if depth < 8 => {
            let mut t = FieldTable::default();
            for (k, v) in pairs {
                if let (Value::String(k) | Value::Symbol(k), Some(v)) =
                    (k, value_to_091(v, depth + 1))
                    && k.len() < 256
                {
                    t.insert(k.as_str().into(), v);
                }
            }
            AMQPValue::FieldTable(t)
        }
        _ => return None,
    })
}

/// The body AMQP 0-9-1 consumers get.
fn body_to_091(m: &Message, encoded: &[u8]) -> Bytes {
    match &m.body {
        Body::Empty => Bytes::new(),
        Body::Data(parts) if parts.len() == 1 => parts[0].clone(),
        Body::Data(parts) => parts.concat().into(),
        Body::Value(Value::Binary(b)) => b.clone(),
        Body::Value(Value::String(s)) => Bytes::copy_from_slice(s.as_bytes()),
        Body::Sequence(_) | Body::Value(_) => {
            // Not representable as bytes: the AMQP 1.0 body sections as sent.
            let mut only_body = m.clone();
            only_body.header = None;
            only_body.delivery_annotations = None;
            only_body.message_annotations = None;
            only_body.properties = None;
            only_body.application_properties = None;
            only_body.footer = None;
            let mut out = Vec::with_capacity(encoded.len());
            only_body.encode(&mut out);
            out.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_headers_survive_both_ways() {
        let mut h = FieldTable::default();
        h.insert("app".into(), AMQPValue::LongInt(7));
        h.insert("name".into(), AMQPValue::LongString("v".into()));
        h.insert("x-custom".into(), AMQPValue::LongLongInt(-3));
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_expiration("5000".into())
            .with_message_id("m1".into())
            .with_correlation_id("c1".into())
            .with_reply_to("r".into())
            .with_timestamp(1_700_000_000)
            .with_type("t".into())
            .with_user_id("guest".into())
            .with_app_id("app".into())
            .with_headers(h.clone());
        let m = from_091(&props, Bytes::from_static(b"body"));
        let p = m.properties.as_ref().unwrap();
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.creation_time, Some(1_700_000_000_000));
        assert_eq!(m.header.as_ref().unwrap().ttl, Some(5000));
        assert_eq!(m.application_properties.as_ref().unwrap().len(), 2);
        let mut enc = Vec::new();
        m.encode(&mut enc);
        let back = Message::decode(&enc).unwrap();
        let (p2, body) = to_091(&back, &enc);
        assert_eq!(&body[..], b"body");
        assert_eq!(p2, props);
    }

    #[test]
    fn amqp_value_bodies_become_bytes() {
        let m = Message {
            body: Body::Value(Value::String("text".into())),
            ..Message::default()
        };
        assert_eq!(&to_091(&m, &[]).1[..], b"text");
        let m = Message {
            body: Body::Value(Value::Long(5)),
            ..Message::default()
        };
        let (_, b) = to_091(&m, &[]);
        assert_eq!(
            Message::decode(&b).unwrap().body,
            Body::Value(Value::Long(5))
        );
    }
}
