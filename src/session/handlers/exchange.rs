//! The exchange class: exchange.declare, exchange.delete, exchange.bind and
//! exchange.unbind (exchange-to-exchange bindings).

use amq_protocol::protocol::{AMQPClass, exchange};

use crate::auth::{Access, Resource};
use crate::protocol::error::AmqpResult;
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
