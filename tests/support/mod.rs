//! Small lapin conveniences shared by the integration tests (on top of
//! `tests/common`). Every wait is bounded so a broker bug fails a test
//! instead of hanging it.
#![allow(dead_code)]

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};

/// Upper bound for anything the broker should answer promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f` for at most `WAIT`, panicking with `what` otherwise.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Declares a plain (non-durable) queue.
pub async fn declare(ch: &Channel, name: &str) -> lapin::Queue {
    within(
        "queue.declare-ok",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare")
}

/// Declares a server-named, exclusive queue.
pub async fn declare_anon(ch: &Channel) -> String {
    within(
        "queue.declare-ok",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare")
    .name()
    .as_str()
    .to_owned()
}

/// Binds a queue.
pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(
        "queue.bind-ok",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
}

/// Publishes without confirms.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic.publish");
}

/// basic.get (ack mode); `None` on get-empty.
pub async fn get(ch: &Channel, queue: &str) -> Option<BasicGetMessage> {
    within(
        "basic.get reply",
        ch.basic_get(queue.into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get")
}

/// basic.get until a message comes: a publish on another connection may
/// still be on its way. Panics after 10 s.
pub async fn get_eventually(ch: &Channel, queue: &str) -> BasicGetMessage {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(m) = get(ch, queue).await {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message in {queue}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Drains a queue with basic.get no_ack=true; returns the bodies in order.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let m = within(
            "basic.get reply",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        match m {
            Some(m) => out.push(m.delivery.data),
            None => return out,
        }
    }
}

/// Drains a queue and returns the bodies as strings.
pub async fn drain_strings(ch: &Channel, queue: &str) -> Vec<String> {
    drain(ch, queue)
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).expect("utf-8 body"))
        .collect()
}

/// Starts a consumer with a generated tag.
pub async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
    within(
        "basic.consume-ok",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume")
}

/// The next delivery (panics after `WAIT`, or if the consumer ended).
pub async fn next(c: &mut Consumer) -> Delivery {
    within("a delivery", c.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Asserts that nothing is delivered to `c` for `d`.
pub async fn assert_quiet(c: &mut Consumer, d: Duration) {
    if let Ok(Some(r)) = tokio::time::timeout(d, c.next()).await {
        panic!("unexpected delivery: {:?}", r.map(|d| d.data));
    }
}

/// Deliveries that arrive within `d` (stops early once `max` arrived).
pub async fn collect_for(c: &mut Consumer, d: Duration, max: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while out.len() < max {
        match tokio::time::timeout_at(deadline, c.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            Ok(Some(Err(e))) => panic!("delivery error: {e:?}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// A subscription to a connection's events, taken *before* provoking an
/// asynchronous error so that the error cannot be missed.
pub struct Watch(std::pin::Pin<Box<dyn futures_lite::Stream<Item = lapin::Event> + Send>>);

/// Starts watching `c`'s events.
pub fn watch(c: &lapin::Connection) -> Watch {
    Watch(Box::pin(c.events_listener()))
}

fn is_protocol_error(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(_))
}

/// Surfaces an error the broker reported asynchronously on `ch` (e.g. a
/// channel.close caused by a publish or an ack): runs a synchronous method on
/// the channel; if the close already arrived (so that method fails locally),
/// takes the error from the connection's events instead.
pub async fn channel_error(ch: &Channel, w: &mut Watch) -> lapin::Error {
    match tokio::time::timeout(WAIT, ch.basic_qos(0, BasicQosOptions::default())).await {
        Ok(Ok(())) => panic!("the channel is still open; expected the broker to close it"),
        Ok(Err(e)) if is_protocol_error(&e) => return e,
        Ok(Err(_)) => {}
        Err(_) => panic!("timed out waiting for the broker to close the channel"),
    }
    loop {
        match tokio::time::timeout(WAIT, w.0.next()).await {
            Ok(Some(lapin::Event::Error(e))) if is_protocol_error(&e) => return e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("connection events ended without a protocol error"),
            Err(_) => panic!("timed out waiting for the channel's close error"),
        }
    }
}

/// Waits (up to `WAIT`) for the broker to report an error on the
/// connection by itself, without provoking it.
pub async fn broker_error(w: &mut Watch) -> lapin::Error {
    loop {
        match tokio::time::timeout(WAIT, w.0.next()).await {
            Ok(Some(lapin::Event::Error(e))) if is_protocol_error(&e) => return e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("connection events ended without a protocol error"),
            Err(_) => panic!("timed out waiting for an error from the broker"),
        }
    }
}

/// Whether a queue exists (checked with a passive declare on a throwaway channel).
pub async fn queue_exists(conn: &lapin::Connection, name: &str) -> bool {
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("open channel");
    let r = within(
        "queue.declare reply",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match r {
        Ok(_) => {
            let _ = ch.close(200, "".into()).await;
            true
        }
        Err(e) if crate::common::reply_code(&e) == Some(404) => false,
        Err(e) => panic!("passive declare of {name}: {e:?}"),
    }
}

/// Whether an exchange exists.
pub async fn exchange_exists(conn: &lapin::Connection, name: &str) -> bool {
    let ch = within("channel.open-ok", conn.create_channel())
        .await
        .expect("open channel");
    let r = within(
        "exchange.declare reply",
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match r {
        Ok(_) => {
            let _ = ch.close(200, "".into()).await;
            true
        }
        Err(e) if crate::common::reply_code(&e) == Some(404) => false,
        Err(e) => panic!("passive declare of exchange {name}: {e:?}"),
    }
}

impl Watch {
    /// The next protocol error the connection reports (e.g. the broker's
    /// connection.close).
    pub async fn next_error(&mut self) -> lapin::Error {
        loop {
            match self.0.next().await {
                Some(lapin::Event::Error(e)) if is_protocol_error(&e) => return e,
                Some(_) => continue,
                None => panic!("connection events ended without a protocol error"),
            }
        }
    }
}
