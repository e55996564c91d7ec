//! The confirm class: confirm.select puts a channel in publisher-confirm
//! mode (the confirms themselves are sent by `session::channel`).

use amq_protocol::protocol::{AMQPClass, confirm};

use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::session::channel::Channel;
use crate::session::context::ConnCtx;

/// confirm.select: not on a transactional channel.
pub(super) fn select(ch: &mut Channel, ctx: &mut ConnCtx, s: confirm::Select) -> AmqpResult<()> {
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
