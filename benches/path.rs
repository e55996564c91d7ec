//! The per-message cost of publish → route → enqueue → deliver inside one
//! process, with the broker's own types and no sockets: a message is built
//! as a channel builds it, routed by the vhost, enqueued, and delivered by
//! the queue into the consumer connection's outbound buffer, whose writer
//! (on a current-thread runtime driven by the benchmark) flushes it to a
//! sink. Manual-ack variants settle with multiple=true every 100 messages
//! and re-run dispatch, as a channel does on basic.ack.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use warren::message::Message;
use warren::queue::consumer::Consumer;
use warren::queue::{Queue, QueueConfig};
use warren::routing::exchange::Exchange;
use warren::session::delivery::ChannelShared;
use warren::session::outbound::ConnectionHandle;
use warren::vhost::{DestName, ExchangeDeclare, VHost};

const HEADER: [u8; 14] = [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];

struct Setup {
    rt: tokio::runtime::Runtime,
    vhost: Arc<VHost>,
    exchange: Arc<Exchange>,
    channel: Arc<ChannelShared>,
    queues: Vec<Arc<Queue>>,
    no_ack: bool,
    delivered: u64,
}

fn config() -> QueueConfig {
    QueueConfig {
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: FieldTable::default(),
    }
}

/// `nq` queues behind exchange `xname` of `kind` ("" = default exchange),
/// each with a consumer on one channel of one connection.
fn setup(xname: &str, kind: &str, nq: usize, bindings: usize, no_ack: bool) -> Setup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let vhost = VHost::new("/");
    if !xname.is_empty() {
        vhost
            .declare_exchange(&ExchangeDeclare {
                name: xname.into(),
                kind: kind.into(),
                passive: false,
                durable: false,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            })
            .expect("declare exchange");
    }
    let (conn, events) = ConnectionHandle::new(1, 131072);
    rt.spawn(conn.clone().run_writer(tokio::io::sink(), None));
    let channel = ChannelShared::new(1, conn);
    let mut queues = Vec::new();
    for i in 0..nq {
        let name = format!("q{i}");
        let (q, _) = vhost
            .declare_queue(&name, false, false, config(), 1)
            .expect("declare queue");
        let c = Consumer::new(
            Bytes::from(format!("ctag-{i}")),
            channel.clone(),
            no_ack,
            false,
            1000,
        );
        q.add_consumer(c).expect("consume");
        queues.push(q);
    }
    match kind {
        "fanout" => {
            for q in &queues {
                vhost
                    .bind(
                        xname,
                        DestName::Queue(&q.name),
                        "",
                        &FieldTable::default(),
                        1,
                    )
                    .expect("bind");
            }
        }
        "topic" => {
            for b in 0..bindings {
                let pattern = match b % 3 {
                    0 => format!("perf.{b}.*"),
                    1 => format!("perf.{b}.#"),
                    _ => format!("*.{b}.x"),
                };
                let q = &queues[b % nq];
                vhost
                    .bind(
                        xname,
                        DestName::Queue(&q.name),
                        &pattern,
                        &FieldTable::default(),
                        1,
                    )
                    .expect("bind");
            }
        }
        _ => {}
    }
    let exchange = vhost.exchange(xname).expect("exchange");
    // Keep the event receiver alive for as long as the connection.
    std::mem::forget(events);
    Setup {
        rt,
        vhost,
        exchange,
        channel,
        queues,
        no_ack,
        delivered: 0,
    }
}

impl Setup {
    /// One publish as a channel does it: build, route, enqueue (which delivers).
    fn publish(&mut self, rk: &[u8], route: &mut Vec<Arc<Queue>>) {
        let msg = Message::new(
            self.exchange.name.as_bytes(),
            rk,
            &HEADER,
            Bytes::from_static(&[7u8; 16]),
        );
        route.clear();
        let key = String::from_utf8_lossy(msg.routing_key());
        self.vhost.route(&self.exchange, &key, &mut || None, route);
        for q in route.drain(..) {
            q.publish(msg.clone(), None, None);
            self.delivered += 1;
        }
        if !self.no_ack && self.delivered >= 100 {
            // basic.ack multiple=true of everything delivered so far, then
            // dispatch on the queues that freed prefetch.
            drop(black_box(self.channel.take_all_unacked()));
            for q in &self.queues {
                q.dispatch();
            }
            self.delivered = 0;
        }
    }

    /// Lets the writer flush the outbound buffer to the sink.
    fn flush(&self) {
        self.rt.block_on(async {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        });
    }
}

fn run(c: &mut Criterion, name: &str, mut s: Setup, keys: Vec<Vec<u8>>) {
    let mut g = c.benchmark_group("publish_route_deliver");
    g.throughput(Throughput::Elements(1));
    let mut route = Vec::new();
    let mut i = 0usize;
    g.bench_function(name, |b| {
        b.iter(|| {
            s.publish(&keys[i % keys.len()], &mut route);
            i += 1;
            if i.is_multiple_of(64) {
                s.flush();
            }
        })
    });
    g.finish();
    let backlog: u32 = s.queues.iter().map(|q| q.message_count()).sum();
    assert!(
        backlog < 100_000,
        "deliveries stalled: {backlog} messages queued"
    );
}

fn path(c: &mut Criterion) {
    run(
        c,
        "default_exchange_auto_ack",
        setup("", "direct", 1, 0, true),
        vec![b"q0".to_vec()],
    );
    run(
        c,
        "default_exchange_manual_ack",
        setup("", "direct", 1, 0, false),
        vec![b"q0".to_vec()],
    );
    run(
        c,
        "fanout_10_queues_auto_ack",
        setup("perf.fanout", "fanout", 10, 0, true),
        vec![Vec::new()],
    );
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|b| format!("perf.{b}.x").into_bytes())
        .collect();
    run(
        c,
        "topic_10000_bindings_auto_ack",
        setup("perf.topic", "topic", 10, 10_000, true),
        keys,
    );
}

criterion_group!(benches, path);
criterion_main!(benches);
