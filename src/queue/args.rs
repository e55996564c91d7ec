//! The queue arguments (and policy keys) that change a queue's behaviour:
//! message TTL, queue expiry, length limits with their overflow mode, and
//! dead-lettering. Validated at queue.declare with RabbitMQ's error texts.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::protocol::fields::erlang_type;

/// What a full queue does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drops (or dead-letters) the oldest ready message.
    #[default]
    DropHead,
    /// Refuses the new message (a nack for confirming publishers).
    RejectPublish,
    /// Refuses it and dead-letters it.
    RejectPublishDlx,
}

impl Overflow {
    fn parse(s: &str) -> Option<Overflow> {
        Some(match s {
            "drop-head" => Overflow::DropHead,
            "reject-publish" => Overflow::RejectPublish,
            "reject-publish-dlx" => Overflow::RejectPublishDlx,
            _ => return None,
        })
    }
}

/// A queue's effective limits and dead-lettering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// x-message-ttl, milliseconds.
    pub message_ttl: Option<u64>,
    /// x-expires, milliseconds unused before the queue is deleted.
    pub expires: Option<u64>,
    /// x-max-length, ready messages.
    pub max_length: Option<u64>,
    /// x-max-length-bytes, ready message body bytes.
    pub max_length_bytes: Option<u64>,
    /// x-overflow.
    pub overflow: Overflow,
    /// x-dead-letter-exchange.
    pub dlx: Option<String>,
    /// x-dead-letter-routing-key.
    pub dlrk: Option<String>,
    /// x-single-active-consumer: only the first consumer receives.
    pub single_active: bool,
    /// x-consumer-timeout, ms an unacked delivery may stay unacked.
    pub consumer_timeout: Option<u64>,
    /// x-delivery-limit (quorum queues): returns a message may have before
    /// it is dead-lettered or dropped.
    pub delivery_limit: Option<u64>,
    /// x-dead-letter-strategy at-least-once (quorum queues; it applies
    /// only with x-overflow reject-publish, as in RabbitMQ).
    pub dead_letter_at_least_once: bool,
}

/// Integer value of an AMQP field, if it is an integer type (what RabbitMQ
/// accepts where an argument must be an integer).
pub fn integer(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => *n as i128,
        AMQPValue::ShortShortUInt(n) => *n as i128,
        AMQPValue::ShortInt(n) => *n as i128,
        AMQPValue::ShortUInt(n) => *n as i128,
        AMQPValue::LongInt(n) => *n as i128,
        AMQPValue::LongUInt(n) => *n as i128,
        AMQPValue::LongLongInt(n) => *n as i128,
        _ => return None,
    })
}

use crate::protocol::fields::string;

impl QueueArgs {
    /// Validates and reads a declare's arguments; errors are RabbitMQ's
    /// 406 PRECONDITION_FAILED texts.
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<QueueArgs> {
        let r = ArgReader { args, queue, vhost };
        let mut a = QueueArgs {
            message_ttl: r.non_negative("x-message-ttl", true)?,
            expires: r.non_negative("x-expires", false)?,
            max_length: r.non_negative("x-max-length", true)?,
            max_length_bytes: r.non_negative("x-max-length-bytes", true)?,
            consumer_timeout: r.non_negative("x-consumer-timeout", false)?,
            delivery_limit: crate::queue::quorum::delivery_limit(args),
            dead_letter_at_least_once: args
                .inner()
                .get("x-dead-letter-strategy")
                .and_then(string)
                .is_some_and(|s| s == "at-least-once"),
            ..Default::default()
        };
        if let Some(overflow) = r.overflow()? {
            a.overflow = overflow;
        }
        if let Some(s) = r.dead_letter_string("x-dead-letter-exchange")? {
            a.dlx = Some(s);
        }
        if let Some(s) = r.dead_letter_string("x-dead-letter-routing-key")? {
            if a.dlx.is_none() {
                return Err(r.invalid(
                    "x-dead-letter-routing-key",
                    "routing_key_but_no_dlx_defined".into(),
                ));
            }
            a.dlrk = Some(s);
        }
        if let Some(single_active) = r.single_active()? {
            a.single_active = single_active;
        }
        r.check_max_priority()?;
        r.check_queue_mode()?;
        Ok(a)
    }

    /// Arguments read leniently (recovered or imported definitions): what
    /// does not validate is ignored rather than refused.
    pub fn lenient(args: &FieldTable) -> QueueArgs {
        if let Ok(a) = QueueArgs::parse(args, "", "") {
            return a;
        }
        let mut a = QueueArgs::default();
        for (k, v) in args.inner() {
            let mut one = FieldTable::default();
            one.insert(k.clone(), v.clone());
            if k.as_str() == "x-dead-letter-routing-key"
                && let Some(x) = args.inner().get("x-dead-letter-exchange")
            {
                one.insert("x-dead-letter-exchange".into(), x.clone());
            }
            if let Ok(p) = QueueArgs::parse(&one, "", "") {
                a.message_ttl = a.message_ttl.or(p.message_ttl);
                a.expires = a.expires.or(p.expires);
                a.max_length = a.max_length.or(p.max_length);
                a.max_length_bytes = a.max_length_bytes.or(p.max_length_bytes);
                if p.overflow != Overflow::DropHead {
                    a.overflow = p.overflow;
                }
                a.dlx = a.dlx.or(p.dlx);
                a.dlrk = a.dlrk.or(p.dlrk);
                a.single_active |= p.single_active;
                a.consumer_timeout = a.consumer_timeout.or(p.consumer_timeout);
                a.delivery_limit = a.delivery_limit.or(p.delivery_limit);
                a.dead_letter_at_least_once |= p.dead_letter_at_least_once;
            }
        }
        a
    }

    /// Fills what the arguments leave unset from a policy definition
    /// (`message-ttl`, `expires`, `max-length`, `max-length-bytes`,
    /// `overflow`, `dead-letter-exchange`, `dead-letter-routing-key`,
    /// `dead-letter-strategy`).
    /// Queue arguments win, except that for TTL and length limits the
    /// lower of the two applies, as RabbitMQ does.
    pub fn with_policy(mut self, def: &serde_json::Map<String, serde_json::Value>) -> QueueArgs {
        let num = |k: &str| def.get(k).and_then(|v| v.as_u64());
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        self.message_ttl = min(self.message_ttl, num("message-ttl"));
        self.max_length = min(self.max_length, num("max-length"));
        self.max_length_bytes = min(self.max_length_bytes, num("max-length-bytes"));
        self.expires = min(self.expires, num("expires").filter(|n| *n > 0));
        self.consumer_timeout = min(
            self.consumer_timeout,
            num("consumer-timeout").filter(|n| *n > 0),
        );
        self.delivery_limit = min(self.delivery_limit, num("delivery-limit"));
        if self.dlx.is_none() {
            self.dlx = def
                .get("dead-letter-exchange")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            if self.dlrk.is_none() {
                self.dlrk = def
                    .get("dead-letter-routing-key")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
            }
        }
        if let Some(strategy) = def.get("dead-letter-strategy").and_then(|v| v.as_str())
            && !self.dead_letter_at_least_once
        {
            self.dead_letter_at_least_once = strategy == "at-least-once";
        }
        if let Some(o) = def
            .get("overflow")
            .and_then(|v| v.as_str())
            .and_then(Overflow::parse)
        {
            self.overflow = o;
        }
        self
    }
}

/// Reads one declare's arguments, naming the queue and vhost in its
/// errors as RabbitMQ does.
struct ArgReader<'a> {
    args: &'a FieldTable,
    queue: &'a str,
    vhost: &'a str,
}

impl ArgReader<'_> {
    fn get(&self, arg: &str) -> Option<&AMQPValue> {
        self.args.inner().get(arg)
    }

    /// RabbitMQ's "invalid arg" refusal.
    fn invalid(&self, arg: &str, why: String) -> AmqpError {
        let (queue, vhost) = (self.queue, self.vhost);
        AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!("invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {why}"),
        )
    }

    /// An integer argument that may not be negative (nor zero unless
    /// `zero_ok`).
    fn non_negative(&self, arg: &str, zero_ok: bool) -> AmqpResult<Option<u64>> {
        let Some(v) = self.get(arg) else {
            return Ok(None);
        };
        let Some(n) = integer(v) else {
            return Err(self.invalid(arg, format!("\"expected integer, got {}\"", erlang_type(v))));
        };
        if n < 0 {
            return Err(self.invalid(arg, format!("{{value_negative,{n}}}")));
        }
        if n == 0 && !zero_ok {
            return Err(self.invalid(arg, "{value_zero,0}".to_owned()));
        }
        Ok(Some(n as u64))
    }

    /// x-overflow: one of the three modes, as a string.
    fn overflow(&self) -> AmqpResult<Option<Overflow>> {
        let Some(v) = self.get("x-overflow") else {
            return Ok(None);
        };
        let Some(s) = string(v) else {
            return Err(self.invalid(
                "x-overflow",
                format!("{{unacceptable_type,{}}}", erlang_type(v)),
            ));
        };
        Overflow::parse(&s)
            .map(Some)
            .ok_or_else(|| self.invalid("x-overflow", "invalid_overflow".into()))
    }

    /// x-dead-letter-exchange or x-dead-letter-routing-key: a string, or
    /// RabbitMQ's "invalid type" refusal.
    fn dead_letter_string(&self, arg: &str) -> AmqpResult<Option<String>> {
        let Some(v) = self.get(arg) else {
            return Ok(None);
        };
        let Some(s) = string(v) else {
            let (queue, vhost) = (self.queue, self.vhost);
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "invalid type '{}' for arg '{arg}' in queue '{queue}' in vhost '{vhost}'",
                    erlang_type(v)
                ),
            ));
        };
        Ok(Some(s))
    }

    /// x-single-active-consumer: a boolean.
    fn single_active(&self) -> AmqpResult<Option<bool>> {
        match self.get("x-single-active-consumer") {
            None => Ok(None),
            Some(AMQPValue::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(self.invalid(
                "x-single-active-consumer",
                format!("{{unacceptable_type,{}}}", erlang_type(other)),
            )),
        }
    }

    /// x-max-priority, when an integer, is within 0..=255.
    fn check_max_priority(&self) -> AmqpResult<()> {
        if let Some(v) = self.get("x-max-priority")
            && let Some(n) = integer(v)
        {
            if n < 0 {
                return Err(self.invalid("x-max-priority", format!("{{value_negative,{n}}}")));
            }
            if n > 255 {
                return Err(self.invalid("x-max-priority", format!("{{max_value_exceeded,{n}}}")));
            }
        }
        Ok(())
    }

    /// x-queue-mode, when a string, is "default" or "lazy".
    fn check_queue_mode(&self) -> AmqpResult<()> {
        if let Some(v) = self.get("x-queue-mode")
            && let Some(s) = string(v)
            && s != "default"
            && s != "lazy"
        {
            return Err(self.invalid("x-queue-mode", format!("\"unsupported queue mode '{s}'\"")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_arguments_are_refused_in_rabbitmq_words() {
        let mut t = FieldTable::default();
        t.insert("x-expires".into(), AMQPValue::LongInt(0));
        let err = QueueArgs::parse(&t, "q", "/").unwrap_err();
        assert_eq!(
            err.text,
            "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
        );
        let mut t = FieldTable::default();
        t.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString("k".into()),
        );
        let err = QueueArgs::parse(&t, "q", "/").unwrap_err();
        assert!(err.text.ends_with("routing_key_but_no_dlx_defined"));
    }

    #[test]
    fn a_policy_fills_gaps_and_lowers_limits() {
        let mut t = FieldTable::default();
        t.insert("x-max-length".into(), AMQPValue::LongInt(10));
        let a = QueueArgs::parse(&t, "q", "/").unwrap();
        let def =
            serde_json::json!({"max-length": 5, "message-ttl": 100, "dead-letter-exchange": "d"});
        let p = a.with_policy(def.as_object().unwrap());
        assert_eq!(p.max_length, Some(5));
        assert_eq!(p.message_ttl, Some(100));
        assert_eq!(p.dlx.as_deref(), Some("d"));
    }
}
