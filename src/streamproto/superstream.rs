//! Super streams: a durable direct exchange (argument `x-super-stream:
//! true`) with partition streams bound to it by routing key, each binding
//! carrying `x-stream-partition-order`, as RabbitMQ lays them out (and so
//! also declarable over AMQP 0-9-1). CreateSuperStream and
//! DeleteSuperStream make and remove the whole set; Partitions lists the
//! partitions in order; Route gives the partitions a routing key selects.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::codec::{Fields, Out};
use super::connection::{Conn, End, Res};
use super::{code, key};
use crate::auth::Access;
use crate::routing::exchange::Dest;
use crate::vhost::{DestName, ExchangeDeclare};

const ORDER: &str = "x-stream-partition-order";

impl Conn {
    pub async fn create_super_stream(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let name = f.string()?;
        let partitions = strings(f)?;
        let keys = strings(f)?;
        let args = f.string_map()?;
        let c = self.create_super(&name, &partitions, &keys, &args);
        self.respond(key::CREATE_SUPER_STREAM, corr, c).await
    }

    fn create_super(
        &self,
        name: &str,
        parts: &[String],
        keys: &[String],
        args: &[(String, String)],
    ) -> u16 {
        let Some(vhost) = self.vhost.clone() else {
            return code::INTERNAL_ERROR;
        };
        if name.is_empty() || parts.is_empty() || parts.len() != keys.len() {
            return code::PRECONDITION_FAILED;
        }
        let names = std::iter::once(name).chain(parts.iter().map(String::as_str));
        if !names.clone().all(|n| self.allowed(Access::Configure, n)) {
            return code::ACCESS_REFUSED;
        }
        if vhost.exchange(name).is_some() || parts.iter().any(|p| vhost.queue(p).is_some()) {
            return code::STREAM_ALREADY_EXISTS;
        }
        for p in parts {
            let c = self.create_stream(p, args);
            if c != code::OK {
                return c;
            }
        }
        let mut xargs = FieldTable::default();
        xargs.insert("x-super-stream".into(), AMQPValue::Boolean(true));
        let d = ExchangeDeclare {
            name: name.to_owned(),
            kind: "direct".into(),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: xargs,
        };
        if vhost.declare_exchange(&d).is_err() {
            return code::PRECONDITION_FAILED;
        }
        for (i, (p, k)) in parts.iter().zip(keys).enumerate() {
            let mut b = FieldTable::default();
            b.insert(ORDER.into(), AMQPValue::LongInt(i as i32));
            if vhost.bind(name, DestName::Queue(p), k, &b, 0).is_err() {
                return code::PRECONDITION_FAILED;
            }
        }
        code::OK
    }

    pub async fn delete_super_stream(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let name = f.string()?;
        let vhost = self.vhost.clone().ok_or(End::Done)?;
        let c = if vhost.exchange(&name).is_none() {
            code::STREAM_DOES_NOT_EXIST
        } else if !self.allowed(Access::Configure, &name) {
            code::ACCESS_REFUSED
        } else {
            for p in self.partitions_of(&name) {
                if self.allowed(Access::Configure, &p) {
                    let _ = vhost.delete_queue(&p, false, false, 0);
                }
            }
            match vhost.delete_exchange(&name, false) {
                Ok(()) => code::OK,
                Err(_) => code::PRECONDITION_FAILED,
            }
        };
        self.respond(key::DELETE_SUPER_STREAM, corr, c).await
    }

    /// The partition streams of super stream `name`, in partition order
    /// (then by name), for `routing_key` only when given.
    fn partitions_in(&self, name: &str, routing_key: Option<&str>) -> Option<Vec<String>> {
        let x = self.vhost.as_ref()?.exchange(name)?;
        let mut parts: Vec<(i64, String)> = x
            .bindings()
            .into_iter()
            .filter(|(_, b)| routing_key.is_none_or(|k| b.routing_key == k))
            .filter_map(|(d, b)| match d {
                Dest::Queue(q) if q.stream().is_some() => {
                    let order = match b.arguments.inner().get(ORDER) {
                        Some(AMQPValue::LongInt(n)) => *n as i64,
                        Some(AMQPValue::LongLongInt(n)) => *n,
                        _ => i64::MAX,
                    };
                    Some((order, q.name.clone()))
                }
                _ => None,
            })
            .collect();
        parts.sort();
        parts.dedup_by(|a, b| a.1 == b.1);
        Some(parts.into_iter().map(|(_, n)| n).collect())
    }

    pub(super) fn partitions_of(&self, name: &str) -> Vec<String> {
        self.partitions_in(name, None).unwrap_or_default()
    }

    pub async fn partitions(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let name = f.string()?;
        let found = self.partitions_in(&name, None);
        self.stream_list(key::PARTITIONS, corr, found).await
    }

    pub async fn route(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let routing_key = f.string()?;
        let name = f.string()?;
        let found = self.partitions_in(&name, Some(&routing_key));
        self.stream_list(key::ROUTE, corr, found).await
    }

    /// A response with a code and a list of streams.
    async fn stream_list(&mut self, k: u16, corr: u32, found: Option<Vec<String>>) -> Res {
        let c = if found.is_some() {
            code::OK
        } else {
            code::STREAM_DOES_NOT_EXIST
        };
        let streams = found.unwrap_or_default();
        let mut o = Out::response(k, corr, c);
        o.u32(streams.len() as u32);
        for s in &streams {
            o.string(s);
        }
        self.send(&o.finish()).await
    }
}

/// [string]
fn strings(f: &mut Fields) -> Result<Vec<String>, super::codec::FrameError> {
    let n = f.count(2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(f.string()?);
    }
    Ok(out)
}
