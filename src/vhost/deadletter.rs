//! Dead-lettering: messages rejected without requeue, expired by TTL or
//! pushed out by a length limit are republished to the queue's
//! dead-letter exchange, with RabbitMQ's `x-death` history in their headers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};

use crate::message::Message;
use crate::queue::Queue;
use crate::vhost::VHost;

pub use crate::queue::Reason;

use crate::protocol::fields::long_string;

fn text(v: Option<&AMQPValue>) -> Option<String> {
    crate::protocol::fields::string(v?)
}

/// The properties without `expiration` (a dead-lettered copy does not
/// expire again for the same reason; x-death keeps the original).
fn without_expiration(p: &BasicProperties) -> BasicProperties {
    let mut n = BasicProperties::default();
    macro_rules! copy {
        ($get:ident, $set:ident) => {
            if let Some(v) = p.$get() {
                n = n.$set(v.clone());
            }
        };
    }
    copy!(content_type, with_content_type);
    copy!(content_encoding, with_content_encoding);
    copy!(headers, with_headers);
    copy!(delivery_mode, with_delivery_mode);
    copy!(priority, with_priority);
    copy!(correlation_id, with_correlation_id);
    copy!(reply_to, with_reply_to);
    copy!(message_id, with_message_id);
    copy!(timestamp, with_timestamp);
    copy!(kind, with_type);
    copy!(user_id, with_user_id);
    copy!(app_id, with_app_id);
    copy!(cluster_id, with_cluster_id);
    n
}

/// A dead-lettered copy of a message.
pub struct DeadCopy {
    /// The message to publish to the dead-letter exchange.
    pub msg: Message,
    /// (queue, reason) of its x-death entries, newest first.
    pub deaths: Vec<(String, String)>,
}

/// Builds the copy of `msg` that `queue` dead-letters to exchange `dlx`
/// with routing key `dlrk` (or the message's own). `None` if the message's
/// properties cannot be decoded.
pub fn copy(
    msg: &Message,
    queue: &str,
    reason: Reason,
    dlx: &str,
    dlrk: Option<&str>,
) -> Option<DeadCopy> {
    let props = msg.properties()?;
    let mut headers = props.headers().clone().unwrap_or_default();
    let exchange = String::from_utf8_lossy(msg.exchange()).into_owned();
    let rk = String::from_utf8_lossy(msg.routing_key()).into_owned();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let entry = match deaths.iter().position(|v| is_death_in(v, queue, reason)) {
        Some(i) => {
            let AMQPValue::FieldTable(t) = deaths.remove(i) else {
                unreachable!("matched a table")
            };
            counted_again(t)
        }
        None => first_death(queue, reason, &exchange, &rk, &props),
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    let history = death_history(&deaths);
    headers.insert("x-death".into(), AMQPValue::FieldArray(deaths.into()));
    add_first_death_headers(&mut headers, &exchange, queue, reason);
    let props = without_expiration(&props).with_headers(headers);
    let header = crate::message::content_header(&props, msg.body_len() as u64)?;
    let routing_key = dlrk.unwrap_or(&rk);
    Some(DeadCopy {
        msg: Message::new(
            dlx.as_bytes(),
            routing_key.as_bytes(),
            &header,
            msg.body_bytes(),
        ),
        deaths: history,
    })
}

/// Whether an x-death entry records a death in `queue` for `reason`.
fn is_death_in(v: &AMQPValue, queue: &str, reason: Reason) -> bool {
    match v {
        AMQPValue::FieldTable(t) => {
            text(t.inner().get("queue")).as_deref() == Some(queue)
                && text(t.inner().get("reason")).as_deref() == Some(reason.as_str())
        }
        _ => false,
    }
}

/// An existing x-death entry with its count raised by one.
fn counted_again(mut t: FieldTable) -> FieldTable {
    let count = match t.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => *n as i64,
        _ => 0,
    };
    // The count came from the client: i64::MAX stays i64::MAX.
    t.insert(
        "count".into(),
        AMQPValue::LongLongInt(count.saturating_add(1)),
    );
    t
}

/// The x-death entry for a message's first death in `queue` for `reason`.
fn first_death(
    queue: &str,
    reason: Reason,
    exchange: &str,
    rk: &str,
    props: &BasicProperties,
) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("count".into(), AMQPValue::LongLongInt(1));
    t.insert("reason".into(), long_string(reason.as_str()));
    t.insert("queue".into(), long_string(queue));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    t.insert("time".into(), AMQPValue::Timestamp(now));
    t.insert("exchange".into(), long_string(exchange));
    t.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![long_string(rk)])),
    );
    if let Some(e) = props.expiration() {
        t.insert("original-expiration".into(), long_string(e.as_str()));
    }
    t
}

/// (queue, reason) of each x-death entry, in order.
fn death_history(deaths: &[AMQPValue]) -> Vec<(String, String)> {
    deaths
        .iter()
        .filter_map(|v| match v {
            AMQPValue::FieldTable(t) => Some((
                text(t.inner().get("queue")).unwrap_or_default(),
                text(t.inner().get("reason")).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

/// Sets the x-first-death-* headers unless an earlier death set them.
fn add_first_death_headers(headers: &mut FieldTable, exchange: &str, queue: &str, reason: Reason) {
    for (k, v) in [
        ("x-first-death-exchange", exchange),
        ("x-first-death-queue", queue),
        ("x-first-death-reason", reason.as_str()),
    ] {
        if !headers.contains_key(k) {
            headers.insert(k.into(), long_string(v));
        }
    }
}

/// RabbitMQ's cycle rule: a copy is not delivered back to a queue it
/// already died in unless a rejection happened somewhere along the way
/// (a fully automatic cycle, of TTLs or length limits, would never end).
fn is_cycle(queue: &str, deaths: &[(String, String)]) -> bool {
    match deaths.iter().position(|(q, _)| q == queue) {
        None => false,
        Some(i) => deaths[..=i].iter().all(|(_, r)| r != "rejected"),
    }
}

/// Dead-letters messages that left `from`: republishes each to the queue's
/// dead-letter exchange, if it has one that exists. Returns, for each,
/// whether a queue took it; one that cannot be copied (its properties do
/// not decode) counts as taken, since no attempt would ever place it.
/// `retry`: these were counted as dead-lettered at their first attempt.
pub fn dead_letter(
    vhost: &VHost,
    from: &Arc<Queue>,
    items: Vec<(Message, Reason)>,
    retry: bool,
) -> Vec<bool> {
    let mut taken = vec![false; items.len()];
    let Some((dlx, dlrk)) = from.dead_letter_target() else {
        return taken;
    };
    let Some(x) = vhost.exchange(&dlx) else {
        return taken;
    };
    let store = vhost.store();
    let mut queues = Vec::new();
    for (i, (msg, reason)) in items.into_iter().enumerate() {
        let Some(c) = copy(&msg, &from.name, reason, &dlx, dlrk.as_deref()) else {
            taken[i] = true;
            continue;
        };
        if !retry {
            from.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        queues.clear();
        let rk = String::from_utf8_lossy(c.msg.routing_key()).into_owned();
        let mut headers = || c.msg.properties().and_then(|p| p.headers().clone());
        vhost.route(&x, &rk, &mut headers, &mut queues);
        if reason != Reason::Rejected {
            queues.retain(|q| !is_cycle(&q.name, &c.deaths));
        }
        if queues.is_empty() {
            continue;
        }
        let e = crate::queue::enqueue_routed(&queues, &c.msg, store.as_ref(), None);
        taken[i] = e.accepted > 0;
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(q: &str, r: &str) -> (String, String) {
        (q.to_owned(), r.to_owned())
    }

    #[test]
    fn cycles_without_a_rejection_are_cut() {
        assert!(is_cycle("a", &[d("a", "expired")]));
        assert!(is_cycle("a", &[d("b", "expired"), d("a", "maxlen")]));
        assert!(!is_cycle("a", &[d("b", "rejected"), d("a", "expired")]));
        assert!(!is_cycle("c", &[d("b", "expired"), d("a", "expired")]));
    }

    #[test]
    fn a_copy_carries_its_history() {
        let mut h = vec![0, 60, 0, 0];
        h.extend_from_slice(&3u64.to_be_bytes());
        let p = BasicProperties::default()
            .with_expiration("100".into())
            .with_delivery_mode(2);
        let ctx = amq_protocol::frame::WriteContext::from(Vec::new());
        let ctx = amq_protocol::protocol::basic::gen_properties(&p)(ctx).unwrap();
        h.extend_from_slice(&ctx.write);
        let m = Message::new(b"ex", b"rk", &h, bytes::Bytes::from_static(b"abc"));
        let c = copy(&m, "q1", Reason::Expired, "dlx", None).unwrap();
        assert_eq!(c.msg.exchange(), b"dlx");
        assert_eq!(c.msg.routing_key(), b"rk");
        assert_eq!(c.msg.body(), b"abc");
        let p = c.msg.properties().unwrap();
        assert_eq!(p.expiration(), &None);
        assert_eq!(p.delivery_mode(), &Some(2));
        let again = copy(&c.msg, "q1", Reason::Expired, "dlx", Some("k")).unwrap();
        assert_eq!(again.msg.routing_key(), b"k");
        assert_eq!(again.deaths, vec![d("q1", "expired")]);
        let h = again.msg.properties().unwrap().headers().clone().unwrap();
        let Some(AMQPValue::FieldArray(a)) = h.inner().get("x-death") else {
            panic!("no x-death")
        };
        let AMQPValue::FieldTable(t) = &a.as_slice()[0] else {
            panic!()
        };
        assert_eq!(t.inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(
            text(t.inner().get("original-expiration")).as_deref(),
            Some("100")
        );
    }
}
