//! Which consumer gets a message: single active consumer queues
//! (x-single-active-consumer) and consumer priorities (x-priority on
//! basic.consume), as RabbitMQ 3.10 does them.

mod common;
mod support;

use std::time::Duration;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Consumer};
use support::*;

async fn consumer_with(ch: &Channel, q: &str, tag: &str, args: FieldTable) -> Consumer {
    within(
        "consume-ok",
        ch.basic_consume(q.into(), tag.into(), BasicConsumeOptions::default(), args),
    )
    .await
    .expect("basic.consume")
}

fn priority(p: i32) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-priority".into(), AMQPValue::LongInt(p));
    t
}

#[tokio::test]
async fn a_single_active_consumer_queue_feeds_one_consumer_until_it_leaves() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("sac");
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    within(
        "declare-ok",
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args),
    )
    .await
    .unwrap();
    let mut first = consumer_with(&ch, &q, "first", FieldTable::default()).await;
    let mut second = consumer_with(&ch, &q, "second", FieldTable::default()).await;
    for i in 0..4 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    for i in 0..4 {
        let d = next(&mut first).await;
        assert_eq!(d.data, format!("{i}").as_bytes());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_quiet(&mut second, Duration::from_millis(200)).await;
    within(
        "cancel-ok",
        ch.basic_cancel("first".into(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    publish(&ch, "", &q, b"after").await;
    let d = next(&mut second).await;
    assert_eq!(d.data, b"after");
}

#[tokio::test]
async fn higher_priority_consumers_are_served_first_while_they_have_room() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("cprio");
    declare(&ch, &q).await;
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut low = consumer_with(&ch, &q, "low", priority(1)).await;
    let mut high = consumer_with(&ch, &q, "high", priority(10)).await;
    for i in 0..5 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    let h0 = next(&mut high).await;
    let h1 = next(&mut high).await;
    assert_eq!(
        (h0.data.as_slice(), h1.data.as_slice()),
        (&b"0"[..], &b"1"[..])
    );
    let l0 = next(&mut low).await;
    let l1 = next(&mut low).await;
    assert_eq!(
        (l0.data.as_slice(), l1.data.as_slice()),
        (&b"2"[..], &b"3"[..])
    );
    // Room again at the high-priority consumer: the last message goes there.
    h0.ack(BasicAckOptions::default()).await.unwrap();
    let h2 = next(&mut high).await;
    assert_eq!(h2.data, b"4");
}

#[tokio::test]
async fn invalid_arguments_are_refused_in_rabbitmq_words() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = within("channel.open-ok", c.create_channel()).await.unwrap();
    let q = unique("sac-bad");
    let mut args = FieldTable::default();
    args.insert(
        "x-single-active-consumer".into(),
        AMQPValue::LongString(LongString::from(b"yes".to_vec())),
    );
    let e = within(
        "declare",
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args),
    )
    .await
    .expect_err("a string is refused");
    assert_eq!(
        reply_text(&e),
        format!(
            "PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue '{q}' in vhost '/': {{unacceptable_type,longstr}}"
        )
    );

    let ch = within("channel.open-ok", c.create_channel()).await.unwrap();
    let q = unique("cprio-bad");
    declare(&ch, &q).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-priority".into(),
        AMQPValue::LongString(LongString::from(b"a".to_vec())),
    );
    let e = within(
        "consume",
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await
    .expect_err("a string priority is refused");
    assert_eq!(reply_code(&e), Some(406));
    assert_eq!(
        reply_text(&e),
        format!(
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': \"expected integer, got longstr\""
        )
    );
}
