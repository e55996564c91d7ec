//! The management HTTP API: status codes and JSON shapes as RabbitMQ's
//! management plugin documents them, checked against a real warren.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use support::*;

fn ok_status(s: u16) -> bool {
    (200..300).contains(&s)
}

#[test]
fn overview_has_rabbitmqs_fields() {
    let w = Warren::start();
    let (s, v) = w.api("GET", "/api/overview", None);
    assert_eq!(s, 200);
    for k in [
        "management_version",
        "rabbitmq_version",
        "product_name",
        "product_version",
        "cluster_name",
        "node",
        "object_totals",
        "queue_totals",
        "message_stats",
        "listeners",
        "exchange_types",
    ] {
        assert!(v.get(k).is_some(), "overview lacks {k}: {v}");
    }
    assert_eq!(v["product_name"], "warren");
    assert!(v["rabbitmq_version"].as_str().unwrap().starts_with("3."));
    for k in [
        "connections",
        "channels",
        "exchanges",
        "queues",
        "consumers",
    ] {
        assert!(v["object_totals"][k].is_u64(), "object_totals.{k}");
    }
    for k in ["messages", "messages_ready", "messages_unacknowledged"] {
        assert!(v["queue_totals"][k].is_u64(), "queue_totals.{k}");
    }
    assert_eq!(v["object_totals"]["exchanges"], 6);
    let amqp = v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["protocol"] == "amqp")
        .unwrap();
    assert_eq!(amqp["port"], w.port);
    let (s, v) = w.api("GET", "/api/whoami", None);
    assert_eq!(
        (s, &v),
        (200, &json!({"name": "guest", "tags": ["administrator"]}))
    );
}

#[test]
fn logins_are_checked_as_rabbitmq_checks_them() {
    let w = Warren::start();
    let (s, headers, body) = http(&w.http_url(), None, "GET", "/api/overview", None);
    assert_eq!(s, 401);
    let auth = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
        .map(|(_, v)| v.clone());
    assert_eq!(auth.as_deref(), Some("Basic realm=\"RabbitMQ Management\""));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].is_string() && v["reason"].is_string(), "{v}");
    assert_eq!(
        w.api_as("guest", "wrong", "GET", "/api/overview", None).0,
        401
    );

    let put = |name: &str, tags: &str| {
        let (s, _) = w.api(
            "PUT",
            &format!("/api/users/{name}"),
            Some(&json!({"password": "pw", "tags": tags})),
        );
        assert_eq!(s, 201);
    };
    put("plain", "");
    put("mgmt", "management");
    put("mon", "monitoring");
    let (s, v) = w.api_as("plain", "pw", "GET", "/api/overview", None);
    assert_eq!(
        (s, v["error"].as_str(), v["reason"].as_str()),
        (401, Some("not_authorised"), Some("Not management user"))
    );
    let (s, v) = w.api_as("mgmt", "pw", "GET", "/api/users", None);
    assert_eq!(
        (s, v["reason"].as_str()),
        (401, Some("Not administrator user"))
    );
    // A management user sees only vhosts it has permissions in.
    assert_eq!(
        w.api("PUT", "/api/queues/%2F/secret", Some(&json!({}))).0,
        201
    );
    let (s, v) = w.api_as("mgmt", "pw", "GET", "/api/queues", None);
    assert_eq!((s, v), (200, json!([])));
    assert_eq!(
        w.api_as("mgmt", "pw", "GET", "/api/queues/%2F/secret", None)
            .0,
        401
    );
    assert_eq!(
        w.api_as(
            "mgmt",
            "pw",
            "PUT",
            "/api/queues/%2F/mine",
            Some(&json!({}))
        )
        .0,
        401
    );
    let perms = json!({"configure": "^mgmt-", "write": ".*", "read": ".*"});
    assert_eq!(
        w.api("PUT", "/api/permissions/%2F/mgmt", Some(&perms)).0,
        201
    );
    assert_eq!(
        w.api_as("mgmt", "pw", "GET", "/api/queues", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        w.api_as(
            "mgmt",
            "pw",
            "PUT",
            "/api/queues/%2F/mgmt-q",
            Some(&json!({}))
        )
        .0,
        201
    );
    // ... and within them only what its permission regexes allow.
    assert_eq!(
        w.api_as(
            "mgmt",
            "pw",
            "PUT",
            "/api/queues/%2F/other",
            Some(&json!({}))
        )
        .0,
        401
    );
    // Monitoring reads everything but changes nothing it lacks permissions for.
    let (s, v) = w.api_as("mon", "pw", "GET", "/api/queues", None);
    assert_eq!((s, v.as_array().unwrap().len()), (200, 2));
    assert_eq!(w.api_as("mon", "pw", "GET", "/api/nodes", None).0, 200);
    assert_eq!(w.api_as("mon", "pw", "PUT", "/api/vhosts/x", None).0, 401);
}

#[test]
fn vhosts_users_and_permissions_can_be_managed() {
    let w = Warren::start();
    assert_eq!(w.api("PUT", "/api/vhosts/shop", None).0, 201);
    assert_eq!(w.api("PUT", "/api/vhosts/shop", None).0, 204);
    let (s, v) = w.api("GET", "/api/vhosts/shop", None);
    assert_eq!((s, v["name"].as_str()), (200, Some("shop")));
    for k in [
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "message_stats",
        "tracing",
    ] {
        assert!(v.get(k).is_some(), "vhost lacks {k}");
    }
    // The creator may use the vhost at once, as in RabbitMQ.
    let (s, v) = w.api("GET", "/api/permissions/shop/guest", None);
    assert_eq!((s, v["configure"].as_str()), (200, Some(".*")));
    let names: Vec<String> = w
        .api("GET", "/api/vhosts", None)
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["/", "shop"]);

    let (s, _) = w.api(
        "PUT",
        "/api/users/ann",
        Some(&json!({"password": "pw", "tags": "monitoring,management"})),
    );
    assert_eq!(s, 201);
    let (s, v) = w.api("GET", "/api/users/ann", None);
    assert_eq!(s, 200);
    assert_eq!(v["tags"], json!(["monitoring", "management"]));
    assert_eq!(v["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert!(!v["password_hash"].as_str().unwrap().is_empty());
    assert_eq!(
        w.api(
            "PUT",
            "/api/permissions/shop/ann",
            Some(&json!({"configure": "", "write": ".*", "read": ".*"}))
        )
        .0,
        201
    );
    let (s, v) = w.api("GET", "/api/users/ann/permissions", None);
    assert_eq!(
        (s, v),
        (
            200,
            json!([{"user": "ann", "vhost": "shop", "configure": "", "write": ".*", "read": ".*"}])
        )
    );
    assert_eq!(
        w.api(
            "PUT",
            "/api/permissions/nope/ann",
            Some(&json!({"configure": "", "write": "", "read": ""}))
        )
        .0,
        400
    );
    assert_eq!(w.api_as("ann", "pw", "GET", "/api/whoami", None).0, 200);
    assert_eq!(w.api("DELETE", "/api/permissions/shop/ann", None).0, 204);
    assert_eq!(w.api("DELETE", "/api/permissions/shop/ann", None).0, 404);
    assert_eq!(w.api("DELETE", "/api/users/ann", None).0, 204);
    assert_eq!(w.api("GET", "/api/users/ann", None).0, 404);
    assert_eq!(w.api("DELETE", "/api/vhosts/shop", None).0, 204);
    assert_eq!(w.api("DELETE", "/api/vhosts/shop", None).0, 404);
}

#[test]
fn exchanges_are_declared_listed_and_deleted() {
    let w = Warren::start();
    let body = json!({"type": "topic", "durable": true, "arguments": {"alternate-exchange": "ae"}});
    assert_eq!(
        w.api("PUT", "/api/exchanges/%2F/events", Some(&body)).0,
        201
    );
    assert_eq!(
        w.api("PUT", "/api/exchanges/%2F/events", Some(&body)).0,
        204
    );
    let (s, v) = w.api("GET", "/api/exchanges/%2F/events", None);
    assert_eq!(s, 200);
    for (k, want) in [
        ("name", json!("events")),
        ("vhost", json!("/")),
        ("type", json!("topic")),
        ("durable", json!(true)),
        ("auto_delete", json!(false)),
        ("internal", json!(false)),
        ("arguments", json!({"alternate-exchange": "ae"})),
    ] {
        assert_eq!(v[k], want, "{k}");
    }
    let (s, v) = w.api(
        "PUT",
        "/api/exchanges/%2F/events",
        Some(&json!({"type": "direct"})),
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")));
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("inequivalent arg 'type'"),
        "{v}"
    );
    assert_eq!(
        w.api(
            "PUT",
            "/api/exchanges/%2F/bad",
            Some(&json!({"type": "nope"}))
        )
        .0,
        400
    );
    assert_eq!(
        w.api("PUT", "/api/exchanges/%2F/bad", Some(&json!({}))).0,
        400
    );
    let (s, v) = w.api("GET", "/api/exchanges/%2F", None);
    assert_eq!(s, 200);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.topic",
            "events"
        ]
    );
    assert_eq!(
        w.api("DELETE", "/api/exchanges/%2F/amq.direct", None).0,
        401
    );
    assert_eq!(w.api("DELETE", "/api/exchanges/%2F/events", None).0, 204);
    let (s, v) = w.api("GET", "/api/exchanges/%2F/events", None);
    assert_eq!(
        (s, v),
        (
            404,
            json!({"error": "Object Not Found", "reason": "Not Found"})
        )
    );
    assert_eq!(w.api("DELETE", "/api/exchanges/%2F/events", None).0, 404);
    assert_eq!(w.api("GET", "/api/exchanges/nope", None).0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_figures_are_live() {
    let w = Warren::start();
    assert_eq!(
        w.api(
            "PUT",
            "/api/queues/%2F/work",
            Some(&json!({"durable": true, "arguments": {"x-max-length": 100}}))
        )
        .0,
        201
    );
    assert_eq!(
        w.api(
            "PUT",
            "/api/queues/%2F/work",
            Some(&json!({"durable": true, "arguments": {"x-max-length": 100}}))
        )
        .0,
        204
    );
    let (s, v) = w.api(
        "PUT",
        "/api/queues/%2F/work",
        Some(&json!({"durable": false})),
    );
    assert_eq!(s, 400);
    assert_eq!(
        v["reason"],
        "inequivalent arg 'durable' for queue 'work' in vhost '/': received 'false' but current is 'true'"
    );
    let (_c, ch) = w.channel().await;
    for i in 0..5u8 {
        publish(&ch, "", "work", &[i]).await;
    }
    let (s, v) = w.api("GET", "/api/queues/%2F/work", None);
    assert_eq!(s, 200);
    for (k, want) in [
        ("messages", 5),
        ("messages_ready", 5),
        ("messages_unacknowledged", 0),
        ("consumers", 0),
    ] {
        assert_eq!(v[k], want, "{k}: {v}");
    }
    assert_eq!(v["message_stats"]["publish"], 5);
    assert!(v["message_stats"]["publish_details"]["rate"].is_number());
    for k in [
        "name",
        "vhost",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "node",
        "state",
        "consumer_details",
    ] {
        assert!(v.get(k).is_some(), "queue lacks {k}");
    }
    assert_eq!(v["arguments"], json!({"x-max-length": 100}));

    // Two deliveries unacked by a consumer with prefetch 2.
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let _consumer = ch
        .basic_consume(
            "work".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = w.api("GET", "/api/queues/%2F/work", None).1;
        if v["messages_unacknowledged"] == 2 {
            assert_eq!(
                (
                    v["messages_ready"].clone(),
                    v["messages"].clone(),
                    v["consumers"].clone()
                ),
                (json!(3), json!(5), json!(1))
            );
            assert_eq!(v["message_stats"]["deliver"], 2);
            assert_eq!(v["consumer_details"][0]["consumer_tag"], "c1");
            assert_eq!(v["consumer_details"][0]["prefetch_count"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "unacked never reached 2: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = w.api("GET", "/api/channels", None);
    assert_eq!(s, 200);
    let with_consumer: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["consumer_count"] == 1)
        .collect();
    assert_eq!(with_consumer.len(), 1, "{v}");
    assert_eq!(
        with_consumer[0]["prefetch_count"], 2,
        "basic.qos global=false"
    );
    assert_eq!(with_consumer[0]["global_prefetch_count"], 0);
    let (s, v) = w.api("GET", "/api/consumers/%2F", None);
    assert_eq!(s, 200);
    let c = &v[0];
    assert_eq!(
        (
            c["consumer_tag"].as_str(),
            c["queue"]["name"].as_str(),
            c["ack_required"].as_bool()
        ),
        (Some("c1"), Some("work"), Some(true))
    );
    assert!(
        c["channel_details"]["connection_name"]
            .as_str()
            .unwrap()
            .contains(" -> ")
    );
    let (_, v) = w.api("GET", "/api/overview", None);
    assert_eq!(v["queue_totals"]["messages"], 5);
    assert_eq!(v["object_totals"]["consumers"], 1);
}

#[test]
fn messages_are_published_fetched_and_purged_over_http() {
    let w = Warren::start();
    w.api("PUT", "/api/queues/%2F/inbox", Some(&json!({})));
    let msg = json!({"routing_key": "inbox", "payload": "hello", "payload_encoding": "string",
                     "properties": {"delivery_mode": 2, "headers": {"h": 1}, "content_type": "text/plain"}});
    let (s, v) = w.api("POST", "/api/exchanges/%2F/amq.default/publish", Some(&msg));
    assert_eq!((s, v), (200, json!({"routed": true})));
    let mut lost = msg.clone();
    lost["routing_key"] = "nowhere".into();
    assert_eq!(
        w.api(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(&lost)
        )
        .1,
        json!({"routed": false})
    );
    let bin = json!({"routing_key": "inbox", "payload": "/wA=", "payload_encoding": "base64", "properties": {}});
    assert_eq!(
        w.api("POST", "/api/exchanges/%2F/amq.default/publish", Some(&bin))
            .1,
        json!({"routed": true})
    );
    assert_eq!(
        w.api("POST", "/api/exchanges/%2F/nope/publish", Some(&msg))
            .0,
        400
    );

    let get = json!({"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"});
    let (s, v) = w.api("POST", "/api/queues/%2F/inbox/get", Some(&get));
    assert_eq!(s, 200);
    assert_eq!(v.as_array().unwrap().len(), 2);
    let m = &v[0];
    assert_eq!(m["payload"], "hello");
    assert_eq!(m["payload_encoding"], "string");
    assert_eq!(m["payload_bytes"], 5);
    assert_eq!(m["redelivered"], false);
    assert_eq!(m["exchange"], "");
    assert_eq!(m["routing_key"], "inbox");
    assert_eq!(m["message_count"], 1);
    assert_eq!(
        m["properties"],
        json!({"delivery_mode": 2, "headers": {"h": 1}, "content_type": "text/plain"})
    );
    assert_eq!(v[1]["payload_encoding"], "base64");
    assert_eq!(v[1]["payload"], "/wA=");
    // Requeued: still there, now redelivered.
    let (_, v) = w.api(
        "POST",
        "/api/queues/%2F/inbox/get",
        Some(&json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})),
    );
    assert_eq!(v[0]["redelivered"], true);
    assert_eq!(w.api("GET", "/api/queues/%2F/inbox", None).1["messages"], 1);
    assert_eq!(
        w.api(
            "POST",
            "/api/queues/%2F/inbox/get",
            Some(&json!({"count": 1, "ackmode": "bogus"}))
        )
        .0,
        400
    );
    assert_eq!(
        w.api("DELETE", "/api/queues/%2F/inbox/contents", None).0,
        204
    );
    assert_eq!(w.api("GET", "/api/queues/%2F/inbox", None).1["messages"], 0);
    assert_eq!(w.api("DELETE", "/api/queues/%2F/inbox", None).0, 204);
    assert_eq!(w.api("DELETE", "/api/queues/%2F/inbox", None).0, 404);
    assert_eq!(
        w.api("DELETE", "/api/queues/%2F/nope/contents", None).0,
        404
    );
}

#[test]
fn bindings_are_created_listed_and_deleted() {
    let w = Warren::start();
    w.api(
        "PUT",
        "/api/exchanges/%2F/events",
        Some(&json!({"type": "topic"})),
    );
    w.api(
        "PUT",
        "/api/exchanges/%2F/audit",
        Some(&json!({"type": "fanout"})),
    );
    w.api("PUT", "/api/queues/%2F/orders", Some(&json!({})));
    let (s, headers, _) = http(
        &w.http_url(),
        Some(("guest", "guest")),
        "POST",
        "/api/bindings/%2F/e/events/q/orders",
        Some(&json!({"routing_key": "order.#", "arguments": {}})),
    );
    assert_eq!(s, 201);
    let loc = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.clone());
    assert_eq!(loc.as_deref(), Some("orders/order.%2523"));
    assert_eq!(
        w.api(
            "POST",
            "/api/bindings/%2F/e/events/e/audit",
            Some(&json!({"routing_key": "#"}))
        )
        .0,
        201
    );
    assert_eq!(
        w.api(
            "POST",
            "/api/bindings/%2F/e/events/q/nope",
            Some(&json!({}))
        )
        .0,
        404
    );

    let (s, v) = w.api("GET", "/api/bindings/%2F/e/events/q/orders", None);
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!([{"source": "events", "vhost": "/", "destination": "orders", "destination_type": "queue",
                          "routing_key": "order.#", "arguments": {}, "properties_key": "order.%23"}])
    );
    let (_, all) = w.api("GET", "/api/bindings/%2F", None);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    // The implicit binding to the default exchange comes first, as in RabbitMQ.
    assert_eq!(all[0]["source"], "");
    assert_eq!(all[0]["routing_key"], "orders");
    assert_eq!(
        w.api("GET", "/api/exchanges/%2F/events/bindings/source", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        w.api("GET", "/api/exchanges/%2F/audit/bindings/destination", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        w.api("GET", "/api/queues/%2F/orders/bindings", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        w.api(
            "GET",
            "/api/bindings/%2F/e/events/q/orders/order.%2523",
            None
        )
        .0,
        200
    );
    assert_eq!(
        w.api(
            "DELETE",
            "/api/bindings/%2F/e/events/q/orders/order.%2523",
            None
        )
        .0,
        204
    );
    assert_eq!(
        w.api(
            "DELETE",
            "/api/bindings/%2F/e/events/q/orders/order.%2523",
            None
        )
        .0,
        404
    );
    assert_eq!(
        w.api("GET", "/api/bindings/%2F/e/events/q/orders", None).1,
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_channels_are_listed_and_closed() {
    let w = Warren::start();
    let (c, _ch) = w.channel().await;
    let _ch2 = c.create_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let conn = loop {
        let (s, v) = w.api("GET", "/api/connections", None);
        assert_eq!(s, 200);
        if v.as_array().unwrap().len() == 1 && v[0]["channels"] == 2 {
            break v[0].clone();
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (k, want) in [
        ("user", json!("guest")),
        ("vhost", json!("/")),
        ("state", json!("running")),
        ("protocol", json!("AMQP 0-9-1")),
        ("peer_host", json!("127.0.0.1")),
    ] {
        assert_eq!(conn[k], want, "{k}");
    }
    assert!(conn["client_properties"]["product"].is_string(), "{conn}");
    let name = conn["name"].as_str().unwrap().to_owned();
    assert!(
        name.ends_with(&format!(" -> 127.0.0.1:{}", w.port)),
        "{name}"
    );
    let enc = name.replace(' ', "%20").replace('>', "%3E");
    assert_eq!(
        w.api("GET", &format!("/api/connections/{enc}"), None).0,
        200
    );
    let (_, chans) = w.api("GET", &format!("/api/connections/{enc}/channels"), None);
    assert_eq!(chans.as_array().unwrap().len(), 2);
    assert_eq!(chans[0]["name"], format!("{name} (1)"));
    assert_eq!(chans[0]["number"], 1);
    assert_eq!(chans[0]["connection_details"]["name"], name.as_str());
    assert_eq!(
        w.api("GET", "/api/channels", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        w.api("GET", "/api/vhosts/%2F/channels", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let (s, _, _) = http(
        &w.http_url(),
        Some(("guest", "guest")),
        "DELETE",
        &format!("/api/connections/{enc}"),
        None,
    );
    assert_eq!(s, 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.status().connected()
        || !w
            .api("GET", "/api/connections", None)
            .1
            .as_array()
            .unwrap()
            .is_empty()
    {
        assert!(Instant::now() < deadline, "the connection was not closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        w.api("DELETE", &format!("/api/connections/{enc}"), None).0,
        404
    );
}

#[test]
fn policies_can_be_managed() {
    let w = Warren::start();
    let p = json!({"pattern": "^orders$", "definition": {"max-length": 10}, "apply-to": "queues", "priority": 1});
    assert_eq!(w.api("PUT", "/api/policies/%2F/cap", Some(&p)).0, 201);
    assert_eq!(w.api("PUT", "/api/policies/%2F/cap", Some(&p)).0, 204);
    let (s, v) = w.api("GET", "/api/policies/%2F/cap", None);
    assert_eq!(
        (s, v),
        (
            200,
            json!({"vhost": "/", "name": "cap", "pattern": "^orders$", "apply-to": "queues", "definition": {"max-length": 10}, "priority": 1})
        )
    );
    assert_eq!(
        w.api("GET", "/api/policies", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        w.api(
            "PUT",
            "/api/policies/%2F/bad",
            Some(&json!({"pattern": "(", "definition": {}}))
        )
        .0,
        400
    );
    assert_eq!(w.api("DELETE", "/api/policies/%2F/cap", None).0, 204);
    assert_eq!(w.api("DELETE", "/api/policies/%2F/cap", None).0, 404);
}

/// Everything RabbitMQ's definitions hold, created through the API.
fn populate(w: &Warren) {
    for (m, p, b) in [
        ("PUT", "/api/vhosts/shop", json!({})),
        (
            "PUT",
            "/api/users/ann",
            json!({"password": "pw", "tags": "management"}),
        ),
        (
            "PUT",
            "/api/permissions/shop/ann",
            json!({"configure": "^ann-", "write": ".*", "read": ".*"}),
        ),
        (
            "PUT",
            "/api/policies/shop/ttl",
            json!({"pattern": "^orders$", "definition": {"message-ttl": 60000}, "apply-to": "queues"}),
        ),
        (
            "PUT",
            "/api/exchanges/shop/events",
            json!({"type": "topic", "durable": true}),
        ),
        (
            "PUT",
            "/api/exchanges/shop/audit",
            json!({"type": "fanout", "durable": true}),
        ),
        (
            "PUT",
            "/api/queues/shop/orders",
            json!({"durable": true, "arguments": {"x-max-length": 1000}}),
        ),
        ("PUT", "/api/queues/%2F/jobs", json!({"durable": true})),
        (
            "POST",
            "/api/bindings/shop/e/events/q/orders",
            json!({"routing_key": "order.#"}),
        ),
        (
            "POST",
            "/api/bindings/shop/e/events/e/audit",
            json!({"routing_key": "#", "arguments": {"x-note": "all"}}),
        ),
    ] {
        let (s, v) = w.api(m, p, Some(&b));
        assert!(ok_status(s), "{m} {p}: {s} {v}");
    }
}

#[test]
fn definitions_round_trip_through_the_api() {
    let w = Warren::start();
    populate(&w);
    let (s, first) = w.api("GET", "/api/definitions", None);
    assert_eq!(s, 200);
    for k in [
        "users",
        "vhosts",
        "permissions",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ] {
        assert!(first[k].is_array(), "definitions lack {k}");
    }
    assert_eq!(first["queues"].as_array().unwrap().len(), 2);
    assert_eq!(first["bindings"].as_array().unwrap().len(), 2);
    // Delete everything that was made, then import the export.
    for p in ["/api/vhosts/shop", "/api/users/ann", "/api/queues/%2F/jobs"] {
        assert_eq!(w.api("DELETE", p, None).0, 204, "{p}");
    }
    let (_, empty) = w.api("GET", "/api/definitions", None);
    assert_eq!(empty["queues"], json!([]));
    assert_eq!(w.api("POST", "/api/definitions", Some(&first)).0, 204);
    let (_, second) = w.api("GET", "/api/definitions", None);
    assert_eq!(first, second);
    // The user came back with its password.
    assert_eq!(w.api_as("ann", "pw", "GET", "/api/whoami", None).0, 200);

    // One vhost's definitions, without vhost fields; imported into another.
    let (s, shop) = w.api("GET", "/api/definitions/shop", None);
    assert_eq!(s, 200);
    assert!(shop.get("users").is_none());
    assert_eq!(
        shop["queues"],
        json!([{"name": "orders", "durable": true, "auto_delete": false, "arguments": {"x-max-length": 1000}}])
    );
    w.api("PUT", "/api/vhosts/copy", None);
    assert_eq!(w.api("POST", "/api/definitions/copy", Some(&shop)).0, 204);
    assert_eq!(
        w.api("GET", "/api/bindings/copy/e/events/q/orders", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        w.api(
            "POST",
            "/api/definitions",
            Some(&json!({"queues": [{"name": "x", "vhost": "nope"}]}))
        )
        .0,
        400
    );
    // An empty body imports nothing (RabbitMQ 3.10.8: 204 too).
    assert_eq!(w.api("POST", "/api/definitions", None).0, 204);
}

/// A definitions file as RabbitMQ documents and exports it (3.10), with a
/// password hash RabbitMQ made for the password "pw".
const RABBITMQ_DEFINITIONS: &str = r#"{
  "rabbit_version": "3.10.8",
  "rabbitmq_version": "3.10.8",
  "product_name": "RabbitMQ",
  "product_version": "3.10.8",
  "users": [
    {"name": "orders-app", "password_hash": "YYf5QimOQw8wEfHHB7jlzEzVcThiCNTGdXfySkkj+gzXmABE",
     "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["management"], "limits": {}},
    {"name": "ops", "password_hash": "YYf5QimOQw8wEfHHB7jlzEzVcThiCNTGdXfySkkj+gzXmABE",
     "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator", "limits": {}}
  ],
  "vhosts": [{"name": "/"}, {"name": "orders", "description": "order processing", "tags": [], "metadata": {"description": "order processing", "tags": []}}],
  "permissions": [
    {"user": "orders-app", "vhost": "orders", "configure": "^orders\\.", "write": ".*", "read": ".*"},
    {"user": "ops", "vhost": "orders", "configure": ".*", "write": ".*", "read": ".*"}
  ],
  "topic_permissions": [],
  "parameters": [],
  "global_parameters": [{"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-0T5xs9bGLpovqlQS0aDeQg"}],
  "policies": [
    {"vhost": "orders", "name": "cap", "pattern": "^orders\\.", "apply-to": "queues", "definition": {"max-length": 100000}, "priority": 0}
  ],
  "queues": [
    {"name": "orders.new", "vhost": "orders", "durable": true, "auto_delete": false, "arguments": {"x-queue-type": "classic"}},
    {"name": "orders.dead", "vhost": "orders", "durable": true, "auto_delete": false, "arguments": {}}
  ],
  "exchanges": [
    {"name": "orders", "vhost": "orders", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}},
    {"name": "orders.dlx", "vhost": "orders", "type": "fanout", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}
  ],
  "bindings": [
    {"source": "orders", "vhost": "orders", "destination": "orders.new", "destination_type": "queue", "routing_key": "order.created", "arguments": {}},
    {"source": "orders.dlx", "vhost": "orders", "destination": "orders.dead", "destination_type": "queue", "routing_key": "", "arguments": {}}
  ]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_definitions_file_imports_and_its_users_log_in() {
    let w = Warren::start();
    let doc: Value = serde_json::from_str(RABBITMQ_DEFINITIONS).unwrap();
    let (s, v) = w.api("POST", "/api/definitions", Some(&doc));
    assert_eq!(s, 204, "{v}");
    assert_eq!(w.api("GET", "/api/queues/orders/orders.new", None).0, 200);
    assert_eq!(
        w.api("GET", "/api/bindings/orders/e/orders/q/orders.new", None)
            .1[0]["routing_key"],
        "order.created"
    );
    assert_eq!(
        w.api("GET", "/api/policies/orders/cap", None).1["definition"],
        json!({"max-length": 100000})
    );
    // RabbitMQ's password hash works for HTTP and for AMQP.
    assert_eq!(w.api_as("ops", "pw", "GET", "/api/users", None).0, 200);
    let url = format!("amqp://orders-app:pw@127.0.0.1:{}/orders", w.port);
    let c = within(
        "connect",
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default()),
    )
    .await
    .unwrap();
    let ch = c.create_channel().await.unwrap();
    publish(&ch, "orders", "order.created", b"o-1").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.api("GET", "/api/queues/orders/orders.new", None).1["messages"] != 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn health_checks_answer_like_rabbitmqs() {
    let w = Warren::start();
    assert_eq!(
        w.api("GET", "/api/health/checks/alarms", None),
        (200, json!({"status": "ok"}))
    );
    assert_eq!(w.api("GET", "/api/health/checks/local-alarms", None).0, 200);
    assert_eq!(
        w.api("GET", "/api/health/checks/virtual-hosts", None).0,
        200
    );
    assert_eq!(
        w.api(
            "GET",
            &format!("/api/health/checks/port-listener/{}", w.port),
            None
        ),
        (200, json!({"status": "ok", "port": w.port}))
    );
    let (s, v) = w.api("GET", "/api/health/checks/port-listener/1", None);
    assert_eq!(
        (s, v["status"].as_str(), v["missing"].as_u64()),
        (503, Some("failed"), Some(1))
    );
    assert_eq!(
        w.api("GET", "/api/health/checks/protocol-listener/amqp", None)
            .0,
        200
    );
    assert_eq!(
        w.api("GET", "/api/aliveness-test/%2F", None),
        (200, json!({"status": "ok"}))
    );
    let (s, v) = w.api("GET", "/api/nodes", None);
    assert_eq!(s, 200);
    for k in [
        "name",
        "mem_used",
        "mem_limit",
        "mem_alarm",
        "disk_free",
        "disk_free_limit",
        "disk_free_alarm",
        "fd_used",
        "uptime",
    ] {
        assert!(v[0].get(k).is_some(), "node lacks {k}");
    }
    assert!(v[0]["mem_used"].as_u64().unwrap() > 0);
    assert_eq!(
        w.api("GET", "/api/no/such/thing", None),
        (
            404,
            json!({"error": "Object Not Found", "reason": "Not Found"})
        )
    );
    assert_eq!(w.api("PUT", "/api/overview", None).0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_traffic() {
    let w = Warren::start();
    w.api("PUT", "/api/queues/%2F/m%22q", Some(&json!({})));
    let (_c, ch) = w.channel().await;
    for _ in 0..3 {
        publish(&ch, "", "m\"q", b"x").await;
    }
    publish(&ch, "", "nowhere", b"x").await;
    let get = || {
        let (s, headers, text) = http(&w.http_url(), None, "GET", "/metrics", None);
        assert_eq!(s, 200);
        let ct = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .unwrap()
            .1
            .clone();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        text
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let t = get();
        if t.contains("rabbitmq_queue_messages_ready{vhost=\"/\",queue=\"m\\\"q\"} 3") {
            break t;
        }
        assert!(Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for line in [
        "# TYPE rabbitmq_connections gauge",
        "rabbitmq_connections 1",
        "rabbitmq_channels 1",
        "rabbitmq_queues 1",
        "# TYPE rabbitmq_global_messages_received_total counter",
        "rabbitmq_global_messages_received_total 4",
        "rabbitmq_global_messages_unroutable_dropped_total 1",
        "rabbitmq_queue_messages_published_total{vhost=\"/\",queue=\"m\\\"q\"} 3",
        "rabbitmq_alarms_memory_used_watermark 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    for prefix in [
        "rabbitmq_process_resident_memory_bytes ",
        "rabbitmq_disk_space_available_bytes ",
    ] {
        let v: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap()
            .parse()
            .unwrap();
        assert!(v > 0.0, "{prefix}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rates_are_sampled() {
    let w = Warren::start();
    w.api("PUT", "/api/queues/%2F/r", Some(&json!({})));
    let (_c, ch) = w.channel().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for _ in 0..20 {
            publish(&ch, "", "r", b"x").await;
        }
        let v = w.api("GET", "/api/queues/%2F/r", None).1;
        let o = w.api("GET", "/api/overview", None).1;
        if v["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .unwrap()
            > 0.0
            && o["message_stats"]["publish_details"]["rate"]
                .as_f64()
                .unwrap()
                > 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "rates stayed 0: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn listings_page_filter_and_pick_columns() {
    let w = Warren::start();
    for q in ["a1", "a2", "b1"] {
        w.api("PUT", &format!("/api/queues/%2F/{q}"), Some(&json!({})));
    }
    let (s, v) = w.api("GET", "/api/queues?page=1&page_size=2", None);
    assert_eq!(s, 200);
    for (k, want) in [
        ("filtered_count", 3),
        ("item_count", 2),
        ("page", 1),
        ("page_count", 2),
        ("page_size", 2),
        ("total_count", 3),
    ] {
        assert_eq!(v[k], want, "{k}");
    }
    let (_, v) = w.api("GET", "/api/queues/%2F?name=a&columns=name,messages", None);
    assert_eq!(
        v,
        json!([{"name": "a1", "messages": 0}, {"name": "a2", "messages": 0}])
    );
    let (_, v) = w.api(
        "GET",
        "/api/queues?name=%5Eb&use_regex=true&columns=name",
        None,
    );
    assert_eq!(v, json!([{"name": "b1"}]));
    let (_, v) = w.api(
        "GET",
        "/api/queues?sort=name&sort_reverse=true&columns=name",
        None,
    );
    assert_eq!(v[0]["name"], "b1");
    assert_eq!(w.api("GET", "/api/queues?page=9", None).0, 400);
}

#[test]
fn listing_ten_thousand_queues_returns_them_all_and_pages() {
    let w = Warren::start();
    let queues: Vec<Value> = (0..10_000)
        .map(|i| json!({"name": format!("q-{i:05}"), "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}))
        .collect();
    assert_eq!(
        w.api("POST", "/api/definitions", Some(&json!({"queues": queues})))
            .0,
        204
    );
    // How fast this is, is measured in docs/benchmarks.md, not here.
    let (s, v) = w.api("GET", "/api/queues", None);
    assert_eq!(s, 200);
    assert_eq!(v.as_array().unwrap().len(), 10_000);
    let (_, v) = w.api("GET", "/api/queues?page=50&page_size=100", None);
    assert_eq!(v["items"][0]["name"], "q-04900");
}

/// Publishes and waits for the broker's confirm, so the message is in its
/// queues before the API is asked about it (shadows `support::publish`).
async fn publish(ch: &lapin::Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

// RabbitMQ's management API answers paths with a trailing slash too;
// amqp091-go's test suite lists connections at /api/connections/ (issue 10).
#[test]
fn paths_with_a_trailing_slash_answer_as_without() {
    let w = Warren::start();
    for path in [
        "/api/connections/",
        "/api/queues/",
        "/api/overview/",
        "/api/exchanges/%2F/",
        "/api/vhosts/",
        "/api/queues/%2F/?columns=name",
    ] {
        let (status, body) = w.api("GET", path, None);
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = w.api("GET", "/api/no-such-thing/", None);
    assert_eq!(status, 404);
}
