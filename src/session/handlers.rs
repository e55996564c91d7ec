//! Method handlers for the exchange, queue, basic, channel, tx and confirm
//! classes, in the order the spec lists them. Each checks its arguments the
//! way RabbitMQ does and replies with the matching -ok method.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic, channel as chan_m, confirm, exchange, queue, tx};
use amq_protocol::types::AMQPValue;
use bytes::Bytes;

use crate::auth::{Access, Resource};
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::queue::QueueConfig;
use crate::session::channel::{Channel, ChannelConsumer, Outcome, requeue};
use crate::session::context::ConnCtx;
use crate::session::delivery::Consumer;
use crate::vhost::{DestName, ExchangeDeclare};

/// Dispatches a decoded method to its handler.
pub fn handle(ch: &mut Channel, ctx: &mut ConnCtx, class: AMQPClass) -> AmqpResult<()> {
    match class {
        AMQPClass::Exchange(m) => exchange_method(ch, ctx, m),
        AMQPClass::Queue(m) => queue_method(ch, ctx, m),
        AMQPClass::Basic(m) => basic_method(ch, ctx, m),
        AMQPClass::Channel(m) => channel_method(ch, ctx, m),
        AMQPClass::Tx(m) => tx_method(ch, ctx, m),
        AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
            if ch.tx.is_some() {
                return Err(AmqpError::channel(
                    code::PRECONDITION_FAILED,
                    "cannot switch from tx to confirm mode",
                ));
            }
            ch.confirm = true;
            if !s.nowait {
                ctx.send(
                    ch.id,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                );
            }
            Ok(())
        }
        AMQPClass::Access(_) => {
            // access.request is obsolete; RabbitMQ answers it with a dummy ticket.
            ctx.send(
                ch.id,
                AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                    amq_protocol::protocol::access::RequestOk {},
                )),
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

fn exchange_method(ch: &mut Channel, ctx: &mut ConnCtx, m: exchange::AMQPMethod) -> AmqpResult<()> {
    let reply = |ctx: &ConnCtx, nowait: bool, m: exchange::AMQPMethod| {
        if !nowait {
            ctx.send(ch.id, AMQPClass::Exchange(m));
        }
    };
    match m {
        exchange::AMQPMethod::Declare(d) => {
            if !d.passive && !d.exchange.as_str().is_empty() {
                let x = Resource::Exchange(d.exchange.as_str());
                ctx.check(Access::Configure, x)?;
                ctx.check_exchange_argument(x, &d.arguments)?;
            }
            ctx.vhost.declare_exchange(&ExchangeDeclare {
                name: d.exchange.as_str().to_owned(),
                kind: d.kind.as_str().to_owned(),
                passive: d.passive,
                durable: d.durable,
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: d.arguments,
            })?;
            reply(
                ctx,
                d.nowait,
                exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
            );
        }
        exchange::AMQPMethod::Delete(d) => {
            if !d.exchange.as_str().is_empty() {
                ctx.check(Access::Configure, Resource::Exchange(d.exchange.as_str()))?;
            }
            ctx.vhost
                .delete_exchange(d.exchange.as_str(), d.if_unused)?;
            reply(
                ctx,
                d.nowait,
                exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}),
            );
        }
        exchange::AMQPMethod::Bind(b) => {
            check_bind_exchanges(ctx, b.source.as_str(), b.destination.as_str())?;
            ctx.vhost.bind(
                b.source.as_str(),
                DestName::Exchange(b.destination.as_str()),
                b.routing_key.as_str(),
                &b.arguments,
                ctx.id(),
            )?;
            reply(
                ctx,
                b.nowait,
                exchange::AMQPMethod::BindOk(exchange::BindOk {}),
            );
        }
        exchange::AMQPMethod::Unbind(b) => {
            check_bind_exchanges(ctx, b.source.as_str(), b.destination.as_str())?;
            ctx.vhost.unbind(
                b.source.as_str(),
                DestName::Exchange(b.destination.as_str()),
                b.routing_key.as_str(),
                &b.arguments,
                ctx.id(),
            )?;
            reply(
                ctx,
                b.nowait,
                exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}),
            );
        }
        _ => return Err(not_from_client()),
    }
    Ok(())
}

/// exchange.bind/unbind: write on the destination, read on the source.
fn check_bind_exchanges(ctx: &mut ConnCtx, source: &str, destination: &str) -> AmqpResult<()> {
    ctx.check(Access::Write, Resource::Exchange(destination))?;
    ctx.check(Access::Read, Resource::Exchange(source))
}

/// queue.bind/unbind: write on the queue, read on the exchange.
fn check_bind_queue(ctx: &mut ConnCtx, exchange: &str, queue: &str) -> AmqpResult<()> {
    ctx.check(Access::Write, Resource::Queue(queue))?;
    ctx.check(Access::Read, Resource::Exchange(exchange))
}

fn not_from_client() -> AmqpError {
    AmqpError::connection(
        code::COMMAND_INVALID,
        "this method is sent by the server, not by clients",
    )
}

fn queue_method(ch: &mut Channel, ctx: &mut ConnCtx, m: queue::AMQPMethod) -> AmqpResult<()> {
    match m {
        queue::AMQPMethod::Declare(d)
            if d.passive && d.queue.as_str() == crate::vhost::direct_reply::QUEUE =>
        {
            // The direct reply-to pseudo-queue exists for passive declares.
            if !d.nowait {
                ctx.send(
                    ch.id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: d.queue,
                        message_count: 0,
                        consumer_count: 0,
                    })),
                );
            }
        }
        queue::AMQPMethod::Declare(d) => {
            let name = match d.queue.as_str() {
                "" if d.passive => ch.last_queue.clone().unwrap_or_default(),
                "" => generated_name("amq.gen-"),
                n => n.to_owned(),
            };
            if !d.passive {
                ctx.check(Access::Configure, Resource::Queue(&name))?;
                ctx.check_exchange_argument(Resource::Queue(&name), &d.arguments)?;
            }
            let config = QueueConfig {
                durable: d.durable,
                exclusive_owner: d.exclusive.then_some(ctx.id()),
                auto_delete: d.auto_delete,
                arguments: d.arguments,
            };
            let server_named = d.queue.as_str().is_empty() && !d.passive;
            if !d.passive {
                ctx.broker.check_queue_limit(&ctx.vhost, &name)?;
            }
            let (q, created) =
                ctx.vhost
                    .declare_queue(&name, server_named, d.passive, config, ctx.id())?;
            if created && q.config.exclusive_owner.is_some() {
                ctx.exclusive_queues.push(q.clone());
            }
            ch.last_queue = Some(name.clone());
            if !d.nowait {
                ctx.send(
                    ch.id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: name.into(),
                        message_count: q.message_count(),
                        consumer_count: q.consumer_count(),
                    })),
                );
            }
        }
        queue::AMQPMethod::Bind(b) => {
            let name = queue_name(ch, b.queue.as_str())?;
            check_bind_queue(ctx, b.exchange.as_str(), &name)?;
            let rk = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                name.clone()
            } else {
                b.routing_key.as_str().to_owned()
            };
            ctx.vhost.bind(
                b.exchange.as_str(),
                DestName::Queue(&name),
                &rk,
                &b.arguments,
                ctx.id(),
            )?;
            if !b.nowait {
                ctx.send(
                    ch.id,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                );
            }
        }
        queue::AMQPMethod::Unbind(b) => {
            let name = queue_name(ch, b.queue.as_str())?;
            check_bind_queue(ctx, b.exchange.as_str(), &name)?;
            ctx.vhost.unbind(
                b.exchange.as_str(),
                DestName::Queue(&name),
                b.routing_key.as_str(),
                &b.arguments,
                ctx.id(),
            )?;
            ctx.send(
                ch.id,
                AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
            );
        }
        queue::AMQPMethod::Purge(p) => {
            let name = queue_name(ch, p.queue.as_str())?;
            ctx.check(Access::Read, Resource::Queue(&name))?;
            let q = ctx.vhost.queue_or_404(&name)?;
            q.check_exclusive(ctx.id())?;
            let message_count = q.purge();
            if !p.nowait {
                ctx.send(
                    ch.id,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count })),
                );
            }
        }
        queue::AMQPMethod::Delete(d) => {
            let name = queue_name(ch, d.queue.as_str())?;
            ctx.check(Access::Configure, Resource::Queue(&name))?;
            let deleted = ctx
                .vhost
                .delete_queue(&name, d.if_unused, d.if_empty, ctx.id())?;
            let message_count = deleted.as_ref().map_or(0, |d| d.message_count);
            if let Some(d) = deleted {
                notify_deleted_consumers(&d.consumers);
            }
            ctx.exclusive_queues.retain(|q| !q.is_deleted());
            if !d.nowait {
                ctx.send(
                    ch.id,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count,
                    })),
                );
            }
        }
        _ => return Err(not_from_client()),
    }
    Ok(())
}

/// Cancels consumers of a deleted queue, telling clients that asked to know.
pub fn notify_deleted_consumers(consumers: &[Arc<Consumer>]) {
    for c in consumers {
        c.deactivate();
        c.channel.notify_cancel(&c.tag);
    }
}

/// Removes a consumer from its queue, deleting an auto-delete queue that has
/// just lost its last consumer.
pub fn detach_consumer(ctx: &mut ConnCtx, c: &ChannelConsumer) {
    c.consumer.deactivate();
    if c.queue.remove_consumer(&c.consumer)
        && let Some(vhost) = ctx.broker.vhost(&c.queue.vhost)
        && let Some(d) = vhost.remove_queue(&c.queue)
    {
        notify_deleted_consumers(&d.consumers);
    }
}

fn basic_method(ch: &mut Channel, ctx: &mut ConnCtx, m: basic::AMQPMethod) -> AmqpResult<()> {
    match m {
        basic::AMQPMethod::Qos(q) => {
            if q.global {
                ch.shared.set_global_prefetch(q.prefetch_count);
                ch.redispatch();
            } else {
                ch.consumer_prefetch = q.prefetch_count;
                ch.shared.state.lock().consumer_prefetch = q.prefetch_count;
            }
            ctx.send(
                ch.id,
                AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
            );
        }
        basic::AMQPMethod::Consume(c) => consume(ch, ctx, c)?,
        basic::AMQPMethod::Cancel(c) => {
            let tag = Bytes::copy_from_slice(c.consumer_tag.as_str().as_bytes());
            if let Some(cc) = ch.consumers.remove(&tag) {
                detach_consumer(ctx, &cc);
            } else if ch.reply_consumer.as_ref().is_some_and(|(_, t)| *t == tag)
                && let Some((key, _)) = ch.reply_consumer.take()
            {
                ctx.vhost.replies.unregister(&key);
            }
            if !c.nowait {
                ctx.send(
                    ch.id,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    })),
                );
            }
        }
        basic::AMQPMethod::Get(g) => {
            let name = queue_name(ch, g.queue.as_str())?;
            ctx.check(Access::Read, Resource::Queue(&name))?;
            let q = ctx.vhost.queue_or_404(&name)?;
            q.check_exclusive(ctx.id())?;
            if !q.get(&ch.shared, g.no_ack) {
                ctx.send(
                    ch.id,
                    AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                );
            }
        }
        basic::AMQPMethod::Ack(a) => ch.settle(a.delivery_tag, a.multiple, Outcome::Ack)?,
        basic::AMQPMethod::Reject(r) => {
            ch.settle(r.delivery_tag, false, requeue_outcome(r.requeue))?
        }
        basic::AMQPMethod::Nack(n) => {
            ch.settle(n.delivery_tag, n.multiple, requeue_outcome(n.requeue))?
        }
        basic::AMQPMethod::Recover(r) => {
            if !r.requeue {
                return Err(AmqpError::connection(
                    code::NOT_IMPLEMENTED,
                    "requeue=false",
                ));
            }
            // recover-ok first: clients drop prefetched deliveries when it
            // arrives, so redeliveries must come after it (as in RabbitMQ).
            ctx.send(
                ch.id,
                AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
            recover(ch, true)?;
        }
        basic::AMQPMethod::RecoverAsync(r) => recover(ch, r.requeue)?,
        basic::AMQPMethod::Publish(_) => {
            // Decoded by hand in `methods`; never reaches here.
        }
        _ => return Err(not_from_client()),
    }
    Ok(())
}

fn requeue_outcome(requeue: bool) -> Outcome {
    if requeue {
        Outcome::Requeue
    } else {
        Outcome::Discard
    }
}

/// basic.recover: every unacked message goes back to its queue, redelivered.
/// Like RabbitMQ, warren does not implement requeue=false (redelivery to the
/// same consumer).
fn recover(ch: &mut Channel, requeue_flag: bool) -> AmqpResult<()> {
    if !requeue_flag {
        return Err(AmqpError::connection(
            code::NOT_IMPLEMENTED,
            "requeue=false",
        ));
    }
    let unacked = ch.shared.take_all_unacked();
    requeue(unacked);
    // A consumer refused for the unacked-bytes budget has room again.
    let over_budget = ch.shared.state.lock().take_over_budget();
    if over_budget {
        ch.redispatch();
    }
    Ok(())
}

/// The value of a basic.consume x-priority argument, if it is an integer.
fn consumer_priority(v: &AMQPValue) -> Option<i32> {
    let n = crate::queue::args::integer(v)?;
    Some(n.clamp(i32::MIN as i128, i32::MAX as i128) as i32)
}

/// basic.consume on `amq.rabbitmq.reply-to`: the channel's direct reply-to
/// consumer (no-ack only, one per channel), as RabbitMQ has it.
fn consume_replies(ch: &mut Channel, ctx: &mut ConnCtx, c: basic::Consume) -> AmqpResult<()> {
    let precondition = |text: &str| AmqpError::channel(code::PRECONDITION_FAILED, text);
    if !c.no_ack {
        return Err(precondition("reply consumer cannot acknowledge"));
    }
    if ch.reply_consumer.is_some() {
        return Err(precondition("reply consumer already set"));
    }
    let tag_str = consumer_tag(&c);
    let tag = Bytes::from(tag_str.clone().into_bytes());
    let key = ctx.vhost.replies.register(&ch.shared, tag.clone());
    ch.reply_consumer = Some((key, tag));
    consume_ok(ch, ctx, &c, tag_str);
    Ok(())
}

/// The consumer tag a basic.consume asked for, or a generated one.
fn consumer_tag(c: &basic::Consume) -> String {
    match c.consumer_tag.as_str() {
        "" => generated_name("amq.ctag-"),
        t => t.to_owned(),
    }
}

/// basic.consume-ok, unless the client asked for no reply.
fn consume_ok(ch: &Channel, ctx: &ConnCtx, c: &basic::Consume, tag: String) {
    if !c.nowait {
        ctx.send(
            ch.id,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.into(),
            })),
        );
    }
}

fn consume(ch: &mut Channel, ctx: &mut ConnCtx, c: basic::Consume) -> AmqpResult<()> {
    if c.queue.as_str() == crate::vhost::direct_reply::QUEUE {
        return consume_replies(ch, ctx, c);
    }
    let name = queue_name(ch, c.queue.as_str())?;
    ctx.check(Access::Read, Resource::Queue(&name))?;
    let q = ctx.vhost.queue_or_404(&name)?;
    q.check_exclusive(ctx.id())?;
    let tag_str = consumer_tag(&c);
    let tag = Bytes::from(tag_str.clone().into_bytes());
    // Consumers cancelled by the broker (queue deleted) free their tag.
    ch.consumers.retain(|_, cc| cc.consumer.is_active());
    if ch.consumers.contains_key(&tag) {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!("attempt to reuse consumer tag '{tag_str}'"),
        ));
    }
    let max = ctx.broker.config.limits.max_consumers_per_channel as usize;
    if max != 0 && ch.consumers.len() >= max {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!("reached maximum ({max}) of consumers per channel"),
        ));
    }
    let priority = match c.arguments.inner().get("x-priority") {
        None => 0,
        Some(v) => consumer_priority(v).ok_or_else(|| {
            AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "invalid arg 'x-priority' for queue '{name}' in vhost '{}': \"expected integer, got {}\"",
                    ctx.vhost.name,
                    crate::routing::headers::erlang_type(v)
                ),
            )
        })?,
    };
    let consumer = Consumer::with_priority(
        tag.clone(),
        ch.shared.clone(),
        c.no_ack,
        c.exclusive,
        ch.consumer_prefetch,
        priority,
    );
    // consume-ok must reach the client before the first delivery: attach the
    // consumer paused, reply, then let the queue deliver.
    consumer.deactivate();
    q.add_consumer(consumer.clone())?;
    ch.consumers.insert(
        tag,
        ChannelConsumer {
            consumer: consumer.clone(),
            queue: q.clone(),
        },
    );
    consume_ok(ch, ctx, &c, tag_str);
    consumer.activate();
    q.dispatch();
    Ok(())
}

fn channel_method(ch: &mut Channel, ctx: &mut ConnCtx, m: chan_m::AMQPMethod) -> AmqpResult<()> {
    match m {
        chan_m::AMQPMethod::Open(_) => Err(AmqpError::connection(
            code::CHANNEL_ERROR,
            "second 'channel.open' seen",
        )),
        chan_m::AMQPMethod::Flow(f) => {
            // As RabbitMQ: clients may not pause deliveries with channel.flow
            // (prefetch is the way to limit them).
            if !f.active {
                return Err(AmqpError::connection(code::NOT_IMPLEMENTED, "active=false"));
            }
            ctx.send(
                ch.id,
                AMQPClass::Channel(chan_m::AMQPMethod::FlowOk(chan_m::FlowOk { active: true })),
            );
            Ok(())
        }
        chan_m::AMQPMethod::FlowOk(_) => Ok(()),
        // channel.close is handled by the connection, which owns the channel table.
        chan_m::AMQPMethod::Close(_) => Ok(()),
        chan_m::AMQPMethod::CloseOk(_) => Ok(()),
        _ => Err(not_from_client()),
    }
}

fn tx_method(ch: &mut Channel, ctx: &mut ConnCtx, m: tx::AMQPMethod) -> AmqpResult<()> {
    let not_tx = || AmqpError::channel(code::PRECONDITION_FAILED, "channel is not transactional");
    match m {
        tx::AMQPMethod::Select(_) => {
            if ch.confirm {
                return Err(AmqpError::channel(
                    code::PRECONDITION_FAILED,
                    "cannot switch from confirm to tx mode",
                ));
            }
            if ch.tx.is_none() {
                ch.tx = Some(crate::session::channel::Tx::new(
                    ctx.broker.config.limits.max_tx_bytes,
                ));
            }
            ctx.send(
                ch.id,
                AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
            );
        }
        tx::AMQPMethod::Commit(_) => {
            if ch.tx.is_none() {
                return Err(not_tx());
            }
            ch.commit(ctx);
        }
        tx::AMQPMethod::Rollback(_) => {
            if ch.tx.is_none() {
                return Err(not_tx());
            }
            ch.rollback();
            ctx.send(
                ch.id,
                AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
            );
        }
        _ => return Err(not_from_client()),
    }
    Ok(())
}
