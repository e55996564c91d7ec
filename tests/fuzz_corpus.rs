//! Records the bytes a real client (lapin) sends to warren for declare,
//! bind, publish (with properties and headers), consume, ack and close, and
//! writes them as the fuzzers' seed corpus under fuzz/corpus/.
//!
//! Ignored by default; regenerate with
//! `cargo nextest run --test fuzz_corpus --run-ignored only`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};

/// A one-connection TCP proxy that records what the client sends.
fn record_proxy(upstream: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let (mut client, _) = l.accept().unwrap();
        let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
        });
        let mut buf = [0u8; 65536];
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    log2.lock().unwrap().extend_from_slice(&buf[..n]);
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server.shutdown(std::net::Shutdown::Write);
    });
    (port, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the fuzz seed corpus"]
async fn capture_fuzz_seed_corpus() {
    let w = Warren::start();
    let (port, log) = record_proxy(w.port);
    let conn = lapin::Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    let mut nested = FieldTable::default();
    nested.insert("a".into(), AMQPValue::Boolean(true));
    args.insert("x-nested".into(), AMQPValue::FieldTable(nested));
    ch.queue_declare("corpus-q".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    ch.exchange_declare(
        "corpus-x".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "corpus-q".into(),
        "corpus-x".into(),
        "a.*.c".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "h".into(),
        AMQPValue::LongString(LongString::from(b"v".to_vec())),
    );
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_message_id("id-1".into())
        .with_headers(headers);
    ch.basic_publish(
        "corpus-x".into(),
        "a.b.c".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        &vec![b'x'; 5000],
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "corpus-q".into(),
            "corpus-tag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    d.ack(BasicAckOptions::default()).await.unwrap();
    ch.basic_cancel("corpus-tag".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    ch.queue_delete("corpus-q".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close(200, "bye".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stream = log.lock().unwrap().clone();
    assert!(
        stream.starts_with(b"AMQP"),
        "the protocol header comes first"
    );
    let frames_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/frames");
    let payloads_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/payloads");
    std::fs::create_dir_all(frames_dir).unwrap();
    std::fs::create_dir_all(payloads_dir).unwrap();
    // The frames target: a frame_max selector octet (2 = 131072), then the
    // whole stream after the protocol header, and each frame alone.
    let mut whole = vec![2u8];
    whole.extend_from_slice(&stream[8..]);
    std::fs::write(format!("{frames_dir}/lapin-session"), &whole).unwrap();
    let mut at = 8;
    let mut n = 0;
    while at + 7 <= stream.len() {
        let size = u32::from_be_bytes(stream[at + 3..at + 7].try_into().unwrap()) as usize;
        let end = at + 7 + size + 1;
        if end > stream.len() {
            break;
        }
        let kind = stream[at];
        let mut one = vec![2u8];
        one.extend_from_slice(&stream[at..end]);
        std::fs::write(format!("{frames_dir}/lapin-frame-{n:03}"), &one).unwrap();
        if kind == 1 || kind == 2 {
            std::fs::write(
                format!("{payloads_dir}/lapin-payload-{n:03}"),
                &stream[at + 7..end - 1],
            )
            .unwrap();
        }
        at = end;
        n += 1;
    }
    assert!(n > 10, "recorded {n} frames");
    println!("recorded {n} frames, {} bytes", stream.len());
}
