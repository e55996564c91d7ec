//! AMQP field values and tables as the rest of warren reads and shows
//! them: the text of a string value, a long-string value from text, the
//! Erlang-style rendering RabbitMQ's error texts use, and JSON (definitions
//! and the HTTP API).

use std::fmt::Write as _;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use serde_json::{Map, Number, Value};

/// The text of a long- or short-string value (invalid UTF-8 replaced);
/// `None` for any other type.
pub fn string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A long-string value holding `s`.
pub fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

// --- Erlang-style rendering for error texts ---------------------------------
// RabbitMQ formats the offending value with `~tp`; these approximate that
// closely enough for a client to recognise the text.

/// The type atom RabbitMQ's parser gives each field type (also used in
/// inequivalent-argument texts).
pub fn erlang_type(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A value as Erlang's `~tp` would print RabbitMQ's decoding of it.
pub fn erlang_term(value: &AMQPValue) -> String {
    match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(x) => format!("{:?}", f64::from(*x)),
        AMQPValue::Double(x) => format!("{x:?}"),
        AMQPValue::DecimalValue(d) => format!("{{{},{}}}", d.scale, d.value),
        AMQPValue::ShortString(s) => erlang_binary(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => erlang_binary(s.as_bytes()),
        AMQPValue::ByteArray(b) => erlang_binary(b.as_slice()),
        AMQPValue::FieldArray(a) => {
            let items: Vec<String> = a
                .as_slice()
                .iter()
                .map(|v| format!("{{{},{}}}", erlang_type(v), erlang_term(v)))
                .collect();
            format!("[{}]", items.join(","))
        }
        AMQPValue::FieldTable(t) => {
            let items: Vec<String> = t
                .inner()
                .iter()
                .map(|(k, v)| {
                    let key = erlang_binary(k.as_str().as_bytes());
                    format!("{{{key},{},{}}}", erlang_type(v), erlang_term(v))
                })
                .collect();
            format!("[{}]", items.join(","))
        }
        AMQPValue::Void => "undefined".to_owned(),
    }
}

/// `<<"text">>` for printable text, `<<"tëxt"/utf8>>` for printable
/// non-ASCII UTF-8, `<<1,2,3>>` otherwise, as `~tp` does.
pub fn erlang_binary(bytes: &[u8]) -> String {
    let printable = |c: char| !c.is_control() || matches!(c, '\n' | '\r' | '\t');
    match std::str::from_utf8(bytes) {
        Ok(text) if text.chars().all(printable) => {
            let mut out = String::from("<<\"");
            for c in text.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
            out.push('"');
            if !text.is_ascii() {
                out.push_str("/utf8");
            }
            out.push_str(">>");
            out
        }
        _ => {
            let mut out = String::from("<<");
            for (i, b) in bytes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // Writing to a String cannot fail.
                let _ = write!(out, "{b}");
            }
            out.push_str(">>");
            out
        }
    }
}

/// Converts JSON arguments to an AMQP field table (as RabbitMQ does: whole
/// numbers become signed 64-bit integers, strings long strings), within the
/// limits AMQP tables have (`table_guard::check_json`: depth, key length,
/// size); the error says which was passed.
pub fn table_from_json(m: &Map<String, Value>) -> Result<FieldTable, String> {
    crate::protocol::table_guard::check_json(m)?;
    Ok(unchecked_table_from_json(m))
}

/// `table_from_json` without the limits, for definitions warren wrote itself.
pub fn unchecked_table_from_json(m: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in m {
        t.insert(k.as_str().into(), value_from_json(v));
    }
    t
}

fn value_from_json(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => long_string(s),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(value_from_json).collect::<Vec<_>>(),
        )),
        Value::Object(o) => AMQPValue::FieldTable(unchecked_table_from_json(o)),
    }
}

/// Converts a field table to JSON (for definitions and the HTTP API).
pub fn table_to_json(t: &FieldTable) -> Map<String, Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.to_string(), value_to_json(v)))
        .collect()
}

/// Converts one field value to JSON.
pub fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(*f as f64).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => Number::from_f64(d.value as f64 / 10f64.powi(d.scale as i32))
            .map_or(Value::Null, Value::Number),
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::Void => Value::Null,
    }
}
