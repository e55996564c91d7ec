//! The queue on its own: dispatch, prefetch, requeue and dead-lettering
//! with a recording channel and owner in place of sockets and a vhost.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use super::args::QueueArgs;
use super::consumer::{Consumer, ConsumerChannel, QueuedMessage};
use super::{Got, Queue, QueueConfig, QueueOwner, Reason};
use crate::message::Message;

/// A channel that takes every delivery it is offered, up to `room`, and
/// remembers who got what.
#[derive(Debug, Default)]
struct Recorder {
    delivered: Mutex<Vec<(String, String, bool)>>,
    got: Mutex<Vec<String>>,
    cancelled: Mutex<Vec<String>>,
    room: Mutex<Option<usize>>,
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

impl ConsumerChannel for Recorder {
    fn try_deliver(
        &self,
        consumer: &Arc<Consumer>,
        _queue: &Arc<Queue>,
        take: &mut dyn FnMut() -> Option<QueuedMessage>,
    ) -> bool {
        if let Some(room) = self.room.lock().as_mut() {
            if *room == 0 {
                return false;
            }
            *room -= 1;
        }
        let Some(m) = take() else { return false };
        self.delivered
            .lock()
            .push((consumer.tag_str(), text(&m.msg), m.redelivered));
        true
    }

    fn deliver_get(&self, _: &Arc<Queue>, m: &QueuedMessage, _: bool, _: u32) -> bool {
        self.got.lock().push(text(&m.msg));
        true
    }

    fn deliver_direct(&self, consumer_tag: &[u8], msg: &Message) -> bool {
        let tag = String::from_utf8_lossy(consumer_tag).into_owned();
        self.delivered.lock().push((tag, text(msg), false));
        true
    }

    fn notify_cancel(&self, consumer_tag: &[u8]) {
        self.cancelled
            .lock()
            .push(String::from_utf8_lossy(consumer_tag).into_owned());
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Stands in for the vhost: records what is dead-lettered.
#[derive(Default)]
struct Owner {
    dead: Mutex<Vec<(String, Reason)>>,
}

impl QueueOwner for Owner {
    fn dead_letter(&self, _: &Arc<Queue>, items: Vec<(Message, Reason)>, _: bool) -> Vec<bool> {
        let mut dead = self.dead.lock();
        dead.extend(items.iter().map(|(m, why)| (text(m), *why)));
        vec![true; items.len()]
    }

    fn remove_expired(&self, queue: &Arc<Queue>) -> bool {
        queue.mark_deleted();
        true
    }
}

fn queue(owner: &Arc<Owner>, args: QueueArgs) -> Arc<Queue> {
    let weak: Weak<dyn QueueOwner> = Arc::downgrade(owner) as Weak<dyn QueueOwner>;
    Queue::new(
        "q".into(),
        "/".into(),
        weak,
        QueueConfig {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Default::default(),
        },
        None,
        None,
        args,
    )
}

fn message(body: &'static str) -> Message {
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    Message::new(b"", b"q", &header, Bytes::from_static(body.as_bytes()))
}

fn consumer(tag: &str, ch: &Arc<Recorder>, no_ack: bool, prefetch: u16) -> Arc<Consumer> {
    Consumer::new(
        Bytes::from(tag.to_owned()),
        ch.clone(),
        no_ack,
        false,
        prefetch,
    )
}

#[test]
fn ready_messages_go_round_robin_to_consumers() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, QueueArgs::default());
    let ch = Arc::new(Recorder::default());
    q.add_consumer(consumer("a", &ch, true, 0)).unwrap();
    q.add_consumer(consumer("b", &ch, true, 0)).unwrap();
    for body in ["1", "2", "3", "4"] {
        q.publish(message(body), None, None);
    }
    let got: Vec<(String, String)> = ch
        .delivered
        .lock()
        .iter()
        .map(|(t, b, _)| (t.clone(), b.clone()))
        .collect();
    let want: Vec<(String, String)> = [("a", "1"), ("b", "2"), ("a", "3"), ("b", "4")]
        .iter()
        .map(|(t, b)| (t.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(q.message_count(), 0);
}

#[test]
fn a_channel_without_room_leaves_messages_ready_until_asked_again() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, QueueArgs::default());
    let ch = Arc::new(Recorder::default());
    *ch.room.lock() = Some(1);
    q.add_consumer(consumer("a", &ch, false, 0)).unwrap();
    for body in ["1", "2", "3"] {
        q.publish(message(body), None, None);
    }
    assert_eq!(ch.delivered.lock().len(), 1);
    assert_eq!(q.message_count(), 2);
    // basic.get takes the head regardless of the consumer.
    assert_eq!(q.get(&*ch, true), Got::Message);
    assert_eq!(*ch.got.lock(), ["2"]);
    assert_eq!(q.message_count(), 1);
}

#[test]
fn requeued_messages_come_back_first_and_flagged_redelivered() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, QueueArgs::default());
    q.publish(message("1"), None, None);
    q.publish(message("2"), None, None);
    let first = Arc::new(Recorder::default());
    assert_eq!(q.get(&*first, false), Got::Message);
    assert_eq!(q.message_count(), 1);
    // Put "1" back where it was (seq 0 is older than "2").
    q.requeue(vec![QueuedMessage {
        msg: message("1"),
        seq: 0,
        redelivered: false,
        stored: None,
        deadline: 0,
    }]);
    let ch = Arc::new(Recorder::default());
    q.add_consumer(consumer("c", &ch, true, 0)).unwrap();
    let got = ch.delivered.lock().clone();
    assert_eq!(
        got,
        [
            ("c".to_string(), "1".to_string(), true),
            ("c".to_string(), "2".to_string(), false)
        ]
    );
}

#[test]
fn messages_pushed_out_by_max_length_go_to_the_owner_to_dead_letter() {
    let owner = Arc::new(Owner::default());
    let args = QueueArgs {
        max_length: Some(2),
        ..QueueArgs::default()
    };
    let q = queue(&owner, args);
    for body in ["1", "2", "3"] {
        q.publish(message(body), None, None);
    }
    assert_eq!(q.message_count(), 2);
    assert_eq!(*owner.dead.lock(), [("1".to_string(), Reason::Maxlen)]);
}

#[test]
fn a_deleted_queue_hands_back_its_consumers_and_takes_no_more_messages() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, QueueArgs::default());
    let ch = Arc::new(Recorder::default());
    *ch.room.lock() = Some(0);
    q.add_consumer(consumer("a", &ch, false, 0)).unwrap();
    q.publish(message("1"), None, None);
    let deleted = q.mark_deleted();
    assert_eq!(deleted.message_count, 1);
    assert_eq!(deleted.consumers.len(), 1);
    deleted.consumers[0].cancel_by_broker();
    assert_eq!(*ch.cancelled.lock(), ["a"]);
    assert!(!deleted.consumers[0].is_active());
    q.publish(message("2"), None, None);
    assert_eq!(q.message_count(), 0);
}
