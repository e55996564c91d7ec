//! The exchange class: exchange.declare, exchange.delete, exchange.bind and
//! exchange.unbind (exchange-to-exchange bindings).

use amq_protocol::protocol::{AMQPClass, exchange};

use crate::auth::{Access, Resource};
use crate::broker::cluster::Command;
use crate::protocol::error::AmqpResult;
use crate::schema::{BindingDef, ExchangeDef};
use crate::session::channel::Channel;
use crate::session::context::ConnCtx;
use crate::session::handlers::not_from_client;
use crate::vhost::{DestName, ExchangeDeclare};

/// Dispatches an exchange-class method.
pub(super) fn handle(
    ch: &mut Channel,
    ctx: &mut ConnCtx,
    m: exchange::AMQPMethod,
) -> AmqpResult<()> {
    match m {
        exchange::AMQPMethod::Declare(d) => declare(ch, ctx, d),
        exchange::AMQPMethod::Delete(d) => delete(ch, ctx, d),
        exchange::AMQPMethod::Bind(b) => bind(ch, ctx, b),
        exchange::AMQPMethod::Unbind(b) => unbind(ch, ctx, b),
        _ => Err(not_from_client()),
    }
}

/// Sends an exchange-class reply, unless the client asked for none.
fn reply(ch: &Channel, ctx: &ConnCtx, nowait: bool, m: exchange::AMQPMethod) {
    if !nowait {
        ctx.send(ch.id, AMQPClass::Exchange(m));
    }
}

/// exchange.declare.
fn declare(ch: &mut Channel, ctx: &mut ConnCtx, d: exchange::Declare) -> AmqpResult<()> {
    if !d.passive && !d.exchange.as_str().is_empty() {
        let x = Resource::Exchange(d.exchange.as_str());
        ctx.check(Access::Configure, x)?;
        ctx.check_exchange_argument(x, &d.arguments)?;
    }
    let name = d.exchange.as_str();
    if ctx.clustered()
        && !d.passive
        && !name.is_empty()
        && !name.starts_with("amq.")
        && ctx.vhost.exchange(name).is_none()
    {
        // A new exchange is the cluster's to make (as in RabbitMQ, a
        // non-durable one too: it is on every node).
        let def = ExchangeDef {
            name: name.to_owned(),
            vhost: ctx.vhost.name.to_string(),
            kind: d.kind.as_str().to_owned(),
            durable: d.durable,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: crate::protocol::fields::table_to_json(&d.arguments),
        };
        let nowait = d.nowait;
        ctx.define(ch.id, Command::DeclareExchange(def), move |ch, ctx, r| {
            r?;
            reply(
                ch,
                ctx,
                nowait,
                exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
            );
            Ok(())
        });
        return Ok(());
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
        ch,
        ctx,
        d.nowait,
        exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
    );
    Ok(())
}

/// exchange.delete.
fn delete(ch: &mut Channel, ctx: &mut ConnCtx, d: exchange::Delete) -> AmqpResult<()> {
    if !d.exchange.as_str().is_empty() {
        ctx.check(Access::Configure, Resource::Exchange(d.exchange.as_str()))?;
    }
    if ctx.clustered()
        && ctx
            .vhost
            .exchange(d.exchange.as_str())
            .is_some_and(|x| !x.name.is_empty() && !x.name.starts_with("amq."))
    {
        let cmd = Command::DeleteExchange {
            vhost: ctx.vhost.name.to_string(),
            name: d.exchange.as_str().to_owned(),
            if_unused: d.if_unused,
        };
        let nowait = d.nowait;
        ctx.define(ch.id, cmd, move |ch, ctx, r| {
            r?;
            reply(
                ch,
                ctx,
                nowait,
                exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}),
            );
            Ok(())
        });
        return Ok(());
    }
    ctx.vhost
        .delete_exchange(d.exchange.as_str(), d.if_unused)?;
    reply(
        ch,
        ctx,
        d.nowait,
        exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}),
    );
    Ok(())
}

/// exchange.bind.
fn bind(ch: &mut Channel, ctx: &mut ConnCtx, b: exchange::Bind) -> AmqpResult<()> {
    check_bind_exchanges(ctx, b.source.as_str(), b.destination.as_str())?;
    if let Some(def) =
        replicated_binding(ctx, &b.source, &b.destination, &b.routing_key, &b.arguments)
    {
        let nowait = b.nowait;
        ctx.define(ch.id, Command::Bind(def), move |ch, ctx, r| {
            r?;
            reply(
                ch,
                ctx,
                nowait,
                exchange::AMQPMethod::BindOk(exchange::BindOk {}),
            );
            Ok(())
        });
        return Ok(());
    }
    ctx.vhost.bind(
        b.source.as_str(),
        DestName::Exchange(b.destination.as_str()),
        b.routing_key.as_str(),
        &b.arguments,
        ctx.id(),
    )?;
    reply(
        ch,
        ctx,
        b.nowait,
        exchange::AMQPMethod::BindOk(exchange::BindOk {}),
    );
    Ok(())
}

/// exchange.unbind.
fn unbind(ch: &mut Channel, ctx: &mut ConnCtx, b: exchange::Unbind) -> AmqpResult<()> {
    check_bind_exchanges(ctx, b.source.as_str(), b.destination.as_str())?;
    if let Some(def) =
        replicated_binding(ctx, &b.source, &b.destination, &b.routing_key, &b.arguments)
    {
        let nowait = b.nowait;
        ctx.define(ch.id, Command::Unbind(def), move |ch, ctx, r| {
            r?;
            reply(
                ch,
                ctx,
                nowait,
                exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}),
            );
            Ok(())
        });
        return Ok(());
    }
    ctx.vhost.unbind(
        b.source.as_str(),
        DestName::Exchange(b.destination.as_str()),
        b.routing_key.as_str(),
        &b.arguments,
        ctx.id(),
    )?;
    reply(
        ch,
        ctx,
        b.nowait,
        exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}),
    );
    Ok(())
}

/// exchange.bind/unbind: write on the destination, read on the source.
fn check_bind_exchanges(ctx: &mut ConnCtx, source: &str, destination: &str) -> AmqpResult<()> {
    ctx.check(Access::Write, Resource::Exchange(destination))?;
    ctx.check(Access::Read, Resource::Exchange(source))
}

/// In a cluster, an exchange-to-exchange binding between two durable
/// exchanges (neither the default one) is the cluster's to make: its
/// definition. Otherwise (or when an end is missing: the local path gives
/// the error) None.
fn replicated_binding(
    ctx: &ConnCtx,
    source: &amq_protocol::types::ShortString,
    destination: &amq_protocol::types::ShortString,
    routing_key: &amq_protocol::types::ShortString,
    arguments: &amq_protocol::types::FieldTable,
) -> Option<BindingDef> {
    let known = |n: &str| !n.is_empty() && ctx.vhost.exchange(n).is_some();
    (ctx.clustered() && known(source.as_str()) && known(destination.as_str())).then(|| BindingDef {
        source: source.as_str().to_owned(),
        vhost: ctx.vhost.name.to_string(),
        destination: destination.as_str().to_owned(),
        destination_type: "exchange".into(),
        routing_key: routing_key.as_str().to_owned(),
        arguments: crate::protocol::fields::table_to_json(arguments),
    })
}
