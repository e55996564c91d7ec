//! Closing a connection, from either side, without losing what is in
//! flight: the client always reads its close-ok (or warren's close), and the
//! socket ends with a clean FIN, never a reset, even when the client still
//! had frames on the way (issue 10: Go's Close() returned `501 "EOF"` and
//! Node's close callback never fired when warren dropped the socket at once).

mod common;
mod raw;
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use common::*;
use lapin::BasicProperties;
use lapin::options::*;
use support::*;

fn connection_close() -> AMQPFrame {
    AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

/// `n` publishes of `size` bytes to the default exchange on channel 1.
fn publishes(n: usize, size: usize) -> Vec<u8> {
    let body = vec![b'x'; size];
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend(raw::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "nowhere".into(),
                mandatory: false,
                immediate: false,
            })),
        )));
        out.extend(raw::encode(&raw::content_header(1, size as u64)));
        out.extend(raw::encode(&AMQPFrame::Body(1, body.clone())));
    }
    out
}

/// How a socket ended, with every frame read before the end.
#[derive(Debug)]
struct Ending {
    frames: Vec<AMQPFrame>,
    /// `None`: a clean end of stream; `Some`: the read error (a reset).
    error: Option<std::io::ErrorKind>,
}

/// Reads frames until `done(frames)` holds; then, as a client does once it
/// has its close-ok, waits for its own writes (`writer`) and closes its
/// side; then reads on until warren ends the stream (10 s at most).
fn end_like_a_client(
    s: &mut TcpStream,
    done: impl Fn(&[AMQPFrame]) -> bool,
    writer: Option<std::thread::JoinHandle<std::io::Result<()>>>,
) -> Ending {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    let mut writer = writer;
    let mut closed_our_side = false;
    let mut buf = [0u8; 64 * 1024];
    let error = loop {
        if !closed_our_side && done(&frames) {
            if let Some(w) = writer.take() {
                w.join()
                    .unwrap()
                    .expect("every byte sent after the close was accepted (read and discarded)");
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            closed_our_side = true;
        }
        match s.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("warren neither closed nor reset the socket within 10 s: {frames:?}")
            }
            Err(e) => break Some(e.kind()),
        }
        let mut rest = &bytes[..];
        while let Ok((r, f)) = parse_frame(rest) {
            frames.push(f);
            rest = r;
        }
        bytes = rest.to_vec();
    };
    assert!(closed_our_side, "warren closed first: {frames:?} {error:?}");
    Ending { frames, error }
}

fn close_oks(frames: &[AMQPFrame]) -> usize {
    frames.iter().filter(|f| is_close_ok(f)).count()
}

fn close_ok() -> AMQPFrame {
    AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
}

fn is_close_ok(f: &AMQPFrame) -> bool {
    matches!(
        f,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
    )
}

/// Writes `bytes` from another thread (the socket buffers cannot hold them
/// all) and returns its result once done.
fn write_in_background(
    s: &TcpStream,
    bytes: Vec<u8>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    let mut w = s.try_clone().expect("clone socket");
    std::thread::spawn(move || w.write_all(&bytes))
}

#[test]
fn publishes_pipelined_behind_connection_close_do_not_reset_the_socket() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    let mut burst = raw::encode(&connection_close());
    // 4 MiB behind the close: far more than warren reads before it sees the
    // close, so the socket still holds unread bytes when warren is done.
    burst.extend(publishes(4096, 1024));
    let writer = write_in_background(&s, burst);
    let end = end_like_a_client(&mut s, |f| close_oks(f) == 1, Some(writer));
    assert_eq!(end.error, None, "the socket was reset: {end:?}");
    assert_eq!(close_oks(&end.frames), 1, "{end:?}");
}

#[test]
fn every_connection_close_gets_its_close_ok_as_from_rabbitmq() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    let mut burst = raw::encode(&connection_close());
    burst.extend(raw::encode(&connection_close()));
    burst.extend(publishes(4096, 1024));
    let writer = write_in_background(&s, burst);
    // A client closing from two threads at once waits for two close-oks.
    let end = end_like_a_client(&mut s, |f| close_oks(f) == 2, Some(writer));
    assert_eq!(end.error, None, "the socket was reset: {end:?}");
    assert_eq!(end.frames.len(), 2, "{end:?}");
}

#[test]
fn a_channel_error_followed_at_once_by_connection_close_gets_both_answers() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    let mut burst = raw::encode(&AMQPFrame::Method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "no-such-queue".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        })),
    ));
    burst.extend(raw::encode(&connection_close()));
    burst.extend(publishes(4096, 1024));
    let writer = write_in_background(&s, burst);
    let end = end_like_a_client(&mut s, |f| close_oks(f) == 1, Some(writer));
    assert_eq!(end.error, None, "the socket was reset: {end:?}");
    assert!(
        matches!(
            &end.frames[..],
            [
                AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(c))),
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))),
            ] if c.reply_code == 404
        ),
        "{end:?}"
    );
}

#[test]
fn after_warren_closes_a_connection_the_client_reads_the_close_and_the_socket_ends_cleanly() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    // A method on a channel that was never opened: 504, a connection error.
    // Publishes already on their way behind it are discarded while warren
    // waits for close-ok.
    let mut burst = raw::encode(&AMQPFrame::Method(
        7,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    ));
    burst.extend(publishes(4096, 1024));
    let writer = write_in_background(&s, burst);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let c = loop {
        match raw::read_frame(&mut s) {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                break c;
            }
            _ => continue,
        }
    };
    assert_eq!(c.reply_code, 504, "{c:?}");
    // Everything sent before the close arrived is read and discarded.
    writer.join().unwrap().expect("all bytes accepted");
    raw::send_frame(&mut s, &close_ok());
    let end = end_like_a_client(&mut s, |_| true, None);
    assert_eq!(end.error, None, "the socket was reset: {end:?}");
    assert!(end.frames.is_empty(), "{end:?}");
}

#[test]
fn a_forced_close_waits_for_close_ok_and_ends_cleanly() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    // Find the connection and close it through the API.
    let name = loop {
        let (_, list) = w.api("GET", "/api/connections", None);
        if let Some(n) = list
            .as_array()
            .and_then(|l| l.first())
            .and_then(|c| c["name"].as_str())
        {
            break n.to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let path = format!(
        "/api/connections/{}",
        percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, _) = w.api("DELETE", &path, None);
    assert_eq!(status, 204);
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 320, "{c:?}");
    let end = end_like_a_client(&mut s, |_| true, None);
    assert_eq!(end.error, None, "the socket was reset: {end:?}");
}

#[tokio::test]
async fn lapin_close_returns_ok_while_another_task_is_publishing() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "racing").await;
    let publisher = tokio::spawn(async move {
        // Publishes until the connection goes; errors are expected then.
        for _ in 0..100_000 {
            if ch
                .basic_publish(
                    "".into(),
                    "racing".into(),
                    BasicPublishOptions::default(),
                    b"in flight",
                    BasicProperties::default(),
                )
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    within("connection.close-ok", conn.close(200, "bye".into()))
        .await
        .expect("close returns Ok: close-ok was read");
    let _ = within("the publisher to stop", publisher).await;
}

#[tokio::test]
async fn lapin_close_right_after_a_channel_error_returns_ok() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let r = ch
        .queue_declare(
            "no-such-queue".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    assert!(r.is_err());
    within("connection.close-ok", conn.close(200, "bye".into()))
        .await
        .expect("close returns Ok");
}
