//! Hostile input: malformed frames, methods and tables sent over a raw
//! socket. Each must end the offending connection (or channel) with the
//! exact reply code, while a well-behaved lapin client on another
//! connection keeps publishing and consuming, and the broker process keeps
//! running.

mod common;
mod raw;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use raw::*;

/// `max_message_size` in the test broker's config.
const MAX_MESSAGE_SIZE: u64 = 1000;

/// A raw frame.
fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(0xCE);
    v
}

/// A raw method payload.
fn method(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut v = class.to_be_bytes().to_vec();
    v.extend_from_slice(&method.to_be_bytes());
    v.extend_from_slice(args);
    v
}

fn short(s: &[u8]) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s);
    v
}

/// queue.declare arguments: ticket, name, bits (passive=0, durable=0,
/// exclusive=0, auto-delete=1), then the raw argument table bytes.
fn queue_declare(name: &[u8], table: &[u8]) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short(name));
    args.push(0b1000);
    args.extend_from_slice(table);
    method(50, 10, &args)
}

/// An empty field table.
const EMPTY_TABLE: &[u8] = &[0, 0, 0, 0];

/// basic.publish to the default exchange.
fn basic_publish(routing_key: &[u8]) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short(b""));
    args.extend(short(routing_key));
    args.push(0);
    method(60, 40, &args)
}

/// A content header payload (class 60, no properties) for `size` bytes.
fn header_payload(size: u64) -> Vec<u8> {
    let mut v = vec![0, 60, 0, 0];
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

/// A table holding one table holding one table ... `depth` deep.
fn nested_table(depth: usize) -> Vec<u8> {
    let mut t = EMPTY_TABLE.to_vec();
    for _ in 0..depth {
        let mut body = short(b"k");
        body.push(b'F');
        body.extend_from_slice(&t);
        t = (body.len() as u32).to_be_bytes().to_vec();
        t.extend(body);
    }
    t
}

/// Connects, opens channel 1 and sends `bytes`.
fn open_and_send(port: u16, bytes: &[u8]) -> TcpStream {
    let mut s = connect(port);
    open_channel(&mut s, 1);
    send_raw(&mut s, bytes);
    s
}

/// Sends `bytes` on channel 1 of a fresh connection and returns the
/// connection.close the broker answers with.
fn close_after(port: u16, bytes: &[u8]) -> amq_protocol::protocol::connection::Close {
    let mut s = open_and_send(port, bytes);
    let c = expect_close_full(&mut s);
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "the socket stays open after connection.close"
    );
    c
}

fn assert_close(case: &str, c: &amq_protocol::protocol::connection::Close, code: u16) {
    assert_eq!(
        c.reply_code,
        code,
        "{case}: expected connection.close {code}, got {} {:?}",
        c.reply_code,
        c.reply_text.as_str()
    );
    println!(
        "{case}: {} {:?} ({}/{})",
        c.reply_code,
        c.reply_text.as_str(),
        c.class_id,
        c.method_id
    );
}

/// A lapin connection that publishes to and consumes from its own queue.
struct Witness {
    _conn: lapin::Connection,
    ch: Channel,
    consumer: Consumer,
    queue: String,
    n: u64,
}

impl Witness {
    async fn start(w: &Warren) -> Witness {
        let (conn, ch) = w.channel().await;
        let queue = unique("witness");
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "witness".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Witness {
            _conn: conn,
            ch,
            consumer,
            queue,
            n: 0,
        }
    }

    /// Publishes one message and waits for its delivery.
    async fn round_trip(&mut self, after: &str) {
        self.n += 1;
        let body = format!("m{}", self.n);
        self.ch
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("witness publish after {after}: {e}"));
        let d = tokio::time::timeout(Duration::from_secs(10), self.consumer.next())
            .await
            .unwrap_or_else(|_| panic!("witness got no delivery after {after}"))
            .expect("witness consumer ended")
            .expect("witness delivery");
        assert_eq!(d.data, body.as_bytes(), "after {after}");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

type Case = fn(u16);

fn truncated_frame_then_eof(port: u16) {
    let mut s = connect(port);
    open_channel(&mut s, 1);
    let f = frame(1, 1, &queue_declare(b"q", EMPTY_TABLE));
    send_raw(&mut s, &f[..5]);
    s.shutdown(Shutdown::Write).unwrap();
    // No close frame: the broker just closes the socket.
    match try_read_frame(&mut s) {
        Err(_) => {}
        Ok(f) => panic!("expected EOF after a truncated frame, got {f:?}"),
    }
}

fn frame_over_frame_max(port: u16) {
    // The header alone announces 200,000 bytes, over frame_max 131072.
    let mut bytes = vec![1, 0, 1];
    bytes.extend_from_slice(&200_000u32.to_be_bytes());
    bytes.extend_from_slice(&[0; 100]);
    let c = close_after(port, &bytes);
    assert_close("frame over frame_max", &c, 501);
}

fn bad_frame_end(port: u16) {
    let mut f = frame(1, 1, &queue_declare(b"q", EMPTY_TABLE));
    *f.last_mut().unwrap() = 0;
    assert_close("bad frame-end octet", &close_after(port, &f), 501);
}

fn unknown_frame_type(port: u16) {
    let f = frame(7, 1, b"abc");
    assert_close("unknown frame type", &close_after(port, &f), 501);
}

fn unknown_class_id(port: u16) {
    let f = frame(1, 1, &method(99, 10, &[]));
    assert_close("unknown class id", &close_after(port, &f), 540);
}

fn unknown_method_id(port: u16) {
    let f = frame(1, 1, &method(50, 99, &[]));
    assert_close("unknown method id", &close_after(port, &f), 540);
}

fn header_after_queue_declare(port: u16) {
    let mut bytes = frame(1, 1, &queue_declare(b"", EMPTY_TABLE));
    bytes.extend(frame(2, 1, &header_payload(3)));
    assert_close(
        "content header after queue.declare",
        &close_after(port, &bytes),
        505,
    );
}

fn body_before_header(port: u16) {
    let mut bytes = frame(1, 1, &basic_publish(b"nowhere"));
    bytes.extend(frame(3, 1, b"abc"));
    assert_close("body before header", &close_after(port, &bytes), 505);
}

fn body_on_idle_channel(port: u16) {
    let bytes = frame(3, 1, b"abc");
    assert_close("body without publish", &close_after(port, &bytes), 505);
}

fn body_longer_than_declared(port: u16) {
    // warren answers 501 FRAME_ERROR "content body exceeds the size
    // announced in its header" (not 505: the frame is of the expected type,
    // its size is what is wrong). RabbitMQ's reply is not recorded in
    // conformance/RABBITMQ_BEHAVIOUR.md.
    let mut bytes = frame(1, 1, &basic_publish(b"nowhere"));
    bytes.extend(frame(2, 1, &header_payload(5)));
    bytes.extend(frame(3, 1, b"0123456789"));
    assert_close("body longer than declared", &close_after(port, &bytes), 501);
}

fn body_size_over_max_message_size(port: u16) {
    let size = MAX_MESSAGE_SIZE + 1;
    let mut bytes = frame(1, 1, &basic_publish(b"nowhere"));
    bytes.extend(frame(2, 1, &header_payload(size)));
    let mut s = open_and_send(port, &bytes);
    let c = expect_channel_close_full(&mut s, 1);
    assert_eq!(c.reply_code, 406);
    assert_eq!(
        c.reply_text.as_str(),
        format!(
            "PRECONDITION_FAILED - message size {size} is larger than configured max size {MAX_MESSAGE_SIZE}"
        )
    );
    assert_eq!((c.class_id, c.method_id), (60, 40));
    // The connection survives the channel error.
    open_channel(&mut s, 2);
    close_connection(&mut s);
}

fn deeply_nested_table(port: u16) {
    let f = frame(1, 1, &queue_declare(b"deep", &nested_table(10_000)));
    assert!(f.len() < 131_072, "the frame fits frame_max");
    assert_close("table nested 10,000 deep", &close_after(port, &f), 502);
}

/// An AMQPLAIN login response (a table without its length prefix) whose
/// "LOGIN" is an array of arrays nested as deep as a handshake frame allows
/// (frame_max is 4096 until tune-ok).
fn deep_amqplain_response() -> Vec<u8> {
    let depth = 700;
    let mut v = vec![b'V'];
    for _ in 0..depth {
        let mut outer = vec![b'A'];
        outer.extend_from_slice(&(v.len() as u32).to_be_bytes());
        outer.extend(v);
        v = outer;
    }
    let mut t = short(b"LOGIN");
    t.extend(v);
    t
}

fn deeply_nested_amqplain_login(port: u16) {
    let (mut s, _) = start(port);
    start_ok(&mut s, "AMQPLAIN", &deep_amqplain_response());
    let c = expect_close_full(&mut s);
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "the socket stays open after connection.close"
    );
    assert_close("AMQPLAIN response nested 700 deep", &c, 502);
}

fn invalid_value_type(port: u16) {
    // One entry "k" with the type octet 'Q', which no AMQP type uses.
    let table = [0, 0, 0, 4, 1, b'k', b'Q', 0];
    let f = frame(1, 1, &queue_declare(b"badtype", &table));
    assert_close("invalid field value type", &close_after(port, &f), 502);
}

fn non_utf8_queue_name(port: u16) {
    let f = frame(1, 1, &queue_declare(b"q\xff\xfe", EMPTY_TABLE));
    assert_close("non-UTF-8 queue name", &close_after(port, &f), 502);
}

fn method_on_unopened_channel(port: u16) {
    let mut s = connect(port);
    send_raw(&mut s, &frame(1, 5, &queue_declare(b"q", EMPTY_TABLE)));
    let c = expect_close_full(&mut s);
    assert_close("method on a channel that is not open", &c, 504);
}

fn method_on_closed_channel(port: u16) {
    let mut s = connect(port);
    open_channel(&mut s, 1);
    // channel.close, close-ok, then a method on the closed channel.
    send_raw(
        &mut s,
        &frame(1, 1, &method(20, 40, &[0, 200, 0, 0, 0, 0, 0])),
    );
    loop {
        if let (
            1,
            amq_protocol::protocol::AMQPClass::Channel(
                amq_protocol::protocol::channel::AMQPMethod::CloseOk(_),
            ),
        ) = read_method(&mut s)
        {
            break;
        }
    }
    send_raw(&mut s, &frame(1, 1, &queue_declare(b"q", EMPTY_TABLE)));
    let c = expect_close_full(&mut s);
    assert_close("method on a closed channel", &c, 504);
}

fn garbage_stream(port: u16) {
    let mut s = connect(port);
    let mut writer = s.try_clone().unwrap();
    // 8 MiB of xorshift noise, starting with an invalid frame type.
    let t = std::thread::spawn(move || {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut chunk = vec![0u8; 64 * 1024];
        for i in 0..128 {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if i == 0 {
                chunk[0] = 0xAB;
            }
            if writer.write_all(&chunk).is_err() {
                return; // the broker hung up
            }
        }
    });
    // The close frame may be lost to a reset (the broker closes with our
    // garbage unread in its socket); when it arrives, it is a frame error.
    match try_read_frame(&mut s) {
        Ok(amq_protocol::frame::AMQPFrame::Method(
            0,
            amq_protocol::protocol::AMQPClass::Connection(
                amq_protocol::protocol::connection::AMQPMethod::Close(c),
            ),
        )) => assert_close("garbage stream", &c, 501),
        Ok(other) => panic!("garbage stream: unexpected {other:?}"),
        Err(e) => println!("garbage stream: connection ended without a close frame ({e})"),
    }
    assert!(closed_within(&mut s, Duration::from_secs(10)));
    t.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_closes_only_the_offender() {
    let mut w = Warren::start_with(&format!("[amqp]\nmax_message_size = {MAX_MESSAGE_SIZE}\n"));
    let mut witness = Witness::start(&w).await;
    witness.round_trip("start").await;
    let cases: &[(&str, Case)] = &[
        ("truncated frame then EOF", truncated_frame_then_eof),
        ("frame over frame_max", frame_over_frame_max),
        ("bad frame-end octet", bad_frame_end),
        ("unknown frame type", unknown_frame_type),
        ("unknown class id", unknown_class_id),
        ("unknown method id", unknown_method_id),
        ("header after queue.declare", header_after_queue_declare),
        ("body before header", body_before_header),
        ("body on an idle channel", body_on_idle_channel),
        ("body longer than declared", body_longer_than_declared),
        (
            "body size over max_message_size",
            body_size_over_max_message_size,
        ),
        ("table nested 10,000 deep", deeply_nested_table),
        (
            "AMQPLAIN response nested 700 deep",
            deeply_nested_amqplain_login,
        ),
        ("invalid field value type", invalid_value_type),
        ("non-UTF-8 queue name", non_utf8_queue_name),
        ("method on an unopened channel", method_on_unopened_channel),
        ("method on a closed channel", method_on_closed_channel),
        ("garbage stream", garbage_stream),
    ];
    for (name, case) in cases {
        let port = w.port;
        let case = *case;
        tokio::task::spawn_blocking(move || case(port))
            .await
            .unwrap_or_else(|e| panic!("case '{name}' failed: {e}"));
        witness.round_trip(name).await;
        assert!(w.is_running(), "warren exited after '{name}'");
    }
    assert!(w.is_running(), "warren exited");
}
