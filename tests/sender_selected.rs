//! Sender-selected distribution, as RabbitMQ does it: the CC and BCC
//! headers add routing keys; BCC is removed before delivery (found by
//! bunny's own test suite, issue 10).

mod common;
mod support;

use common::*;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use support::*;

fn keys(ks: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        ks.iter()
            .map(|k| AMQPValue::LongString(LongString::from(k.as_bytes().to_vec())))
            .collect::<Vec<_>>(),
    ))
}

#[tokio::test]
async fn cc_and_bcc_headers_add_routing_keys_and_bcc_is_not_delivered() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    ch.exchange_declare(
        "ssd".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in ["one", "two", "three", "four"] {
        declare(&ch, q).await;
        bind(&ch, q, "ssd", q).await;
    }
    let mut headers = FieldTable::default();
    headers.insert("CC".into(), keys(&["two", "one"]));
    headers.insert("BCC".into(), keys(&["three"]));
    ch.basic_publish(
        "ssd".into(),
        "one".into(),
        BasicPublishOptions::default(),
        b"to many",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap();
    for q in ["one", "two", "three"] {
        let m = get_eventually(&ch, q).await;
        assert_eq!(m.delivery.data, b"to many", "{q}");
        let h = m.delivery.properties.headers().clone().unwrap_or_default();
        assert!(h.inner().contains_key("CC"), "{q}: CC is kept");
        assert!(!h.inner().contains_key("BCC"), "{q}: BCC is removed");
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        // One copy each, even for "one", named twice.
        assert!(get(&ch, q).await.is_none(), "{q} got two copies");
    }
    assert!(get(&ch, "four").await.is_none());
}

#[tokio::test]
async fn cc_through_the_default_exchange_reaches_the_named_queue() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    declare(&ch, "q1").await;
    declare(&ch, "q4").await;
    let mut headers = FieldTable::default();
    headers.insert("CC".into(), keys(&["q4"]));
    ch.basic_publish(
        "".into(),
        "q1".into(),
        BasicPublishOptions::default(),
        b"copy",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap();
    assert_eq!(get_eventually(&ch, "q1").await.delivery.data, b"copy");
    assert_eq!(get_eventually(&ch, "q4").await.delivery.data, b"copy");
}

#[tokio::test]
async fn a_cc_header_that_is_not_an_array_is_refused_with_406() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut watch = watch(&conn);
    declare(&ch, "q1").await;
    let mut headers = FieldTable::default();
    headers.insert(
        "CC".into(),
        AMQPValue::LongString(LongString::from(b"q1".to_vec())),
    );
    ch.basic_publish(
        "".into(),
        "q1".into(),
        BasicPublishOptions::default(),
        b"bad",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap();
    let err = channel_error(&ch, &mut watch).await;
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert!(
        reply_text(&err).contains("invalid message: {unacceptable_type_in_header,\"CC\",longstr}"),
        "{}",
        reply_text(&err)
    );
}
