//! Message rates: a background task samples the counters every
//! `SAMPLE_INTERVAL` (RabbitMQ's default `collect_statistics_interval` is
//! 5 s) and keeps, per queue, per vhost, per connection and for the broker,
//! the rate of each counter over the last interval. Counts in the JSON are
//! always read live; only the `*_details.rate` figures come from samples.
//!
//! For charts, the samples of the last `HISTORY` are kept for the broker
//! and for queues someone watches (asked for with `msg_rates_age` or
//! `lengths_age` within the last `HISTORY`), and listed as RabbitMQ lists
//! them: `?msg_rates_age=600&msg_rates_incr=5` adds `samples` (counter
//! values with millisecond timestamps, newest first), `avg` and `avg_rate`
//! to each `*_details`, `lengths_age`/`lengths_incr` the same for queue
//! lengths. Keeping them only for watched queues (at most `MAX_WATCHED`)
//! keeps 10,000 idle queues from costing ten minutes of samples each.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde_json::{Map, Value};

use super::AppState;
use crate::broker::Broker;
use crate::ops::stats::MsgTotals;

/// How often counters are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How long samples are kept for charts (and a queue stays watched).
pub const HISTORY: Duration = Duration::from_secs(600);

/// Most queues whose samples are kept at once (see `Rates::watch`).
pub const MAX_WATCHED: usize = 100;

/// Samples kept: `HISTORY` at one per `SAMPLE_INTERVAL`.
const HISTORY_LEN: usize = (HISTORY.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize + 1;

/// One kept sample: the counters and queue lengths at a time.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    totals: MsgTotals,
    depth: [u64; 3],
}

/// Kept samples, oldest first.
type Series = VecDeque<Point>;

#[derive(Debug, Default)]
struct History {
    global: Series,
    /// By vhost name (for users who see only some vhosts).
    vhosts: HashMap<String, Series>,
    /// By queue address, for watched queues.
    queues: HashMap<usize, Series>,
    /// Watched queues (by address) and when they were last asked for.
    watched: HashMap<usize, Instant>,
}

/// Counter names in `message_stats` and their values.
pub fn fields(t: &MsgTotals) -> [(&'static str, u64); 12] {
    let v = [
        t.publish,
        t.confirm,
        t.return_unroutable,
        t.drop_unroutable,
        t.deliver,
        t.deliver_no_ack,
        t.get,
        t.get_no_ack,
        t.get_empty,
        t.deliver_get(),
        t.redeliver,
        t.ack,
    ];
    std::array::from_fn(|i| (NAMES[i].0, v[i]))
}

/// Each counter's name and its `_details` name.
const NAMES: [(&str, &str); 12] = [
    ("publish", "publish_details"),
    ("confirm", "confirm_details"),
    ("return_unroutable", "return_unroutable_details"),
    ("drop_unroutable", "drop_unroutable_details"),
    ("deliver", "deliver_details"),
    ("deliver_no_ack", "deliver_no_ack_details"),
    ("get", "get_details"),
    ("get_no_ack", "get_no_ack_details"),
    ("get_empty", "get_empty_details"),
    ("deliver_get", "deliver_get_details"),
    ("redeliver", "redeliver_details"),
    ("ack", "ack_details"),
];

/// Fields a queue reports.
pub const QUEUE_FIELDS: &[&str] = &[
    "publish",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "deliver_get",
    "redeliver",
    "ack",
];
/// Fields a connection or channel reports.
pub const PUBLISHER_FIELDS: &[&str] =
    &["publish", "confirm", "return_unroutable", "drop_unroutable"];
/// Fields the overview and vhosts report.
pub const ALL_FIELDS: &[&str] = &[
    "publish",
    "confirm",
    "return_unroutable",
    "drop_unroutable",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "deliver_get",
    "redeliver",
    "ack",
];

/// Per-second rates of the counters in `fields` order, plus queue depth.
#[derive(Debug, Default, Clone, Copy)]
pub struct MsgRates {
    counters: [f64; 12],
    /// messages, messages_ready, messages_unacknowledged
    depth: [f64; 3],
}

#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    totals: MsgTotals,
    depth: [u64; 3],
    rates: MsgRates,
}

impl Sample {
    fn next(&self, totals: MsgTotals, depth: [u64; 3], secs: f64) -> Sample {
        let (a, b) = (fields(&self.totals), fields(&totals));
        let mut rates = MsgRates::default();
        for i in 0..a.len() {
            rates.counters[i] = b[i].1.saturating_sub(a[i].1) as f64 / secs;
        }
        for ((r, now), before) in rates.depth.iter_mut().zip(depth).zip(self.depth) {
            *r = (now as f64 - before as f64) / secs;
        }
        Sample {
            totals,
            depth,
            rates,
        }
    }
}

#[derive(Debug, Default)]
struct Samples {
    at: Option<Instant>,
    global: Sample,
    vhosts: HashMap<String, Sample>,
    /// By queue address (the Arc's pointer).
    queues: HashMap<usize, Sample>,
    conns: HashMap<u64, Sample>,
}

/// The latest rates.
#[derive(Debug, Default)]
pub struct Rates {
    inner: RwLock<Samples>,
    history: RwLock<History>,
}

impl Rates {
    /// The broker's rates.
    pub fn global(&self) -> MsgRates {
        self.inner.read().global.rates
    }

    /// A vhost's rates.
    pub fn vhost(&self, name: &str) -> MsgRates {
        self.inner
            .read()
            .vhosts
            .get(name)
            .map(|s| s.rates)
            .unwrap_or_default()
    }

    /// A queue's rates.
    pub fn queue(&self, q: &Arc<crate::queue::Queue>) -> MsgRates {
        self.inner
            .read()
            .queues
            .get(&(Arc::as_ptr(q) as usize))
            .map(|s| s.rates)
            .unwrap_or_default()
    }

    /// A connection's rates.
    pub fn connection(&self, id: u64) -> MsgRates {
        self.inner
            .read()
            .conns
            .get(&id)
            .map(|s| s.rates)
            .unwrap_or_default()
    }

    /// Keeps samples of `q` for charts from now on (for `HISTORY`). At
    /// most `MAX_WATCHED` queues are watched: beyond, the one asked for
    /// least recently is forgotten, so no client can make every queue
    /// keep ten minutes of samples.
    pub fn watch(&self, q: &Arc<crate::queue::Queue>) {
        let mut h = self.history.write();
        let key = Arc::as_ptr(q) as usize;
        if !h.watched.contains_key(&key)
            && h.watched.len() >= MAX_WATCHED
            && let Some(oldest) = h.watched.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
        {
            h.watched.remove(&oldest);
            h.queues.remove(&oldest);
        }
        h.watched.insert(key, Instant::now());
    }

    /// The broker's kept samples, oldest first.
    pub fn global_history(&self) -> Vec<Point> {
        self.history.read().global.iter().copied().collect()
    }

    /// The kept samples of some vhosts, summed (oldest first): what a user
    /// who sees only those vhosts is shown. A vhost created since has fewer
    /// samples; the series are aligned on their newest.
    pub fn vhosts_history(&self, names: &[&str]) -> Vec<Point> {
        let h = self.history.read();
        let Some(len) = names
            .iter()
            .filter_map(|n| h.vhosts.get(*n))
            .map(VecDeque::len)
            .max()
        else {
            return Vec::new();
        };
        let mut out: Vec<Option<Point>> = vec![None; len];
        for series in names.iter().filter_map(|n| h.vhosts.get(*n)) {
            let skip = len - series.len();
            for (slot, p) in out[skip..].iter_mut().zip(series) {
                let sum = slot.get_or_insert(Point {
                    at_ms: p.at_ms,
                    totals: MsgTotals::default(),
                    depth: [0; 3],
                });
                sum.totals.add(&p.totals);
                add_depth(&mut sum.depth, p.depth);
            }
        }
        out.into_iter().flatten().collect()
    }

    /// A watched queue's kept samples, oldest first.
    pub fn queue_history(&self, q: &Arc<crate::queue::Queue>) -> Vec<Point> {
        self.history
            .read()
            .queues
            .get(&(Arc::as_ptr(q) as usize))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Takes one sample of everything.
    pub fn sample(&self, b: &Broker) {
        let now = Instant::now();
        let mut s = self.inner.write();
        let secs =
            s.at.map_or(SAMPLE_INTERVAL.as_secs_f64(), |t| {
                now.duration_since(t).as_secs_f64()
            })
            .max(0.001);
        let first = s.at.is_none();
        let step = |prev: Option<&Sample>, totals: MsgTotals, depth: [u64; 3]| match prev {
            Some(p) if !first => p.next(totals, depth, secs),
            _ => Sample {
                totals,
                depth,
                rates: MsgRates::default(),
            },
        };
        let mut g_depth = [0u64; 3];
        let mut vhosts = HashMap::new();
        let mut queues = HashMap::new();
        for vh in b.vhosts() {
            let mut v_depth = [0u64; 3];
            for q in vh.queues() {
                let d = queue_depth(&q);
                add_depth(&mut v_depth, d);
                let key = Arc::as_ptr(&q) as usize;
                queues.insert(key, step(s.queues.get(&key), q.stats.snapshot(), d));
            }
            add_depth(&mut g_depth, v_depth);
            let name = vh.name.to_string();
            let sample = step(s.vhosts.get(&name), vh.queue_totals(), v_depth);
            vhosts.insert(name, sample);
        }
        let mut conns = HashMap::new();
        for c in b.connections::<crate::session::outbound::ConnectionHandle>() {
            conns.insert(c.id, step(s.conns.get(&c.id), c.stats.snapshot(), [0; 3]));
        }
        let global = step(Some(&s.global), global_totals(b), g_depth);
        self.keep(&global, &vhosts, &queues);
        *s = Samples {
            at: Some(now),
            global,
            vhosts,
            queues,
            conns,
        };
    }
}

impl Rates {
    /// Appends this sample to the kept ones (the broker's and the watched
    /// queues'), forgetting what is older than `HISTORY`.
    fn keep(
        &self,
        global: &Sample,
        vhosts: &HashMap<String, Sample>,
        queues: &HashMap<usize, Sample>,
    ) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let point = |s: &Sample| Point {
            at_ms,
            totals: s.totals,
            depth: s.depth,
        };
        let push = |series: &mut Series, p: Point| {
            if series.len() >= HISTORY_LEN {
                series.pop_front();
            }
            series.push_back(p);
        };
        let mut h = self.history.write();
        push(&mut h.global, point(global));
        h.vhosts.retain(|k, _| vhosts.contains_key(k));
        for (k, v) in vhosts {
            match h.vhosts.get_mut(k) {
                Some(series) => push(series, point(v)),
                None => {
                    h.vhosts.insert(k.clone(), [point(v)].into());
                }
            }
        }
        h.watched
            .retain(|k, since| since.elapsed() < HISTORY && queues.contains_key(k));
        let History {
            queues: series,
            watched,
            ..
        } = &mut *h;
        series.retain(|k, _| watched.contains_key(k));
        for k in watched.keys() {
            if let Some(s) = queues.get(k) {
                push(series.entry(*k).or_default(), point(s));
            }
        }
    }
}

/// What a request asks of kept samples: `msg_rates_age`/`msg_rates_incr`
/// and `lengths_age`/`lengths_incr`, in seconds, as in RabbitMQ.
#[derive(Debug, Default, Clone, Copy)]
pub struct SampleQuery {
    /// (age, increment) of message rate samples, if asked for.
    pub rates: Option<(u64, u64)>,
    /// (age, increment) of queue length samples, if asked for.
    pub lengths: Option<(u64, u64)>,
}

impl SampleQuery {
    /// Reads the query string.
    pub fn parse(q: &HashMap<String, String>) -> SampleQuery {
        let pair = |age: &str, incr: &str| {
            let age: u64 = q.get(age)?.parse().ok()?;
            let incr = q
                .get(incr)
                .and_then(|v| v.parse().ok())
                .unwrap_or(SAMPLE_INTERVAL.as_secs());
            Some((age.min(HISTORY.as_secs()), incr.max(1)))
        };
        SampleQuery {
            rates: pair("msg_rates_age", "msg_rates_incr"),
            lengths: pair("lengths_age", "lengths_incr"),
        }
    }

    /// Whether any samples are asked for.
    pub fn any(&self) -> bool {
        self.rates.is_some() || self.lengths.is_some()
    }

    /// Adds `samples`, `avg` and `avg_rate` to the `*_details` of a
    /// `message_stats` object (`stats`) and of an object with queue lengths
    /// (`lengths`: `queue_totals`, or a queue), from `history` (oldest
    /// first).
    pub fn add(&self, history: &[Point], stats: &mut Value, lengths: &mut Value) {
        let now_ms = history.last().map_or(0, |p| p.at_ms);
        let pick = |(age, incr): (u64, u64)| -> Vec<&Point> {
            let mut out: Vec<&Point> = Vec::new();
            for p in history.iter().rev() {
                if now_ms.saturating_sub(p.at_ms) > age * 1000 {
                    break;
                }
                // One sample per increment, newest first.
                if out
                    .last()
                    .is_none_or(|l| l.at_ms.saturating_sub(p.at_ms) + 500 >= incr * 1000)
                {
                    out.push(p);
                }
            }
            out
        };
        if let (Some(r), Value::Object(m)) = (self.rates, &mut *stats) {
            let points = pick(r);
            for (i, (name, details)) in NAMES.iter().enumerate() {
                if !m.contains_key(*name) {
                    continue;
                }
                let series: Vec<(u64, u64)> = points
                    .iter()
                    .map(|p| (p.at_ms, fields(&p.totals)[i].1))
                    .collect();
                if let Some(Value::Object(d)) = m.get_mut(*details) {
                    put_samples(d, &series);
                }
            }
        }
        if let (Some(r), Value::Object(m)) = (self.lengths, lengths) {
            let points = pick(r);
            for (i, details) in [
                "messages_details",
                "messages_ready_details",
                "messages_unacknowledged_details",
            ]
            .into_iter()
            .enumerate()
            {
                let series: Vec<(u64, u64)> =
                    points.iter().map(|p| (p.at_ms, p.depth[i])).collect();
                if let Some(Value::Object(d)) = m.get_mut(details) {
                    put_samples(d, &series);
                }
            }
        }
    }
}

/// `samples` (newest first), `avg` (of the samples) and `avg_rate` (change
/// per second from the oldest to the newest) of one series.
fn put_samples(d: &mut Map<String, Value>, series: &[(u64, u64)]) {
    let samples: Vec<Value> = series
        .iter()
        .map(|(at, v)| serde_json::json!({"sample": v, "timestamp": at}))
        .collect();
    let avg = if series.is_empty() {
        0.0
    } else {
        series.iter().map(|(_, v)| *v as f64).sum::<f64>() / series.len() as f64
    };
    let avg_rate = match (series.first(), series.last()) {
        (Some((t1, v1)), Some((t0, v0))) if t1 > t0 => {
            (*v1 as f64 - *v0 as f64) / ((t1 - t0) as f64 / 1000.0)
        }
        _ => 0.0,
    };
    d.insert("samples".into(), Value::Array(samples));
    d.insert("avg".into(), ((avg * 10.0).round() / 10.0).into());
    d.insert("avg_rate".into(), ((avg_rate * 10.0).round() / 10.0).into());
}

/// Adds one depth triple to another.
pub fn add_depth(total: &mut [u64; 3], d: [u64; 3]) {
    for (t, x) in total.iter_mut().zip(d) {
        *t += x;
    }
}

/// messages, messages_ready, messages_unacknowledged of a queue.
pub fn queue_depth(q: &crate::queue::Queue) -> [u64; 3] {
    // A queue of another node: as that node last reported it.
    let [ready, unacked, _] = q.listing_counts();
    // Held dead letters (at least once) are still the queue's, as in
    // RabbitMQ's `messages`.
    let (held, _) = q.held_dead_letters();
    [ready + unacked + held, ready, unacked]
}

/// The broker's totals: publishes counted by connections (closed ones
/// included, and the HTTP API's), deliveries and acks counted by queues
/// (deleted ones included).
pub fn global_totals(b: &Broker) -> MsgTotals {
    let mut t = b.stats.retired_connections.totals();
    for c in b.connections::<crate::session::outbound::ConnectionHandle>() {
        t.add(&c.stats.snapshot());
    }
    t.publish += b
        .stats
        .http_published
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut q = b.stats.retired_vhosts.totals();
    for vh in b.vhosts() {
        q.add(&vh.queue_totals());
    }
    q.publish = 0; // counted on the publishing side instead
    t.add(&q);
    t
}

/// Runs the sampler until the task is dropped.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.rates.sample(&state.broker);
    }
}

/// A rate as RabbitMQ writes it: `{"rate": r}`.
pub fn details(rate: f64) -> Value {
    let mut m = Map::new();
    m.insert("rate".into(), ((rate * 10.0).round() / 10.0).into());
    Value::Object(m)
}

/// `message_stats` with the given fields: each count and `<field>_details`.
/// Like RabbitMQ, an object that has seen no traffic has an empty one.
pub fn message_stats(t: &MsgTotals, r: &MsgRates, keep: &[&str]) -> Value {
    let mut m = Map::new();
    if *t == MsgTotals::default() {
        return Value::Object(m);
    }
    for (i, (k, v)) in fields(t).into_iter().enumerate() {
        if keep.contains(&k) {
            m.insert(k.into(), v.into());
            m.insert(NAMES[i].1.into(), details(r.counters[i]));
        }
    }
    Value::Object(m)
}

/// Adds `messages`, `messages_ready`, `messages_unacknowledged` and their
/// `_details` to an object.
pub fn put_depth(m: &mut Map<String, Value>, depth: [u64; 3], r: &MsgRates) {
    for (i, (k, d)) in [
        ("messages", "messages_details"),
        ("messages_ready", "messages_ready_details"),
        ("messages_unacknowledged", "messages_unacknowledged_details"),
    ]
    .into_iter()
    .enumerate()
    {
        m.insert(k.into(), depth[i].into());
        m.insert(d.into(), details(r.depth[i]));
    }
}
