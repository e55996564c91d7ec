//! A cluster of three real warren processes on loopback: the definitions
//! are one Raft group on every node, so what is declared on one node is
//! there on the others, survives the loss of one node, and reaches a node
//! that was away when it comes back.

mod common;

use std::time::{Duration, Instant};

use common::{Warren, free_port, reply_code};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

/// Starts nodes 1..=n of a cluster on free loopback ports.
fn start_cluster(n: u64) -> Vec<Warren> {
    let peers = cluster_peers(n);
    (1..=n).map(|id| start_node(id, &peers)).collect()
}

/// Inter-node addresses for nodes 1..=n (`"ID@127.0.0.1:PORT"`).
fn cluster_peers(n: u64) -> Vec<String> {
    (1..=n)
        .map(|id| format!("{id}@127.0.0.1:{}", free_port()))
        .collect()
}

/// Starts node `id` whose config lists `peers`.
fn start_node(id: u64, peers: &[String]) -> Warren {
    let listed: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    Warren::start_with(&format!(
        "[cluster]\nnode_id = {id}\nnodes = [{}]\nsecret = \"test secret\"\n",
        listed.join(", ")
    ))
}

/// The ids of the nodes `w`'s /api/nodes lists.
fn node_ids(w: &Warren) -> Vec<u64> {
    let (status, v) = w.api("GET", "/api/nodes", None);
    if status != 200 {
        return Vec::new();
    }
    let mut ids: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["cluster_node_id"].as_u64())
        .collect();
    ids.sort();
    ids
}

/// A connection to `w` once the cluster has made its default user
/// (right after the first leader is elected).
async fn connect(w: &Warren) -> Connection {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Connection::connect(&w.url(), ConnectionProperties::default()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot connect to node on port {}: {e}", w.port),
        }
    }
}

/// Whether queue `q` exists on `w` (a passive declare).
async fn has_queue(w: &Warren, q: &str) -> bool {
    let c = connect(w).await;
    let ch = c.create_channel().await.unwrap();
    let found = ch
        .queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = c.close(200, "".into()).await;
    found
}

/// Publishes one persistent message with a confirm: whether it was acked.
async fn confirm_one(ch: &lapin::Channel, x: &str, rk: &str, body: &[u8]) -> bool {
    ch.basic_publish(
        x.into(),
        rk.into(),
        Default::default(),
        body,
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .is_ok_and(|c| c.is_ack())
}

/// Waits until `f` holds, for at most `limit`.
async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn args(pairs: &[(&str, i64)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), AMQPValue::LongLongInt(*v));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_made_on_one_node_are_on_every_node_and_survive_a_node_loss() {
    let mut nodes = start_cluster(3);

    // Declared on node 1: a durable exchange, a durable queue, a binding.
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    ch1.exchange_declare(
        "orders".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch1.queue_declare("work".into(), durable, args(&[("x-max-length", 100)]))
        .await
        .unwrap();
    ch1.queue_bind(
        "work".into(),
        "orders".into(),
        "order.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    // Seen on nodes 2 and 3, bindings included.
    for w in &nodes[1..] {
        assert!(has_queue(w, "work").await, "queue on node port {}", w.port);
        let (status, bindings) = w.api("GET", "/api/queues/%2f/work/bindings", None);
        assert_eq!(status, 200);
        assert!(
            bindings
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["source"] == "orders" && b["routing_key"] == "order.*"),
            "binding on node port {}: {bindings}",
            w.port
        );
    }

    // A declaration on another node is checked against the cluster's queue.
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    let e = ch2
        .queue_declare("work".into(), durable, args(&[("x-max-length", 5)]))
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(406), "{e}");

    // The queue lives on node 1; node 2 publishes to it (confirmed once
    // node 1 has it) and consumes from it.
    let ch2 = c2.create_channel().await.unwrap();
    ch2.confirm_select(Default::default()).await.unwrap();
    for i in 0..50 {
        let confirm = ch2
            .basic_publish(
                "orders".into(),
                format!("order.{i}").as_str().into(),
                Default::default(),
                format!("m{i}").as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "publish {i} through node 2: {confirm:?}");
    }
    let (_, q) = nodes[0].api("GET", "/api/queues/%2f/work", None);
    assert_eq!(q["messages"], 50, "on node 1: {q}");
    let consumer_ch = c2.create_channel().await.unwrap();
    consumer_ch.basic_qos(10, Default::default()).await.unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            "work".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    use futures_lite::StreamExt;
    let mut got = Vec::new();
    while got.len() < 50 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery from node 1 through node 2")
            .unwrap()
            .unwrap();
        got.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(Default::default()).await.unwrap();
    }
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "in order, each once");
    eventually(
        "node 1 to have them acked",
        Duration::from_secs(10),
        async || {
            let (_, q) = nodes[0].api("GET", "/api/queues/%2f/work", None);
            q["messages"] == 0
        },
    )
    .await;
    consumer_ch.close(200, "".into()).await.unwrap();

    // basic.get through node 2 too: a message, then get-empty.
    assert!(confirm_one(&ch2, "orders", "order.get", b"got").await);
    let ch2g = c2.create_channel().await.unwrap();
    let got = ch2g
        .basic_get("work".into(), Default::default())
        .await
        .unwrap()
        .expect("a message fetched from node 1");
    assert_eq!(got.delivery.data, b"got");
    got.ack(Default::default()).await.unwrap();
    assert!(
        ch2g.basic_get("work".into(), Default::default())
            .await
            .unwrap()
            .is_none()
    );
    // queue.purge through node 2 empties the queue on node 1.
    for i in 0..3 {
        assert!(confirm_one(&ch2, "orders", &format!("order.p{i}"), b"purged").await);
    }
    let purged = ch2g
        .queue_purge("work".into(), Default::default())
        .await
        .unwrap();
    assert_eq!(purged, 3);
    eventually(
        "node 1 to have it acked",
        Duration::from_secs(10),
        async || {
            let (_, q) = nodes[0].api("GET", "/api/queues/%2f/work", None);
            q["messages"] == 0
        },
    )
    .await;
    let _ = c2.close(200, "".into()).await;

    // Node 3 goes: the others see it down, and go on declaring.
    nodes[2].kill();
    let (status, listed) = nodes[0].api("GET", "/api/nodes", None);
    assert_eq!(status, 200);
    let listed = listed.as_array().unwrap().clone();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let by_id = |id: u64| listed.iter().find(|n| n["cluster_node_id"] == id).unwrap();
    assert_eq!(by_id(1)["name"], "warren-1@127.0.0.1");
    assert_eq!(by_id(1)["running"], true);
    assert_eq!(by_id(3)["running"], false);
    assert!(by_id(1)["mem_used"].is_u64(), "this node's full object");
    let leaders = listed
        .iter()
        .filter(|n| n["definitions_leader"] == true)
        .count();
    assert!(leaders <= 1, "{listed:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warrenctl"))
        .args(["--url", &nodes[1].http_url(), "cluster", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("warren-3@127.0.0.1") && l.contains("false")),
        "{text}"
    );
    ch1.queue_declare("while-away".into(), durable, FieldTable::default())
        .await
        .unwrap();
    assert!(has_queue(&nodes[1], "while-away").await);

    // It comes back and catches up.
    nodes[2].restart();
    let back = &nodes[2];
    eventually("node 3 to catch up", Duration::from_secs(30), async || {
        has_queue(back, "while-away").await
    })
    .await;
    assert!(has_queue(back, "work").await);

    // Deleted on node 3: gone everywhere.
    let c3 = connect(&nodes[2]).await;
    let ch3 = c3.create_channel().await.unwrap();
    ch3.queue_delete("while-away".into(), Default::default())
        .await
        .unwrap();
    for w in &nodes {
        assert!(
            !has_queue(w, "while-away").await,
            "deleted on port {}",
            w.port
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_changes_reach_every_node_and_a_full_cluster_restart_keeps_them() {
    let mut nodes = start_cluster(3);
    connect(&nodes[0])
        .await
        .close(200, "".into())
        .await
        .unwrap();

    // A user, its permissions and a policy made through node 2's API.
    let (status, _) = nodes[1].api(
        "PUT",
        "/api/users/alice",
        Some(&serde_json::json!({"password": "secret", "tags": ""})),
    );
    assert_eq!(status, 201);
    let (status, _) = nodes[1].api(
        "PUT",
        "/api/permissions/%2f/alice",
        Some(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
    );
    assert_eq!(status, 201);
    let (status, _) = nodes[1].api(
        "PUT",
        "/api/policies/%2f/short",
        Some(&serde_json::json!({"pattern": "^short\\.", "definition": {"message-ttl": 1000}})),
    );
    assert_eq!(status, 201);
    // A queue made through node 1's API.
    let (status, _) = nodes[0].api(
        "PUT",
        "/api/queues/%2f/from-http",
        Some(&serde_json::json!({"durable": true})),
    );
    assert_eq!(status, 201);

    let alice = |w: &Warren| format!("amqp://alice:secret@127.0.0.1:{}/%2f", w.port);
    for w in &nodes {
        let c = Connection::connect(&alice(w), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("alice on port {}: {e}", w.port));
        let _ = c.close(200, "".into()).await;
        let (_, policies) = w.api("GET", "/api/policies/%2f", None);
        assert_eq!(policies[0]["name"], "short", "port {}", w.port);
        assert!(has_queue(w, "from-http").await, "port {}", w.port);
    }

    // Every node stops; they come back with all of it.
    for w in nodes.iter_mut() {
        w.kill();
    }
    for w in nodes.iter_mut() {
        w.restart();
    }
    for w in &nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Connection::connect(&alice(w), ConnectionProperties::default()).await {
                Ok(c) => {
                    let _ = c.close(200, "".into()).await;
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "alice after restart: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        assert!(has_queue(w, "from-http").await, "port {}", w.port);
        let (_, policies) = w.api("GET", "/api/policies/%2f", None);
        assert_eq!(policies[0]["name"], "short", "port {}", w.port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_declarations_on_two_nodes_make_one_queue_and_no_majority_refuses_changes() {
    let mut nodes = start_cluster(3);
    let (c1, c2) = (connect(&nodes[0]).await, connect(&nodes[1]).await);
    let (ch1, ch2) = (
        c1.create_channel().await.unwrap(),
        c2.create_channel().await.unwrap(),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // The same queue declared on two nodes at once, 20 times over: each
    // pair makes one queue, on one node, and every node agrees which.
    for i in 0..20 {
        let q = format!("race-{i}");
        let (a, b) = tokio::join!(
            ch1.queue_declare(q.as_str().into(), durable, FieldTable::default()),
            ch2.queue_declare(q.as_str().into(), durable, FieldTable::default()),
        );
        a.unwrap();
        b.unwrap();
    }
    let homes = |w: &Warren| {
        let (_, qs) = w.api("GET", "/api/queues/%2f", None);
        let mut v: Vec<(String, String)> = qs
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                (
                    q["name"].as_str().unwrap().to_owned(),
                    q["node"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let first = homes(&nodes[0]);
    assert_eq!(first.len(), 20, "{first:?}");
    for w in &nodes[1..] {
        assert_eq!(homes(w), first, "port {}", w.port);
    }

    // A quorum queue, for the next step.
    declare_quorum(&ch1, "qq-alone", FieldTable::default()).await;
    let pub_ch = c1.create_channel().await.unwrap();
    pub_ch.confirm_select(Default::default()).await.unwrap();
    assert!(publish_confirmed(&pub_ch, "qq-alone", b"with a majority").await);

    // With two of three nodes gone, a change is refused, not made unsafely,
    // and so is a publish to the quorum queue (nacked).
    nodes[1].kill();
    nodes[2].kill();
    assert!(
        !publish_confirmed(&pub_ch, "qq-alone", b"without one").await,
        "a quorum queue without a majority refuses publishes"
    );
    let started = Instant::now();
    let e = ch1
        .queue_declare("lonely".into(), durable, FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(506), "{e}");
    assert!(common::reply_text(&e).contains("majority"), "{e}");
    eprintln!("refused after {:?}", started.elapsed());
    let (status, body) = nodes[0].api("PUT", "/api/vhosts/lonely", None);
    assert_eq!(status, 503, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_confirmed_through_another_node_survive_the_queues_node_crashing() {
    let mut nodes = start_cluster(3);
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch1.queue_declare("safe".into(), durable, FieldTable::default())
        .await
        .unwrap();
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    ch2.confirm_select(Default::default()).await.unwrap();
    // Node 1 (the queue's) is killed part way through; node 2 confirms
    // only what node 1 made durable, and nacks the rest.
    let (mut acked, mut nacked) = (Vec::new(), 0);
    for i in 0..600u32 {
        if i == 300 {
            nodes[0].kill();
        }
        let confirm = ch2
            .basic_publish(
                "".into(),
                "safe".into(),
                Default::default(),
                &i.to_be_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        if confirm.is_ack() {
            acked.push(i);
        } else {
            nacked += 1;
        }
    }
    eprintln!("{} acked, {nacked} nacked", acked.len());
    assert!(
        acked.len() >= 300,
        "everything before the crash is confirmed"
    );
    assert!(
        nacked > 0,
        "publishes while the queue's node is down are refused"
    );
    nodes[0].restart();
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    let mut present = std::collections::BTreeSet::new();
    while let Some(m) = ch1
        .basic_get("safe".into(), Default::default())
        .await
        .unwrap()
    {
        present.insert(u32::from_be_bytes(m.delivery.data[..4].try_into().unwrap()));
        m.ack(Default::default()).await.unwrap();
    }
    let lost: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|i| !present.contains(i))
        .collect();
    assert!(lost.is_empty(), "confirmed and lost: {lost:?}");
}

/// Declares durable quorum queue `name` with `args` besides its type.
async fn declare_quorum(ch: &lapin::Channel, name: &str, mut args: FieldTable) {
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
}

/// The node that leads quorum queue `q`, as node `w`'s API says.
fn quorum_leader(w: &Warren, q: &str) -> Option<String> {
    let (status, v) = w.api("GET", &format!("/api/queues/%2f/{q}"), None);
    (status == 200).then(|| v["leader"].as_str().map(str::to_owned))?
}

async fn publish_confirmed(ch: &lapin::Channel, q: &str, body: &[u8]) -> bool {
    match ch
        .basic_publish(
            "".into(),
            q.into(),
            Default::default(),
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
    {
        Ok(c) => c.await.is_ok_and(|c| c.is_ack()),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_replicated_and_keeps_what_it_confirmed_when_its_leader_dies() {
    let mut nodes = start_cluster(3);
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    declare_quorum(&ch1, "qq", FieldTable::default()).await;
    // Published through node 2, confirmed once a majority has each.
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    ch2.confirm_select(Default::default()).await.unwrap();
    let mut confirmed = Vec::new();
    for i in 0..100u32 {
        if publish_confirmed(&ch2, "qq", &i.to_be_bytes()).await {
            confirmed.push(i);
        }
    }
    assert_eq!(confirmed.len(), 100, "a healthy cluster confirms all");

    // Its leader dies; the others elect one and still have every message.
    let leader = quorum_leader(&nodes[0], "qq").expect("a leader");
    let at = nodes
        .iter()
        .position(|w| {
            leader.starts_with(&format!(
                "warren-{}@",
                1 + nodes.iter().position(|x| x.port == w.port).unwrap()
            ))
        })
        .unwrap_or(0);
    eprintln!("leader {leader} (node index {at}) killed");
    nodes[at].kill();
    let alive: Vec<usize> = (0..3).filter(|i| *i != at).collect();
    let w = &nodes[alive[0]];
    let c = connect(w).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let started = Instant::now();
    let mut first_confirm = None;
    for i in 100..150u32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if publish_confirmed(&ch, "qq", &i.to_be_bytes()).await {
                confirmed.push(i);
                first_confirm.get_or_insert(started.elapsed());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no confirm after the leader died"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "first confirm {:?} after the leader was killed",
        first_confirm.unwrap()
    );
    let consumer_node = &nodes[alive[1]];
    let cc = connect(consumer_node).await;
    let cch = cc.create_channel().await.unwrap();
    cch.basic_qos(50, Default::default()).await.unwrap();
    let mut consumer = cch
        .basic_consume(
            "qq".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    use futures_lite::StreamExt;
    let mut seen = std::collections::BTreeSet::new();
    while !confirmed.iter().all(|i| seen.contains(i)) {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = confirmed.iter().filter(|i| !seen.contains(*i)).collect();
                panic!("confirmed and not delivered: {missing:?}")
            })
            .unwrap()
            .unwrap();
        seen.insert(u32::from_be_bytes(d.data[..4].try_into().unwrap()));
        d.ack(Default::default()).await.unwrap();
    }
}

/// A small seeded generator (xorshift), so a failing run can be replayed
/// with `WARREN_CLUSTER_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Connects to the first node of `ports` (from `from` on) that answers.
async fn connect_any(ports: &[u16], from: usize) -> (usize, Connection) {
    loop {
        for k in 0..ports.len() {
            let i = (from + k) % ports.len();
            let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", ports[i]);
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_secs(2),
                Connection::connect(&url, ConnectionProperties::default()),
            )
            .await
            {
                return (i, c);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_quorum_queue_leaders_under_load_loses_nothing_confirmed() {
    use futures_lite::StreamExt;
    use std::sync::{Arc, Mutex};
    let seed = std::env::var("WARREN_CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("WARREN_CLUSTER_SEED={seed}");
    let mut rng = Rng(seed);
    let mut nodes = start_cluster(3);
    let ports: Vec<u16> = nodes.iter().map(|w| w.port).collect();
    {
        let c = connect(&nodes[0]).await;
        let ch = c.create_channel().await.unwrap();
        declare_quorum(&ch, "chaos", FieldTable::default()).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let confirmed = Arc::new(Mutex::new(Vec::<u64>::new()));
    // (id, redelivered) in delivery order.
    let delivered = Arc::new(Mutex::new(Vec::<(u64, bool)>::new()));

    let publisher = {
        let (ports, stop, confirmed) = (ports.clone(), stop.clone(), confirmed.clone());
        tokio::spawn(async move {
            let mut id = 0u64;
            let mut at = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (i, c) = connect_any(&ports, at).await;
                at = i;
                let Ok(ch) = c.create_channel().await else {
                    continue;
                };
                if ch.confirm_select(Default::default()).await.is_err() {
                    continue;
                }
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    id += 1;
                    let p = ch
                        .basic_publish(
                            "".into(),
                            "chaos".into(),
                            Default::default(),
                            &id.to_be_bytes(),
                            lapin::BasicProperties::default().with_delivery_mode(2),
                        )
                        .await;
                    let Ok(p) = p else { break };
                    match tokio::time::timeout(Duration::from_secs(10), p).await {
                        Ok(Ok(c)) if c.is_ack() => confirmed.lock().unwrap().push(id),
                        Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                        _ => break,
                    }
                }
                at += 1;
            }
        })
    };
    let consumer = {
        let (ports, stop, delivered) = (ports.clone(), stop.clone(), delivered.clone());
        tokio::spawn(async move {
            let mut at = 2;
            loop {
                let (i, c) = connect_any(&ports, at).await;
                at = i;
                let Ok(ch) = c.create_channel().await else {
                    continue;
                };
                let _ = ch.basic_qos(100, Default::default()).await;
                let Ok(mut stream) = ch
                    .basic_consume(
                        "chaos".into(),
                        "".into(),
                        Default::default(),
                        FieldTable::default(),
                    )
                    .await
                else {
                    at += 1;
                    continue;
                };
                loop {
                    let next = tokio::time::timeout(Duration::from_secs(3), stream.next()).await;
                    match next {
                        Ok(Some(Ok(d))) => {
                            let id = u64::from_be_bytes(d.data[..8].try_into().unwrap());
                            delivered.lock().unwrap().push((id, d.redelivered));
                            if d.ack(Default::default()).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => return,
                        Err(_) => {}
                    }
                }
                at += 1;
            }
        })
    };

    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
        // The last kill's election may still be going on (two cores shared
        // by every node of the tests that run at once): wait for its end.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (views, leader) = loop {
            let views: Vec<Option<String>> =
                nodes.iter().map(|w| quorum_leader(w, "chaos")).collect();
            if let Some(l) = views.iter().flatten().next().cloned() {
                break (views, l);
            }
            assert!(
                Instant::now() < deadline,
                "no leader of the queue within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("round {round}: leaders as each node sees it: {views:?}");
        let at = (1..=3)
            .position(|id| leader.starts_with(&format!("warren-{id}@")))
            .unwrap();
        eprintln!("round {round}: killing the leader, node {}", at + 1);
        nodes[at].kill();
        let killed = Instant::now();
        // The survivors elect a leader; the load goes on through it.
        let survivor = &nodes[(at + 1) % 3];
        loop {
            match quorum_leader(survivor, "chaos") {
                Some(l) if l != leader => {
                    eprintln!(
                        "round {round}: {l} leads {:?} after node {} was killed",
                        killed.elapsed(),
                        at + 1
                    );
                    break;
                }
                _ => {
                    assert!(killed.elapsed() < Duration::from_secs(20), "no new leader");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
        nodes[at].restart();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
    // The consumer drains what is left, then stops after 3 s of quiet.
    consumer.await.unwrap();

    let confirmed = confirmed.lock().unwrap().clone();
    let delivered = delivered.lock().unwrap().clone();
    let mut seen = std::collections::HashSet::new();
    let mut twice_unflagged = Vec::new();
    for (id, redelivered) in &delivered {
        if !seen.insert(*id) && !redelivered {
            twice_unflagged.push(*id);
        }
    }
    let lost: Vec<u64> = confirmed
        .iter()
        .copied()
        .filter(|i| !seen.contains(i))
        .collect();
    eprintln!(
        "{} confirmed, {} deliveries of {} messages",
        confirmed.len(),
        delivered.len(),
        seen.len()
    );
    assert!(confirmed.len() > 100, "the load went on through the kills");
    assert!(lost.is_empty(), "confirmed and never delivered: {lost:?}");
    assert!(
        twice_unflagged.is_empty(),
        "delivered again without the redelivered flag: {twice_unflagged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_data_directory_is_lost_rejoins_and_carries_the_quorum() {
    let mut nodes = start_cluster(3);
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    declare_quorum(&ch1, "kept", FieldTable::default()).await;
    ch1.confirm_select(Default::default()).await.unwrap();
    for i in 0..100u32 {
        assert!(publish_confirmed(&ch1, "kept", &i.to_be_bytes()).await);
    }
    drop(ch1);
    let _ = c1.close(200, "".into()).await;

    // Node 3 loses its data directory (its config stays) and comes back
    // empty; it catches up from the others.
    nodes[2].kill();
    for e in std::fs::read_dir(nodes[2].dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            continue;
        }
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    nodes[2].restart();
    let back = &nodes[2];
    eventually(
        "node 3 to learn the definitions again",
        Duration::from_secs(30),
        async || has_queue(back, "kept").await,
    )
    .await;
    // Give its queue's group time to catch up, then take node 1 away: the
    // majority is now nodes 2 and 3, so node 3's copy counts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    nodes[0].kill();
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    ch2.basic_qos(200, Default::default()).await.unwrap();
    let mut consumer = ch2
        .basic_consume(
            "kept".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    use futures_lite::StreamExt;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 100 {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of 100 after node 1 went", seen.len()))
            .unwrap()
            .unwrap();
        seen.insert(u32::from_be_bytes(d.data[..4].try_into().unwrap()));
        d.ack(Default::default()).await.unwrap();
    }
}

/// A TCP proxy on loopback to `to`, which `cut` makes drop every
/// connection through it and refuse new ones (a network partition).
struct Proxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn proxy(to: u16) -> Proxy {
    use std::sync::atomic::Ordering::Relaxed;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            if c.load(Relaxed) {
                continue;
            }
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(mut b) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                    _ = async {
                        while !c.load(Relaxed) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    } => {}
                }
            });
        }
    });
    Proxy { port, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_confirms_nothing_and_the_majority_goes_on() {
    use std::sync::atomic::Ordering::Relaxed;
    // Every node reaches every other through a proxy of its own, so one
    // node can be cut off in both directions.
    let real: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut via = std::collections::HashMap::new();
    for i in 0..3 {
        for (j, port) in real.iter().enumerate() {
            if i != j {
                via.insert((i, j), proxy(*port).await);
            }
        }
    }
    let mut nodes = Vec::new();
    for i in 0..3 {
        let list: Vec<String> = (0..3)
            .map(|j| {
                let port = if i == j { real[j] } else { via[&(i, j)].port };
                format!("\"{}@127.0.0.1:{port}\"", j + 1)
            })
            .collect();
        nodes.push(Warren::start_with(&format!(
            "[cluster]\nnode_id = {}\nnodes = [{}]\nsecret = \"test secret\"\n",
            i + 1,
            list.join(", ")
        )));
    }
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    declare_quorum(&ch1, "split", FieldTable::default()).await;
    ch1.confirm_select(Default::default()).await.unwrap();
    assert!(publish_confirmed(&ch1, "split", b"before").await);
    let leader = quorum_leader(&nodes[0], "split").expect("a leader");
    let l = (0..3)
        .find(|i| leader.starts_with(&format!("warren-{}@", i + 1)))
        .unwrap();
    // Cut the leader off.
    for ((i, j), p) in &via {
        if *i == l || *j == l {
            p.cut.store(true, Relaxed);
        }
    }
    let cut_at = Instant::now();
    // (The proxies drop their connections within 20 ms.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    // On the leader's side: nothing is confirmed.
    let cl = connect(&nodes[l]).await;
    let chl = cl.create_channel().await.unwrap();
    chl.confirm_select(Default::default()).await.unwrap();
    assert!(
        !publish_confirmed(&chl, "split", b"minority").await,
        "the cut-off leader confirmed a publish"
    );
    // On the majority's side: a new leader, and confirms.
    let other = (l + 1) % 3;
    let co = connect(&nodes[other]).await;
    let cho = co.create_channel().await.unwrap();
    cho.confirm_select(Default::default()).await.unwrap();
    let mut confirmed = vec![b"before".to_vec()];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while confirmed.len() < 21 {
        assert!(Instant::now() < deadline, "the majority confirms nothing");
        let body = format!("majority-{n}").into_bytes();
        n += 1;
        if publish_confirmed(&cho, "split", &body).await {
            confirmed.push(body);
        }
    }
    eprintln!(
        "the majority confirmed again {:?} after the cut",
        cut_at.elapsed()
    );
    // Healed: everything confirmed is there, once, and nothing from the
    // minority side beyond what it was told.
    for p in via.values() {
        p.cut.store(false, Relaxed);
    }
    let mut consumer = cho
        .basic_consume(
            "split".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    use futures_lite::StreamExt;
    let mut got = std::collections::BTreeSet::new();
    while !confirmed.iter().all(|b| got.contains(b)) {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("every confirmed message")
            .unwrap()
            .unwrap();
        got.insert(d.data.clone());
        d.ack(Default::default()).await.unwrap();
    }
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_quorum_queue_dead_letters_past_its_delivery_limit() {
    let nodes = start_cluster(3);
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch1.queue_declare("dlq".into(), durable, FieldTable::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("dlq".into()),
    );
    declare_quorum(&ch1, "limited", args).await;
    ch1.confirm_select(Default::default()).await.unwrap();
    assert!(publish_confirmed(&ch1, "limited", b"poison").await);
    // Returned twice through node 2: the second return is past the limit.
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    for round in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let m = loop {
            if let Some(m) = ch2
                .basic_get("limited".into(), Default::default())
                .await
                .unwrap()
            {
                break m;
            }
            assert!(Instant::now() < deadline, "no message in round {round}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(m.delivery.data, b"poison");
        m.nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        if let Some(m) = ch2
            .basic_get("dlq".into(), Default::default())
            .await
            .unwrap()
        {
            break m;
        }
        assert!(Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.delivery.data, b"poison");
    let headers = dead
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let reason = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => match a.as_slice().first() {
            Some(AMQPValue::FieldTable(t)) => match t.inner().get("reason") {
                Some(AMQPValue::LongString(r)) => {
                    String::from_utf8_lossy(r.as_bytes()).into_owned()
                }
                other => format!("{other:?}"),
            },
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    };
    assert_eq!(reason, "delivery_limit");
    assert!(
        ch2.basic_get("limited".into(), Default::default())
            .await
            .unwrap()
            .is_none(),
        "gone from the quorum queue"
    );
}

/// A fourth node joins a running cluster from its config (it lists the
/// others and did not form the cluster), catches up with the definitions
/// and serves the cluster's queues; then a node is removed (forgotten) and
/// the cluster of the remaining three keeps a majority without node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_running_cluster_and_a_node_is_forgotten() {
    use futures_lite::StreamExt;
    let mut peers = cluster_peers(3);
    let mut nodes: Vec<Warren> = (1..=3).map(|id| start_node(id, &peers)).collect();
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    ch1.confirm_select(Default::default()).await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch1.queue_declare("before".into(), durable, FieldTable::default())
        .await
        .unwrap();
    for i in 0..10 {
        assert!(confirm_one(&ch1, "", "before", format!("b{i}").as_bytes()).await);
    }
    // A queue that lives on node 3, to be forgotten with it.
    let c3 = connect(&nodes[2]).await;
    let ch3 = c3.create_channel().await.unwrap();
    ch3.queue_declare("on-three".into(), durable, FieldTable::default())
        .await
        .unwrap();
    let _ = c3.close(200, "".into()).await;

    // Node 4 starts with a config that lists every node (its inter-node
    // port picked only now: a port picked early may be taken meanwhile).
    peers.push(format!("4@127.0.0.1:{}", free_port()));
    nodes.push(start_node(4, &peers));
    eventually(
        "node 4 in node 1's /api/nodes",
        Duration::from_secs(60),
        async || node_ids(&nodes[0]) == [1, 2, 3, 4],
    )
    .await;
    eventually(
        "node 4 to know the queues",
        Duration::from_secs(30),
        async || has_queue(&nodes[3], "before").await && has_queue(&nodes[3], "on-three").await,
    )
    .await;
    let (_, q) = nodes[3].api("GET", "/api/queues/%2f/before", None);
    assert_eq!(
        q["node"],
        nodes[0].api("GET", "/api/overview", None).1["node"],
        "{q}"
    );
    // Its counts, as node 1 reports them (every 5 s), in node 4's API.
    eventually(
        "node 4's listing to count node 1's queue",
        Duration::from_secs(15),
        async || {
            let (_, q) = nodes[3].api("GET", "/api/queues/%2f/before", None);
            q["messages"] == 10 && q["messages_ready"] == 10
        },
    )
    .await;
    // Through node 4: a declaration every node sees, and the messages of
    // node 1's queue (its declare-ok counts them).
    let c4 = connect(&nodes[3]).await;
    let ch4 = c4.create_channel().await.unwrap();
    let ok = ch4
        .queue_declare(
            "before".into(),
            QueueDeclareOptions {
                passive: true,
                ..durable
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(ok.message_count(), 10);
    ch4.queue_declare("after".into(), durable, FieldTable::default())
        .await
        .unwrap();
    assert!(has_queue(&nodes[1], "after").await);
    ch4.basic_qos(10, Default::default()).await.unwrap();
    let mut consumer = ch4
        .basic_consume(
            "before".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery from node 1 through node 4")
            .unwrap()
            .unwrap();
        got.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(Default::default()).await.unwrap();
    }
    assert_eq!(got, (0..10).map(|i| format!("b{i}")).collect::<Vec<_>>());

    // Node 3 is stopped and forgotten: it leaves the listing, and its
    // queue goes with it.
    nodes[2].kill();
    let (status, body) = nodes[1].api("DELETE", &format!("/api/cluster/nodes/{}", 3), None);
    assert_eq!(status, 204, "{body}");
    assert_eq!(node_ids(&nodes[0]), [1, 2, 4]);
    eventually(
        "node 3's queue to go",
        Duration::from_secs(10),
        async || !has_queue(&nodes[3], "on-three").await,
    )
    .await;
    // Forgetting it again is a 404; forgetting the last nodes is refused
    // further down by the majority rule of the group itself.
    let (status, _) = nodes[1].api("DELETE", "/api/cluster/nodes/3", None);
    assert_eq!(status, 404);

    // With node 1 gone too, nodes 2 and 4 are a majority of {1, 2, 4}.
    nodes[0].kill();
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    ch2.queue_declare("last".into(), durable, FieldTable::default())
        .await
        .expect("a declaration with nodes 2 and 4 of 1, 2, 4");
    assert!(has_queue(&nodes[3], "last").await);

    // A node that already belongs to a cluster refuses to join another.
    let (status, body) = nodes[3].api(
        "POST",
        "/api/cluster/join",
        Some(&serde_json::json!({"node": peers[1]})),
    );
    assert_eq!(status, 400, "{body}");
}

/// The members of quorum queue `q` as node `w`'s API lists them (sorted
/// names).
fn quorum_members(w: &Warren, q: &str) -> Vec<String> {
    let (_, v) = w.api("GET", &format!("/api/queues/%2f/{q}"), None);
    let mut m: Vec<String> = v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    m.sort();
    m
}

/// Reads `n` messages from `q` through `w` with basic.get (acked).
async fn get_n(w: &Warren, q: &str, n: usize) -> Vec<Vec<u8>> {
    let c = connect(w).await;
    let ch = c.create_channel().await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} from {q}",
            got.len()
        );
        match ch.basic_get(q.into(), Default::default()).await {
            Ok(Some(m)) => {
                got.push(m.delivery.data.clone());
                m.delivery.ack(Default::default()).await.unwrap();
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _ = c.close(200, "".into()).await;
    got
}

/// x-quorum-initial-group-size places a quorum queue on fewer nodes than
/// the cluster has; a node without a replica still publishes to it and
/// reads from it; replicas are added and removed over RabbitMQ's HTTP
/// paths, and what the queue confirmed survives its first members going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_replicas_are_placed_added_and_removed() {
    let mut nodes = start_cluster(3);
    for w in &nodes {
        let _ = connect(w).await.close(200, "".into()).await;
    }
    let name = |i: usize| {
        nodes[i].api("GET", "/api/overview", None).1["node"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (n1, n2, n3) = (name(0), name(1), name(2));
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    declare_quorum(&ch1, "placed", args(&[("x-quorum-initial-group-size", 2)])).await;
    assert_eq!(
        quorum_members(&nodes[2], "placed"),
        [n1.clone(), n2.clone()]
    );

    // Node 3 has no replica: its publishes and gets reach the leader.
    let c3 = connect(&nodes[2]).await;
    let ch3 = c3.create_channel().await.unwrap();
    ch3.confirm_select(Default::default()).await.unwrap();
    for i in 0..20u32 {
        assert!(
            publish_confirmed(&ch3, "placed", &i.to_be_bytes()).await,
            "publish {i} through a node without a replica"
        );
    }
    // queue.declare-ok on a node without a replica counts the leader's.
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    let ok = ch3
        .queue_declare("placed".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(ok.message_count(), 20);
    let first = get_n(&nodes[2], "placed", 5).await;
    assert_eq!(
        first,
        (0..5u32)
            .map(|i| i.to_be_bytes().to_vec())
            .collect::<Vec<_>>()
    );

    // A replica on node 3, then none on node 1 (RabbitMQ's paths and codes).
    let (status, body) = nodes[1].api(
        "POST",
        "/api/queues/quorum/%2f/placed/replicas/add",
        Some(&serde_json::json!({ "node": n3 })),
    );
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        quorum_members(&nodes[0], "placed"),
        [n1.clone(), n2.clone(), n3.clone()]
    );
    let (status, body) = nodes[1].api(
        "DELETE",
        "/api/queues/quorum/%2f/placed/replicas/delete",
        Some(&serde_json::json!({ "node": n1 })),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        quorum_members(&nodes[1], "placed"),
        [n2.clone(), n3.clone()]
    );

    // Node 1 goes: nodes 2 and 3 are the queue's members and have all 15.
    nodes[0].kill();
    let rest = get_n(&nodes[1], "placed", 15).await;
    assert_eq!(
        rest,
        (5..20u32)
            .map(|i| i.to_be_bytes().to_vec())
            .collect::<Vec<_>>()
    );

    // Shrinking node 3 leaves node 2 alone; growing puts it back.
    let (status, body) = nodes[1].api(
        "DELETE",
        &format!("/api/queues/quorum/replicas/on/{n3}/shrink"),
        None,
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        quorum_members(&nodes[1], "placed"),
        std::slice::from_ref(&n2)
    );
    let (status, body) = nodes[1].api(
        "POST",
        &format!("/api/queues/quorum/replicas/on/{n3}/grow"),
        Some(&serde_json::json!({"strategy": "all", "queue_pattern": "^placed$", "vhost_pattern": ".*"})),
    );
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        quorum_members(&nodes[1], "placed"),
        [n2.clone(), n3.clone()]
    );
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    ch2.confirm_select(Default::default()).await.unwrap();
    assert!(publish_confirmed(&ch2, "placed", b"after").await);
    assert_eq!(get_n(&nodes[2], "placed", 1).await, [b"after".to_vec()]);
}

/// queue.purge of a replicated quorum queue, from any node, empties it on
/// every member: a new leader after the old one dies has nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_replicated_quorum_queue_holds_across_a_leader_change() {
    let mut nodes = start_cluster(3);
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    declare_quorum(&ch1, "purged", FieldTable::default()).await;
    ch1.confirm_select(Default::default()).await.unwrap();
    for i in 0..10u32 {
        assert!(publish_confirmed(&ch1, "purged", &i.to_be_bytes()).await);
    }
    let leader = quorum_leader(&nodes[0], "purged").expect("a leader");
    let names: Vec<String> = nodes
        .iter()
        .map(|w| {
            w.api("GET", "/api/overview", None).1["node"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let li = names.iter().position(|n| *n == leader).unwrap();
    // Purged through a node that does not lead it.
    let other = (li + 1) % 3;
    let c = connect(&nodes[other]).await;
    let ch = c.create_channel().await.unwrap();
    let n = ch
        .queue_purge("purged".into(), Default::default())
        .await
        .expect("queue.purge of a replicated quorum queue");
    assert_eq!(n, 10);
    assert!(publish_confirmed(&ch1, "purged", b"kept").await);
    // The leader dies; the next one serves only what came after the purge.
    let _ = c.close(200, "".into()).await;
    let _ = c1.close(200, "".into()).await;
    nodes[li].kill();
    let survivor = (li + 2) % 3;
    let got = get_n(&nodes[survivor], "purged", 1).await;
    assert_eq!(got, [b"kept".to_vec()]);
    let c = connect(&nodes[survivor]).await;
    let ch = c.create_channel().await.unwrap();
    let left = ch
        .basic_get("purged".into(), Default::default())
        .await
        .unwrap();
    assert!(left.is_none(), "a purged message came back: {left:?}");
}

/// A CA's certificate and, for each node, a certificate for 127.0.0.1
/// good as server and as client, written to `dir`; returns the `[tls]`
/// section of node `i` (`ca` names the CA file to trust).
fn node_pki(dir: &std::path::Path, ca_name: &str, nodes: usize) -> Vec<String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_name);
    ca.distinguished_name = dn;
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let ca_path = dir.join(format!("{ca_name}.pem"));
    std::fs::write(&ca_path, ca_pem).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    (0..nodes)
        .map(|i| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, format!("node{i}"));
            p.distinguished_name = dn;
            p.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            let cert = p.signed_by(&key, &issuer).unwrap();
            let (c, k) = (
                dir.join(format!("{ca_name}-node{i}.pem")),
                dir.join(format!("{ca_name}-node{i}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            format!("[tls]\ncert = {c:?}\nkey = {k:?}\nca = {ca_path:?}\n")
        })
        .collect()
}

/// With `[cluster] tls`, the nodes talk over TLS with certificates of the
/// cluster's CA: definitions and messages cross as before, and a node
/// whose certificate another CA issued (the secret right) is kept out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inter_node_links_over_tls_admit_only_the_clusters_certificates() {
    let pki = tempfile::tempdir().unwrap();
    let good = node_pki(pki.path(), "cluster-ca", 3);
    let foreign = node_pki(pki.path(), "other-ca", 1);
    let peers = cluster_peers(3);
    let listed: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let start = |id: usize, tls: &str| {
        Warren::start_tls(&format!(
            "{tls}[cluster]\nnode_id = {id}\nnodes = [{}]\nsecret = \"test secret\"\ntls = true\n",
            listed.join(", ")
        ))
    };
    let nodes = [
        start(1, &good[0]),
        start(2, &good[1]),
        start(3, &foreign[0]),
    ];
    // Nodes 1 and 2 are a majority of three: they form the cluster.
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch1.queue_declare("over-tls".into(), durable, FieldTable::default())
        .await
        .unwrap();
    assert!(has_queue(&nodes[1], "over-tls").await);
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    ch2.confirm_select(Default::default()).await.unwrap();
    assert!(confirm_one(&ch2, "", "over-tls", b"sealed").await);
    let (_, q) = nodes[0].api("GET", "/api/queues/%2f/over-tls", None);
    assert_eq!(q["messages"], 1, "{q}");
    // Node 3 never gets in: no default user, no definitions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let shut_out = Connection::connect(&nodes[2].url(), ConnectionProperties::default()).await;
    assert!(shut_out.is_err(), "node 3 (another CA) joined the cluster");
}

/// A replicated quorum queue keeps RabbitMQ's limits as one node does:
/// drop-head keeps the newest x-max-length messages (the dropped ones
/// settled in the group, so a new leader does not bring them back),
/// reject-publish takes one message over the limit then nacks, and
/// x-message-ttl expires messages into the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_quorum_queues_keep_length_limits_and_ttls() {
    let mut nodes = start_cluster(3);
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    declare_quorum(&ch1, "capped", args(&[("x-max-length", 5)])).await;
    let mut reject = args(&[("x-max-length", 2)]);
    reject.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare_quorum(&ch1, "refusing", reject).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch1.queue_declare("expired".into(), durable, FieldTable::default())
        .await
        .unwrap();
    let mut ttl = args(&[("x-message-ttl", 300)]);
    ttl.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    ttl.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("expired".into()),
    );
    declare_quorum(&ch1, "short-lived", ttl).await;

    // Published through node 2 (whichever node leads).
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    ch2.confirm_select(Default::default()).await.unwrap();
    for i in 0..10u32 {
        assert!(publish_confirmed(&ch2, "capped", &i.to_be_bytes()).await);
    }
    let mut acks = Vec::new();
    for i in 0..5u32 {
        acks.push(publish_confirmed(&ch2, "refusing", &i.to_be_bytes()).await);
    }
    assert_eq!(acks, [true, true, true, false, false]);
    assert!(publish_confirmed(&ch2, "short-lived", b"soon gone").await);

    let expired = get_n(&nodes[2], "expired", 1).await;
    assert_eq!(expired, [b"soon gone".to_vec()]);

    // The leader of "capped" dies; the next one has the newest five only.
    let leader = quorum_leader(&nodes[0], "capped").expect("a leader");
    let names: Vec<String> = nodes
        .iter()
        .map(|w| {
            w.api("GET", "/api/overview", None).1["node"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let li = names.iter().position(|n| *n == leader).unwrap();
    let _ = c1.close(200, "".into()).await;
    let _ = c2.close(200, "".into()).await;
    nodes[li].kill();
    let survivor = (li + 1) % 3;
    let got = get_n(&nodes[survivor], "capped", 5).await;
    assert_eq!(
        got,
        (5..10u32)
            .map(|i| i.to_be_bytes().to_vec())
            .collect::<Vec<_>>()
    );
    let c = connect(&nodes[survivor]).await;
    let ch = c.create_channel().await.unwrap();
    let more = ch
        .basic_get("capped".into(), Default::default())
        .await
        .unwrap();
    assert!(more.is_none(), "a dropped message came back: {more:?}");
}

/// As in RabbitMQ, a non-durable exchange is the cluster's: declared on
/// one node, bound on another, published to on a third, deleted anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_durable_exchanges_are_on_every_node() {
    let nodes = start_cluster(3);
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    ch1.exchange_declare(
        "fleeting".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch2.queue_declare("fan-in".into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch2.queue_bind(
        "fan-in".into(),
        "fleeting".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("binding to a non-durable exchange declared on another node");
    let c3 = connect(&nodes[2]).await;
    let ch3 = c3.create_channel().await.unwrap();
    ch3.confirm_select(Default::default()).await.unwrap();
    assert!(confirm_one(&ch3, "fleeting", "any", b"fanned").await);
    assert_eq!(get_n(&nodes[0], "fan-in", 1).await, [b"fanned".to_vec()]);
    ch3.exchange_delete("fleeting".into(), Default::default())
        .await
        .unwrap();
    let ch1 = c1.create_channel().await.unwrap();
    let e = ch1
        .exchange_declare(
            "fleeting".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(404), "{e}");

    // Through the HTTP API too.
    let (status, body) = nodes[1].api(
        "PUT",
        "/api/exchanges/%2f/http-fleeting",
        Some(&serde_json::json!({"type": "fanout", "durable": false})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, x) = nodes[2].api("GET", "/api/exchanges/%2f/http-fleeting", None);
    assert_eq!(status, 200, "{x}");
    assert_eq!(x["durable"], false);
    let (status, _) = nodes[2].api("DELETE", "/api/exchanges/%2f/http-fleeting", None);
    assert_eq!(status, 204);
    let (status, _) = nodes[0].api("GET", "/api/exchanges/%2f/http-fleeting", None);
    assert_eq!(status, 404);
}

/// A queue declared on one node is there on the others when the
/// declaration is answered (as RabbitMQ's metadata is): a publish through
/// another node right after the declare-ok reaches it, never dropped as
/// unroutable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declaration_is_on_every_node_when_it_is_answered() {
    let nodes = start_cluster(3);
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    ch2.confirm_select(Default::default()).await.unwrap();
    let c3 = connect(&nodes[2]).await;
    let ch3 = c3.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for i in 0..20 {
        let q = format!("fresh-{i}");
        ch1.queue_declare(q.as_str().into(), durable, FieldTable::default())
            .await
            .unwrap();
        // Published through node 2 the moment node 1 answered.
        assert!(confirm_one(&ch2, "", &q, b"first").await);
        // Seen at once by a passive declare on node 3.
        ch3.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..durable
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {q} not on node 3 yet: {e}"));
    }
    for i in 0..20 {
        let (_, v) = nodes[0].api("GET", &format!("/api/queues/%2f/fresh-{i}"), None);
        assert_eq!(v["messages"], 1, "fresh-{i}: {v}");
    }
}

/// Consumer priorities hold across nodes: a consumer of higher x-priority
/// on another node than the queue's is served before one of lower
/// priority on the queue's own node, as long as it can take messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_priorities_hold_across_nodes() {
    use futures_lite::StreamExt;
    let nodes = start_cluster(3);
    let c1 = connect(&nodes[0]).await;
    let ch1 = c1.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch1.queue_declare("ranked".into(), durable, FieldTable::default())
        .await
        .unwrap();
    // Low priority, on the queue's node.
    let mut low = ch1
        .basic_consume(
            "ranked".into(),
            "low".into(),
            Default::default(),
            args(&[("x-priority", 0)]),
        )
        .await
        .unwrap();
    // High priority, on node 2.
    let c2 = connect(&nodes[1]).await;
    let ch2 = c2.create_channel().await.unwrap();
    let mut high = ch2
        .basic_consume(
            "ranked".into(),
            "high".into(),
            Default::default(),
            args(&[("x-priority", 10)]),
        )
        .await
        .unwrap();
    // Let node 1 learn of node 2's consumer and its priority.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pch = c1.create_channel().await.unwrap();
    pch.confirm_select(Default::default()).await.unwrap();
    for i in 0..20u32 {
        assert!(confirm_one(&pch, "", "ranked", &i.to_be_bytes()).await);
    }
    let mut got_high = 0;
    while got_high < 20 {
        let d = tokio::time::timeout(Duration::from_secs(10), high.next())
            .await
            .expect("deliveries to the high-priority consumer")
            .unwrap()
            .unwrap();
        d.ack(Default::default()).await.unwrap();
        got_high += 1;
    }
    let stray = tokio::time::timeout(Duration::from_millis(300), low.next()).await;
    assert!(
        stray.is_err(),
        "the low-priority consumer got a message: {stray:?}"
    );
}
