//! Create, Delete, Metadata, StreamStats, StoreOffset and QueryOffset.
//!
//! Create declares the same durable stream queue an AMQP 0-9-1
//! `queue.declare` with `x-queue-type: stream` makes (the protocol's
//! `max-length-bytes`, `max-age` and `stream-max-segment-size-bytes`
//! become its `x-` arguments); Delete takes the AMQP deletion path.
//! Offsets stored for a consumer name share the stream's tracked-offset
//! map with AMQP 0-9-1 server-side tracking (`queue::stream::tracking`),
//! which keeps the next offset to read: StoreOffset(n) records n + 1.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::codec::{Fields, Out};
use super::connection::{Conn, End, Res};
use super::{code, key};
use crate::auth::Access;
use crate::protocol::error::code as amqp_code;
use crate::queue::QueueConfig;

/// A Create argument as the queue argument it stands for.
fn queue_argument(k: &str, v: &str) -> Result<Option<(&'static str, AMQPValue)>, String> {
    let number = || v.parse::<i64>().map_err(|_| format!("invalid {k}: {v}"));
    Ok(match k {
        "max-length-bytes" => Some(("x-max-length-bytes", AMQPValue::LongLongInt(number()?))),
        "stream-max-segment-size-bytes" => Some((
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongLongInt(number()?),
        )),
        "max-age" => Some(("x-max-age", crate::protocol::fields::long_string(v))),
        // Placement in a cluster: nothing to do on one node.
        "queue-leader-locator" | "initial-cluster-size" => None,
        _ => return Err(format!("unknown stream argument {k}")),
    })
}

impl Conn {
    /// Create: a durable stream queue in the vhost.
    pub async fn create(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let name = f.string()?;
        let args = f.string_map()?;
        let c = self.create_stream(&name, &args);
        self.respond(key::CREATE, corr, c).await
    }

    pub fn create_stream(&self, name: &str, args: &[(String, String)]) -> u16 {
        let Some(vhost) = self.vhost.clone() else {
            return code::INTERNAL_ERROR;
        };
        if name.is_empty() || name.starts_with("amq.") {
            return code::PRECONDITION_FAILED;
        }
        if !self.allowed(Access::Configure, name) {
            return code::ACCESS_REFUSED;
        }
        if let Some(q) = vhost.queue(name) {
            return if q.stream().is_some() {
                code::STREAM_ALREADY_EXISTS
            } else {
                code::PRECONDITION_FAILED
            };
        }
        let mut table = FieldTable::default();
        table.insert(
            "x-queue-type".into(),
            crate::protocol::fields::long_string("stream"),
        );
        for (k, v) in args {
            match queue_argument(k, v) {
                Ok(Some((k, v))) => {
                    table.insert(k.into(), v);
                }
                Ok(None) => {}
                Err(_) => return code::PRECONDITION_FAILED,
            }
        }
        if self.broker.check_queue_limit(&vhost, name).is_err() {
            return code::PRECONDITION_FAILED;
        }
        let config = QueueConfig {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: table,
        };
        match vhost.declare_queue(name, false, false, config, 0) {
            Ok((_, true)) => code::OK,
            Ok((_, false)) => code::STREAM_ALREADY_EXISTS,
            Err(e) if e.code == amqp_code::ACCESS_REFUSED => code::ACCESS_REFUSED,
            Err(e) if e.code == amqp_code::INTERNAL_ERROR => code::INTERNAL_ERROR,
            Err(_) => code::PRECONDITION_FAILED,
        }
    }

    /// Delete: the stream queue goes as a queue.delete would remove it.
    pub async fn delete(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let name = f.string()?;
        let c = if self.stream_queue(&name).is_none() {
            code::STREAM_DOES_NOT_EXIST
        } else if !self.allowed(Access::Configure, &name) {
            code::ACCESS_REFUSED
        } else {
            let vhost = self.vhost.clone().ok_or(End::Done)?;
            match vhost.delete_queue(&name, false, false, 0) {
                Ok(Some(_)) => code::OK,
                Ok(None) => code::STREAM_DOES_NOT_EXIST,
                Err(_) => code::PRECONDITION_FAILED,
            }
        };
        self.respond(key::DELETE, corr, c).await
    }

    /// Metadata: this node leads every stream that exists.
    pub async fn metadata(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let n = f.count(2)?;
        let mut names = Vec::with_capacity(n);
        for _ in 0..n {
            names.push(f.string()?);
        }
        let (host, port) = super::advertised(&self.broker, self.tls);
        // The response has no code of its own, only one per stream.
        let mut o = Out::new(key::METADATA | 0x8000, 1);
        o.u32(corr);
        o.u32(1).u16(0).string(&host).u32(port);
        o.u32(names.len() as u32);
        for name in &names {
            o.string(name);
            if self.stream_queue(name).is_some() {
                o.u16(code::OK).u16(0).u32(0);
            } else {
                o.u16(code::STREAM_DOES_NOT_EXIST).u16(0xffff).u32(0);
            }
        }
        self.send(&o.finish()).await
    }

    /// StreamStats: the first offset and the last durable chunk's.
    pub async fn stream_stats(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let name = f.string()?;
        let Some(q) = self.stream_queue(&name) else {
            return self
                .respond(key::STREAM_STATS, corr, code::STREAM_DOES_NOT_EXIST)
                .await;
        };
        if !self.allowed(Access::Read, &name) {
            return self
                .respond(key::STREAM_STATS, corr, code::ACCESS_REFUSED)
                .await;
        }
        let log = q.stream().ok_or(End::Done)?.log().clone();
        let empty = log.durable_offset() <= log.first_offset();
        let (first, committed) = if empty {
            (-1, -1)
        } else {
            (log.first_offset() as i64, log.last_chunk_offset() as i64)
        };
        let mut o = Out::response(key::STREAM_STATS, corr, code::OK);
        o.u32(2);
        o.string("first_chunk_id").i64(first);
        o.string("committed_chunk_id").i64(committed);
        self.send(&o.finish()).await
    }

    /// StoreOffset (no response): records the offset for the name.
    pub fn store_offset(&mut self, f: &mut Fields) -> Res {
        let reference = f.string()?;
        let name = f.string()?;
        let offset = f.u64()?;
        if reference.is_empty() || reference.len() > 256 || !self.allowed(Access::Read, &name) {
            return Ok(());
        }
        if let Some(q) = self.stream_queue(&name)
            && let Some(s) = q.stream()
        {
            s.set_tracked(&q, &reference, offset.saturating_add(1), false);
        }
        Ok(())
    }

    /// QueryOffset: the offset stored for the name, or NO_OFFSET.
    pub async fn query_offset(&mut self, f: &mut Fields) -> Res {
        let corr = f.u32()?;
        let reference = f.string()?;
        let name = f.string()?;
        let (c, offset) = match self.stream_queue(&name) {
            None => (code::STREAM_DOES_NOT_EXIST, 0),
            Some(_) if !self.allowed(Access::Read, &name) => (code::ACCESS_REFUSED, 0),
            Some(q) => match q.stream().and_then(|s| s.tracked(&reference)) {
                Some(next) if next > 0 => (code::OK, next - 1),
                _ => (code::NO_OFFSET, 0),
            },
        };
        let mut o = Out::response(key::QUERY_OFFSET, corr, c);
        o.u64(offset);
        self.send(&o.finish()).await
    }
}
