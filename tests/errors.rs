#![allow(clippy::type_complexity)] // tables of (name, trigger, expected reply) cases
//! Error reporting: RabbitMQ-style reply texts with the class and method of
//! the offending method, channel errors that leave the connection usable,
//! frame-level garbage that closes only the offending connection, and a broker
//! that survives all of it.

mod common;
mod raw;
mod support;

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, exchange, queue, tx};
use amq_protocol::types::{AMQPValue, FieldTable as RawTable, LongString};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use support::*;

// ------------------------------------------------------------ raw builders

fn q_declare(name: &str, passive: bool, args: RawTable) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: args,
    }))
}

fn x_declare(name: &str, kind: &str, passive: bool, args: RawTable) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
        exchange: name.into(),
        kind: kind.into(),
        passive,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: args,
    }))
}

fn q_bind(q: &str, x: &str, key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: q.into(),
        exchange: x.into(),
        routing_key: key.into(),
        nowait: false,
        arguments: RawTable::default(),
    }))
}

fn args(k: &str, v: AMQPValue) -> RawTable {
    let mut t = RawTable::default();
    t.insert(k.into(), v);
    t
}

/// Sends a method and reads its reply, which must not be a close.
fn call(s: &mut TcpStream, ch: u16, m: AMQPClass) -> AMQPClass {
    raw::send_method(s, ch, &m);
    match raw::read_method(s) {
        (c, reply) if c == ch => {
            if let AMQPClass::Channel(channel::AMQPMethod::Close(cl)) = &reply {
                panic!("setup {m:?} failed: {cl:?}");
            }
            reply
        }
        (0, AMQPClass::Connection(connection::AMQPMethod::Close(cl))) => {
            panic!("setup {m:?} closed the connection: {cl:?}")
        }
        other => panic!("unexpected reply to {m:?}: {other:?}"),
    }
}

struct Case {
    name: &'static str,
    /// Sends setup and the offending frames on the given channel.
    trigger: Box<dyn Fn(&mut TcpStream, u16)>,
    code: u16,
    text: String,
    class_method: (u16, u16),
}

fn case(
    name: &'static str,
    code: u16,
    text: &str,
    class_method: (u16, u16),
    trigger: impl Fn(&mut TcpStream, u16) + 'static,
) -> Case {
    Case {
        name,
        trigger: Box::new(trigger),
        code,
        text: text.to_owned(),
        class_method,
    }
}

fn send(m: AMQPClass) -> impl Fn(&mut TcpStream, u16) + 'static {
    move |s, ch| raw::send_method(s, ch, &m)
}

const LOCKED: &str = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'theirs' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";

// ------------------------------------------------------------ reply texts

#[test]
fn passive_declare_of_a_missing_queue_says_not_found_in_rabbitmq_words() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(&mut s, 1, &q_declare("orders", true, RawTable::default()));
    let c = raw::expect_channel_close_full(&mut s, 1);
    assert_eq!(c.reply_code, 404);
    assert_eq!(
        c.reply_text.as_str(),
        "NOT_FOUND - no queue 'orders' in vhost '/'"
    );
    assert_eq!((c.class_id, c.method_id), (50, 10));
}

/// Channel errors (channel.close) as RabbitMQ 3.10 words them, with the
/// class and method of the method that caused them
/// (conformance/RABBITMQ_BEHAVIOUR.md). All run on one connection, which must
/// survive every one of them.
#[test]
fn channel_errors_carry_rabbitmq_reply_texts_and_the_offending_method() {
    let w = Warren::start();
    // Another connection owns an exclusive queue.
    let mut owner = raw::connect(w.port);
    raw::open_channel(&mut owner, 1);
    raw::send_method(
        &mut owner,
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "theirs".into(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments: RawTable::default(),
        })),
    );
    raw::read_method(&mut owner);

    let cases = vec![
        case(
            "passive exchange.declare",
            404,
            "NOT_FOUND - no exchange 'nox' in vhost '/'",
            (40, 10),
            send(x_declare("nox", "direct", true, RawTable::default())),
        ),
        case(
            "queue.bind to a missing exchange",
            404,
            "NOT_FOUND - no exchange 'nox' in vhost '/'",
            (50, 20),
            |s, ch| {
                call(s, ch, q_declare("mine", false, RawTable::default()));
                raw::send_method(s, ch, &q_bind("mine", "nox", "k"));
            },
        ),
        case(
            "queue.bind of a missing queue",
            404,
            "NOT_FOUND - no queue 'noq' in vhost '/'",
            (50, 20),
            send(q_bind("noq", "amq.direct", "k")),
        ),
        case(
            "queue.purge of a missing queue",
            404,
            "NOT_FOUND - no queue 'noq' in vhost '/'",
            (50, 30),
            send(AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "noq".into(),
                nowait: false,
            }))),
        ),
        case(
            "basic.consume on a missing queue",
            404,
            "NOT_FOUND - no queue 'noq' in vhost '/'",
            (60, 20),
            send(AMQPClass::Basic(basic::AMQPMethod::Consume(
                basic::Consume {
                    queue: "noq".into(),
                    consumer_tag: "".into(),
                    no_local: false,
                    no_ack: false,
                    exclusive: false,
                    nowait: false,
                    arguments: RawTable::default(),
                },
            ))),
        ),
        case(
            "basic.get on a missing queue",
            404,
            "NOT_FOUND - no queue 'noq' in vhost '/'",
            (60, 70),
            send(AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "noq".into(),
                no_ack: false,
            }))),
        ),
        case(
            "basic.publish to a missing exchange",
            404,
            "NOT_FOUND - no exchange 'nox' in vhost '/'",
            (60, 40),
            |s, ch| raw::publish(s, ch, "nox", "k", b"x"),
        ),
        case(
            "publish to amq.default (not an alias)",
            404,
            "NOT_FOUND - no exchange 'amq.default' in vhost '/'",
            (60, 40),
            |s, ch| raw::publish(s, ch, "amq.default", "k", b"x"),
        ),
        case(
            "exchange.bind with a missing source",
            404,
            "NOT_FOUND - no exchange 'nox' in vhost '/'",
            (40, 30),
            send(AMQPClass::Exchange(exchange::AMQPMethod::Bind(
                exchange::Bind {
                    destination: "amq.fanout".into(),
                    source: "nox".into(),
                    routing_key: "".into(),
                    nowait: false,
                    arguments: RawTable::default(),
                },
            ))),
        ),
        case(
            "queue.declare with the amq. prefix",
            403,
            "ACCESS_REFUSED - queue name 'amq.x' contains reserved prefix 'amq.*'",
            (50, 10),
            send(q_declare("amq.x", false, RawTable::default())),
        ),
        case(
            "exchange.declare with the amq. prefix",
            403,
            "ACCESS_REFUSED - exchange name 'amq.x' contains reserved prefix 'amq.*'",
            (40, 10),
            send(x_declare("amq.x", "direct", false, RawTable::default())),
        ),
        case(
            "exchange.delete of amq.direct",
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
            (40, 20),
            send(AMQPClass::Exchange(exchange::AMQPMethod::Delete(
                exchange::Delete {
                    exchange: "amq.direct".into(),
                    if_unused: false,
                    nowait: false,
                },
            ))),
        ),
        case(
            "queue.bind to the default exchange",
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
            (50, 20),
            |s, ch| {
                call(s, ch, q_declare("mine", false, RawTable::default()));
                raw::send_method(s, ch, &q_bind("mine", "", "mine"));
            },
        ),
        case(
            "queue.unbind from the default exchange",
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
            (50, 50),
            send(AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "mine".into(),
                exchange: "".into(),
                routing_key: "mine".into(),
                arguments: RawTable::default(),
            }))),
        ),
        case(
            "exchange.declare redeclared with another type",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'ex1' in vhost '/': received 'fanout' but current is 'direct'",
            (40, 10),
            |s, ch| {
                call(
                    s,
                    ch,
                    x_declare("ex1", "direct", false, RawTable::default()),
                );
                raw::send_method(
                    s,
                    ch,
                    &x_declare("ex1", "fanout", false, RawTable::default()),
                );
            },
        ),
        case(
            "exchange.declare redeclared with an added alternate-exchange",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'ex2' in vhost '/': received the value 'foo' of type 'longstr' but current is none",
            (40, 10),
            |s, ch| {
                call(
                    s,
                    ch,
                    x_declare("ex2", "direct", false, RawTable::default()),
                );
                raw::send_method(
                    s,
                    ch,
                    &x_declare(
                        "ex2",
                        "direct",
                        false,
                        args(
                            "alternate-exchange",
                            AMQPValue::LongString(LongString::from(b"foo".to_vec())),
                        ),
                    ),
                );
            },
        ),
        case(
            "queue.declare redeclared with an added x-message-ttl",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q-ttl' in vhost '/': received the value '1000' of type 'signedint' but current is none",
            (50, 10),
            |s, ch| {
                call(s, ch, q_declare("q-ttl", false, RawTable::default()));
                raw::send_method(
                    s,
                    ch,
                    &q_declare(
                        "q-ttl",
                        false,
                        args("x-message-ttl", AMQPValue::LongInt(1000)),
                    ),
                );
            },
        ),
        case(
            "queue.declare redeclared without its x-message-ttl",
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q-ttl2' in vhost '/': received none but current is the value '1000' of type 'signedint'",
            (50, 10),
            |s, ch| {
                call(
                    s,
                    ch,
                    q_declare(
                        "q-ttl2",
                        false,
                        args("x-message-ttl", AMQPValue::LongInt(1000)),
                    ),
                );
                raw::send_method(s, ch, &q_declare("q-ttl2", false, RawTable::default()));
            },
        ),
        case(
            "queue.delete if-unused of a consumed queue",
            406,
            "PRECONDITION_FAILED - queue 'consumed' in vhost '/' in use",
            (50, 40),
            |s, ch| {
                call(s, ch, q_declare("consumed", false, RawTable::default()));
                call(
                    s,
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                        queue: "consumed".into(),
                        consumer_tag: "c".into(),
                        no_local: false,
                        no_ack: true,
                        exclusive: false,
                        nowait: false,
                        arguments: RawTable::default(),
                    })),
                );
                raw::send_method(
                    s,
                    ch,
                    &AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                        queue: "consumed".into(),
                        if_unused: true,
                        if_empty: false,
                        nowait: false,
                    })),
                );
            },
        ),
        case(
            "basic.ack of an unknown tag",
            406,
            "PRECONDITION_FAILED - unknown delivery tag 42",
            (60, 80),
            send(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 42,
                multiple: false,
            }))),
        ),
        case(
            "basic.ack of tag 0 without multiple",
            406,
            "PRECONDITION_FAILED - unknown delivery tag 0",
            (60, 80),
            send(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 0,
                multiple: false,
            }))),
        ),
        case(
            "basic.reject of an unknown tag",
            406,
            "PRECONDITION_FAILED - unknown delivery tag 7",
            (60, 90),
            send(AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: 7,
                requeue: true,
            }))),
        ),
        case(
            "basic.nack of an unknown tag",
            406,
            "PRECONDITION_FAILED - unknown delivery tag 7",
            (60, 120),
            send(AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 7,
                multiple: false,
                requeue: true,
            }))),
        ),
        case(
            "tx.commit without tx.select",
            406,
            "PRECONDITION_FAILED - channel is not transactional",
            (90, 20),
            send(AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {}))),
        ),
        case(
            "tx.rollback without tx.select",
            406,
            "PRECONDITION_FAILED - channel is not transactional",
            (90, 30),
            send(AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {}))),
        ),
        case(
            "confirm.select on a tx channel",
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
            (85, 10),
            |s, ch| {
                call(s, ch, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})));
                raw::send_method(
                    s,
                    ch,
                    &AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                        nowait: false,
                    })),
                );
            },
        ),
        case(
            "tx.select on a confirm channel",
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
            (90, 10),
            |s, ch| {
                call(
                    s,
                    ch,
                    AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                        nowait: false,
                    })),
                );
                raw::send_method(s, ch, &AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})));
            },
        ),
        case(
            "passive declare of another connection's exclusive queue",
            405,
            LOCKED,
            (50, 10),
            send(q_declare("theirs", true, RawTable::default())),
        ),
        case(
            "basic.get on another connection's exclusive queue",
            405,
            LOCKED,
            (60, 70),
            send(AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "theirs".into(),
                no_ack: true,
            }))),
        ),
        case(
            "queue.bind with no previously declared queue",
            404,
            "NOT_FOUND - no previously declared queue",
            (50, 20),
            send(q_bind("", "amq.direct", "k")),
        ),
    ];

    let mut s = raw::connect(w.port);
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        // A fresh channel number per case, so "last declared queue" state
        // does not leak between cases.
        let ch = i as u16 + 1;
        raw::open_channel(&mut s, ch);
        (c.trigger)(&mut s, ch);
        let got = raw::expect_channel_close_full(&mut s, ch);
        let got_t = (
            got.reply_code,
            got.reply_text.as_str().to_owned(),
            (got.class_id, got.method_id),
        );
        let want = (c.code, c.text.clone(), c.class_method);
        if got_t != want {
            failures.push(format!(
                "{}:\n    got  {got_t:?}\n    want {want:?}",
                c.name
            ));
        }
    }
    // The connection survived every channel error.
    raw::open_channel(&mut s, 999);
    call(&mut s, 999, q_declare("alive", false, RawTable::default()));
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Connection errors, each on its own connection.
#[test]
fn connection_errors_carry_rabbitmq_reply_texts_and_the_offending_method() {
    let w = Warren::start();
    type Trigger = Box<dyn Fn(&mut TcpStream)>;
    let cases: Vec<(&str, Trigger, u16, &str, (u16, u16))> = vec![
        (
            "method on a never-opened channel",
            Box::new(|s| raw::send_method(s, 5, &q_declare("q", false, RawTable::default()))),
            504,
            "CHANNEL_ERROR - expected 'channel.open'",
            (50, 10),
        ),
        (
            "second channel.open",
            Box::new(|s| {
                raw::open_channel(s, 1);
                raw::send_method(
                    s,
                    1,
                    &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
                );
            }),
            504,
            "CHANNEL_ERROR - second 'channel.open' seen",
            (20, 10),
        ),
        (
            "channel.open on channel 0",
            Box::new(|s| {
                raw::send_method(
                    s,
                    0,
                    &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
                )
            }),
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            (20, 10),
        ),
        (
            "queue.declare on channel 0",
            Box::new(|s| raw::send_method(s, 0, &q_declare("q", false, RawTable::default()))),
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            (50, 10),
        ),
        (
            "connection.open on channel 1",
            Box::new(|s| {
                raw::open_channel(s, 1);
                raw::send_method(
                    s,
                    1,
                    &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                        virtual_host: "/".into(),
                    })),
                );
            }),
            503,
            "COMMAND_INVALID - unimplemented method",
            (10, 40),
        ),
        (
            "unknown exchange type",
            Box::new(|s| {
                raw::open_channel(s, 1);
                raw::send_method(s, 1, &x_declare("weird", "foo", false, RawTable::default()));
            }),
            503,
            "COMMAND_INVALID - invalid exchange type 'foo'",
            (40, 10),
        ),
        (
            "duplicate consumer tag",
            Box::new(|s| {
                raw::open_channel(s, 1);
                call(s, 1, q_declare("dq", false, RawTable::default()));
                let consume = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: "dq".into(),
                    consumer_tag: "dup".into(),
                    no_local: false,
                    no_ack: true,
                    exclusive: false,
                    nowait: false,
                    arguments: RawTable::default(),
                }));
                call(s, 1, consume.clone());
                raw::send_method(s, 1, &consume);
            }),
            530,
            "NOT_ALLOWED - attempt to reuse consumer tag 'dup'",
            (60, 20),
        ),
        (
            "method instead of a content header",
            Box::new(|s| {
                raw::open_channel(s, 1);
                raw::send_method(
                    s,
                    1,
                    &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                        exchange: "".into(),
                        routing_key: "q".into(),
                        mandatory: false,
                        immediate: false,
                    })),
                );
                raw::send_method(s, 1, &q_declare("q", false, RawTable::default()));
            }),
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            (60, 40),
        ),
        (
            "content header of the wrong class",
            Box::new(|s| {
                raw::open_channel(s, 1);
                raw::send_method(
                    s,
                    1,
                    &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                        exchange: "".into(),
                        routing_key: "q".into(),
                        mandatory: false,
                        immediate: false,
                    })),
                );
                let mut h = raw::content_header(1, 1);
                if let AMQPFrame::Header(_, ref mut hdr) = h {
                    hdr.class_id = 50;
                }
                raw::send_frame(s, &h);
            }),
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
            (60, 40),
        ),
        (
            "channel.flow active=false",
            Box::new(|s| {
                raw::open_channel(s, 1);
                raw::send_method(
                    s,
                    1,
                    &AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
                );
            }),
            540,
            "NOT_IMPLEMENTED - active=false",
            (20, 20),
        ),
        (
            "basic.qos with prefetch_size",
            Box::new(|s| {
                raw::open_channel(s, 1);
                // amq-protocol has no prefetch_size field: encode by hand.
                let mut payload = vec![0, 60, 0, 10];
                payload.extend_from_slice(&1000u32.to_be_bytes()); // prefetch_size
                payload.extend_from_slice(&0u16.to_be_bytes()); // prefetch_count
                payload.push(0); // global
                let mut frame = vec![1, 0, 1];
                frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                frame.extend_from_slice(&payload);
                frame.push(0xCE);
                raw::send_raw(s, &frame);
            }),
            540,
            "NOT_IMPLEMENTED - prefetch_size!=0 (1000)",
            (60, 10),
        ),
        (
            "basic.recover-async requeue=false",
            Box::new(|s| {
                raw::open_channel(s, 1);
                raw::send_method(
                    s,
                    1,
                    &AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                        requeue: false,
                    })),
                );
            }),
            540,
            "NOT_IMPLEMENTED - requeue=false",
            (60, 100),
        ),
    ];
    let mut failures = Vec::new();
    for (name, trigger, code, text, cm) in &cases {
        let mut s = raw::connect(w.port);
        trigger(&mut s);
        let c = raw::expect_close_full(&mut s);
        let got = (
            c.reply_code,
            c.reply_text.as_str().to_owned(),
            (c.class_id, c.method_id),
        );
        let want = (*code, text.to_string(), *cm);
        if got != want {
            failures.push(format!("{name}:\n    got  {got:?}\n    want {want:?}"));
        }
        assert!(
            raw::closed_within(&mut s, Duration::from_secs(3)),
            "{name}: socket left open after close-ok"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------ frame errors

/// A valid queue.declare frame with its frame-end octet replaced by 0x00.
fn bad_frame_end() -> Vec<u8> {
    let mut f = raw::encode(&AMQPFrame::Method(
        1,
        q_declare("q", false, RawTable::default()),
    ));
    let n = f.len();
    f[n - 1] = 0x00;
    f
}

#[test]
fn a_bad_frame_end_octet_is_connection_error_501() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_raw(&mut s, &bad_frame_end());
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 501);
    assert!(
        c.reply_text.as_str().starts_with("FRAME_ERROR - "),
        "{:?}",
        c.reply_text
    );
    assert!(raw::closed_within(&mut s, Duration::from_secs(3)));
}

#[test]
fn an_unknown_frame_type_is_connection_error_501() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::send_raw(&mut s, &[7, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c', 0xCE]);
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 501);
    assert!(
        c.reply_text.as_str().starts_with("FRAME_ERROR - "),
        "{:?}",
        c.reply_text
    );
}

#[test]
fn a_frame_larger_than_frame_max_is_connection_error_501() {
    let w = Warren::start();
    let mut s = raw::handshake(
        w.port,
        &raw::Handshake {
            frame_max: Some(4096),
            ..raw::Handshake::default()
        },
    );
    raw::open_channel(&mut s, 1);
    let big = "x".repeat(200);
    let mut t = RawTable::default();
    for i in 0..25 {
        t.insert(
            format!("k{i}").as_str().into(),
            AMQPValue::LongString(big.as_str().into()),
        );
    }
    raw::send_method(&mut s, 1, &q_declare("big", false, t));
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 501);
    assert!(
        c.reply_text.as_str().starts_with("FRAME_ERROR - "),
        "{:?}",
        c.reply_text
    );
}

#[test]
fn a_heartbeat_on_a_non_zero_channel_is_connection_error_505() {
    // RabbitMQ: UNEXPECTED_FRAME (conformance/RABBITMQ_BEHAVIOUR.md row 136).
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_raw(&mut s, &[8, 0, 1, 0, 0, 0, 0, 0xCE]);
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 505, "{c:?}");
    assert!(
        c.reply_text.as_str().starts_with("UNEXPECTED_FRAME - "),
        "{:?}",
        c.reply_text
    );
}

/// Garbage from misbehaving connections must close only them; a well-behaved
/// connection keeps publishing and consuming throughout, and the broker lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_closes_only_that_connection() {
    let mut w = Warren::start();
    let port = w.port;

    // The well-behaved connection, opened before any garbage.
    let (good, ch) = w.channel().await;
    let q = unique("steady");
    declare(&ch, &q).await;
    let mut consumer = consume(&ch, &q, false).await;
    let received = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let consumer_task = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut expected = 0u64;
            while let Some(d) = consumer.next().await {
                let d = d.expect("delivery");
                let n = u64::from_be_bytes(d.data[..8].try_into().unwrap());
                assert_eq!(n, expected, "the steady stream arrived out of order");
                expected += 1;
                d.ack(BasicAckOptions::default()).await.expect("ack");
                received.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let publisher_task = {
        let stop = stop.clone();
        let pch = good.create_channel().await.unwrap();
        let q = q.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                pch.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &n.to_be_bytes(),
                    lapin::BasicProperties::default(),
                )
                .await
                .expect("publish on the well-behaved connection");
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    // Let the steady stream start.
    within("the first steady deliveries", async {
        while received.load(Ordering::SeqCst) < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let before = received.load(Ordering::SeqCst);

    let outcomes = tokio::task::spawn_blocking(move || {
        let mut outcomes: Vec<(String, Option<u16>)> = Vec::new();
        let mut close_code = |name: &str, mut s: TcpStream| {
            // Either a connection.close (answered) or a dropped socket.
            let code = match raw::try_read_frame(&mut s) {
                Ok(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => {
                    let _ = std::io::Write::write_all(
                        &mut s,
                        &raw::encode(&AMQPFrame::Method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        )),
                    );
                    Some(c.reply_code)
                }
                Ok(other) => panic!("{name}: unexpected {other:?}"),
                Err(_) => None,
            };
            assert!(
                raw::closed_within(&mut s, Duration::from_secs(5)),
                "{name}: the broker kept the connection open"
            );
            outcomes.push((name.to_owned(), code));
        };

        // 1. A frame whose frame-end octet is 0x00.
        let mut s = raw::connect(port);
        raw::open_channel(&mut s, 1);
        raw::send_raw(&mut s, &bad_frame_end());
        close_code("bad frame-end", s);

        // 2. Unknown frame type.
        let mut s = raw::connect(port);
        raw::send_raw(&mut s, &[9, 0, 0, 0, 0, 0, 0, 0xCE]);
        close_code("unknown frame type", s);

        // 3. A frame header announcing 1 GiB.
        let mut s = raw::connect(port);
        raw::send_raw(&mut s, &[3, 0, 1, 0x40, 0, 0, 0]);
        close_code("oversized frame", s);

        // 4. Pseudo-random bytes.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..5 {
            let mut s = raw::connect(port);
            let junk: Vec<u8> = (0..256)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 24) as u8
                })
                .collect();
            raw::send_raw(&mut s, &junk);
            close_code(&format!("random bytes #{round}"), s);
        }

        // 5. Garbage in place of the protocol header.
        let mut s = raw::tcp(port);
        raw::send_raw(&mut s, b"\x00\xff\xfe\x01garbage garbage garbage");
        let mut got = [0u8; 8];
        std::io::Read::read_exact(&mut s, &mut got).expect("the protocol header reply");
        assert_eq!(&got, b"AMQP\x00\x00\x09\x01");
        assert!(raw::closed_within(&mut s, Duration::from_secs(5)));

        // 6. A truncated frame, then hanging up mid-frame.
        let mut s = raw::connect(port);
        raw::open_channel(&mut s, 1);
        raw::send_raw(&mut s, &[1, 0, 1, 0, 0, 0, 50, 0, 50]);
        drop(s);
        outcomes
    })
    .await
    .expect("misbehaving clients");

    // The steady connection kept working during the garbage... (which can
    // be over in a few milliseconds, less than one publish interval on a
    // loaded machine: give the stream up to 5 s to show a delivery more)
    let waited = std::time::Instant::now();
    while received.load(Ordering::SeqCst) <= before && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let during = received.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let published = within("the publisher to stop", publisher_task)
        .await
        .unwrap();
    // ...and receives everything it published, in order.
    within("every steady message", async {
        while (received.load(Ordering::SeqCst) as u64) < published {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        during > before,
        "no steady deliveries while garbage arrived ({before} -> {during})"
    );
    assert!(
        good.status().connected(),
        "the well-behaved connection survived"
    );
    declare(&ch, &q).await;
    consumer_task.abort();

    for (name, code) in &outcomes {
        if let Some(code) = code {
            assert!((500..600).contains(code), "{name}: close code {code}");
        }
    }
    assert_eq!(outcomes[0].1, Some(501), "bad frame-end: {:?}", outcomes[0]);
    assert_eq!(
        outcomes[1].1,
        Some(501),
        "unknown frame type: {:?}",
        outcomes[1]
    );
    assert_eq!(
        outcomes[2].1,
        Some(501),
        "oversized frame: {:?}",
        outcomes[2]
    );

    // New connections still work, and the process is alive.
    let (_c2, ch2) = w.channel().await;
    declare(&ch2, &unique("after-garbage")).await;
    assert!(w.is_running(), "the broker process died");
}

#[tokio::test]
async fn a_channel_error_leaves_the_connection_usable() {
    let mut w = Warren::start();
    let (c, ch) = w.channel().await;
    let err = within(
        "queue.declare reply",
        ch.queue_declare(
            "orders".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("passive declare of a missing queue");
    assert_eq!(reply_code(&err), Some(404));
    assert_eq!(
        reply_text(&err),
        "NOT_FOUND - no queue 'orders' in vhost '/'"
    );
    assert!(c.status().connected());
    let ch2 = within("channel.open-ok", c.create_channel()).await.unwrap();
    let q = unique("usable");
    declare(&ch2, &q).await;
    publish(&ch2, "", &q, b"still fine").await;
    assert_eq!(drain(&ch2, &q).await, [b"still fine".to_vec()]);
    assert!(w.is_running());
}
