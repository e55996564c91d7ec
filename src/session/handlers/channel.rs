//! The channel class, as far as a channel handles it itself: channel.flow
//! and a second channel.open. channel.open and channel.close are handled by
//! the connection's frame loop, which owns the channel table.

use amq_protocol::protocol::{AMQPClass, channel as chan_m};

use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::session::channel::Channel;
use crate::session::context::ConnCtx;
use crate::session::handlers::not_from_client;

/// Dispatches a channel-class method on an open channel.
pub(super) fn handle(ch: &mut Channel, ctx: &mut ConnCtx, m: chan_m::AMQPMethod) -> AmqpResult<()> {
    match m {
        chan_m::AMQPMethod::Open(_) => Err(AmqpError::connection(
            code::CHANNEL_ERROR,
            "second 'channel.open' seen",
        )),
        chan_m::AMQPMethod::Flow(f) => flow(ch, ctx, f),
        chan_m::AMQPMethod::FlowOk(_) => Ok(()),
        chan_m::AMQPMethod::CloseOk(_) => Ok(()),
        _ => Err(not_from_client()),
    }
}

/// channel.flow: as RabbitMQ, clients may not pause deliveries with it
/// (prefetch is the way to limit them).
fn flow(ch: &mut Channel, ctx: &mut ConnCtx, f: chan_m::Flow) -> AmqpResult<()> {
    if !f.active {
        return Err(AmqpError::connection(code::NOT_IMPLEMENTED, "active=false"));
    }
    ctx.send(
        ch.id,
        AMQPClass::Channel(chan_m::AMQPMethod::FlowOk(chan_m::FlowOk { active: true })),
    );
    Ok(())
}
