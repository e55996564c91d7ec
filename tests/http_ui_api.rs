//! What the web UI needs of the HTTP API, over HTTP against a real warren:
//! the UI's assets (embedded, cached with ETags, under a strict CSP), 401s
//! without a browser login prompt for the UI's scripts, rate and length
//! samples for charts (`msg_rates_age`, `lengths_age`), the effective
//! policy of a queue, paging that builds only the page asked for, and
//! moving messages with RabbitMQ's one-off shovel.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn header<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(k))
        .map(|(_, v)| v.as_str())
}

/// A GET with extra request headers; returns status, headers, body.
fn get_with(
    w: &Warren,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(&format!("{}{path}", w.http_url()));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let mut resp = r.call().unwrap();
    let hs = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    (
        resp.status().as_u16(),
        hs,
        resp.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn the_ui_is_served_at_the_root_with_etags_and_a_strict_csp() {
    let w = Warren::start();
    let (s, h, body) = http(&w.http_url(), None, "GET", "/", None);
    assert_eq!(s, 200);
    assert!(header(&h, "content-type").unwrap().starts_with("text/html"));
    assert!(body.contains("<script type=\"module\" src=\"/ui/app.js\">"));
    let csp = header(&h, "content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    // Every script and stylesheet the page names is served, with an ETag;
    // asking again with it answers 304 with no body.
    let mut total = 0;
    for asset in [
        "app.js",
        "api.js",
        "dom.js",
        "chart.js",
        "list.js",
        "overview.js",
        "pages.js",
        "queue.js",
        "forms.js",
        "admin.js",
        "style.css",
        "favicon.svg",
    ] {
        let (s, h, body) = get_with(&w, &format!("/ui/{asset}"), &[]);
        assert_eq!(s, 200, "{asset}");
        total += body.len();
        let etag = header(&h, "etag").unwrap().to_owned();
        assert_eq!(header(&h, "cache-control"), Some("no-cache"));
        assert_eq!(header(&h, "x-content-type-options"), Some("nosniff"));
        if asset.ends_with(".js") {
            assert!(
                header(&h, "content-type")
                    .unwrap()
                    .starts_with("text/javascript")
            );
            // (The SVG namespace is a name, not something loaded.)
            let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{asset} names another origin"
            );
        }
        let (s, _, body) = get_with(&w, &format!("/ui/{asset}"), &[("If-None-Match", &etag)]);
        assert_eq!((s, body.as_str()), (304, ""), "{asset}");
    }
    println!("UI assets: {total} bytes uncompressed");
    assert_eq!(get_with(&w, "/ui/nothing.js", &[]).0, 404);
    assert_eq!(get_with(&w, "/ui/../Cargo.toml", &[]).0, 404);
}

#[test]
fn the_uis_scripts_get_401_without_a_browser_login_prompt() {
    let w = Warren::start();
    let (s, h, _) = get_with(&w, "/api/overview", &[]);
    assert_eq!(s, 401);
    assert!(header(&h, "www-authenticate").is_some());
    let (s, h, body) = get_with(
        &w,
        "/api/overview",
        &[("X-Requested-With", "XMLHttpRequest")],
    );
    assert_eq!(s, 401);
    assert_eq!(header(&h, "www-authenticate"), None);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "Login failed");
}

#[test]
fn overview_and_queue_give_samples_for_charts() {
    let w = Warren::start();
    assert_eq!(
        w.api("PUT", "/api/queues/%2F/charted", Some(&json!({}))).0,
        201
    );
    let path =
        "/api/queues/%2F/charted?lengths_age=600&lengths_incr=5&msg_rates_age=600&msg_rates_incr=5";
    // Asking once makes the queue watched: samples are kept from then on.
    let (_, v) = w.api("GET", path, None);
    assert!(v["messages_details"]["samples"].is_array(), "{v}");
    for i in 0..3 {
        let (s, _) = w.api(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(&json!({"routing_key": "charted", "payload": format!("m{i}"), "properties": {}})),
        );
        assert_eq!(s, 200);
    }
    // Two samples (5 s apart) after the publishes, the series show them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let (_, v) = w.api("GET", path, None);
        let samples = v["messages_ready_details"]["samples"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if samples.len() >= 2 && samples[0]["sample"] == 3 {
            break v;
        }
        assert!(Instant::now() < deadline, "no samples: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let samples = v["messages_ready_details"]["samples"].as_array().unwrap();
    // Newest first, with millisecond timestamps 5 s apart.
    let (t0, t1) = (
        samples[0]["timestamp"].as_u64().unwrap(),
        samples[1]["timestamp"].as_u64().unwrap(),
    );
    assert!(t0 > t1 && (4000..=6500).contains(&(t0 - t1)), "{t0} {t1}");
    let publish = &v["message_stats"]["publish_details"];
    assert_eq!(publish["samples"][0]["sample"], 3, "{publish}");
    assert!(publish["avg_rate"].is_number() && publish["avg"].is_number());

    let (_, o) = w.api(
        "GET",
        "/api/overview?lengths_age=60&lengths_incr=5&msg_rates_age=60&msg_rates_incr=5",
        None,
    );
    let s = o["queue_totals"]["messages_details"]["samples"]
        .as_array()
        .unwrap();
    assert!(!s.is_empty() && s.len() <= 13, "{o}");
    assert!(
        o["message_stats"]["publish_details"]["samples"].is_array(),
        "{o}"
    );
    // Without the parameters, no samples (RabbitMQ's shape).
    let (_, o) = w.api("GET", "/api/overview", None);
    assert!(
        o["queue_totals"]["messages_details"]
            .get("samples")
            .is_none()
    );
}

#[test]
fn a_queue_shows_the_policy_in_effect() {
    let w = Warren::start();
    for (name, prio, def) in [
        ("low", 1, json!({"max-length": 10})),
        ("high", 5, json!({"max-length": 20, "message-ttl": 1000})),
    ] {
        let (s, _) = w.api(
            "PUT",
            &format!("/api/policies/%2F/{name}"),
            Some(&json!({"pattern": "^pol\\.", "definition": def, "priority": prio, "apply-to": "queues"})),
        );
        assert_eq!(s, 201);
    }
    assert_eq!(
        w.api("PUT", "/api/queues/%2F/pol.a", Some(&json!({}))).0,
        201
    );
    assert_eq!(
        w.api("PUT", "/api/queues/%2F/other", Some(&json!({}))).0,
        201
    );
    let (_, q) = w.api("GET", "/api/queues/%2F/pol.a", None);
    assert_eq!(q["policy"], "high");
    assert_eq!(
        q["effective_policy_definition"],
        json!({"max-length": 20, "message-ttl": 1000})
    );
    let (_, qs) = w.api("GET", "/api/queues?columns=name,policy", None);
    assert_eq!(
        qs,
        json!([{"name": "other"}, {"name": "pol.a", "policy": "high"}])
    );
}

#[test]
fn paged_listings_count_and_filter_as_rabbitmq() {
    let w = Warren::start();
    let queues: Vec<Value> = (0..250)
        .map(|i| json!({"name": format!("p-{i:03}"), "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}))
        .collect();
    assert_eq!(
        w.api("POST", "/api/definitions", Some(&json!({"queues": queues})))
            .0,
        204
    );
    let (_, v) = w.api("GET", "/api/queues?page=3&page_size=100&columns=name", None);
    assert_eq!(
        (
            &v["page"],
            &v["page_count"],
            &v["item_count"],
            &v["filtered_count"],
            &v["total_count"]
        ),
        (&json!(3), &json!(3), &json!(50), &json!(250), &json!(250))
    );
    assert_eq!(v["items"][0], json!({"name": "p-200"}));
    let (_, v) = w.api(
        "GET",
        "/api/queues?page=1&page_size=5&name=%5Ep-1[0-4]&use_regex=true&sort_reverse=true",
        None,
    );
    assert_eq!(
        (&v["filtered_count"], &v["total_count"]),
        (&json!(50), &json!(250))
    );
    assert_eq!(v["items"][0]["name"], "p-149");
    let (_, v) = w.api(
        "GET",
        "/api/queues?page=2&page_size=10&name=P-0&sort=name&sort_reverse=true",
        None,
    );
    assert_eq!(
        (&v["filtered_count"], &v["page_count"]),
        (&json!(100), &json!(10))
    );
    assert_eq!(v["items"][0]["name"], "p-089");
    let (_, v) = w.api("GET", "/api/queues?name=p-24", None);
    assert_eq!(v.as_array().unwrap().len(), 10);
    assert_eq!(
        w.api("GET", "/api/queues?page=4&page_size=100", None).0,
        400
    );
    assert_eq!(
        w.api("GET", "/api/queues?page=1&name=(&use_regex=true", None)
            .0,
        400
    );
}

#[test]
fn consumers_are_filtered_by_queue_name() {
    let w = Warren::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // (Consumers are cancelled when lapin's handle is dropped: kept.)
    let (_c, _ch, _consumers) = rt.block_on(async {
        let (c, ch) = w.channel().await;
        let mut consumers = Vec::new();
        for q in ["orders", "audit"] {
            ch.queue_declare(q.into(), Default::default(), Default::default())
                .await
                .unwrap();
            consumers.push(
                ch.basic_consume(q.into(), "".into(), Default::default(), Default::default())
                    .await
                    .unwrap(),
            );
        }
        (c, ch, consumers)
    });
    let (_, v) = w.api("GET", "/api/consumers?page=1&name=ord", None);
    assert_eq!(
        (&v["filtered_count"], &v["total_count"]),
        (&json!(1), &json!(2)),
        "{v}"
    );
    assert_eq!(v["items"][0]["queue"]["name"], "orders");
}

fn shovel(from: &str, to: &str) -> Value {
    json!({"component": "shovel", "vhost": "/", "name": format!("Move from {from}"), "value": {
        "src-uri": "amqp:///%2F", "src-queue": from, "src-protocol": "amqp091", "src-prefetch-count": 1000,
        "src-delete-after": "queue-length", "dest-protocol": "amqp091", "dest-uri": "amqp:///%2F",
        "dest-add-forward-headers": false, "ack-mode": "on-confirm", "dest-queue": to}})
}

#[test]
fn messages_are_moved_with_rabbitmqs_move_shovel() {
    let mut w = Warren::start();
    for q in ["from", "to"] {
        assert_eq!(
            w.api(
                "PUT",
                &format!("/api/queues/%2F/{q}"),
                Some(&json!({"durable": true}))
            )
            .0,
            201
        );
    }
    for i in 0..5 {
        let (s, _) = w.api(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(&json!({"routing_key": "from", "payload": format!("m{i}"), "properties": {"delivery_mode": 2}})),
        );
        assert_eq!(s, 200);
    }
    let (s, v) = w.api(
        "PUT",
        "/api/parameters/shovel/%2F/Move%20from%20from",
        Some(&shovel("from", "to")),
    );
    assert_eq!(s, 201, "{v}");
    let count = |w: &Warren, q: &str| {
        w.api("GET", &format!("/api/queues/%2F/{q}"), None).1["messages_ready"].clone()
    };
    assert_eq!((count(&w, "from"), count(&w, "to")), (json!(0), json!(5)));
    // Persistent messages moved to a durable queue survive a restart there
    // (and only there).
    w.terminate();
    w.restart();
    assert_eq!((count(&w, "from"), count(&w, "to")), (json!(0), json!(5)));
    let (_, got) = w.api(
        "POST",
        "/api/queues/%2F/to/get",
        Some(&json!({"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})),
    );
    let payloads: Vec<&str> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["m0", "m1", "m2", "m3", "m4"]);

    // Other shovels are refused, as are other brokers and missing queues.
    let mut other = shovel("from", "to");
    other["value"]["src-delete-after"] = json!("never");
    assert_eq!(
        w.api("PUT", "/api/parameters/shovel/%2F/s", Some(&other)).0,
        400
    );
    let mut remote = shovel("from", "to");
    remote["value"]["dest-uri"] = json!("amqp://elsewhere/%2F");
    assert_eq!(
        w.api("PUT", "/api/parameters/shovel/%2F/s", Some(&remote))
            .0,
        400
    );
    assert_eq!(
        w.api(
            "PUT",
            "/api/parameters/shovel/%2F/s",
            Some(&shovel("from", "nowhere"))
        )
        .0,
        400
    );
    // Only policymakers and administrators may.
    assert_eq!(
        w.api(
            "PUT",
            "/api/users/mgr",
            Some(&json!({"password": "pw", "tags": "management"}))
        )
        .0,
        201
    );
    assert_eq!(
        w.api(
            "PUT",
            "/api/permissions/%2F/mgr",
            Some(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
        )
        .0,
        201
    );
    assert_eq!(
        w.api_as(
            "mgr",
            "pw",
            "PUT",
            "/api/parameters/shovel/%2F/s",
            Some(&shovel("from", "to"))
        )
        .0,
        401
    );
}

#[test]
fn a_management_user_charts_the_lengths_of_its_own_vhosts() {
    let w = Warren::start();
    assert_eq!(w.api("PUT", "/api/vhosts/shop", Some(&json!({}))).0, 201);
    assert_eq!(
        w.api(
            "PUT",
            "/api/users/mgr",
            Some(&json!({"password": "pw", "tags": "management"}))
        )
        .0,
        201
    );
    assert_eq!(
        w.api(
            "PUT",
            "/api/permissions/shop/mgr",
            Some(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
        )
        .0,
        201
    );
    for (vhost, q, n) in [("shop", "orders", 2), ("%2F", "secret", 5)] {
        assert_eq!(
            w.api("PUT", &format!("/api/queues/{vhost}/{q}"), Some(&json!({})))
                .0,
            201
        );
        for _ in 0..n {
            let (s, _) = w.api(
                "POST",
                &format!("/api/exchanges/{vhost}/amq.default/publish"),
                Some(&json!({"routing_key": q, "payload": "x", "properties": {}})),
            );
            assert_eq!(s, 200);
        }
    }
    let path = "/api/overview?lengths_age=60&lengths_incr=5";
    let newest = |user: &str| -> Value {
        let (_, v) = w.api_as(
            user,
            if user == "guest" { "guest" } else { "pw" },
            "GET",
            path,
            None,
        );
        v["queue_totals"]["messages_ready_details"]["samples"][0]["sample"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while newest("guest") != json!(7) {
        assert!(Instant::now() < deadline, "no sample of 7 ready messages");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(newest("mgr"), json!(2));
}

#[test]
fn samples_are_kept_for_at_most_100_watched_queues() {
    let w = Warren::start();
    let queues: Vec<Value> = (0..101)
        .map(|i| json!({"name": format!("w-{i:03}"), "vhost": "/", "durable": false, "auto_delete": false, "arguments": {}}))
        .collect();
    assert_eq!(
        w.api("POST", "/api/definitions", Some(&json!({"queues": queues})))
            .0,
        204
    );
    let samples = |i: usize| -> usize {
        let (_, v) = w.api(
            "GET",
            &format!("/api/queues/%2F/w-{i:03}?lengths_age=60&lengths_incr=5"),
            None,
        );
        v["messages_details"]["samples"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while samples(0) == 0 {
        assert!(Instant::now() < deadline, "w-000 never got a sample");
        std::thread::sleep(Duration::from_millis(300));
    }
    // 100 more watched: the least recently asked for (w-000) is forgotten.
    for i in 1..=100 {
        samples(i);
    }
    assert_eq!(samples(0), 0, "w-000's samples were kept");
}

#[test]
fn a_long_queue_is_moved_in_batches_in_order() {
    let w = Warren::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for q in ["big-from", "big-to"] {
        assert_eq!(
            w.api("PUT", &format!("/api/queues/%2F/{q}"), Some(&json!({})))
                .0,
            201
        );
    }
    rt.block_on(async {
        let (_c, ch) = w.channel().await;
        ch.confirm_select(Default::default()).await.unwrap();
        for i in 0..2500u32 {
            ch.basic_publish(
                "".into(),
                "big-from".into(),
                Default::default(),
                i.to_string().as_bytes(),
                Default::default(),
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();
    });
    let (s, v) = w.api(
        "PUT",
        "/api/parameters/shovel/%2F/Move%20from%20big-from",
        Some(&shovel("big-from", "big-to")),
    );
    assert_eq!(s, 201, "{v}");
    let (_, q) = w.api("GET", "/api/queues/%2F/big-to", None);
    assert_eq!(q["messages_ready"], 2500);
    let (_, from) = w.api("GET", "/api/queues/%2F/big-from", None);
    assert_eq!(
        (&from["messages"], &from["message_stats"]["ack"]),
        (&json!(0), &json!(2500))
    );
    let (_, got) = w.api(
        "POST",
        "/api/queues/%2F/big-to/get",
        Some(&json!({"count": 2500, "ackmode": "ack_requeue_false", "encoding": "auto"})),
    );
    let bodies: Vec<u32> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(bodies, (0..2500).collect::<Vec<_>>());
}

#[test]
fn a_page_sorted_by_name_matches_the_full_sort() {
    let w = Warren::start();
    assert_eq!(w.api("PUT", "/api/vhosts/b-vhost", Some(&json!({}))).0, 201);
    for (vhost, q) in [
        ("%2F", "m"),
        ("%2F", "a"),
        ("b-vhost", "a"),
        ("b-vhost", "z"),
        ("%2F", "k"),
    ] {
        assert_eq!(
            w.api("PUT", &format!("/api/queues/{vhost}/{q}"), Some(&json!({})))
                .0,
            201
        );
    }
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|q| {
                format!(
                    "{}/{}",
                    q["vhost"].as_str().unwrap(),
                    q["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    for reverse in ["false", "true"] {
        // The unpaged answer sorts every queue's JSON; the paged one sorts
        // the queues themselves. Both give RabbitMQ's order.
        let (_, all) = w.api(
            "GET",
            &format!("/api/queues?sort=name&sort_reverse={reverse}&columns=name,vhost"),
            None,
        );
        let mut paged = Vec::new();
        for page in 1..=3 {
            let (_, v) = w.api("GET", &format!("/api/queues?sort=name&sort_reverse={reverse}&page={page}&page_size=2&columns=name,vhost"), None);
            paged.extend(names(&v["items"]));
        }
        assert_eq!(paged, names(&all));
    }
    let (_, all) = w.api("GET", "/api/queues?sort=name&columns=name,vhost", None);
    assert_eq!(names(&all), ["//a", "b-vhost/a", "//k", "//m", "b-vhost/z"]);
}
