//! A lean AMQP 0-9-1 client for load generation.
//!
//! General-purpose clients (lapin included) spend more per message than a
//! fast broker does, so a benchmark built on them measures the client. This
//! one speaks just what warrenperf needs — handshake, publish in batches,
//! confirms, consume with multiple-acks — using warren's own frame codec,
//! and works against any AMQP 0-9-1 broker.

use std::str::FromStr;

use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, exchange, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use amq_protocol::uri::AMQPUri;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use warren::protocol::codec::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD, Frame, PROTOCOL_HEADER, parse_frame,
    put_frame_header, put_short_str,
};
use warren::protocol::methods::write_method;

/// Decodes any method (server-sent ones included).
fn decode_any(payload: &[u8]) -> Result<AMQPClass> {
    amq_protocol::protocol::parse_class(payload)
        .map(|(_, c)| c)
        .map_err(|e| format!("cannot decode a method from the broker: {e:?}"))
}

/// Errors are strings: warrenperf prints them and exits.
pub type Result<T> = std::result::Result<T, String>;

/// The reading half of a connection.
pub struct Reader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    frame_max: u32,
    /// How much to grow the read buffer by.
    chunk: usize,
}

/// The writing half of a connection.
pub struct Writer {
    wr: OwnedWriteHalf,
    /// Frames waiting for `flush`.
    pub out: BytesMut,
    /// Negotiated frame_max.
    pub frame_max: u32,
}

impl Reader {
    /// Whether bytes are already buffered (more frames may follow without a read).
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Next frame from the socket.
    pub async fn next(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = parse_frame(&mut self.buf, self.frame_max).map_err(|e| e.text)? {
                return Ok(f);
            }
            if self.buf.capacity() - self.buf.len() < 4 * 1024 {
                self.buf.reserve(self.chunk);
            }
            let n = self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed by the broker".into());
            }
        }
    }

    /// Next method on any channel, skipping heartbeats; a close is an error.
    pub async fn method(&mut self) -> Result<AMQPClass> {
        loop {
            match self.next().await? {
                Frame::Method { payload, .. } => {
                    return match decode_any(&payload)? {
                        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Err(format!(
                            "connection closed: {} {}",
                            c.reply_code, c.reply_text
                        )),
                        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                            Err(format!("channel closed: {} {}", c.reply_code, c.reply_text))
                        }
                        c => Ok(c),
                    };
                }
                Frame::Heartbeat { .. } => continue,
                _ => return Err("unexpected content frame".into()),
            }
        }
    }
}

impl Writer {
    /// Queues a method frame.
    pub fn method(&mut self, channel: u16, m: AMQPClass) {
        write_method(&mut self.out, channel, &m);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.wr
                .write_all(&self.out)
                .await
                .map_err(|e| format!("write: {e}"))?;
            self.out.clear();
        }
        Ok(())
    }

    /// Queues basic.publish + header + body on channel 1 (body split to frame_max).
    pub fn publish(&mut self, exchange: &[u8], routing_key: &[u8], persistent: bool, body: &[u8]) {
        let out = &mut self.out;
        let size = 4 + 2 + 1 + exchange.len() + 1 + routing_key.len() + 1;
        put_frame_header(out, FRAME_METHOD, 1, size);
        out.put_u16(60);
        out.put_u16(40);
        out.put_u16(0);
        put_short_str(out, exchange);
        put_short_str(out, routing_key);
        out.put_u8(0);
        out.put_u8(FRAME_END);
        let props: &[u8] = if persistent {
            &[0x10, 0x00, 2]
        } else {
            &[0, 0]
        };
        put_frame_header(out, FRAME_HEADER, 1, 12 + props.len());
        out.put_u16(60);
        out.put_u16(0);
        out.put_u64(body.len() as u64);
        out.put_slice(props);
        out.put_u8(FRAME_END);
        let max = self.frame_max as usize - 8;
        for chunk in body.chunks(max) {
            put_frame_header(out, FRAME_BODY, 1, chunk.len());
            out.put_slice(chunk);
            out.put_u8(FRAME_END);
        }
    }

    /// Queues basic.ack on channel 1.
    pub fn ack(&mut self, delivery_tag: u64, multiple: bool) {
        self.method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple,
            })),
        );
    }
}

/// Opens a connection and channel 1 with 256 KiB read and write buffers.
pub async fn connect(uri: &str) -> Result<(Reader, Writer)> {
    connect_with(uri, 256 * 1024).await
}

/// Opens a connection and channel 1 with `buf` bytes of buffer each way
/// (small for the thousands of idle connections `connections` opens).
pub async fn connect_with(uri: &str, buf: usize) -> Result<(Reader, Writer)> {
    let parsed = AMQPUri::from_str(uri).map_err(|e| format!("bad URI {uri}: {e}"))?;
    let auth = &parsed.authority;
    let stream = TcpStream::connect((auth.host.as_str(), auth.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", auth.host, auth.port))?;
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut r = Reader {
        rd,
        buf: BytesMut::with_capacity(buf),
        frame_max: 4096,
        chunk: buf.max(4096),
    };
    let mut w = Writer {
        wr,
        out: BytesMut::with_capacity(buf),
        frame_max: 4096,
    };
    w.out.extend_from_slice(PROTOCOL_HEADER);
    w.flush().await?;
    let AMQPClass::Connection(connection::AMQPMethod::Start(_)) = r.method().await? else {
        return Err("expected connection.start".into());
    };
    let mut response = vec![0u8];
    response.extend_from_slice(auth.userinfo.username.as_bytes());
    response.push(0);
    response.extend_from_slice(auth.userinfo.password.as_bytes());
    w.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: response.into(),
            locale: "en_US".into(),
        })),
    );
    w.flush().await?;
    let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = r.method().await? else {
        return Err("expected connection.tune (wrong credentials?)".into());
    };
    let frame_max = if tune.frame_max == 0 {
        131072
    } else {
        tune.frame_max.min(131072)
    };
    w.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: tune.channel_max,
            frame_max,
            heartbeat: 0,
        })),
    );
    w.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: parsed.vhost.as_str().into(),
        })),
    );
    w.method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    w.flush().await?;
    r.frame_max = frame_max;
    w.frame_max = frame_max;
    let AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) = r.method().await? else {
        return Err("expected connection.open-ok".into());
    };
    let AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) = r.method().await? else {
        return Err("expected channel.open-ok".into());
    };
    Ok((r, w))
}

/// queue.declare (`passive`: only look it up); `queue_type` sets x-queue-type.
pub fn queue_declare(
    name: &str,
    durable: bool,
    passive: bool,
    queue_type: Option<&str>,
) -> AMQPClass {
    let mut arguments = FieldTable::default();
    if let Some(t) = queue_type {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(t.into()));
    }
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive,
        durable,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments,
    }))
}

/// queue.delete.
pub fn queue_delete(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: name.into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    }))
}

/// Waits for the reply to a pipelined queue.declare; returns its message count.
pub async fn expect_declare_ok(r: &mut Reader) -> Result<u32> {
    match r.method().await? {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
        other => Err(format!("expected queue.declare-ok, got {other:?}")),
    }
}

/// Waits for the reply to a pipelined queue.delete.
pub async fn expect_delete_ok(r: &mut Reader) -> Result<()> {
    match r.method().await? {
        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_)) => Ok(()),
        other => Err(format!("expected queue.delete-ok, got {other:?}")),
    }
}

/// Declares a queue on channel 1 and waits for declare-ok.
pub async fn declare_queue(
    r: &mut Reader,
    w: &mut Writer,
    name: &str,
    durable: bool,
    queue_type: Option<&str>,
) -> Result<()> {
    w.method(1, queue_declare(name, durable, false, queue_type));
    w.flush().await?;
    expect_declare_ok(r).await.map(|_| ())
}

/// The number of ready messages in a queue (a passive declare).
pub async fn message_count(r: &mut Reader, w: &mut Writer, name: &str) -> Result<u32> {
    w.method(1, queue_declare(name, false, true, None));
    w.flush().await?;
    expect_declare_ok(r).await
}

/// Deletes a queue on channel 1 and waits for delete-ok.
pub async fn delete_queue(r: &mut Reader, w: &mut Writer, name: &str) -> Result<()> {
    w.method(1, queue_delete(name));
    w.flush().await?;
    expect_delete_ok(r).await
}

/// Declares an exchange of `kind` (direct, fanout, topic, headers).
pub async fn declare_exchange(
    r: &mut Reader,
    w: &mut Writer,
    name: &str,
    kind: &str,
    durable: bool,
) -> Result<()> {
    w.method(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name.into(),
            kind: kind.into(),
            passive: false,
            durable,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    w.flush().await?;
    match r.method().await? {
        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_)) => Ok(()),
        other => Err(format!("expected exchange.declare-ok, got {other:?}")),
    }
}

/// Deletes an exchange.
pub async fn delete_exchange(r: &mut Reader, w: &mut Writer, name: &str) -> Result<()> {
    w.method(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name.into(),
            if_unused: false,
            nowait: false,
        })),
    );
    w.flush().await?;
    match r.method().await? {
        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(_)) => Ok(()),
        other => Err(format!("expected exchange.delete-ok, got {other:?}")),
    }
}

/// Binds queues to an exchange, pipelined in batches: `(queue, routing key)`.
pub async fn bind_all(
    r: &mut Reader,
    w: &mut Writer,
    exchange: &str,
    bindings: &[(String, String)],
) -> Result<()> {
    for batch in bindings.chunks(256) {
        for (q, key) in batch {
            w.method(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: q.as_str().into(),
                    exchange: exchange.into(),
                    routing_key: key.as_str().into(),
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            );
        }
        w.flush().await?;
        for _ in batch {
            match r.method().await? {
                AMQPClass::Queue(queue::AMQPMethod::BindOk(_)) => {}
                other => return Err(format!("expected queue.bind-ok, got {other:?}")),
            }
        }
    }
    Ok(())
}

/// Enables publisher confirms on channel 1.
pub async fn confirm_select(r: &mut Reader, w: &mut Writer) -> Result<()> {
    w.method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    );
    w.flush().await?;
    match r.method().await? {
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => Ok(()),
        other => Err(format!("expected confirm.select-ok, got {other:?}")),
    }
}

/// Sets prefetch and starts a consumer on channel 1.
pub async fn consume(
    r: &mut Reader,
    w: &mut Writer,
    queue_name: &str,
    prefetch: u16,
    no_ack: bool,
) -> Result<()> {
    consume_with(r, w, queue_name, prefetch, no_ack, FieldTable::default()).await
}

/// `consume` with basic.consume arguments (e.g. x-stream-offset).
pub async fn consume_with(
    r: &mut Reader,
    w: &mut Writer,
    queue_name: &str,
    prefetch: u16,
    no_ack: bool,
    arguments: FieldTable,
) -> Result<()> {
    w.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: prefetch,
            global: false,
        })),
    );
    w.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue_name.into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments,
        })),
    );
    w.flush().await?;
    let AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) = r.method().await? else {
        return Err("expected basic.qos-ok".into());
    };
    let AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) = r.method().await? else {
        return Err("expected basic.consume-ok".into());
    };
    Ok(())
}

/// What a consumer's reader sees.
pub enum Incoming {
    /// A delivery: its tag and the first body frame (or empty).
    Delivery { tag: u64, body: Bytes },
    /// Anything else (ignored by consumers).
    Other,
}

/// Reads one delivery (method, header, body frames) or another frame.
pub async fn next_delivery(r: &mut Reader) -> Result<Incoming> {
    let Frame::Method { payload, .. } = r.next().await? else {
        return Ok(Incoming::Other);
    };
    if payload.len() < 4 || payload[..4] != [0, 60, 0, 60] {
        // Not a basic.deliver: surface closes, skip the rest.
        if payload.len() >= 4 && (payload[..4] == [0, 10, 0, 50] || payload[..4] == [0, 20, 0, 40])
        {
            return Err(format!("closed by the broker: {:?}", decode_any(&payload)?));
        }
        return Ok(Incoming::Other);
    }
    // consumer-tag (shortstr) then delivery-tag (u64).
    let ctag_len = payload[4] as usize;
    let at = 5 + ctag_len;
    if payload.len() < at + 8 {
        return Err("short basic.deliver".into());
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&payload[at..at + 8]);
    let tag = u64::from_be_bytes(t);
    let Frame::Header {
        payload: header, ..
    } = r.next().await?
    else {
        return Err("expected a content header".into());
    };
    let mut s = [0u8; 8];
    s.copy_from_slice(&header[4..12]);
    let mut remaining = u64::from_be_bytes(s) as usize;
    let mut first = Bytes::new();
    while remaining > 0 {
        let Frame::Body { payload, .. } = r.next().await? else {
            return Err("expected a content body".into());
        };
        remaining = remaining.saturating_sub(payload.len());
        if first.is_empty() {
            first = payload;
        }
    }
    Ok(Incoming::Delivery { tag, body: first })
}

/// Closes the connection politely (connection.close, then close-ok or EOF).
pub async fn close(mut r: Reader, mut w: Writer) {
    w.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    if w.flush().await.is_err() {
        return;
    }
    let wait = async {
        while let Ok(f) = r.next().await {
            if let Frame::Method { payload, .. } = f
                && payload.len() >= 4
                && payload[..4] == [0, 10, 0, 51]
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), wait).await;
}
