//! Method decoding and encoding.
//!
//! `amq-protocol` decodes and encodes most methods. The per-message methods
//! (basic.publish, basic.ack) are decoded by hand here: they arrive once per
//! message and the generic decoder allocates a `String` per short string.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{AMQPClass, parse_class};
use bytes::{Buf, Bytes, BytesMut};

use crate::protocol::codec::{FRAME_METHOD, put_frame, take_short_str};
use crate::protocol::error::{AmqpError, code};

/// A decoded inbound method.
#[derive(Debug)]
pub enum Method {
    /// basic.publish, decoded by hand.
    Publish(Publish),
    /// basic.ack, decoded by hand.
    Ack {
        /// Delivery tag.
        delivery_tag: u64,
        /// Settle every tag up to this one.
        multiple: bool,
    },
    /// Everything else.
    Other(AMQPClass),
}

/// basic.publish arguments.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Exchange name bytes.
    pub exchange: Bytes,
    /// Routing key bytes.
    pub routing_key: Bytes,
    /// Return the message if it cannot be routed.
    pub mandatory: bool,
    /// Deliver only to a ready consumer (not supported, as in RabbitMQ).
    pub immediate: bool,
}

/// Class and method ids of a method payload.
pub fn ids(payload: &[u8]) -> (u16, u16) {
    if payload.len() < 4 {
        return (0, 0);
    }
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    )
}

fn syntax_error(class_id: u16, method_id: u16) -> AmqpError {
    AmqpError::connection(
        code::SYNTAX_ERROR,
        format!("malformed arguments for method (class {class_id}, method {method_id})"),
    )
    .with_method(class_id, method_id)
}

/// The (class, method) pairs a client may send.
fn is_known(class_id: u16, method_id: u16) -> bool {
    matches!(
        (class_id, method_id),
        (10, 11 | 21 | 31 | 40 | 50 | 51 | 60 | 61 | 70 | 71)
            | (20, 10 | 11 | 20 | 21 | 40 | 41)
            | (30, 10 | 11)
            | (40, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51)
            | (50, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51)
            | (
                60,
                10 | 11
                    | 20
                    | 21
                    | 30
                    | 31
                    | 40
                    | 50
                    | 60
                    | 70
                    | 71
                    | 72
                    | 80
                    | 90
                    | 100
                    | 110
                    | 111
                    | 120
            )
            | (85, 10 | 11)
            | (90, 10 | 11 | 20 | 21 | 30 | 31)
    )
}

/// Decodes a method frame's payload.
pub fn decode(payload: Bytes) -> Result<Method, AmqpError> {
    let (class_id, method_id) = ids(&payload);
    if payload.len() < 4 {
        return Err(syntax_error(class_id, method_id));
    }
    match (class_id, method_id) {
        (60, 40) => decode_publish(payload).ok_or_else(|| syntax_error(60, 40)),
        (60, 80) => {
            let mut b = payload.slice(4..);
            if b.len() < 9 {
                return Err(syntax_error(60, 80));
            }
            let delivery_tag = b.get_u64();
            let multiple = b.get_u8() & 1 != 0;
            Ok(Method::Ack {
                delivery_tag,
                multiple,
            })
        }
        (60, 10) if payload.len() >= 8 && payload[4..8] != [0, 0, 0, 0] => {
            // amq-protocol drops basic.qos prefetch_size; RabbitMQ refuses non-zero.
            let size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            Err(
                AmqpError::connection(code::NOT_IMPLEMENTED, format!("prefetch_size!=0 ({size})"))
                    .with_method(60, 10),
            )
        }
        _ if !is_known(class_id, method_id) => Err(AmqpError::connection(
            code::NOT_IMPLEMENTED,
            format!("unknown method (class {class_id}, method {method_id})"),
        )
        .with_method(class_id, method_id)),
        _ => match crate::protocol::table_guard::check_method(&payload)
            .and_then(|_| parse_class(&payload[..]).map_err(|_| syntax_error(class_id, method_id)))
        {
            Ok(([], class)) => Ok(Method::Other(class)),
            Ok(_) => Err(syntax_error(class_id, method_id)),
            Err(e) => Err(e.with_method(class_id, method_id)),
        },
    }
}

fn decode_publish(payload: Bytes) -> Option<Method> {
    let mut b = payload.slice(4..);
    if b.len() < 2 {
        return None;
    }
    b.advance(2); // reserved-1 (ticket)
    let exchange = take_short_str(&mut b)?;
    let routing_key = take_short_str(&mut b)?;
    if b.len() != 1 {
        return None;
    }
    let bits = b[0];
    Some(Method::Publish(Publish {
        exchange,
        routing_key,
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    }))
}

/// Appends a method frame encoded by amq-protocol.
pub fn write_method(out: &mut BytesMut, channel: u16, class: &AMQPClass) {
    let ctx = WriteContext::from(Vec::with_capacity(64));
    match amq_protocol::protocol::gen_class(class)(ctx) {
        Ok(ctx) => put_frame(out, FRAME_METHOD, channel, &ctx.write),
        // Only possible for values warren itself built wrongly.
        Err(e) => tracing::error!("cannot encode {class:?}: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic;

    fn encode(class: &AMQPClass) -> Bytes {
        let ctx = WriteContext::from(Vec::new());
        Bytes::from(amq_protocol::protocol::gen_class(class)(ctx).unwrap().write)
    }

    #[test]
    fn publish_is_decoded_by_hand_like_the_library_encodes_it() {
        let p = encode(&AMQPClass::Basic(basic::AMQPMethod::Publish(
            basic::Publish {
                exchange: "ex".into(),
                routing_key: "a.b".into(),
                mandatory: true,
                immediate: false,
            },
        )));
        match decode(p).unwrap() {
            Method::Publish(p) => {
                assert_eq!(&p.exchange[..], b"ex");
                assert_eq!(&p.routing_key[..], b"a.b");
                assert!(p.mandatory && !p.immediate);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ack_is_decoded_by_hand() {
        let p = encode(&AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 42,
            multiple: true,
        })));
        assert!(matches!(
            decode(p).unwrap(),
            Method::Ack {
                delivery_tag: 42,
                multiple: true
            }
        ));
    }

    #[test]
    fn an_unknown_method_is_not_implemented() {
        let e = decode(Bytes::from_static(&[0, 60, 0, 99])).unwrap_err();
        assert_eq!(e.code, code::NOT_IMPLEMENTED);
    }

    #[test]
    fn truncated_arguments_are_a_syntax_error() {
        let e = decode(Bytes::from_static(&[0, 50, 0, 10, 0])).unwrap_err();
        assert_eq!(e.code, code::SYNTAX_ERROR);
        let e = decode(Bytes::from_static(&[0, 60, 0, 40, 0, 0, 5, b'a'])).unwrap_err();
        assert_eq!(e.code, code::SYNTAX_ERROR);
    }
}
