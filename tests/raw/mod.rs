//! A tiny blocking AMQP 0-9-1 client for tests that need to send what a
//! well-behaved client library never would: wrong protocol headers, frames on
//! unopened channels, stray content frames, bad frame-end octets.
//!
//! Everything uses `std::net` with read timeouts, so a broker that stays silent
//! fails the test instead of hanging it.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};

/// The AMQP 0-9-1 protocol header.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// How long any single read may block.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the client answers in the handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// SASL mechanism.
    pub mechanism: String,
    /// SASL response bytes.
    pub response: Vec<u8>,
    /// tune-ok channel_max; `None` echoes the server's.
    pub channel_max: Option<u16>,
    /// tune-ok frame_max; `None` echoes the server's.
    pub frame_max: Option<u32>,
    /// tune-ok heartbeat.
    pub heartbeat: u16,
    /// connection.open virtual host.
    pub vhost: String,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            mechanism: "PLAIN".into(),
            response: plain("guest", "guest"),
            channel_max: None,
            frame_max: None,
            heartbeat: 0,
            vhost: "/".into(),
        }
    }
}

/// A PLAIN SASL response.
pub fn plain(user: &str, pass: &str) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(user.as_bytes());
    v.push(0);
    v.extend_from_slice(pass.as_bytes());
    v
}

/// An AMQPLAIN SASL response: a field table without its 4-byte length prefix.
pub fn amqplain(user: &str, pass: &str) -> Vec<u8> {
    let mut t = FieldTable::default();
    t.insert(
        "LOGIN".into(),
        AMQPValue::LongString(LongString::from(user.as_bytes().to_vec())),
    );
    t.insert(
        "PASSWORD".into(),
        AMQPValue::LongString(LongString::from(pass.as_bytes().to_vec())),
    );
    let ctx = WriteContext::from(Vec::new());
    let bytes = amq_protocol::types::generation::gen_field_table(&t)(ctx)
        .expect("encode field table")
        .write;
    bytes[4..].to_vec()
}

/// Client properties announcing the capabilities a modern client has.
pub fn client_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for c in [
        "authentication_failure_close",
        "consumer_cancel_notify",
        "publisher_confirms",
        "basic.nack",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from(b"warren-raw-test".to_vec())),
    );
    p
}

/// Opens a TCP connection with a read timeout; sends nothing.
pub fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to warren");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends the protocol header and reads connection.start.
pub fn start(port: u16) -> (TcpStream, connection::Start) {
    let mut s = tcp(port);
    send_raw(&mut s, PROTOCOL_HEADER);
    match read_method(&mut s) {
        (0, AMQPClass::Connection(connection::AMQPMethod::Start(st))) => (s, st),
        other => panic!("expected connection.start, got {other:?}"),
    }
}

/// The server's connection.tune, after start-ok with the given credentials.
pub fn start_ok(s: &mut (impl Read + Write), mechanism: &str, response: &[u8]) {
    send_method(
        s,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: client_properties(),
            mechanism: mechanism.into(),
            response: LongString::from(response.to_vec()),
            locale: "en_US".into(),
        })),
    );
}

/// Reads connection.tune (panics on anything else).
pub fn expect_tune(s: &mut (impl Read + Write)) -> connection::Tune {
    match read_method(s) {
        (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
        other => panic!("expected connection.tune, got {other:?}"),
    }
}

/// Sends tune-ok.
pub fn tune_ok(s: &mut (impl Read + Write), channel_max: u16, frame_max: u32, heartbeat: u16) {
    send_method(
        s,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max,
            frame_max,
            heartbeat,
        })),
    );
}

/// Sends connection.open.
pub fn open(s: &mut (impl Read + Write), vhost: &str) {
    send_method(
        s,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: vhost.into(),
        })),
    );
}

/// Runs the whole handshake as `h` says and returns the open connection.
pub fn handshake(port: u16, h: &Handshake) -> TcpStream {
    let (mut s, _) = start(port);
    start_ok(&mut s, &h.mechanism, &h.response);
    let t = expect_tune(&mut s);
    tune_ok(
        &mut s,
        h.channel_max.unwrap_or(t.channel_max),
        h.frame_max.unwrap_or(t.frame_max),
        h.heartbeat,
    );
    open(&mut s, &h.vhost);
    match read_method(&mut s) {
        (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => s,
        other => panic!("expected connection.open-ok, got {other:?}"),
    }
}

/// Connects and authenticates as guest/guest with PLAIN, vhost "/".
pub fn connect(port: u16) -> TcpStream {
    handshake(port, &Handshake::default())
}

/// Encodes a frame.
pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("encode frame")
        .write
}

/// Sends raw bytes.
pub fn send_raw(s: &mut (impl Read + Write), bytes: &[u8]) {
    s.write_all(bytes).expect("write to warren");
}

/// Sends a frame.
pub fn send_frame(s: &mut (impl Read + Write), frame: &AMQPFrame) {
    send_raw(s, &encode(frame));
}

/// Sends a method frame.
pub fn send_method(s: &mut (impl Read + Write), channel: u16, class: &AMQPClass) {
    send_frame(s, &AMQPFrame::Method(channel, class.clone()));
}

/// A content header frame for a basic message of `size` bytes.
pub fn content_header(channel: u16, size: u64) -> AMQPFrame {
    AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size: size,
            properties: basic::AMQPProperties::default(),
        },
    )
}

/// basic.publish + header + one body frame.
pub fn publish(
    s: &mut (impl Read + Write),
    channel: u16,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) {
    let mut out = encode(&AMQPFrame::Method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    ));
    out.extend(encode(&content_header(channel, body.len() as u64)));
    if !body.is_empty() {
        out.extend(encode(&AMQPFrame::Body(channel, body.to_vec())));
    }
    send_raw(s, &out);
}

/// Reads exactly one frame. `Err` on EOF, timeout or a frame that cannot be parsed.
pub fn try_read_frame(s: &mut (impl Read + Write)) -> std::io::Result<AMQPFrame> {
    let mut head = [0u8; 7];
    s.read_exact(&mut head)?;
    let mut bytes = head.to_vec();
    if &head[..4] == b"AMQP" {
        // A protocol header (8 bytes) rather than a frame.
        let mut rest = [0u8; 1];
        s.read_exact(&mut rest)?;
        bytes.push(rest[0]);
    } else {
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut rest = vec![0u8; size + 1];
        s.read_exact(&mut rest)?;
        bytes.extend(rest);
    }
    match parse_frame(&bytes[..]) {
        Ok((_, f)) => Ok(f),
        Err(e) => Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("unparseable frame {bytes:?}: {e:?}"),
        )),
    }
}

/// Reads exactly one frame (panics on EOF or timeout).
pub fn read_frame(s: &mut (impl Read + Write)) -> AMQPFrame {
    try_read_frame(s).expect("read a frame from warren")
}

/// Reads the next method frame, skipping heartbeats. Panics on content frames.
pub fn read_method(s: &mut (impl Read + Write)) -> (u16, AMQPClass) {
    loop {
        match read_frame(s) {
            AMQPFrame::Heartbeat => continue,
            AMQPFrame::Method(ch, m) => return (ch, m),
            other => panic!("expected a method frame, got {other:?}"),
        }
    }
}

/// Reads frames until connection.close; answers it with close-ok and returns
/// (reply_code, class_id, method_id).
pub fn expect_close(s: &mut (impl Read + Write)) -> (u16, u16, u16) {
    let c = expect_close_full(s);
    (c.reply_code, c.class_id, c.method_id)
}

/// Like `expect_close`, returning the whole close method.
pub fn expect_close_full(s: &mut (impl Read + Write)) -> connection::Close {
    loop {
        match try_read_frame(s) {
            Ok(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                // The server may already have hung up (it need not wait for
                // close-ok during the handshake): ignore write errors.
                let _ = s.write_all(&encode(&AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                )));
                return c;
            }
            Ok(_) => continue,
            Err(e) => panic!("expected connection.close, but the read failed: {e}"),
        }
    }
}

/// Reads frames until channel.close on `channel`; answers close-ok and
/// returns (reply_code, class_id, method_id).
pub fn expect_channel_close(s: &mut (impl Read + Write), ch: u16) -> (u16, u16, u16) {
    let cl = expect_channel_close_full(s, ch);
    (cl.reply_code, cl.class_id, cl.method_id)
}

/// Like `expect_channel_close`, returning the whole close method.
pub fn expect_channel_close_full(s: &mut (impl Read + Write), ch: u16) -> channel::Close {
    loop {
        match read_frame(s) {
            AMQPFrame::Method(c, AMQPClass::Channel(channel::AMQPMethod::Close(cl))) if c == ch => {
                send_method(
                    s,
                    ch,
                    &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                return cl;
            }
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                panic!("expected channel.close on {ch}, got connection.close {c:?}")
            }
            _ => continue,
        }
    }
}

/// Waits up to `within` for the peer to close the socket (EOF or reset),
/// discarding whatever arrives before. Returns whether it closed.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true, // reset
        }
    }
}

/// Opens channel `ch` and waits for open-ok.
pub fn open_channel(s: &mut (impl Read + Write), ch: u16) {
    send_method(
        s,
        ch,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    match read_method(s) {
        (c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if c == ch => {}
        other => panic!("expected channel.open-ok on {ch}, got {other:?}"),
    }
}

/// Sends connection.close and waits for close-ok.
pub fn close_connection(s: &mut (impl Read + Write)) {
    send_method(
        s,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    loop {
        match read_method(s) {
            (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => return,
            _ => continue,
        }
    }
}
