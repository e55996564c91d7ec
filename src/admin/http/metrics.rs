//! `/metrics`: Prometheus metrics in the text exposition format (0.0.4).
//!
//! Names follow RabbitMQ's `rabbitmq_prometheus` plugin where a metric
//! means the same (`rabbitmq_connections`, `rabbitmq_global_messages_*`,
//! `rabbitmq_queue_messages_ready`, ...), so existing dashboards and alerts
//! keep working; counters end in `_total`. Per-queue series carry `vhost`
//! and `queue` labels. Like RabbitMQ's, the endpoint needs no login.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::broker::Broker;
use crate::queue::Queue;

use super::store_age::StoreAges;
use super::system::Resources;
use super::{AppState, RABBITMQ_COMPAT_VERSION, St, rates};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(metrics))
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {v}");
    }
}

/// Renders every metric.
pub fn render(s: &AppState) -> String {
    let b = &s.broker;
    let mut o = Out(String::with_capacity(16 * 1024));
    identity(&mut o, s);
    connections(&mut o, b);
    let queues = objects(&mut o, b);
    global_messages(&mut o, b);
    per_queue(&mut o, b, &queues);
    store(&mut o, b);
    resources(&mut o, b);
    o.0
}

/// Build, node and uptime.
fn identity(o: &mut Out, s: &AppState) {
    let b = &s.broker;
    o.head("rabbitmq_build_info", "untyped", "Build information");
    let _ = writeln!(
        o.0,
        "rabbitmq_build_info{{rabbitmq_version=\"{RABBITMQ_COMPAT_VERSION}\",product_name=\"warren\",product_version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    o.head(
        "rabbitmq_identity_info",
        "untyped",
        "Node and cluster names",
    );
    let _ = writeln!(
        o.0,
        "rabbitmq_identity_info{{rabbitmq_node=\"{0}\",rabbitmq_cluster=\"{0}\"}} 1",
        label(&s.node)
    );
    let uptime = b.started_at.elapsed().map_or(0.0, |d| d.as_secs_f64());
    o.one(
        "warren_uptime_seconds",
        "gauge",
        "Seconds since the broker started",
        format!("{uptime:.3}"),
    );
}

/// Connections and channels: open now, opened and closed in all.
fn connections(o: &mut Out, b: &Broker) {
    let conns = b.connections::<crate::session::outbound::ConnectionHandle>();
    let open_conns = conns.iter().filter(|c| c.info.get().is_some()).count() as u64;
    let channels: u64 = conns
        .iter()
        .map(|c| c.channel_count.load(Relaxed) as u64)
        .sum();
    let conns_opened = b.stats.connections_opened.load(Relaxed);
    let chans_opened = b.stats.retired_connections.channels_opened()
        + conns
            .iter()
            .map(|c| c.stats.channels_opened.load(Relaxed))
            .sum::<u64>();
    o.one(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        open_conns,
    );
    o.one(
        "rabbitmq_connections_opened_total",
        "counter",
        "Total number of connections opened",
        conns_opened,
    );
    o.one(
        "rabbitmq_connections_closed_total",
        "counter",
        "Total number of connections closed",
        conns_opened.saturating_sub(conns.len() as u64),
    );
    o.one(
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        channels,
    );
    o.one(
        "rabbitmq_channels_opened_total",
        "counter",
        "Total number of channels opened",
        chans_opened,
    );
    o.one(
        "rabbitmq_channels_closed_total",
        "counter",
        "Total number of channels closed",
        chans_opened.saturating_sub(channels),
    );
}

/// Counts of consumers, queues, exchanges and vhosts; returns every queue,
/// by vhost and then by name.
fn objects(o: &mut Out, b: &Broker) -> Vec<Arc<Queue>> {
    let vhosts = b.vhosts();
    let mut queues = Vec::new();
    let mut exchanges = 0u64;
    for vh in &vhosts {
        exchanges += vh.exchanges().len() as u64;
        let mut qs = vh.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        queues.extend(qs);
    }
    let consumers: u64 = queues.iter().map(|q| q.consumer_count() as u64).sum();
    o.one(
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        consumers,
    );
    o.one("rabbitmq_queues", "gauge", "Queues available", queues.len());
    o.one(
        "rabbitmq_exchanges",
        "gauge",
        "Exchanges available",
        exchanges,
    );
    o.one(
        "rabbitmq_vhosts",
        "gauge",
        "Virtual hosts available",
        vhosts.len(),
    );
    queues
}

/// The broker-wide message counters (`rabbitmq_global_messages_*`).
fn global_messages(o: &mut Out, b: &Broker) {
    let t = rates::global_totals(b);
    let g = "rabbitmq_global_messages";
    for (name, help, v) in [
        (
            "received_total",
            "Total number of messages received from publishers",
            t.publish,
        ),
        (
            "routed_total",
            "Total number of messages routed to queues",
            t.publish
                .saturating_sub(t.return_unroutable + t.drop_unroutable),
        ),
        (
            "unroutable_returned_total",
            "Total number of unroutable messages returned to publishers",
            t.return_unroutable,
        ),
        (
            "unroutable_dropped_total",
            "Total number of unroutable messages dropped",
            t.drop_unroutable,
        ),
        (
            "delivered_total",
            "Total number of messages delivered to consumers",
            t.deliver_get(),
        ),
        (
            "delivered_consume_manual_ack_total",
            "Messages delivered to consumers that ack",
            t.deliver,
        ),
        (
            "delivered_consume_auto_ack_total",
            "Messages delivered to consumers in no-ack mode",
            t.deliver_no_ack,
        ),
        (
            "delivered_get_manual_ack_total",
            "Messages fetched with basic.get and manual ack",
            t.get,
        ),
        (
            "delivered_get_auto_ack_total",
            "Messages fetched with basic.get in no-ack mode",
            t.get_no_ack,
        ),
        (
            "get_empty_total",
            "basic.get operations on an empty queue",
            t.get_empty,
        ),
        (
            "redelivered_total",
            "Total number of messages redelivered to consumers",
            t.redeliver,
        ),
        (
            "acknowledged_total",
            "Total number of messages acknowledged by consumers",
            t.ack,
        ),
        (
            "dead_lettered_total",
            "Total number of messages dead-lettered (rejected, expired or over a length limit)",
            t.dead_lettered,
        ),
    ] {
        o.one(&format!("{g}_{name}"), "counter", help, v);
    }
}

/// The per-queue metrics: name, type, help; in the order of the values
/// `per_queue` computes for each queue.
const PER_QUEUE: [(&str, &str, &str); 9] = [
    (
        "rabbitmq_queue_messages",
        "gauge",
        "Messages ready and unacknowledged",
    ),
    (
        "rabbitmq_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered",
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "gauge",
        "Messages delivered and not yet acknowledged",
    ),
    (
        "rabbitmq_queue_consumers",
        "gauge",
        "Consumers on the queue",
    ),
    (
        "rabbitmq_queue_messages_published_total",
        "counter",
        "Messages enqueued",
    ),
    (
        "rabbitmq_queue_messages_delivered_total",
        "counter",
        "Messages delivered (consume and get)",
    ),
    (
        "rabbitmq_queue_messages_redelivered_total",
        "counter",
        "Messages redelivered",
    ),
    (
        "rabbitmq_queue_messages_acked_total",
        "counter",
        "Messages acknowledged",
    ),
    (
        "warren_queue_oldest_stored_message_age_seconds",
        "gauge",
        "Seconds since the oldest message the queue holds in the message store (ready or unacked) was written; 0 for none",
    ),
];

/// One series per queue for each per-queue metric.
fn per_queue(o: &mut Out, b: &Broker, queues: &[Arc<Queue>]) {
    let ages = StoreAges::collect(b);
    let rows: Vec<(String, [u64; 9])> = queues
        .iter()
        .map(|q| {
            let d = rates::queue_depth(q);
            let st = q.stats.snapshot();
            (
                format!("vhost=\"{}\",queue=\"{}\"", label(&q.vhost), label(&q.name)),
                [
                    d[0],
                    d[1],
                    d[2],
                    q.consumer_count() as u64,
                    st.publish,
                    st.deliver_get(),
                    st.redeliver,
                    st.ack,
                    ages.queue_age_seconds(q).unwrap_or(0),
                ],
            )
        })
        .collect();
    for (i, (name, kind, help)) in PER_QUEUE.iter().enumerate() {
        o.head(name, kind, help);
        for (labels, vals) in &rows {
            let _ = writeln!(o.0, "{name}{{{labels}}} {}", vals[i]);
        }
    }
}

/// The message store's segment files.
fn store(o: &mut Out, b: &Broker) {
    let (segments, oldest) = b.durability.store().map_or((0, None), |st| st.segments());
    o.one(
        "warren_store_segments",
        "gauge",
        "Segment files of the message store",
        segments,
    );
    o.one(
        "warren_store_oldest_segment_age_seconds",
        "gauge",
        "Seconds since the oldest message store segment still on disk was started (a pinned message keeps it); 0 for none",
        oldest.map_or(0, |t| crate::store::wall_ms().saturating_sub(t) / 1000),
    );
}

/// Memory, disk, file descriptors and the alarms on them.
fn resources(o: &mut Out, b: &Broker) {
    let r = Resources::now(b);
    o.one(
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
        r.mem_used,
    );
    o.one(
        "rabbitmq_resident_memory_limit_bytes",
        "gauge",
        "Memory high watermark in bytes",
        r.mem_limit,
    );
    o.one(
        "rabbitmq_disk_space_available_bytes",
        "gauge",
        "Disk space available in bytes (data directory)",
        r.disk_free,
    );
    o.one(
        "rabbitmq_disk_space_available_limit_bytes",
        "gauge",
        "Free disk space low watermark in bytes",
        r.disk_free_limit,
    );
    o.one(
        "rabbitmq_process_open_fds",
        "gauge",
        "Open file descriptors",
        r.fd_used,
    );
    o.one(
        "rabbitmq_process_max_fds",
        "gauge",
        "Open file descriptors limit",
        r.fd_total,
    );
    o.one(
        "rabbitmq_alarms_memory_used_watermark",
        "gauge",
        "1 if the memory alarm is in effect",
        r.mem_alarm as u8,
    );
    o.one(
        "rabbitmq_alarms_free_disk_space_watermark",
        "gauge",
        "1 if the free disk space alarm is in effect",
        r.disk_free_alarm as u8,
    );
    o.one(
        "rabbitmq_alarms_file_descriptor_limit",
        "gauge",
        "1 if the file descriptor limit alarm is in effect",
        0,
    );
}

async fn metrics(State(s): St) -> Response {
    let body = render(&s);
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
