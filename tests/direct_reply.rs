//! Direct reply-to (`amq.rabbitmq.reply-to`), RabbitMQ's queue-less RPC
//! replies: the rewritten reply_to address, delivery to the requester's
//! consumer, and RabbitMQ's refusals.

mod common;
mod support;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use support::*;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

async fn reply_consumer(ch: &Channel) -> lapin::Consumer {
    within(
        "consume-ok",
        ch.basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("reply consumer")
}

async fn fresh(c: &Connection) -> Channel {
    within("channel.open-ok", c.create_channel()).await.unwrap()
}

#[tokio::test]
async fn a_reply_reaches_the_requester_without_a_queue() {
    let w = Warren::start();
    let (_cc, client) = w.channel().await;
    let (_sc, server) = w.channel().await;
    let requests = unique("rpc");
    declare(&server, &requests).await;
    let mut replies = reply_consumer(&client).await;
    within(
        "publish",
        client.basic_publish(
            "".into(),
            requests.as_str().into(),
            BasicPublishOptions::default(),
            b"2+2",
            BasicProperties::default()
                .with_reply_to(REPLY_TO.into())
                .with_correlation_id("c-1".into()),
        ),
    )
    .await
    .unwrap();
    let req = get_eventually(&server, &requests).await;
    let reply_to = req
        .delivery
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .as_str()
        .to_owned();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > REPLY_TO.len() + 1,
        "rewritten reply_to: {reply_to}"
    );
    server
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            b"4",
            BasicProperties::default().with_correlation_id("c-1".into()),
        )
        .await
        .unwrap();
    let d = next(&mut replies).await;
    assert_eq!(d.data, b"4");
    assert_eq!(d.exchange.as_str(), "");
    assert_eq!(d.routing_key.as_str(), reply_to);
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("c-1")
    );
}

#[tokio::test]
async fn the_pseudo_queue_answers_a_passive_declare() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = within(
        "declare-ok",
        ch.queue_declare(
            REPLY_TO.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(q.name().as_str(), REPLY_TO);
}

#[tokio::test]
async fn refusals_follow_rabbitmq() {
    let w = Warren::start();
    let c = w.connect().await;

    let ch = fresh(&c).await;
    let e = within(
        "consume reply",
        ch.basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("ack mode is refused");
    assert_eq!(reply_code(&e), Some(406));
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - reply consumer cannot acknowledge"
    );

    let ch = fresh(&c).await;
    reply_consumer(&ch).await;
    let e = within(
        "second consume",
        ch.basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("one reply consumer per channel");
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - reply consumer already set"
    );

    // Its own connection, so its events carry only this channel's close.
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let mut events = watch(&c);
    ch.basic_publish(
        "".into(),
        "anything".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await
    .unwrap();
    let e = channel_error(&ch, &mut events).await;
    assert_eq!(reply_code(&e), Some(406));
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - fast reply consumer does not exist"
    );
}

#[tokio::test]
async fn a_reply_after_the_consumer_is_gone_is_unroutable() {
    let w = Warren::start();
    let (_cc, client) = w.channel().await;
    let (_sc, server) = w.channel().await;
    let requests = unique("rpc-gone");
    declare(&server, &requests).await;
    let replies = reply_consumer(&client).await;
    client
        .basic_publish(
            "".into(),
            requests.as_str().into(),
            BasicPublishOptions::default(),
            b"q",
            BasicProperties::default().with_reply_to(REPLY_TO.into()),
        )
        .await
        .unwrap();
    let req = get_eventually(&server, &requests).await;
    let reply_to = req.delivery.properties.reply_to().clone().unwrap();
    within(
        "cancel-ok",
        client.basic_cancel(replies.tag(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    server
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = server
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"late",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let c = within("confirm", confirm).await.unwrap();
    let returned = c
        .take_message()
        .expect("the reply comes back as basic.return");
    assert_eq!(returned.reply_code, 312);
}
