//! Exchanges: declare/delete rules, the predeclared exchanges, exchange-to-
//! exchange bindings, auto-delete, alternate exchanges, publish errors, and
//! the topic and headers routing tables.

mod common;
mod support;

use std::collections::BTreeSet;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use support::*;

async fn declare_x(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    opts: ExchangeDeclareOptions,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    within(
        "exchange.declare reply",
        ch.exchange_declare(name.into(), kind, opts, args),
    )
    .await
}

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn exchanges_declare_with_each_flag_and_passive_declare_finds_them() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let cases = [
        (
            "plain",
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
        ),
        ("durable", ExchangeKind::Fanout, durable()),
        (
            "autodel",
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        ),
        (
            "internal",
            ExchangeKind::Headers,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
        ),
    ];
    for (suffix, kind, opts) in cases {
        let name = unique(&format!("x-{suffix}"));
        declare_x(&ch, &name, kind.clone(), opts, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("declare {name}: {e:?}"));
        // Redeclaring with identical properties is fine.
        declare_x(&ch, &name, kind, opts, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("redeclare {name}: {e:?}"));
        // Passive declare ignores type and flags.
        declare_x(
            &ch,
            &name,
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare {name}: {e:?}"));
    }
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_is_404() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let err = declare_x(
        &ch,
        "nope",
        ExchangeKind::Direct,
        passive(),
        FieldTable::default(),
    )
    .await
    .expect_err("passive declare of a missing exchange");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
    assert!(c.status().connected(), "a 404 is a channel error only");
}

#[tokio::test]
async fn declaring_an_exchange_with_the_reserved_amq_prefix_is_403() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let err = declare_x(
        &ch,
        "amq.foo",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect_err("declare amq.foo");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'"
    );
}

#[tokio::test]
async fn redeclaring_an_exchange_with_another_type_is_406() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let name = unique("retype");
    declare_x(
        &ch,
        &name,
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = declare_x(
        &ch,
        &name,
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect_err("redeclare as fanout");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        format!(
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{name}' in vhost '/': received 'fanout' but current is 'direct'"
        )
    );
    assert!(c.status().connected());
}

#[tokio::test]
async fn redeclaring_an_exchange_with_another_durability_is_406() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let name = unique("redurable");
    declare_x(
        &ch,
        &name,
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = declare_x(
        &ch,
        &name,
        ExchangeKind::Direct,
        durable(),
        FieldTable::default(),
    )
    .await
    .expect_err("redeclare durable");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{name}' in vhost '/': received 'true' but current is 'false'"
        )
    );
}

#[tokio::test]
async fn an_unknown_exchange_type_is_connection_error_503() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let err = declare_x(
        &ch,
        "weird",
        ExchangeKind::Custom("foo".into()),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect_err("declare with type foo");
    assert_eq!(reply_code(&err), Some(503), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "COMMAND_INVALID - invalid exchange type 'foo'"
    );
    // A hard error: the whole connection goes.
    let r = within("channel.open on a closed connection", c.create_channel()).await;
    assert!(r.is_err(), "the connection must be closed after a 503");
}

#[tokio::test]
async fn the_predeclared_amq_exchanges_exist() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        declare_x(&ch, name, kind.clone(), passive(), FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("passive declare {name}: {e:?}"));
        // As RabbitMQ: a non-passive redeclare with identical properties is ok.
        declare_x(&ch, name, kind, durable(), FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("redeclare {name}: {e:?}"));
    }
}

#[tokio::test]
async fn the_default_exchange_routes_by_queue_name() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("default-x");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"via default").await;
    assert_eq!(drain(&ch, &q).await, [b"via default".to_vec()]);
}

// The brief asked for a passive declare of the default exchange to succeed,
// but RabbitMQ refuses any declare of "" (passive included) with 403
// (conformance/RABBITMQ_BEHAVIOUR.md rows 16-17). We test RabbitMQ.
#[tokio::test]
async fn declaring_the_default_exchange_even_passively_is_403() {
    let w = Warren::start();
    let c = w.connect().await;
    for opts in [passive(), durable()] {
        let ch = c.create_channel().await.unwrap();
        let err = declare_x(&ch, "", ExchangeKind::Direct, opts, FieldTable::default())
            .await
            .expect_err("declare of the default exchange");
        assert_eq!(reply_code(&err), Some(403), "{opts:?}: {err:?}");
        assert_eq!(
            reply_text(&err),
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        );
    }
}

#[tokio::test]
async fn deleting_a_system_exchange_is_403() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let err = within(
        "exchange.delete reply",
        ch.exchange_delete("amq.direct".into(), Default::default()),
    )
    .await
    .expect_err("delete amq.direct");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
    );
}

#[tokio::test]
async fn deleting_a_bound_exchange_with_if_unused_is_406_and_without_bindings_succeeds() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = c.create_channel().await.unwrap();
    let x = unique("inuse");
    let q = unique("inuse-q");
    declare_x(
        &ch,
        &x,
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, &q).await;
    bind(&ch, &q, &x, "k").await;
    let err = within(
        "exchange.delete reply",
        ch.exchange_delete(
            x.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect_err("delete if_unused while bound");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        format!("PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use")
    );
    assert!(
        exchange_exists(&c, &x).await,
        "a refused delete deletes nothing"
    );

    let ch = c.create_channel().await.unwrap();
    within(
        "queue.unbind-ok",
        ch.queue_unbind(
            q.as_str().into(),
            x.as_str().into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    within(
        "exchange.delete-ok",
        ch.exchange_delete(
            x.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("delete if_unused with no bindings");
    assert!(!exchange_exists(&c, &x).await);
    // Deleting a missing exchange succeeds, as in RabbitMQ.
    within(
        "exchange.delete-ok",
        ch.exchange_delete(x.as_str().into(), Default::default()),
    )
    .await
    .expect("delete of a missing exchange");
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_and_unbinding_stops_them() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let src = unique("e2e-src");
    let dst = unique("e2e-dst");
    let q = unique("e2e-q");
    declare_x(
        &ch,
        &src,
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_x(
        &ch,
        &dst,
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, &q).await;
    bind(&ch, &q, &dst, "blue").await;
    within(
        "exchange.bind-ok",
        ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            "ignored-by-fanout".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");

    publish(&ch, &src, "blue", b"b1").await;
    publish(&ch, &src, "red", b"r1").await; // fanout passes it, direct drops it
    assert_eq!(drain_strings(&ch, &q).await, ["b1"]);

    within(
        "exchange.unbind-ok",
        ch.exchange_unbind(
            dst.as_str().into(),
            src.as_str().into(),
            "ignored-by-fanout".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, &src, "blue", b"b2").await;
    publish(&ch, &dst, "blue", b"b3").await;
    assert_eq!(drain_strings(&ch, &q).await, ["b3"]);
}

#[tokio::test]
async fn an_internal_exchange_is_reachable_through_an_exchange_binding() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let front = unique("front");
    let inner = unique("inner");
    let q = unique("inner-q");
    declare_x(
        &ch,
        &front,
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_x(
        &ch,
        &inner,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, &q).await;
    bind(&ch, &q, &inner, "").await;
    within(
        "exchange.bind-ok",
        ch.exchange_bind(
            inner.as_str().into(),
            front.as_str().into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish(&ch, &front, "k", b"through").await;
    assert_eq!(drain_strings(&ch, &q).await, ["through"]);
}

#[tokio::test]
async fn an_auto_delete_exchange_goes_when_its_last_binding_is_removed() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = c.create_channel().await.unwrap();
    let x = unique("autodel");
    let q = unique("autodel-q");
    declare_x(
        &ch,
        &x,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, &q).await;
    bind(&ch, &q, &x, "one").await;
    bind(&ch, &q, &x, "two").await;

    within(
        "queue.unbind-ok",
        ch.queue_unbind(
            q.as_str().into(),
            x.as_str().into(),
            "one".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert!(exchange_exists(&c, &x).await, "one binding is left");
    within(
        "queue.unbind-ok",
        ch.queue_unbind(
            q.as_str().into(),
            x.as_str().into(),
            "two".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert!(
        !exchange_exists(&c, &x).await,
        "last binding removed: exchange deleted"
    );
}

#[tokio::test]
async fn an_auto_delete_exchange_goes_when_its_last_bound_queue_is_deleted() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = c.create_channel().await.unwrap();
    let x = unique("autodel2");
    let q = unique("autodel2-q");
    declare_x(
        &ch,
        &x,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, &q).await;
    bind(&ch, &q, &x, "").await;
    within(
        "queue.delete-ok",
        ch.queue_delete(q.as_str().into(), Default::default()),
    )
    .await
    .unwrap();
    assert!(!exchange_exists(&c, &x).await);
}

#[tokio::test]
async fn an_unroutable_message_goes_to_the_alternate_exchange() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let ae = unique("ae");
    let x = unique("with-ae");
    let routed = unique("routed");
    let caught = unique("caught");
    declare_x(
        &ch,
        &ae,
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(ae.as_str().into()),
    );
    declare_x(&ch, &x, ExchangeKind::Direct, Default::default(), args)
        .await
        .unwrap();
    declare(&ch, &routed).await;
    declare(&ch, &caught).await;
    bind(&ch, &routed, &x, "known").await;
    bind(&ch, &caught, &ae, "").await;

    publish(&ch, &x, "known", b"k").await;
    publish(&ch, &x, "unknown", b"u").await;
    assert_eq!(drain_strings(&ch, &routed).await, ["k"]);
    assert_eq!(drain_strings(&ch, &caught).await, ["u"]);
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let mut ev = watch(&c);
    publish(&ch, "no-such-exchange", "k", b"x").await;
    let err = channel_error(&ch, &mut ev).await;
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"
    );
    assert!(c.status().connected(), "a channel error only");
}

#[tokio::test]
async fn publishing_to_an_internal_exchange_is_403() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let x = unique("internal");
    declare_x(
        &ch,
        &x,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut ev = watch(&c);
    publish(&ch, &x, "", b"x").await;
    let err = channel_error(&ch, &mut ev).await;
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    assert_eq!(
        reply_text(&err),
        format!("ACCESS_REFUSED - cannot publish to internal exchange '{x}' in vhost '/'")
    );
}

/// A deterministic xorshift generator (no rand crate in dev-dependencies).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// RabbitMQ's word split: "" is zero words, otherwise split on '.'.
fn words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

/// The obvious recursive topic matcher.
fn topic_matches(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.first() {
        None => key.is_empty(),
        Some(&"#") => {
            topic_matches(&pattern[1..], key)
                || (!key.is_empty() && topic_matches(pattern, &key[1..]))
        }
        Some(&"*") => !key.is_empty() && topic_matches(&pattern[1..], &key[1..]),
        Some(w) => !key.is_empty() && key[0] == *w && topic_matches(&pattern[1..], &key[1..]),
    }
}

#[test]
fn the_naive_topic_matcher_agrees_with_rabbitmqs_documented_examples() {
    let m = |p: &str, k: &str| topic_matches(&words(p), &words(k));
    assert!(m("a.#", "a"));
    assert!(m("#", ""));
    assert!(!m("*", ""));
    assert!(m("*", "a"));
    assert!(m("a.*.b", "a..b"));
    assert!(m("", ""));
    assert!(!m("", "a"));
    assert!(m("#.b", "a.b") && m("#.b", "b") && !m("#.b", "b.a"));
}

#[tokio::test]
async fn topic_routing_matches_a_naive_matcher_on_random_keys() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let x = unique("topic");
    declare_x(
        &ch,
        &x,
        ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let long = vec!["a"; 20].join(".");
    let long_hash = format!("{}.#", ["a"; 10].join("."));
    // One queue per group of patterns; a queue bound with overlapping
    // patterns must still get each message once.
    let groups: Vec<Vec<String>> = [
        vec!["#"],
        vec!["*"],
        vec!["a.#"],
        vec!["#.a"],
        vec!["a.*"],
        vec!["*.a"],
        vec!["a.*.b"],
        vec!["a.#.b"],
        vec!["#.a.#"],
        vec!["a..b"],
        vec!["a."],
        vec![".a"],
        vec![""],
        vec!["*.*"],
        vec!["#.#"],
        vec!["*.#"],
        vec!["#.*"],
        vec!["a.#.#.b"],
        vec!["*.*.*"],
        vec!["#.*.#.*.#"],
        vec!["b.c.d"],
        vec![long.as_str()],
        vec![long_hash.as_str()],
        vec!["a.#", "*.b", "#.c"], // overlapping group
        vec!["*..*"],
    ]
    .into_iter()
    .map(|g| g.into_iter().map(str::to_owned).collect())
    .collect();

    let mut queues = Vec::new();
    for (i, patterns) in groups.iter().enumerate() {
        let q = unique(&format!("topic-{i}"));
        declare(&ch, &q).await;
        for p in patterns {
            bind(&ch, &q, &x, p).await;
        }
        queues.push(q);
    }

    let alphabet = ["a", "b", "c", "d", ""];
    let mut keys: Vec<String> = [
        "",
        "a",
        "b",
        "a.b",
        "a..b",
        "a.b.c.d.e.f",
        ".",
        "..",
        "a.",
        ".a",
        "a.a",
        "b.c.d",
        "*",
        "#",
        "a.*",
        "a.#",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.push(long.clone());
    keys.push(vec!["a"; 30].join("."));
    keys.push(vec!["a"; 19].join("."));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    while keys.len() < 300 {
        let n = rng.below(8);
        let k: Vec<&str> = (0..n)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        keys.push(k.join("."));
    }

    for (i, k) in keys.iter().enumerate() {
        publish(&ch, &x, k, i.to_string().as_bytes()).await;
    }

    let mut failures = Vec::new();
    for (g, q) in groups.iter().zip(&queues) {
        let expected: Vec<String> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| g.iter().any(|p| topic_matches(&words(p), &words(k))))
            .map(|(i, _)| i.to_string())
            .collect();
        assert!(
            !expected.is_empty(),
            "patterns {g:?} match no test key: add one"
        );
        let got = drain_strings(&ch, q).await;
        if got != expected {
            let e: BTreeSet<&String> = expected.iter().collect();
            let gs: BTreeSet<&String> = got.iter().collect();
            let missing: Vec<&str> = e
                .difference(&gs)
                .map(|i| keys[i.parse::<usize>().unwrap()].as_str())
                .collect();
            let extra: Vec<&str> = gs
                .difference(&e)
                .map(|i| keys[i.parse::<usize>().unwrap()].as_str())
                .collect();
            failures.push(format!(
                "patterns {g:?}: {} expected, {} got; missing keys {missing:?}; unexpected keys {extra:?}{}",
                expected.len(),
                got.len(),
                if missing.is_empty() && extra.is_empty() { " (order or duplicates differ)" } else { "" }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "topic routing mismatches:\n{}",
        failures.join("\n")
    );
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

#[tokio::test]
async fn headers_exchange_routes_a_table_of_header_sets_to_the_expected_queues() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let x = unique("headers");
    declare_x(
        &ch,
        &x,
        ExchangeKind::Headers,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let bindings: Vec<(&str, FieldTable)> = vec![
        (
            "all",
            table(&[
                ("x-match", s("all")),
                ("format", s("pdf")),
                ("type", s("report")),
            ]),
        ),
        (
            "any",
            table(&[
                ("x-match", s("any")),
                ("format", s("pdf")),
                ("type", s("report")),
            ]),
        ),
        ("implicit-all", table(&[("format", s("pdf"))])),
        (
            "all-with-x",
            table(&[
                ("x-match", s("all-with-x")),
                ("x-tenant", s("t1")),
                ("format", s("pdf")),
            ]),
        ),
        (
            "any-with-x",
            table(&[
                ("x-match", s("any-with-x")),
                ("x-tenant", s("t1")),
                ("format", s("zip")),
            ]),
        ),
        (
            "all-skips-x",
            table(&[
                ("x-match", s("all")),
                ("x-tenant", s("t1")),
                ("format", s("pdf")),
            ]),
        ),
        (
            "any-skips-x",
            table(&[("x-match", s("any")), ("x-tenant", s("t1"))]),
        ),
        ("all-empty", table(&[("x-match", s("all"))])),
        ("any-empty", table(&[("x-match", s("any"))])),
        (
            "void",
            table(&[("x-match", s("all")), ("flag", AMQPValue::Void)]),
        ),
    ];
    let mut qname = std::collections::HashMap::new();
    for (label, args) in &bindings {
        let q = unique(&format!("h-{label}"));
        declare(&ch, &q).await;
        within(
            "queue.bind-ok",
            ch.queue_bind(
                q.as_str().into(),
                x.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                args.clone(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("bind {label}: {e:?}"));
        qname.insert(*label, q);
    }

    let cases: Vec<(Option<FieldTable>, Vec<&str>)> = vec![
        (
            Some(table(&[("format", s("pdf")), ("type", s("report"))])),
            vec!["all", "any", "implicit-all", "all-skips-x", "all-empty"],
        ),
        (
            Some(table(&[("format", s("pdf"))])),
            vec!["any", "implicit-all", "all-skips-x", "all-empty"],
        ),
        (
            Some(table(&[("type", s("report"))])),
            vec!["any", "all-empty"],
        ),
        (
            Some(table(&[("format", s("zip"))])),
            vec!["any-with-x", "all-empty"],
        ),
        (
            Some(table(&[("x-tenant", s("t1")), ("format", s("pdf"))])),
            vec![
                "any",
                "implicit-all",
                "all-with-x",
                "any-with-x",
                "all-skips-x",
                "all-empty",
            ],
        ),
        (None, vec!["all-empty"]),
        (Some(FieldTable::default()), vec!["all-empty"]),
        (
            Some(table(&[("x-tenant", s("t1"))])),
            vec!["any-with-x", "all-empty"],
        ),
        (
            Some(table(&[("format", s("pdf")), ("type", s("memo"))])),
            vec!["any", "implicit-all", "all-skips-x", "all-empty"],
        ),
        (
            Some(table(&[("flag", s("whatever"))])),
            vec!["void", "all-empty"],
        ),
        (
            Some(table(&[("flag", AMQPValue::LongInt(42))])),
            vec!["void", "all-empty"],
        ),
        (Some(table(&[("format", s("PDF"))])), vec!["all-empty"]),
    ];
    for (i, (headers, _)) in cases.iter().enumerate() {
        let props = match headers {
            Some(h) => BasicProperties::default().with_headers(h.clone()),
            None => BasicProperties::default(),
        };
        within(
            "basic.publish",
            ch.basic_publish(
                x.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                props,
            ),
        )
        .await
        .unwrap();
    }

    let mut failures = Vec::new();
    for (label, _) in &bindings {
        let expected: Vec<String> = cases
            .iter()
            .enumerate()
            .filter(|(_, (_, qs))| qs.contains(label))
            .map(|(i, _)| i.to_string())
            .collect();
        let got = drain_strings(&ch, &qname[label]).await;
        if got != expected {
            failures.push(format!(
                "binding {label}: expected messages {expected:?}, got {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "headers routing mismatches (message i = case i):\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_headers_binding_with_an_invalid_x_match_is_406() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("bad-xmatch");
    declare(&ch, &q).await;
    let err = within(
        "queue.bind reply",
        ch.queue_bind(
            q.as_str().into(),
            "amq.headers".into(),
            "".into(),
            QueueBindOptions::default(),
            table(&[("x-match", s("some"))]),
        ),
    )
    .await
    .expect_err("bind with x-match=some");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
}

// RabbitMQ says "unknown" for a type name that is not an Erlang atom it
// knows (pika's suite uses 'ZZwwInvalid'); recorded in RABBITMQ_BEHAVIOUR.md.
#[tokio::test]
async fn a_made_up_exchange_type_is_unknown_as_rabbitmq_says() {
    let w = Warren::start();
    for kind in ["ZZwwInvalid", "x-consistent-hash"] {
        let (_c, ch) = w.channel().await;
        let err = declare_x(
            &ch,
            "weird",
            ExchangeKind::Custom(kind.into()),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("declare with a made-up type");
        assert_eq!(reply_code(&err), Some(503), "{err:?}");
        assert_eq!(
            reply_text(&err),
            format!("COMMAND_INVALID - unknown exchange type '{kind}'")
        );
    }
}
