//! Quorum queues (`x-queue-type: quorum`) as RabbitMQ's clients see them,
//! on one node: what queue.declare accepts (probed on RabbitMQ 3.10.8, see
//! conformance/RABBITMQ_BEHAVIOUR.md, "Quorum queues"), the delivery count
//! every delivery carries (`x-delivery-count`), the delivery limit past
//! which a returned message is dead-lettered (reason `delivery_limit`) or
//! dropped, returned messages going to the back of the queue, and every
//! message kept on disk whatever its delivery mode.
//!
//! Replication (each queue a Raft group on several nodes) is not here yet:
//! a quorum queue is a durable queue of this node.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::message::{Message, content_header};
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::protocol::fields::{erlang_type, string};
use crate::queue::args::integer;

/// The header with a message's delivery count.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// Arguments of other queue types that a quorum queue refuses (RabbitMQ's
/// list, less those 3.10 accepts).
const REFUSED: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-master-locator",
    "x-queue-version",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-stream-filter-size-bytes",
    "x-initial-cluster-size",
];

/// Arguments compared when a quorum queue is declared again (RabbitMQ
/// 3.10.8: the classic ones it takes, and its own).
pub const EQUIVALENCE_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-message-ttl",
    "x-overflow",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-single-active-consumer",
];

/// Checks a quorum queue declaration as RabbitMQ does: durable, not
/// exclusive, not auto-delete, no argument of another queue type, and its
/// own arguments valid.
pub fn check_declare(
    queue: &str,
    vhost: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    args: &FieldTable,
) -> AmqpResult<()> {
    crate::queue::stream::args::durable_only(queue, vhost, durable, exclusive, auto_delete)?;
    let refuse = |arg: &str, why: &str| {
        AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!("invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}'{why}"),
        )
    };
    for arg in REFUSED {
        if args.inner().contains_key(*arg) {
            return Err(refuse(arg, " of queue type rabbit_quorum_queue"));
        }
    }
    if let Some(v) = args.inner().get("x-dead-letter-strategy") {
        let ok = string(v).is_some_and(|s| s == "at-most-once" || s == "at-least-once");
        if !ok {
            return Err(refuse("x-dead-letter-strategy", ": invalid_dlx_strategy"));
        }
    }
    if let Some(v) = args.inner().get("x-quorum-initial-group-size") {
        match integer(v) {
            None => {
                let why = format!(": \"expected integer, got {}\"", erlang_type(v));
                return Err(refuse("x-quorum-initial-group-size", &why));
            }
            Some(n) if n < 0 => {
                let why = format!(": {{value_negative,{n}}}");
                return Err(refuse("x-quorum-initial-group-size", &why));
            }
            Some(0) => return Err(refuse("x-quorum-initial-group-size", ": {value_zero,0}")),
            Some(_) => {}
        }
    }
    Ok(())
}

/// `x-delivery-limit`: a non-negative integer is the limit; anything else
/// RabbitMQ 3.10 accepts at declare and applies no limit for.
pub fn delivery_limit(args: &FieldTable) -> Option<u64> {
    let n = integer(args.inner().get("x-delivery-limit")?)?;
    u64::try_from(n).ok()
}

/// The delivery count a message carries (0 when it has none).
pub fn delivery_count(msg: &Message) -> u64 {
    msg.properties()
        .and_then(|p| {
            p.headers()
                .as_ref()
                .and_then(|h| h.inner().get(DELIVERY_COUNT).and_then(integer))
        })
        .map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// Whether a message carries a delivery count.
pub fn has_delivery_count(msg: &Message) -> bool {
    msg.properties()
        .and_then(|p| {
            p.headers()
                .as_ref()
                .map(|h| h.inner().contains_key(DELIVERY_COUNT))
        })
        .unwrap_or(false)
}

/// `msg` with its `x-delivery-count` header set to `n` (a signed 64-bit
/// integer, as RabbitMQ sends it), or removed with `None`.
pub fn with_delivery_count(msg: &Message, n: Option<u64>) -> Message {
    let Some(props) = msg.properties() else {
        return msg.clone();
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    match n {
        Some(n) => {
            headers.insert(
                DELIVERY_COUNT.into(),
                AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
            );
        }
        None => {
            if !headers.inner().contains_key(DELIVERY_COUNT) {
                return msg.clone();
            }
            let mut kept = FieldTable::default();
            for (k, v) in headers.inner() {
                if k.as_str() != DELIVERY_COUNT {
                    kept.insert(k.clone(), v.clone());
                }
            }
            headers = kept;
        }
    }
    let props = props.with_headers(headers);
    match content_header(&props, msg.body_len() as u64) {
        Some(h) => Message::new(msg.exchange(), msg.routing_key(), &h, msg.body_bytes()),
        None => msg.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;

    fn msg(props: BasicProperties) -> Message {
        let h = content_header(&props, 3).unwrap();
        Message::new(b"x", b"rk", &h, bytes::Bytes::from_static(b"abc"))
    }

    #[test]
    fn the_delivery_count_is_added_read_and_removed_keeping_other_headers() {
        let mut h = FieldTable::default();
        h.insert("app".into(), AMQPValue::LongString("v".into()));
        let m = msg(BasicProperties::default()
            .with_headers(h)
            .with_delivery_mode(2));
        assert_eq!(delivery_count(&m), 0);
        assert!(!has_delivery_count(&m));
        let m2 = with_delivery_count(&m, Some(3));
        assert_eq!(delivery_count(&m2), 3);
        assert!(m2.is_persistent());
        assert_eq!(m2.body(), b"abc");
        assert_eq!((m2.exchange(), m2.routing_key()), (&b"x"[..], &b"rk"[..]));
        let p = m2.properties().unwrap();
        let hs = p.headers().clone().unwrap();
        assert_eq!(
            hs.inner().get("app"),
            Some(&AMQPValue::LongString("v".into()))
        );
        assert_eq!(
            hs.inner().get(DELIVERY_COUNT),
            Some(&AMQPValue::LongLongInt(3))
        );
        let m3 = with_delivery_count(&m2, None);
        assert!(!has_delivery_count(&m3));
        assert!(
            m3.properties()
                .unwrap()
                .headers()
                .clone()
                .unwrap()
                .inner()
                .contains_key("app")
        );
    }

    #[test]
    fn declare_checks_follow_rabbitmq() {
        let t = |k: &str, v: AMQPValue| {
            let mut a = FieldTable::default();
            a.insert(k.into(), v);
            a
        };
        let none = FieldTable::default();
        let e = check_declare("q", "/", false, false, false, &none).unwrap_err();
        assert!(
            e.to_string().contains("invalid property 'non-durable'"),
            "{e}"
        );
        assert!(check_declare("q", "/", true, true, false, &none).is_err());
        assert!(check_declare("q", "/", true, false, true, &none).is_err());
        let e = check_declare(
            "q",
            "/",
            true,
            false,
            false,
            &t("x-max-priority", AMQPValue::LongInt(5)),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("of queue type rabbit_quorum_queue"),
            "{e}"
        );
        let bad = t(
            "x-dead-letter-strategy",
            AMQPValue::LongString("bogus".into()),
        );
        assert!(check_declare("q", "/", true, false, false, &bad).is_err());
        let zero = t("x-quorum-initial-group-size", AMQPValue::LongInt(0));
        let e = check_declare("q", "/", true, false, false, &zero).unwrap_err();
        assert!(e.to_string().contains(": {value_zero,0}"), "{e}");
        let fine = t("x-delivery-limit", AMQPValue::LongString("3".into()));
        assert!(check_declare("q", "/", true, false, false, &fine).is_ok());
        assert_eq!(delivery_limit(&fine), None);
        assert_eq!(
            delivery_limit(&t("x-delivery-limit", AMQPValue::LongInt(2))),
            Some(2)
        );
        assert_eq!(
            delivery_limit(&t("x-delivery-limit", AMQPValue::LongInt(-1))),
            None
        );
    }
}
