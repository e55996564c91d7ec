//! What a stream queue accepts at queue.declare and basic.consume, with
//! RabbitMQ's refusals (probed on 3.10.8; see
//! conformance/RABBITMQ_BEHAVIOUR.md, "Stream queues over AMQP 0-9-1").

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::protocol::fields::{erlang_type, string};
use crate::queue::args::integer;

/// The default segment size (RabbitMQ's `x-stream-max-segment-size-bytes`
/// default, 500 MB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;
/// The largest segment size RabbitMQ accepts.
const MAX_SEGMENT_BYTES: u64 = 3_000_000_000;

/// Arguments a classic queue takes and a stream refuses (RabbitMQ's list).
const REFUSED: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-delivery-limit",
    "x-expires",
    "x-max-length",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-master-locator",
    "x-queue-mode",
    "x-quorum-initial-group-size",
    "x-single-active-consumer",
];

/// A stream's retention and segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamArgs {
    /// x-max-length-bytes: the oldest segments go while the stream is larger.
    pub max_bytes: Option<u64>,
    /// x-max-age in milliseconds: segments older than this go.
    pub max_age_ms: Option<u64>,
    /// x-stream-max-segment-size-bytes.
    pub segment_bytes: u64,
}

impl Default for StreamArgs {
    fn default() -> Self {
        StreamArgs {
            max_bytes: None,
            max_age_ms: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// The queue type named by `x-queue-type`, checked as RabbitMQ checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// A classic queue (also what no `x-queue-type` means).
    Classic,
    /// A quorum queue (kept as a classic queue for now).
    Quorum,
    /// A stream.
    Stream,
}

/// `x-queue-type` of a declare: absent is classic; anything but the three
/// known names is refused with RabbitMQ's words.
pub fn queue_type(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<QueueType> {
    let Some(v) = args.inner().get("x-queue-type") else {
        return Ok(QueueType::Classic);
    };
    let Some(s) = string(v) else {
        let why = format!("{{unacceptable_type,{}}}", value_type(v));
        return Err(invalid("x-queue-type", queue, vhost, &why));
    };
    match s.as_str() {
        "classic" => Ok(QueueType::Classic),
        "quorum" => Ok(QueueType::Quorum),
        "stream" => Ok(QueueType::Stream),
        _ => Err(invalid(
            "x-queue-type",
            queue,
            vhost,
            &format!("\"unsupported queue type '{s}'\""),
        )),
    }
}

/// RabbitMQ names a byte array `binary` here, not `bytearray`.
fn value_type(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::ByteArray(_) => "binary",
        other => erlang_type(other),
    }
}

fn invalid(arg: &str, queue: &str, vhost: &str, why: &str) -> AmqpError {
    AmqpError::channel(
        code::PRECONDITION_FAILED,
        format!("invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {why}"),
    )
}

/// RabbitMQ's refusal of an argument the stream type does not take.
fn not_for_streams(arg: &str, queue: &str, vhost: &str) -> AmqpError {
    AmqpError::channel(
        code::PRECONDITION_FAILED,
        format!(
            "invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}' of queue type rabbit_stream_queue"
        ),
    )
}

/// RabbitMQ's refusal of a stream or quorum queue that is not durable, is
/// exclusive or auto-delete (the first of these it finds).
pub fn durable_only(
    queue: &str,
    vhost: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
) -> AmqpResult<()> {
    let property = if !durable {
        Some("non-durable")
    } else if exclusive {
        Some("exclusive-owner")
    } else if auto_delete {
        Some("auto-delete")
    } else {
        None
    };
    match property {
        Some(p) => Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!("invalid property '{p}' for queue '{queue}' in vhost '{vhost}'"),
        )),
        None => Ok(()),
    }
}

/// Checks a stream declaration: durable, not exclusive, not auto-delete,
/// not server-named, no classic-only argument; reads its retention.
pub fn check_declare(
    queue: &str,
    vhost: &str,
    server_named: bool,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    args: &FieldTable,
) -> AmqpResult<StreamArgs> {
    if server_named {
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            "Cannot declare a server-named queue for type rabbit_stream_queue",
        ));
    }
    durable_only(queue, vhost, durable, exclusive, auto_delete)?;
    // The table is sorted by key, so the first refused argument by name is
    // the one reported, as RabbitMQ reports it.
    if let Some(arg) = args
        .inner()
        .keys()
        .map(|k| k.as_str())
        .find(|k| REFUSED.contains(k))
    {
        return Err(not_for_streams(arg, queue, vhost));
    }
    parse(args, queue, vhost)
}

/// Reads a stream's retention and segment size (validated).
pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<StreamArgs> {
    let get = |k: &str| args.inner().get(k);
    let non_negative = |arg: &str| -> AmqpResult<Option<u64>> {
        let Some(v) = get(arg) else { return Ok(None) };
        let Some(n) = integer(v) else {
            let why = format!("\"expected integer, got {}\"", erlang_type(v));
            return Err(invalid(arg, queue, vhost, &why));
        };
        if n < 0 {
            return Err(invalid(
                arg,
                queue,
                vhost,
                &format!("{{value_negative,{n}}}"),
            ));
        }
        Ok(Some(u64::try_from(n).unwrap_or(u64::MAX)))
    };
    let mut a = StreamArgs {
        max_bytes: non_negative("x-max-length-bytes")?,
        ..StreamArgs::default()
    };
    if let Some(n) = non_negative("x-stream-max-segment-size-bytes")? {
        if n > MAX_SEGMENT_BYTES {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "Exceeded max value for x-stream-max-segment-size-bytes",
            ));
        }
        if n > 0 {
            a.segment_bytes = n;
        }
    }
    if let Some(v) = get("x-max-age") {
        let Some(s) = string(v) else {
            let why = format!("{{unacceptable_type,{}}}", value_type(v));
            return Err(invalid("x-max-age", queue, vhost, &why));
        };
        let ms =
            parse_age(&s).ok_or_else(|| invalid("x-max-age", queue, vhost, "invalid_max_age"))?;
        a.max_age_ms = Some(ms);
    }
    if let Some(v) = get("x-initial-cluster-size")
        && let Some(n) = integer(v)
    {
        if n < 0 {
            let why = format!("{{value_negative,{n}}}");
            return Err(invalid("x-initial-cluster-size", queue, vhost, &why));
        }
        if n == 0 {
            return Err(invalid(
                "x-initial-cluster-size",
                queue,
                vhost,
                "{value_zero,0}",
            ));
        }
    }
    if let Some(v) = get("x-queue-leader-locator")
        && let Some(s) = string(v)
        && !matches!(
            s.as_str(),
            "client-local" | "balanced" | "random" | "least-leaders"
        )
    {
        let why = "invalid_queue_locator_arg";
        return Err(invalid("x-queue-leader-locator", queue, vhost, why));
    }
    Ok(a)
}

/// Retention read leniently (recovered definitions, policies): what does
/// not validate is left out.
pub fn lenient(args: &FieldTable) -> StreamArgs {
    parse(args, "", "").unwrap_or_else(|_| {
        let mut a = StreamArgs::default();
        for (k, v) in args.inner() {
            let mut one = FieldTable::default();
            one.insert(k.clone(), v.clone());
            if let Ok(p) = parse(&one, "", "") {
                a.max_bytes = a.max_bytes.or(p.max_bytes);
                a.max_age_ms = a.max_age_ms.or(p.max_age_ms);
                if p.segment_bytes != DEFAULT_SEGMENT_BYTES {
                    a.segment_bytes = p.segment_bytes;
                }
            }
        }
        a
    })
}

impl StreamArgs {
    /// Fills what the arguments leave unset from a policy (`max-age`,
    /// `stream-max-segment-size-bytes`, `max-length-bytes`; the lower of
    /// argument and policy for the length, as for classic queues).
    pub fn with_policy(mut self, def: &serde_json::Map<String, serde_json::Value>) -> StreamArgs {
        if let Some(n) = def.get("max-length-bytes").and_then(|v| v.as_u64()) {
            self.max_bytes = Some(self.max_bytes.map_or(n, |m| m.min(n)));
        }
        if self.max_age_ms.is_none() {
            self.max_age_ms = def
                .get("max-age")
                .and_then(|v| v.as_str())
                .and_then(parse_age);
        }
        if let Some(n) = def
            .get("stream-max-segment-size-bytes")
            .and_then(|v| v.as_u64())
            .filter(|n| (1..=MAX_SEGMENT_BYTES).contains(n))
        {
            self.segment_bytes = n;
        }
        self
    }
}

/// An age or interval as RabbitMQ writes it: a positive whole number and
/// one unit, `Y` (365 days), `M` (30 days), `D`, `h`, `m` or `s`
/// (case-sensitive). In milliseconds.
pub fn parse_age(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    if n == 0 {
        return None;
    }
    let secs: u64 = match unit {
        'Y' => 365 * 86_400,
        'M' => 30 * 86_400,
        'D' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1000)
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest message kept.
    First,
    /// The start of the last chunk written.
    Last,
    /// Only messages published from now on (the default).
    Next,
    /// This offset (clamped to what is kept).
    Offset(u64),
    /// The first chunk written at or after this time (ms since the epoch).
    Timestamp(u64),
}

/// Where a stream consumer starts, and whether the broker keeps its
/// position (server-side offset tracking under its consumer tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Where it starts when no position was kept for it.
    pub at: StartAt,
    /// Its position is tracked: it resumes after the last message it acked.
    pub tracked: bool,
}

impl Default for Start {
    fn default() -> Self {
        Start {
            at: StartAt::Next,
            tracked: false,
        }
    }
}

/// Reads a stream consumer's start (`x-stream-offset`) and offset tracking
/// (`x-stream-automatic-offset-tracking: true`, or `x-stream-offset:
/// null`, which also starts at `first`, as LavinMQ has them).
pub fn start(args: &FieldTable, queue: &str, vhost: &str, now_ms: u64) -> AmqpResult<Start> {
    let tracked = match args.inner().get("x-stream-automatic-offset-tracking") {
        None => false,
        Some(AMQPValue::Boolean(b)) => *b,
        Some(v) => {
            let why = format!("{{unacceptable_type,{}}}", value_type(v));
            return Err(invalid(
                "x-stream-automatic-offset-tracking",
                queue,
                vhost,
                &why,
            ));
        }
    };
    if let Some(AMQPValue::Void) = args.inner().get("x-stream-offset") {
        return Ok(Start {
            at: StartAt::First,
            tracked: true,
        });
    }
    Ok(Start {
        at: start_at(args, queue, vhost, now_ms)?,
        tracked,
    })
}

/// Reads `x-stream-offset` from basic.consume's arguments; `now_ms` is
/// the wall clock (an interval counts back from it).
pub fn start_at(args: &FieldTable, queue: &str, vhost: &str, now_ms: u64) -> AmqpResult<StartAt> {
    let Some(v) = args.inner().get("x-stream-offset") else {
        return Ok(StartAt::Next);
    };
    let refuse = |shown: String| {
        let why = format!(
            "{{invalid_stream_offset_arg,{{{},{shown}}}}}",
            value_type(v)
        );
        invalid("x-stream-offset", queue, vhost, &why)
    };
    if let AMQPValue::Timestamp(secs) = v {
        return Ok(StartAt::Timestamp(secs.saturating_mul(1000)));
    }
    if let Some(n) = integer(v) {
        return Ok(StartAt::Offset(u64::try_from(n).unwrap_or(0)));
    }
    let Some(s) = string(v) else {
        return Err(refuse(format!("{v:?}")));
    };
    Ok(match s.as_str() {
        "first" => StartAt::First,
        "last" => StartAt::Last,
        "next" => StartAt::Next,
        other => match parse_age(other) {
            Some(ms) => StartAt::Timestamp(now_ms.saturating_sub(ms)),
            None => return Err(refuse(format!("<<\"{}\">>", other.escape_debug()))),
        },
    })
}

/// A consumer's filter (`x-stream-filter`: a string or an array of
/// strings; `x-stream-match-unfiltered`: a boolean). Values of other types
/// are ignored, as RabbitMQ 3.10 ignores the arguments altogether.
pub fn filter(args: &FieldTable) -> Option<(Vec<String>, bool)> {
    let values: Vec<String> = match args.inner().get("x-stream-filter")? {
        AMQPValue::FieldArray(a) => a.as_slice().iter().filter_map(string).collect(),
        v => vec![string(v)?],
    };
    let unfiltered = matches!(
        args.inner().get("x-stream-match-unfiltered"),
        Some(AMQPValue::Boolean(true))
    );
    Some((values, unfiltered))
}

/// Refusals of what a stream consumer may not ask for, in RabbitMQ's
/// order: a prefetch must be set, acks must be manual, no x-priority.
pub fn check_consume(
    queue: &str,
    vhost: &str,
    prefetch: u16,
    no_ack: bool,
    args: &FieldTable,
) -> AmqpResult<()> {
    if prefetch == 0 {
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!("consumer prefetch count is not set for 'queue '{queue}' in vhost '{vhost}''"),
        ));
    }
    if no_ack {
        return Err(AmqpError::connection(
            code::NOT_IMPLEMENTED,
            format!(
                "automatic acknowledgement not supported by stream queues queue '{queue}' in vhost '{vhost}'"
            ),
        ));
    }
    if args.inner().contains_key("x-priority") {
        return Err(not_for_streams("x-priority", queue, vhost));
    }
    Ok(())
}

/// The connection error for an operation streams do not have (basic.get,
/// queue.purge, nack and reject), in RabbitMQ's words.
pub fn not_supported(what: &str, queue: &str, vhost: &str) -> AmqpError {
    AmqpError::connection(
        code::NOT_IMPLEMENTED,
        format!("{what} not supported by stream queues queue '{queue}' in vhost '{vhost}'"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn ls(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    #[test]
    fn ages_take_rabbitmq_units_only() {
        assert_eq!(parse_age("7D"), Some(7 * 86_400_000));
        assert_eq!(parse_age("12h"), Some(12 * 3_600_000));
        assert_eq!(parse_age("30m"), Some(30 * 60_000));
        assert_eq!(parse_age("10s"), Some(10_000));
        assert_eq!(parse_age("1Y"), Some(365 * 86_400_000));
        assert_eq!(parse_age("1M"), Some(30 * 86_400_000));
        for bad in ["1X", "0s", "10", "1d", "1H", "1.5h", "-1h", "h", "", "é"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }

    #[test]
    fn declare_refusals_use_rabbitmq_texts() {
        let none = FieldTable::default();
        let e = check_declare("s", "/", false, false, false, false, &none).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 's' in vhost '/'"
        );
        let e = check_declare("s", "/", false, true, true, true, &none).unwrap_err();
        assert!(e.text.contains("'exclusive-owner'"), "{}", e.text);
        let e = check_declare("s", "/", false, true, false, true, &none).unwrap_err();
        assert!(e.text.contains("'auto-delete'"), "{}", e.text);
        let e = check_declare("", "/", true, true, false, false, &none).unwrap_err();
        assert!(
            e.text
                .ends_with("Cannot declare a server-named queue for type rabbit_stream_queue")
        );
        let t = table(&[
            ("x-message-ttl", AMQPValue::LongInt(1)),
            ("x-max-priority", AMQPValue::LongInt(1)),
            ("x-max-length", AMQPValue::LongInt(1)),
        ]);
        let e = check_declare("s", "/", false, true, false, false, &t).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 's' in vhost '/' of queue type rabbit_stream_queue"
        );
        let t = table(&[("x-max-age", ls("1.5h"))]);
        let e = check_declare("s", "/", false, true, false, false, &t).unwrap_err();
        assert!(
            e.text
                .ends_with("'x-max-age' for queue 's' in vhost '/': invalid_max_age")
        );
        let t = table(&[("x-max-age", AMQPValue::LongInt(10))]);
        let e = check_declare("s", "/", false, true, false, false, &t).unwrap_err();
        assert!(
            e.text.ends_with("{unacceptable_type,signedint}"),
            "{}",
            e.text
        );
        let t = table(&[(
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongLongInt(4_000_000_000),
        )]);
        let e = check_declare("s", "/", false, true, false, false, &t).unwrap_err();
        assert!(
            e.text
                .ends_with("Exceeded max value for x-stream-max-segment-size-bytes")
        );
        let t = table(&[
            ("x-max-age", ls("12h")),
            ("x-max-length-bytes", AMQPValue::LongLongInt(20_000_000_000)),
            (
                "x-stream-max-segment-size-bytes",
                AMQPValue::LongInt(500_000),
            ),
            ("x-unknown-arg", ls("ignored")),
        ]);
        let a = check_declare("s", "/", false, true, false, false, &t).unwrap();
        assert_eq!(
            a,
            StreamArgs {
                max_bytes: Some(20_000_000_000),
                max_age_ms: Some(12 * 3_600_000),
                segment_bytes: 500_000
            }
        );
    }

    #[test]
    fn queue_types_are_checked() {
        let t = table(&[("x-queue-type", ls("Stream"))]);
        let e = queue_type(&t, "q", "/").unwrap_err();
        assert!(
            e.text.ends_with(": \"unsupported queue type 'Stream'\""),
            "{}",
            e.text
        );
        let t = table(&[("x-queue-type", AMQPValue::ByteArray(b"x".to_vec().into()))]);
        let e = queue_type(&t, "q", "/").unwrap_err();
        assert!(
            e.text.ends_with(": {unacceptable_type,binary}"),
            "{}",
            e.text
        );
        let t = table(&[("x-queue-type", ls("stream"))]);
        assert_eq!(queue_type(&t, "q", "/").unwrap(), QueueType::Stream);
    }

    #[test]
    fn offsets_are_read_as_rabbitmq_reads_them() {
        let at = |v: AMQPValue| start_at(&table(&[("x-stream-offset", v)]), "s", "/", 10_000_000);
        assert_eq!(at(ls("first")).unwrap(), StartAt::First);
        assert_eq!(at(ls("last")).unwrap(), StartAt::Last);
        assert_eq!(at(ls("next")).unwrap(), StartAt::Next);
        assert_eq!(at(AMQPValue::LongInt(5)).unwrap(), StartAt::Offset(5));
        assert_eq!(at(AMQPValue::LongLongInt(-1)).unwrap(), StartAt::Offset(0));
        assert_eq!(
            at(AMQPValue::Timestamp(7)).unwrap(),
            StartAt::Timestamp(7000)
        );
        assert_eq!(
            at(ls("10s")).unwrap(),
            StartAt::Timestamp(10_000_000 - 10_000)
        );
        let e = at(ls("5")).unwrap_err();
        assert!(
            e.text
                .ends_with(": {invalid_stream_offset_arg,{longstr,<<\"5\">>}}"),
            "{}",
            e.text
        );
        assert_eq!(
            start_at(&FieldTable::default(), "s", "/", 0).unwrap(),
            StartAt::Next
        );
    }
}
