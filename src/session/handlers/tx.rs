//! The tx class: tx.select, tx.commit and tx.rollback. What a transaction
//! holds, and committing it, belong to `session::channel`.

use amq_protocol::protocol::{AMQPClass, tx};

use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::session::channel::{Channel, Tx};
use crate::session::context::ConnCtx;
use crate::session::handlers::not_from_client;

/// Dispatches a tx-class method.
pub(super) fn handle(ch: &mut Channel, ctx: &mut ConnCtx, m: tx::AMQPMethod) -> AmqpResult<()> {
    let not_tx = || AmqpError::channel(code::PRECONDITION_FAILED, "channel is not transactional");
    match m {
        tx::AMQPMethod::Select(_) => select(ch, ctx)?,
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

/// tx.select: not on a channel in confirm mode; again on a transactional
/// channel, only select-ok.
fn select(ch: &mut Channel, ctx: &mut ConnCtx) -> AmqpResult<()> {
    if ch.confirm {
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            "cannot switch from confirm to tx mode",
        ));
    }
    if ch.tx.is_none() {
        ch.tx = Some(Tx::new(ctx.broker.config.limits.max_tx_bytes));
    }
    ctx.send(
        ch.id,
        AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
    );
    Ok(())
}
