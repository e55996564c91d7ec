//! AMQP method handlers, one file per class: `channel` (channel.flow,
//! a second channel.open), `exchange`, `queue`, `basic` (qos, consume,
//! cancel, get, reject, nack, recover), `tx` and `confirm`. Each handler
//! checks its arguments the way RabbitMQ does and replies with the matching
//! -ok method.
//!
//! Owns: what each client method does once its frame is decoded and its
//! channel found. Not here: channel.open and channel.close (the
//! connection's frame loop owns the channel table), basic.publish and
//! basic.ack (decoded by hand for speed and handled by `session::channel`).

use amq_protocol::protocol::{AMQPClass, access, confirm as confirm_m};

use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::session::channel::{Channel, ChannelConsumer};
use crate::session::context::ConnCtx;

pub(crate) mod basic;
mod channel;
mod confirm;
mod exchange;
mod queue;
mod tx;

/// Dispatches a decoded method to its class's handler.
pub fn handle(ch: &mut Channel, ctx: &mut ConnCtx, class: AMQPClass) -> AmqpResult<()> {
    match class {
        AMQPClass::Exchange(m) => exchange::handle(ch, ctx, m),
        AMQPClass::Queue(m) => queue::handle(ch, ctx, m),
        AMQPClass::Basic(m) => basic::handle(ch, ctx, m),
        AMQPClass::Channel(m) => channel::handle(ch, ctx, m),
        AMQPClass::Tx(m) => tx::handle(ch, ctx, m),
        AMQPClass::Confirm(confirm_m::AMQPMethod::Select(s)) => confirm::select(ch, ctx, s),
        AMQPClass::Access(_) => {
            // access.request is obsolete; RabbitMQ answers it with a dummy ticket.
            ctx.send(
                ch.id,
                AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
            );
            Ok(())
        }
        _ => Err(AmqpError::connection(
            code::COMMAND_INVALID,
            "unimplemented method",
        )),
    }
}

/// Server-generated names: `prefix` + 22 characters of URL-safe base64, like RabbitMQ's.
pub fn generated_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = std::collections::hash_map::RandomState::new();
    let mut words = [0u64; 2];
    for (i, w) in words.iter_mut().enumerate() {
        let mut h = state.build_hasher();
        h.write_u64(n);
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        *w = h.finish();
    }
    let bits = ((words[0] as u128) << 64) | words[1] as u128;
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for i in 0..22 {
        s.push(ALPHABET[((bits >> (i * 6)) & 63) as usize] as char);
    }
    s
}

/// The queue a method names; "" means the last queue declared on the channel.
fn queue_name(ch: &Channel, name: &str) -> AmqpResult<String> {
    if !name.is_empty() {
        return Ok(name.to_owned());
    }
    ch.last_queue
        .clone()
        .ok_or_else(|| AmqpError::channel(code::NOT_FOUND, "no previously declared queue"))
}

/// The error for a method only the server sends (a client sent it).
fn not_from_client() -> AmqpError {
    AmqpError::connection(
        code::COMMAND_INVALID,
        "this method is sent by the server, not by clients",
    )
}

/// Removes a consumer from its queue, deleting an auto-delete queue that has
/// just lost its last consumer.
pub fn detach_consumer(ctx: &mut ConnCtx, c: &ChannelConsumer) {
    c.consumer.deactivate();
    if c.queue.remove_consumer(&c.consumer)
        && let Some(vhost) = ctx.broker.vhost(&c.queue.vhost)
    {
        vhost.remove_queue(&c.queue);
    }
}
