//! The queue class: queue.declare, queue.bind, queue.unbind, queue.purge
//! and queue.delete.

use amq_protocol::protocol::{AMQPClass, queue};

use crate::auth::{Access, Resource};
use crate::broker::cluster::Command;
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::queue::QueueConfig;
use crate::queue::stream::args::{self as stream_args, QueueType};
use crate::schema::{BindingDef, QueueDef};
use crate::session::channel::Channel;
use crate::session::context::ConnCtx;
use crate::session::handlers::{generated_name, not_from_client, queue_name};
use crate::vhost::DestName;

/// Dispatches a queue-class method.
pub(super) fn handle(ch: &mut Channel, ctx: &mut ConnCtx, m: queue::AMQPMethod) -> AmqpResult<()> {
    match m {
        queue::AMQPMethod::Declare(d)
            if d.passive && d.queue.as_str() == crate::vhost::direct_reply::QUEUE =>
        {
            declare_reply_queue(ch, ctx, d);
            Ok(())
        }
        queue::AMQPMethod::Declare(d) => declare(ch, ctx, d),
        queue::AMQPMethod::Bind(b) => bind(ch, ctx, b),
        queue::AMQPMethod::Unbind(b) => unbind(ch, ctx, b),
        queue::AMQPMethod::Purge(p) => purge(ch, ctx, p),
        queue::AMQPMethod::Delete(d) => delete(ch, ctx, d),
        _ => Err(not_from_client()),
    }
}

/// A passive queue.declare of the direct reply-to pseudo-queue: it exists.
fn declare_reply_queue(ch: &Channel, ctx: &ConnCtx, d: queue::Declare) {
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

/// queue.declare: name the queue, check the user may, declare it in the
/// vhost (an exclusive one the connection deletes when it closes), reply.
fn declare(ch: &mut Channel, ctx: &mut ConnCtx, d: queue::Declare) -> AmqpResult<()> {
    let name = declared_name(ch, &d);
    if !d.passive {
        check_declare(ctx, &name, &d)?;
    }
    let server_named = d.queue.as_str().is_empty() && !d.passive;
    if server_named {
        let kind = match stream_args::queue_type(&d.arguments, &name, &ctx.vhost.name)? {
            QueueType::Stream => Some("rabbit_stream_queue"),
            QueueType::Quorum => Some("rabbit_quorum_queue"),
            QueueType::Classic => None,
        };
        if let Some(kind) = kind {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!("Cannot declare a server-named queue for type {kind}"),
            ));
        }
    }
    if ctx.clustered()
        && !d.passive
        && d.durable
        && !d.exclusive
        && ctx.vhost.queue(&name).is_none()
    {
        // A new durable queue is the cluster's to make; it lives here.
        let home = ctx.broker.cluster().map_or(0, |c| c.node.id);
        let def = QueueDef {
            name: name.clone(),
            vhost: ctx.vhost.name.to_string(),
            durable: true,
            auto_delete: d.auto_delete,
            arguments: crate::protocol::fields::table_to_json(&d.arguments),
        };
        let nowait = d.nowait;
        ctx.define(
            ch.id,
            Command::DeclareQueue {
                def,
                home,
                voters: ctx.broker.cluster().map(|c| c.voters()).unwrap_or_default(),
            },
            move |ch, ctx, r| {
                r?;
                let q = ctx.vhost.queue_or_404(&name)?;
                declare_ok(ch, ctx, name, &q, nowait);
                Ok(())
            },
        );
        return Ok(());
    }
    let config = QueueConfig {
        durable: d.durable,
        exclusive_owner: d.exclusive.then_some(ctx.id()),
        auto_delete: d.auto_delete,
        arguments: d.arguments,
    };
    let (q, created) = ctx
        .vhost
        .declare_queue(&name, server_named, d.passive, config, ctx.id())?;
    if created && q.config.exclusive_owner.is_some() {
        ctx.exclusive_queues.push(q.clone());
    }
    declare_ok(ch, ctx, name, &q, d.nowait);
    Ok(())
}

/// queue.declare-ok (unless nowait), and the channel's last queue.
fn declare_ok(
    ch: &mut Channel,
    ctx: &mut ConnCtx,
    name: String,
    q: &crate::queue::Queue,
    nowait: bool,
) {
    ch.last_queue = Some(name.clone());
    if nowait {
        return;
    }
    if let Some(at_home) = q.count_at_home() {
        // A queue of another node (or a replicated queue led elsewhere):
        // its count is the leader's. Unanswered, the stub's own (0).
        let consumers = q.consumer_count();
        ctx.wait_on(
            ch.id,
            async move { Ok(at_home.await.unwrap_or(0)) },
            move |ch: &mut Channel, ctx: &mut ConnCtx, r: AmqpResult<u32>| {
                ctx.send(
                    ch.id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: name.into(),
                        message_count: r?,
                        consumer_count: consumers,
                    })),
                );
                Ok(())
            },
        );
        return;
    }
    {
        ctx.send(
            ch.id,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: name.into(),
                message_count: q.message_count(),
                // RabbitMQ reports no consumers for a stream.
                consumer_count: if q.stream().is_some() {
                    0
                } else {
                    q.consumer_count()
                },
            })),
        );
    }
}

/// The name a queue.declare declares: its own, the channel's last queue
/// for a passive declare of "", or a server-generated one.
fn declared_name(ch: &Channel, d: &queue::Declare) -> String {
    match d.queue.as_str() {
        "" if d.passive => ch.last_queue.clone().unwrap_or_default(),
        "" => generated_name("amq.gen-"),
        n => n.to_owned(),
    }
}

/// A (non-passive) queue.declare's checks: configure permission on the
/// queue, permissions on a dead-letter exchange it names, the queue limit.
fn check_declare(ctx: &mut ConnCtx, name: &str, d: &queue::Declare) -> AmqpResult<()> {
    ctx.check(Access::Configure, Resource::Queue(name))?;
    ctx.check_exchange_argument(Resource::Queue(name), &d.arguments)?;
    ctx.broker.check_queue_limit(&ctx.vhost, name)
}

/// queue.bind; with neither queue nor routing key, the channel's last
/// queue is bound with its name as the key.
fn bind(ch: &mut Channel, ctx: &mut ConnCtx, b: queue::Bind) -> AmqpResult<()> {
    let name = queue_name(ch, b.queue.as_str())?;
    check_bind_queue(ctx, b.exchange.as_str(), &name)?;
    let rk = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
        name.clone()
    } else {
        b.routing_key.as_str().to_owned()
    };
    if let Some(def) = replicated_binding(ctx, b.exchange.as_str(), &name, &rk, &b.arguments) {
        let nowait = b.nowait;
        ctx.define(ch.id, Command::Bind(def), move |ch, ctx, r| {
            r?;
            if !nowait {
                ctx.send(
                    ch.id,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                );
            }
            Ok(())
        });
        return Ok(());
    }
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
    Ok(())
}

/// queue.unbind.
fn unbind(ch: &mut Channel, ctx: &mut ConnCtx, b: queue::Unbind) -> AmqpResult<()> {
    let name = queue_name(ch, b.queue.as_str())?;
    check_bind_queue(ctx, b.exchange.as_str(), &name)?;
    if let Some(def) = replicated_binding(
        ctx,
        b.exchange.as_str(),
        &name,
        b.routing_key.as_str(),
        &b.arguments,
    ) {
        ctx.define(ch.id, Command::Unbind(def), move |ch, ctx, r| {
            r?;
            ctx.send(
                ch.id,
                AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
            );
            Ok(())
        });
        return Ok(());
    }
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
    Ok(())
}

/// queue.bind/unbind: write on the queue, read on the exchange.
fn check_bind_queue(ctx: &mut ConnCtx, exchange: &str, queue: &str) -> AmqpResult<()> {
    ctx.check(Access::Write, Resource::Queue(queue))?;
    ctx.check(Access::Read, Resource::Exchange(exchange))
}

/// queue.purge.
fn purge(ch: &mut Channel, ctx: &mut ConnCtx, p: queue::Purge) -> AmqpResult<()> {
    let name = queue_name(ch, p.queue.as_str())?;
    ctx.check(Access::Read, Resource::Queue(&name))?;
    let q = ctx.vhost.queue_or_404(&name)?;
    q.check_exclusive(ctx.id())?;
    if let Some(at_home) = q.purge_at_home() {
        // A queue of another node: purged there.
        let (nowait, what) = (p.nowait, name.clone());
        ctx.wait_on(
            ch.id,
            async move {
                at_home.await.ok_or_else(|| {
                    AmqpError::channel(
                        code::RESOURCE_ERROR,
                        format!("queue '{what}': its node did not answer the purge"),
                    )
                })
            },
            move |ch, ctx, r| {
                let message_count = r?;
                if !nowait {
                    ctx.send(
                        ch.id,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count,
                        })),
                    );
                }
                Ok(())
            },
        );
        return Ok(());
    }
    ctx.vhost.check_local(&q, "queue.purge")?;
    if q.stream().is_some() {
        return Err(stream_args::not_supported(
            "queue.purge",
            &name,
            &ctx.vhost.name,
        ));
    }
    let message_count = q.purge();
    if !p.nowait {
        ctx.send(
            ch.id,
            AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count })),
        );
    }
    Ok(())
}

/// queue.delete: the vhost cancels its consumers (clients that asked are told).
fn delete(ch: &mut Channel, ctx: &mut ConnCtx, d: queue::Delete) -> AmqpResult<()> {
    let name = queue_name(ch, d.queue.as_str())?;
    ctx.check(Access::Configure, Resource::Queue(&name))?;
    if ctx.clustered() && ctx.vhost.queue(&name).is_some_and(|q| replicated_queue(&q)) {
        let cmd = Command::DeleteQueue {
            vhost: ctx.vhost.name.to_string(),
            name,
            if_unused: d.if_unused,
            if_empty: d.if_empty,
        };
        let nowait = d.nowait;
        ctx.define(ch.id, cmd, move |ch, ctx, r| {
            let message_count = r?;
            if !nowait {
                ctx.send(
                    ch.id,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count,
                    })),
                );
            }
            Ok(())
        });
        return Ok(());
    }
    let deleted = ctx
        .vhost
        .delete_queue(&name, d.if_unused, d.if_empty, ctx.id())?;
    let message_count = deleted.as_ref().map_or(0, |d| d.message_count);
    ctx.exclusive_queues.retain(|q| !q.is_deleted());
    if !d.nowait {
        ctx.send(
            ch.id,
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                message_count,
            })),
        );
    }
    Ok(())
}

/// A queue the cluster replicates: durable and not exclusive.
fn replicated_queue(q: &crate::queue::Queue) -> bool {
    q.config.durable && q.config.exclusive_owner.is_none()
}

/// In a cluster, a binding from a durable exchange (not the default one)
/// to a replicated queue is the cluster's to make: its definition.
/// Otherwise (or when an end is missing: the local path gives the error)
/// None.
fn replicated_binding(
    ctx: &ConnCtx,
    exchange: &str,
    queue: &str,
    routing_key: &str,
    arguments: &amq_protocol::types::FieldTable,
) -> Option<BindingDef> {
    let durable_x = !exchange.is_empty() && ctx.vhost.exchange(exchange).is_some();
    let durable_q = ctx.vhost.queue(queue).is_some_and(|q| replicated_queue(&q));
    (ctx.clustered() && durable_x && durable_q).then(|| BindingDef {
        source: exchange.to_owned(),
        vhost: ctx.vhost.name.to_string(),
        destination: queue.to_owned(),
        destination_type: "queue".into(),
        routing_key: routing_key.to_owned(),
        arguments: crate::protocol::fields::table_to_json(arguments),
    })
}
