//! A vhost on its own, with a recording channel in place of a connection.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::VHost;
use crate::message::Message;
use crate::queue::consumer::{Consumer, ConsumerChannel, QueuedMessage};
use crate::queue::{Queue, QueueConfig};

/// Records cancelled consumer tags and direct replies.
#[derive(Debug, Default)]
struct Cancelled(Mutex<Vec<String>>, Mutex<Vec<String>>);

impl ConsumerChannel for Cancelled {
    fn try_deliver(
        &self,
        _: &Arc<Consumer>,
        _: &Arc<Queue>,
        _: &mut dyn FnMut() -> Option<QueuedMessage>,
    ) -> bool {
        false
    }

    fn deliver_get(&self, _: &Arc<Queue>, _: &QueuedMessage, _: bool, _: u32) -> bool {
        false
    }

    fn deliver_direct(&self, consumer_tag: &[u8], msg: &Message) -> bool {
        let tag = String::from_utf8_lossy(consumer_tag);
        let body = String::from_utf8_lossy(msg.body());
        self.1.lock().push(format!("{tag}:{body}"));
        true
    }

    fn notify_cancel(&self, consumer_tag: &[u8]) {
        self.0
            .lock()
            .push(String::from_utf8_lossy(consumer_tag).into_owned());
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn config(exclusive_owner: Option<u64>) -> QueueConfig {
    QueueConfig {
        durable: false,
        exclusive_owner,
        auto_delete: false,
        arguments: Default::default(),
    }
}

/// Every way of removing a queue goes through one function, so each
/// cancels the queue's consumers: queue.delete, and removal by the vhost
/// (exclusive owner gone, auto-delete, x-expires, vhost deletion).
#[test]
fn removing_a_queue_by_any_path_cancels_its_consumers() {
    let vh = VHost::new("v");
    let ch = Arc::new(Cancelled::default());
    let (deleted, _) = vh
        .declare_queue("deleted", false, false, config(None), 1)
        .unwrap();
    deleted
        .add_consumer(Consumer::new(
            Bytes::from_static(b"c1"),
            ch.clone(),
            true,
            false,
            0,
        ))
        .unwrap();
    let (removed, _) = vh
        .declare_queue("removed", false, false, config(Some(1)), 1)
        .unwrap();
    removed
        .add_consumer(Consumer::new(
            Bytes::from_static(b"c2"),
            ch.clone(),
            true,
            false,
            0,
        ))
        .unwrap();

    let d = vh
        .delete_queue("deleted", false, false, 1)
        .unwrap()
        .unwrap();
    assert_eq!(d.consumers.len(), 1);
    assert!(vh.remove_queue(&removed).is_some());
    assert!(vh.remove_queue(&removed).is_none(), "removed once only");

    assert_eq!(*ch.0.lock(), ["c1", "c2"]);
    assert!(deleted.is_deleted() && removed.is_deleted());
    assert!(vh.queue("deleted").is_none() && vh.queue("removed").is_none());
}

#[test]
fn a_direct_reply_goes_to_the_registered_channel_until_it_is_gone() {
    let vh = VHost::new("v");
    let ch = Arc::new(Cancelled::default());
    let key = vh.replies.register(&ch, Bytes::from_static(b"rpc"));
    let routing_key = format!("{}{key}", super::direct_reply::PREFIX);
    let reply = Message::new(
        b"",
        routing_key.as_bytes(),
        &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0],
        Bytes::from_static(b"ok"),
    );
    assert!(vh.replies.deliver(&routing_key, &reply).is_some());
    assert_eq!(*ch.1.lock(), ["rpc:ok"]);
    drop(ch);
    assert!(vh.replies.deliver(&routing_key, &reply).is_none());
    let unknown = format!("{}nobody", super::direct_reply::PREFIX);
    assert!(vh.replies.deliver(&unknown, &reply).is_none());
}
