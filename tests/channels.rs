//! Channel lifecycle, channel.flow, and the frame-sequencing errors a broken
//! client can cause on a channel.

mod common;
mod raw;
mod support;

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, channel, queue};
use amq_protocol::types::FieldTable as RawTable;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use support::*;

fn queue_declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: RawTable::default(),
    }))
}

fn channel_close() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

fn basic_publish(exchange: &str, key: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: exchange.into(),
        routing_key: key.into(),
        mandatory: false,
        immediate: false,
    }))
}

fn expect_close_ok(s: &mut std::net::TcpStream, ch: u16) {
    match raw::read_method(s) {
        (c, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) if c == ch => {}
        other => panic!("expected channel.close-ok on {ch}, got {other:?}"),
    }
}

fn expect_declare_ok(s: &mut std::net::TcpStream, ch: u16, name: &str) {
    match raw::read_method(s) {
        (c, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) if c == ch => {
            assert_eq!(ok.queue.as_str(), name)
        }
        other => panic!("expected queue.declare-ok on {ch}, got {other:?}"),
    }
}

#[test]
fn a_channel_opens_and_closes_with_close_ok() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::open_channel(&mut s, 2);
    raw::send_method(&mut s, 1, &channel_close());
    expect_close_ok(&mut s, 1);
    // Channel 2 is unaffected.
    raw::send_method(&mut s, 2, &queue_declare("still-open"));
    expect_declare_ok(&mut s, 2, "still-open");
    raw::close_connection(&mut s);
}

#[tokio::test]
async fn lapin_channels_open_and_close() {
    let w = Warren::start();
    let c = w.connect().await;
    let a = within("channel.open-ok", c.create_channel()).await.unwrap();
    let b = within("channel.open-ok", c.create_channel()).await.unwrap();
    within("channel.close-ok", a.close(200, "bye".into()))
        .await
        .expect("close channel");
    declare(&b, "after-close").await;
}

// The brief asked for channel.flow active=false to pause deliveries, but
// RabbitMQ refuses it: connection.close 540 "NOT_IMPLEMENTED - active=false"
// (20/20); see conformance/RABBITMQ_BEHAVIOUR.md row 102. We test RabbitMQ.
#[test]
fn channel_flow_active_false_is_refused_with_connection_close_540() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
    );
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 540);
    assert_eq!(c.reply_text.as_str(), "NOT_IMPLEMENTED - active=false");
    assert_eq!((c.class_id, c.method_id), (20, 20));
}

#[tokio::test]
async fn channel_flow_active_true_is_acknowledged_and_deliveries_continue() {
    let w = Warren::start();
    let (_c1, consumer_ch) = w.channel().await;
    let (_c2, publisher) = w.channel().await;
    let q = unique("flow");
    declare(&publisher, &q).await;
    let mut consumer = consume(&consumer_ch, &q, true).await;

    let active = within(
        "channel.flow-ok",
        consumer_ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("channel.flow active=true");
    assert!(active, "flow-ok must echo active=true");
    for i in 0..5 {
        publish(&publisher, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(String::from_utf8(next(&mut consumer).await.data).unwrap());
    }
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
}

#[test]
fn a_method_on_a_channel_that_was_never_opened_is_connection_error_504() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::send_method(&mut s, 5, &queue_declare("nope"));
    let (code, _, _) = raw::expect_close(&mut s);
    assert_eq!(code, 504);
    assert!(raw::closed_within(&mut s, Duration::from_secs(3)));
}

#[test]
fn channel_open_on_an_already_open_channel_is_connection_error_504() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    let (code, class_id, method_id) = raw::expect_close(&mut s);
    assert_eq!(code, 504);
    assert_eq!((class_id, method_id), (20, 10));
}

// RabbitMQ 3.10 accepts any channel number from 1 to 65535 and limits only
// how many channels are open at once (conformance/RABBITMQ_BEHAVIOUR.md,
// "channel_max"); clients rely on it (amqp091-go's tests open channel 65535).
#[test]
fn any_channel_number_up_to_65535_opens_whatever_channel_max_is() {
    let w = Warren::start();
    let mut s = raw::handshake(
        w.port,
        &raw::Handshake {
            channel_max: Some(10),
            ..raw::Handshake::default()
        },
    );
    for ch in [11, 2048, 65535] {
        raw::open_channel(&mut s, ch);
    }
    raw::send_method(&mut s, 65535, &queue_declare("top-channel"));
    expect_declare_ok(&mut s, 65535, "top-channel");
    raw::close_connection(&mut s);
}

#[test]
fn opening_one_channel_more_than_channel_max_is_connection_error_530() {
    let w = Warren::start();
    let mut s = raw::handshake(
        w.port,
        &raw::Handshake {
            channel_max: Some(10),
            ..raw::Handshake::default()
        },
    );
    for ch in 100..110 {
        raw::open_channel(&mut s, ch);
    }
    raw::send_method(
        &mut s,
        11,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 530, "{c:?}");
    assert_eq!(
        c.reply_text.as_str(),
        "NOT_ALLOWED - number of channels opened (10) has reached the negotiated channel_max (10)"
    );
    assert_eq!((c.class_id, c.method_id), (0, 0));
}

#[test]
fn a_closed_channel_frees_its_place_under_channel_max() {
    let w = Warren::start();
    let mut s = raw::handshake(
        w.port,
        &raw::Handshake {
            channel_max: Some(2),
            ..raw::Handshake::default()
        },
    );
    raw::open_channel(&mut s, 1);
    raw::open_channel(&mut s, 2);
    raw::send_method(&mut s, 2, &channel_close());
    let (ch, m) = raw::read_method(&mut s);
    assert_eq!(ch, 2);
    assert!(
        matches!(m, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))),
        "{m:?}"
    );
    raw::open_channel(&mut s, 3);
    raw::close_connection(&mut s);
}

#[test]
fn channel_numbers_up_to_channel_max_all_open() {
    let w = Warren::start();
    let mut s = raw::handshake(
        w.port,
        &raw::Handshake {
            channel_max: Some(10),
            ..raw::Handshake::default()
        },
    );
    for ch in 1..=10 {
        raw::open_channel(&mut s, ch);
    }
    raw::send_method(&mut s, 10, &queue_declare("high-channel"));
    expect_declare_ok(&mut s, 10, "high-channel");
    raw::close_connection(&mut s);
}

#[test]
fn a_content_header_without_basic_publish_is_connection_error_505() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_frame(&mut s, &raw::content_header(1, 3));
    let (code, _, _) = raw::expect_close(&mut s);
    assert_eq!(code, 505);
}

#[test]
fn a_method_frame_in_the_middle_of_content_is_connection_error_505() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(&mut s, 1, &basic_publish("", "q"));
    raw::send_frame(&mut s, &raw::content_header(1, 10));
    raw::send_frame(&mut s, &AMQPFrame::Body(1, b"12345".to_vec()));
    // 5 of 10 body bytes sent: a method now is out of sequence.
    raw::send_method(&mut s, 1, &queue_declare("q"));
    let (code, _, _) = raw::expect_close(&mut s);
    assert_eq!(code, 505);
}

#[test]
fn a_method_frame_between_basic_publish_and_its_header_is_connection_error_505() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(&mut s, 1, &basic_publish("", "q"));
    raw::send_method(&mut s, 1, &queue_declare("q"));
    let (code, _, _) = raw::expect_close(&mut s);
    assert_eq!(code, 505);
}

#[test]
fn a_body_frame_with_no_header_is_connection_error_505() {
    let w = Warren::start();
    // Body on an idle channel.
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_frame(&mut s, &AMQPFrame::Body(1, b"stray".to_vec()));
    let (code, _, _) = raw::expect_close(&mut s);
    assert_eq!(code, 505);

    // Body right after basic.publish, skipping the header.
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(&mut s, 1, &basic_publish("", "q"));
    raw::send_frame(&mut s, &AMQPFrame::Body(1, b"stray".to_vec()));
    let (code, _, _) = raw::expect_close(&mut s);
    assert_eq!(code, 505);
}

#[tokio::test]
async fn a_channel_error_leaves_other_channels_and_connections_working() {
    let w = Warren::start();
    let (c1, bad) = w.channel().await;
    let good = within("channel.open-ok", c1.create_channel())
        .await
        .unwrap();
    let (_c2, other) = w.channel().await;
    let q = unique("survivor");
    declare(&good, &q).await;

    let err = within(
        "passive declare reply",
        bad.queue_declare(
            "missing-queue".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("passive declare of a missing queue must fail");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
    assert!(!bad.status().connected(), "the failed channel is closed");

    // Same connection, other channel.
    publish(&good, "", &q, b"one").await;
    assert_eq!(drain(&good, &q).await, [b"one".to_vec()]);
    // Other connection.
    publish(&other, "", &q, b"two").await;
    assert_eq!(drain(&other, &q).await, [b"two".to_vec()]);
    // And new channels still open on the connection that saw the error.
    let fresh = within("channel.open-ok", c1.create_channel())
        .await
        .unwrap();
    declare(&fresh, &q).await;
    assert!(c1.status().connected());
}

#[test]
fn a_closed_channel_number_can_be_reopened() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(&mut s, 1, &channel_close());
    expect_close_ok(&mut s, 1);
    raw::open_channel(&mut s, 1);
    raw::send_method(&mut s, 1, &queue_declare("reopened"));
    expect_declare_ok(&mut s, 1, "reopened");

    // Also after the server closed it with an error.
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "missing".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: RawTable::default(),
        })),
    );
    let (code, class_id, method_id) = raw::expect_channel_close(&mut s, 1);
    assert_eq!((code, class_id, method_id), (404, 50, 10));
    raw::open_channel(&mut s, 1);
    raw::send_method(&mut s, 1, &queue_declare("reopened"));
    expect_declare_ok(&mut s, 1, "reopened");
    raw::close_connection(&mut s);
}

#[test]
fn methods_on_a_channel_closed_by_the_server_are_ignored_until_close_ok() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::open_channel(&mut s, 2);
    // Provoke a 404 on channel 1 and, without reading the channel.close,
    // send another method on it: the broker discards it (spec 4.2.2).
    raw::publish(&mut s, 1, "no-such-exchange", "k", b"x");
    raw::send_method(&mut s, 1, &queue_declare("ignored"));
    let (code, _, _) = raw::expect_channel_close(&mut s, 1);
    assert_eq!(code, 404);
    raw::send_method(&mut s, 2, &queue_declare("ignored-check"));
    match raw::read_method(&mut s) {
        (2, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
            assert_eq!(ok.queue.as_str(), "ignored-check")
        }
        other => panic!("expected declare-ok on channel 2, got {other:?}"),
    }
    // The ignored declare on channel 1 created nothing.
    raw::send_method(
        &mut s,
        2,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "ignored".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: RawTable::default(),
        })),
    );
    let (code, _, _) = raw::expect_channel_close(&mut s, 2);
    assert_eq!(code, 404);
}
