//! Checks the field tables inside raw method and content-header payloads
//! before `amq-protocol` decodes them.
//!
//! The library's table decoder is recursive: a table nested thousands deep
//! (a 128 KiB frame holds over 20,000 levels) would overflow the stack and
//! abort the whole broker. This walker is bounded by `MAX_DEPTH`, checks
//! every value's type tag and length, and turns anything wrong into a clean
//! 502 SYNTAX_ERROR for that one connection.
//!
//! Tables that arrive as JSON (queue, exchange and binding arguments,
//! message headers and policy definitions over the HTTP API or in a
//! definitions file) pass `check_json` against the same limits, so no door
//! lets in what another refuses, and everything the definitions store writes
//! stays well inside what its JSON reader accepts back (serde_json stops at
//! 128 levels).

use serde_json::{Map, Value};

use crate::protocol::error::{AmqpError, code};

/// Deepest nesting of tables and arrays accepted (RabbitMQ's own clients
/// never go beyond a handful of levels).
pub const MAX_DEPTH: usize = 64;

/// Largest encoded argument table (of a method, or given as JSON) accepted:
/// the default frame_max, so whatever fits one default frame over AMQP is
/// accepted over HTTP too.
pub const MAX_TABLE_BYTES: usize = 128 * 1024;

/// Longest AMQP short string (names, routing keys, table keys).
pub const MAX_SHORT_STRING: usize = 255;

fn syntax(detail: &str) -> AmqpError {
    AmqpError::connection(code::SYNTAX_ERROR, detail.to_owned())
}

/// Where the field table of a method payload starts, for the methods that
/// carry one; `None` for methods without tables or truncated payloads (which
/// the decoder then rejects).
fn method_table_offset(p: &[u8]) -> Option<usize> {
    if p.len() < 4 {
        return None;
    }
    let ids = (
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    );
    // (short strings before the table, bit octets before it), after the
    // 2-byte reserved ticket field that all these methods start with.
    let (strings, bits) = match ids {
        (10, 11) => return Some(4), // connection.start-ok: client-properties first
        (40, 10) => (2, 1),         // exchange.declare: exchange, type, bits
        (40, 30) | (40, 40) => (3, 1), // exchange.bind/unbind: dest, source, key, bits
        (50, 10) => (1, 1),         // queue.declare: queue, bits
        (50, 20) => (3, 1),         // queue.bind: queue, exchange, key, bits
        (50, 50) => (3, 0),         // queue.unbind: queue, exchange, key
        (60, 20) => (2, 1),         // basic.consume: queue, tag, bits
        _ => return None,
    };
    let mut at = 6;
    for _ in 0..strings {
        at += 1 + *p.get(at)? as usize;
    }
    Some(at + bits)
}

/// Checks the field table of a method payload, if it has one.
pub fn check_method(payload: &[u8]) -> Result<(), AmqpError> {
    match method_table_offset(payload) {
        Some(at) if at < payload.len() => {
            let size = check_table(&payload[at..], 0)?;
            if size > MAX_TABLE_BYTES {
                return Err(syntax(&format!(
                    "field table of {size} bytes is larger than {MAX_TABLE_BYTES}"
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks a table given as JSON against the limits AMQP tables have: at
/// most `MAX_DEPTH` levels of nested objects and arrays, keys of at most
/// 255 bytes, at most `MAX_TABLE_BYTES` once encoded as AMQP. The error
/// says which limit was passed.
pub fn check_json(m: &Map<String, Value>) -> Result<(), String> {
    let size = json_table_size(m, 0)?;
    if size > MAX_TABLE_BYTES {
        return Err(format!(
            "table of {size} bytes (encoded) is larger than {MAX_TABLE_BYTES}"
        ));
    }
    Ok(())
}

/// The AMQP-encoded size of a JSON table at `depth`.
fn json_table_size(m: &Map<String, Value>, depth: usize) -> Result<usize, String> {
    if depth > MAX_DEPTH {
        return Err(format!("table nested deeper than {MAX_DEPTH} levels"));
    }
    let mut size = 4;
    for (k, v) in m {
        check_short_string("table key", k)?;
        size += 1 + k.len() + json_value_size(v, depth)?;
    }
    Ok(size)
}

/// The AMQP-encoded size of a JSON value (as `definitions::table_from_json`
/// encodes it) inside a table at `depth`.
fn json_value_size(v: &Value, depth: usize) -> Result<usize, String> {
    Ok(match v {
        Value::Null => 1,
        Value::Bool(_) => 2,
        Value::Number(_) => 9,
        Value::String(s) => 5 + s.len(),
        Value::Object(o) => 1 + json_table_size(o, depth + 1)?,
        Value::Array(a) => {
            if depth + 1 > MAX_DEPTH {
                return Err(format!("array nested deeper than {MAX_DEPTH} levels"));
            }
            let mut size = 5;
            for item in a {
                size += json_value_size(item, depth + 1)?;
            }
            size
        }
    })
}

/// Refuses a short string (a name, routing key or table key) longer than
/// AMQP can carry: `what` names it in the error, worded as RabbitMQ words
/// its queue name check.
pub fn check_short_string(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_SHORT_STRING {
        return Err(format!(
            "{what} should be less than {MAX_SHORT_STRING} bytes, actually was {}",
            s.len()
        ));
    }
    Ok(())
}

/// Checks the `headers` table of a content header payload, if present.
pub fn check_content_header(payload: &[u8]) -> Result<(), AmqpError> {
    if payload.len() < 14 {
        return Ok(());
    }
    let flags = u16::from_be_bytes([payload[12], payload[13]]);
    if flags & 0x2000 == 0 {
        return Ok(());
    }
    let mut at = 14;
    for bit in [0x8000u16, 0x4000] {
        if flags & bit != 0 {
            at += 1 + *payload
                .get(at)
                .ok_or_else(|| syntax("truncated content header properties"))?
                as usize;
        }
    }
    if at >= payload.len() {
        return Err(syntax("truncated content header properties"));
    }
    check_table(&payload[at..], 0).map(|_| ())
}

/// Checks a length-prefixed field table (e.g. an AMQPLAIN login response,
/// framed) before it is handed to the library's recursive decoder.
pub fn check_field_table(table: &[u8]) -> Result<(), AmqpError> {
    check_table(table, 0).map(|_| ())
}

fn read_u32(b: &[u8], at: usize) -> Result<usize, AmqpError> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .ok_or_else(|| syntax("truncated field table"))
}

/// Checks a length-prefixed table at the start of `b`; returns its size.
fn check_table(b: &[u8], depth: usize) -> Result<usize, AmqpError> {
    if depth > MAX_DEPTH {
        return Err(syntax(&format!(
            "field table nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let len = read_u32(b, 0)?;
    let body = b
        .get(4..4 + len)
        .ok_or_else(|| syntax("field table longer than its frame"))?;
    let mut at = 0;
    while at < body.len() {
        let key_len = body[at] as usize;
        at += 1 + key_len;
        if at > body.len() {
            return Err(syntax("truncated field table key"));
        }
        at += check_value(&body[at..], depth)?;
    }
    Ok(4 + len)
}

/// Checks one tagged value at the start of `b`; returns its size.
fn check_value(b: &[u8], depth: usize) -> Result<usize, AmqpError> {
    let tag = *b
        .first()
        .ok_or_else(|| syntax("field table value without a type"))?;
    let rest = &b[1..];
    let fixed = |n: usize| {
        if rest.len() >= n {
            Ok(1 + n)
        } else {
            Err(syntax("truncated field table value"))
        }
    };
    match tag {
        b'V' => Ok(1),
        b't' | b'b' | b'B' => fixed(1),
        b's' | b'U' | b'u' => fixed(2),
        b'I' | b'i' | b'f' => fixed(4),
        b'D' => fixed(5),
        b'L' | b'l' | b'd' | b'T' => fixed(8),
        b'S' | b'x' => {
            let n = read_u32(rest, 0)?;
            fixed(4 + n)
        }
        b'F' => Ok(1 + check_table(rest, depth + 1)?),
        b'A' => {
            if depth + 1 > MAX_DEPTH {
                return Err(syntax(&format!(
                    "field array nested deeper than {MAX_DEPTH} levels"
                )));
            }
            let n = read_u32(rest, 0)?;
            let items = rest
                .get(4..4 + n)
                .ok_or_else(|| syntax("field array longer than its frame"))?;
            let mut at = 0;
            while at < items.len() {
                at += check_value(&items[at..], depth + 1)?;
            }
            Ok(1 + 4 + n)
        }
        other => Err(syntax(&format!(
            "invalid field table value type {:?}",
            other as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Vec<u8> {
        // {"k": {"k": ... {} }}
        let mut t = vec![0, 0, 0, 0];
        for _ in 0..depth {
            let mut outer = vec![1, b'k', b'F'];
            outer.extend_from_slice(&t);
            let mut framed = (outer.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&outer);
            t = framed;
        }
        t
    }

    fn queue_declare_with(table: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        p.extend_from_slice(table);
        p
    }

    #[test]
    fn a_shallow_table_passes() {
        assert!(check_method(&queue_declare_with(&nested(10))).is_ok());
    }

    #[test]
    fn a_table_nested_thousands_deep_is_a_syntax_error() {
        let e = check_method(&queue_declare_with(&nested(5000))).unwrap_err();
        assert_eq!(e.code, code::SYNTAX_ERROR);
    }

    #[test]
    fn an_unknown_value_type_is_a_syntax_error() {
        let t = [0, 0, 0, 3, 1, b'k', b'?'];
        assert_eq!(
            check_method(&queue_declare_with(&t)).unwrap_err().code,
            code::SYNTAX_ERROR
        );
    }

    #[test]
    fn a_value_longer_than_the_table_is_a_syntax_error() {
        let t = [0, 0, 0, 7, 1, b'k', b'S', 0, 0, 0, 99];
        assert_eq!(
            check_method(&queue_declare_with(&t)).unwrap_err().code,
            code::SYNTAX_ERROR
        );
    }

    fn nested_json(depth: usize) -> Map<String, Value> {
        let mut v = Value::Object(Map::new());
        for _ in 0..depth {
            let mut m = Map::new();
            m.insert("k".into(), v);
            v = Value::Object(m);
        }
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn json_tables_have_the_depth_limit_of_amqp_tables() {
        // nested(n) over AMQP and nested_json(n) are the same shape.
        assert!(check_method(&queue_declare_with(&nested(MAX_DEPTH))).is_ok());
        assert!(check_json(&nested_json(MAX_DEPTH)).is_ok());
        assert!(check_method(&queue_declare_with(&nested(MAX_DEPTH + 1))).is_err());
        assert!(check_json(&nested_json(MAX_DEPTH + 1)).is_err());
        let mut arrays = Value::Null;
        for _ in 0..MAX_DEPTH + 1 {
            arrays = Value::Array(vec![arrays]);
        }
        let mut m = Map::new();
        m.insert("a".into(), arrays);
        assert!(check_json(&m).unwrap_err().contains("deeper than 64"));
    }

    #[test]
    fn json_tables_have_a_size_limit_and_short_keys() {
        let mut m = Map::new();
        m.insert("k".into(), Value::String("x".repeat(MAX_TABLE_BYTES)));
        assert!(check_json(&m).unwrap_err().contains("larger than"));
        let mut m = Map::new();
        m.insert("k".repeat(256), Value::Null);
        assert!(check_json(&m).unwrap_err().contains("less than 255 bytes"));
        let mut m = Map::new();
        m.insert("k".repeat(255), Value::Null);
        assert!(check_json(&m).is_ok());
    }

    #[test]
    fn a_method_table_larger_than_the_limit_is_a_syntax_error() {
        let mut t = vec![1, b'k', b'S'];
        t.extend_from_slice(&(MAX_TABLE_BYTES as u32).to_be_bytes());
        t.resize(t.len() + MAX_TABLE_BYTES, b'x');
        let mut framed = (t.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&t);
        let e = check_method(&queue_declare_with(&framed)).unwrap_err();
        assert_eq!(e.code, code::SYNTAX_ERROR);
    }

    #[test]
    fn deep_headers_in_a_content_header_are_refused() {
        let mut h = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0];
        h.extend_from_slice(&nested(5000));
        assert!(check_content_header(&h).is_err());
        let mut ok = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0];
        ok.extend_from_slice(&nested(3));
        assert!(check_content_header(&ok).is_ok());
    }
}
