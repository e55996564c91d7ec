//! The basic class as handlers: basic.qos, basic.consume (including the
//! direct reply-to consumer), basic.cancel, basic.get, basic.reject,
//! basic.nack and basic.recover. basic.publish and basic.ack are decoded by
//! hand and handled by `session::channel`.

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::AMQPValue;
use bytes::Bytes;

use crate::auth::{Access, Resource};
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::queue::consumer::Consumer;
use crate::queue::stream::args::{self as stream_args, Start};
use crate::queue::{Got, Queue};
use crate::session::channel::{Channel, ChannelConsumer, Outcome, requeue};
use crate::session::context::{ConnCtx, PendingGet};
use crate::session::handlers::{detach_consumer, generated_name, not_from_client, queue_name};

/// Dispatches a basic-class method.
pub(super) fn handle(ch: &mut Channel, ctx: &mut ConnCtx, m: basic::AMQPMethod) -> AmqpResult<()> {
    match m {
        basic::AMQPMethod::Qos(q) => qos(ch, ctx, q),
        basic::AMQPMethod::Consume(c) => consume(ch, ctx, c),
        basic::AMQPMethod::Cancel(c) => cancel(ch, ctx, c),
        basic::AMQPMethod::Get(g) => get(ch, ctx, g),
        basic::AMQPMethod::Reject(r) => {
            ch.settle(r.delivery_tag, false, requeue_outcome(r.requeue))
        }
        basic::AMQPMethod::Nack(n) => {
            ch.settle(n.delivery_tag, n.multiple, requeue_outcome(n.requeue))
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
            recover(ch, true)
        }
        basic::AMQPMethod::RecoverAsync(r) => recover(ch, r.requeue),
        _ => Err(not_from_client()),
    }
}

/// basic.qos: global sets the channel's prefetch, otherwise the prefetch
/// of consumers created from now on.
fn qos(ch: &mut Channel, ctx: &mut ConnCtx, q: basic::Qos) -> AmqpResult<()> {
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
    Ok(())
}

/// basic.cancel: of a queue consumer or of the direct reply-to consumer;
/// an unknown tag is not an error.
fn cancel(ch: &mut Channel, ctx: &mut ConnCtx, c: basic::Cancel) -> AmqpResult<()> {
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
    Ok(())
}

/// basic.get: the queue replies get-ok itself; get-empty from here.
fn get(ch: &mut Channel, ctx: &mut ConnCtx, g: basic::Get) -> AmqpResult<()> {
    let name = queue_name(ch, g.queue.as_str())?;
    ctx.check(Access::Read, Resource::Queue(&name))?;
    let q = ctx.vhost.queue_or_404(&name)?;
    q.check_exclusive(ctx.id())?;
    if q.stream().is_some() {
        return Err(stream_args::not_supported(
            "basic.get",
            &name,
            &ctx.vhost.name,
        ));
    }
    // The same budget as a consumer's: a channel holding more unacked
    // bodies than its queue may keep in RAM gets nothing more until it
    // settles some (a client that gets and never acks would otherwise read
    // a whole paged queue into memory).
    let budget = q.unacked_budget();
    if !g.no_ack && budget != 0 && ch.shared.state.lock().unacked_bytes() >= budget {
        send_get_empty(ctx, ch.id);
        return Ok(());
    }
    match q.get(&*ch.shared, g.no_ack) {
        Got::Message => {}
        Got::Empty => send_get_empty(ctx, ch.id),
        Got::Loading => {
            ctx.get_wait = Some(PendingGet {
                queue: q,
                channel: ch.id,
                no_ack: g.no_ack,
            });
        }
    }
    Ok(())
}

/// basic.get-empty on `channel`.
pub fn send_get_empty(ctx: &ConnCtx, channel: u16) {
    ctx.send(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
    );
}

/// What basic.reject or basic.nack does with a delivery.
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

/// basic.consume: checks the queue, the tag and the per-channel consumer
/// limit, attaches the consumer, replies consume-ok, then lets the queue
/// deliver.
fn consume(ch: &mut Channel, ctx: &mut ConnCtx, c: basic::Consume) -> AmqpResult<()> {
    if c.queue.as_str() == crate::vhost::direct_reply::QUEUE {
        return consume_replies(ch, ctx, c);
    }
    let name = queue_name(ch, c.queue.as_str())?;
    ctx.check(Access::Read, Resource::Queue(&name))?;
    let q = ctx.vhost.queue_or_404(&name)?;
    q.check_exclusive(ctx.id())?;
    if q.stream().is_some() {
        ctx.vhost.check_local(&q, "consuming a stream")?;
    }
    let tag_str = consumer_tag(&c);
    let tag = Bytes::from(tag_str.clone().into_bytes());
    check_new_consumer(ch, ctx, &tag, &tag_str)?;
    check_queue_consumers(ctx, &q, &name)?;
    if q.is_quorum() && ch.shared.global_prefetch() != 0 {
        // RabbitMQ closes the connection for this (540).
        return Err(AmqpError::connection(
            code::NOT_IMPLEMENTED,
            format!(
                "queue '{name}' in vhost '{}' does not support global qos",
                ctx.vhost.name
            ),
        ));
    }
    let (start, filter) = match q.stream() {
        None => (Start::default(), None),
        Some(_) => {
            let v = &ctx.vhost.name;
            stream_args::check_consume(&name, v, ch.consumer_prefetch, c.no_ack, &c.arguments)?;
            let start = stream_args::start(&c.arguments, &name, v, crate::store::wall_ms())?;
            let filter = stream_args::filter(&c.arguments)
                .map(|(values, unfiltered)| crate::queue::stream::Filter::new(values, unfiltered));
            (start, filter)
        }
    };
    let priority = consumer_priority(ctx, &name, &c)?;
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
    q.add_consumer_at(consumer.clone(), start, filter)?;
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

/// A new consumer's tag must be unused on the channel (consumers the
/// broker cancelled free theirs), within `[limits] max_consumers_per_channel`.
fn check_new_consumer(
    ch: &mut Channel,
    ctx: &ConnCtx,
    tag: &Bytes,
    tag_str: &str,
) -> AmqpResult<()> {
    ch.consumers.retain(|_, cc| cc.consumer.is_active());
    if ch.consumers.contains_key(tag) {
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
    Ok(())
}

/// A queue takes at most `[limits] max_consumers_per_queue` consumers
/// (checked at basic.consume, so concurrent consumes on several channels
/// may pass it by a few); beyond it, channel error 406.
fn check_queue_consumers(ctx: &ConnCtx, q: &Queue, name: &str) -> AmqpResult<()> {
    let max = ctx.broker.config.limits.max_consumers_per_queue;
    if max != 0 && q.consumer_count() >= max {
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!(
                "reached maximum ({max}) of consumers on queue '{name}' in vhost '{}'",
                ctx.vhost.name
            ),
        ));
    }
    Ok(())
}

/// A basic.consume's x-priority argument (0 without one); not an integer
/// is refused as RabbitMQ refuses it.
fn consumer_priority(ctx: &ConnCtx, queue: &str, c: &basic::Consume) -> AmqpResult<i32> {
    match c.arguments.inner().get("x-priority") {
        None => Ok(0),
        Some(v) => priority_value(v).ok_or_else(|| {
            AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "invalid arg 'x-priority' for queue '{queue}' in vhost '{}': \"expected integer, got {}\"",
                    ctx.vhost.name,
                    crate::protocol::fields::erlang_type(v)
                ),
            )
        }),
    }
}

/// The value of a basic.consume x-priority argument, if it is an integer.
fn priority_value(v: &AMQPValue) -> Option<i32> {
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
