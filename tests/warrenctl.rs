//! warrenctl against a real warren: output, JSON, exit statuses.

mod common;
mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{Value, json};

fn ctl(w: &Warren, args: &[&str]) -> Output {
    ctl_in(w, args, None)
}

fn ctl_in(w: &Warren, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warrenctl"))
        .args(args)
        .env("WARREN_URL", w.http_url())
        .env_remove("WARREN_USER")
        .env_remove("WARREN_PASSWORD")
        .env_remove("WARREN_VHOST")
        .env_remove("WARRENCTL_CONFIG")
        .env("XDG_CONFIG_HOME", w.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run warrenctl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}{}", out(&o), err(&o));
    out(&o)
}

#[test]
fn declares_lists_and_deletes_in_tables_and_json() {
    let w = Warren::start();
    ok(ctl(
        &w,
        &["declare", "exchange", "events", "--type", "topic"],
    ));
    ok(ctl(
        &w,
        &[
            "declare",
            "queue",
            "orders",
            "--argument",
            "x-max-length=1000",
        ],
    ));
    ok(ctl(
        &w,
        &[
            "declare",
            "binding",
            "--source",
            "events",
            "--destination",
            "orders",
            "-k",
            "order.#",
        ],
    ));
    let t = ok(ctl(&w, &["list", "queues"]));
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("name    messages  ready  unacked  consumers  durable"),
        "{t}"
    );
    assert!(
        lines[1].starts_with("orders  0         0      0        0          true"),
        "{t}"
    );
    assert!(lines[1].contains(r#"{"x-max-length":1000}"#), "{t}");

    let j: Value =
        serde_json::from_str(&ok(ctl(&w, &["list", "queues", "--format", "json"]))).unwrap();
    assert_eq!(j[0]["name"], "orders");
    assert_eq!(j[0]["arguments"], json!({"x-max-length": 1000}));

    let t = ok(ctl(&w, &["list", "bindings"]));
    assert!(
        t.lines()
            .any(|l| l.starts_with("events  orders       queue             order.#")),
        "{t}"
    );
    let t = ok(ctl(&w, &["list", "exchanges", "--all-vhosts"]));
    let row = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    assert!(t.lines().any(|l| row(l) == "/ events topic"), "{t}");

    ok(ctl(
        &w,
        &[
            "delete",
            "binding",
            "--source",
            "events",
            "--destination",
            "orders",
            "-k",
            "order.#",
        ],
    ));
    assert_eq!(
        w.api("GET", "/api/bindings/%2F/e/events/q/orders", None).1,
        json!([])
    );
    ok(ctl(&w, &["delete", "queue", "orders"]));
    ok(ctl(&w, &["delete", "exchange", "events"]));
    assert_eq!(w.api("GET", "/api/queues/%2F/orders", None).0, 404);
}

#[test]
fn failures_exit_non_zero_with_one_line() {
    let w = Warren::start();
    let o = ctl(&w, &["delete", "queue", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "warrenctl: not found (HTTP 404)\n");
    let o = ctl(&w, &["--password", "wrong", "list", "queues"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o).lines().count(), 1);
    assert!(err(&o).contains("access refused"), "{}", err(&o));
    let o = ctl(&w, &["declare", "exchange", "x", "--type", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("unknown exchange type 'nope'"),
        "{}",
        err(&o)
    );
    // Nothing listening: a clear reason and its own status.
    let port = free_port();
    let o = Command::new(env!("CARGO_BIN_EXE_warrenctl"))
        .args(["--url", &format!("http://127.0.0.1:{port}"), "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let e = err(&o);
    assert!(
        e.starts_with(&format!(
            "warrenctl: cannot reach warren at http://127.0.0.1:{port}"
        )),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1);
    // Bad usage is clap's status 2.
    assert_eq!(ctl(&w, &["list", "nonsense"]).status.code(), Some(2));
}

#[test]
fn status_and_health() {
    let w = Warren::start();
    let t = ok(ctl(&w, &["status"]));
    assert!(t.starts_with("warren "), "{t}");
    for want in [
        "listeners:",
        &format!("amqp 127.0.0.1:{}", w.port),
        "objects:",
        "messages:",
        "memory:",
        "disk:",
        "alarms:      none",
    ] {
        assert!(t.contains(want), "no {want:?} in {t}");
    }
    let j: Value = serde_json::from_str(&ok(ctl(&w, &["status", "--format", "json"]))).unwrap();
    assert_eq!(j["overview"]["product_name"], "warren");
    let t = ok(ctl(&w, &["health"]));
    assert_eq!(
        t,
        "check     status\nalarms    ok\nlistener  ok\nvhosts    ok\n"
    );
}

#[test]
fn users_vhosts_permissions_and_policies() {
    let w = Warren::start();
    ok(ctl(&w, &["declare", "vhost", "shop"]));
    ok(ctl(
        &w,
        &[
            "declare",
            "user",
            "ann",
            "--new-password",
            "pw",
            "--tags",
            "management",
        ],
    ));
    ok(ctl(
        &w,
        &[
            "-p",
            "shop",
            "declare",
            "permission",
            "ann",
            "--configure",
            "^ann-",
        ],
    ));
    ok(ctl(
        &w,
        &[
            "-p",
            "shop",
            "declare",
            "policy",
            "cap",
            "--pattern",
            "^q",
            "--definition",
            r#"{"max-length": 5}"#,
            "--apply-to",
            "queues",
        ],
    ));
    let t = ok(ctl(&w, &["list", "users"]));
    assert!(t.lines().any(|l| l == "ann    management"), "{t}");
    let t = ok(ctl(&w, &["list", "vhosts"]));
    assert!(t.lines().any(|l| l.starts_with("shop ")), "{t}");
    let t = ok(ctl(&w, &["-p", "shop", "list", "permissions"]));
    assert!(
        t.lines()
            .any(|l| l.starts_with("ann    shop   ^ann-      .*     .*")),
        "{t}"
    );
    let t = ok(ctl(&w, &["-p", "shop", "list", "policies"]));
    assert!(
        t.lines()
            .any(|l| l.starts_with("cap   ^q       queues    {\"max-length\":5}  0")),
        "{t}"
    );
    // As ann (management): may list, may not manage users.
    ok(ctl(
        &w,
        &[
            "-u",
            "ann",
            "--password",
            "pw",
            "-p",
            "shop",
            "list",
            "queues",
        ],
    ));
    let o = ctl(&w, &["-u", "ann", "--password", "pw", "list", "users"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("Not administrator user"));
    ok(ctl(&w, &["-p", "shop", "delete", "policy", "cap"]));
    ok(ctl(&w, &["-p", "shop", "delete", "permission", "ann"]));
    ok(ctl(&w, &["delete", "user", "ann"]));
    ok(ctl(&w, &["delete", "vhost", "shop"]));
    assert_eq!(w.api("GET", "/api/vhosts/shop", None).0, 404);
}

#[test]
fn publish_get_and_purge() {
    let w = Warren::start();
    ok(ctl(&w, &["declare", "queue", "inbox"]));
    assert_eq!(
        ok(ctl(
            &w,
            &[
                "publish",
                "-k",
                "inbox",
                "--payload",
                "hello",
                "--property",
                "content_type=text/plain",
                "--header",
                "n=1"
            ]
        )),
        "routed\n"
    );
    assert_eq!(
        ok(ctl_in(&w, &["publish", "-k", "inbox"], Some("from stdin"))),
        "routed\n"
    );
    assert_eq!(
        ok(ctl(&w, &["publish", "-k", "nowhere", "--payload", "x"])),
        "not routed (no queue matched)\n"
    );
    let t = ok(ctl(&w, &["get", "inbox", "--count", "2"]));
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines[0],
        "routing_key  exchange  redelivered  message_count  payload_bytes  payload"
    );
    assert_eq!(
        lines[1],
        "inbox                  false        1              5              hello"
    );
    assert_eq!(
        lines[2],
        "inbox                  false        0              10             from stdin"
    );
    let j: Value =
        serde_json::from_str(&ok(ctl(&w, &["get", "inbox", "--format", "json"]))).unwrap();
    assert_eq!(j[0]["redelivered"], true);
    assert_eq!(
        j[0]["properties"],
        json!({"content_type": "text/plain", "headers": {"n": 1}})
    );
    ok(ctl(&w, &["get", "inbox", "--requeue", "false"]));
    assert_eq!(w.api("GET", "/api/queues/%2F/inbox", None).1["messages"], 1);
    ok(ctl(&w, &["purge", "inbox"]));
    assert_eq!(w.api("GET", "/api/queues/%2F/inbox", None).1["messages"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_channels_and_consumers_are_listed_and_closed() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    support::declare(&ch, "work").await;
    let _consumer = ch
        .basic_consume(
            "work".into(),
            "tag-1".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let name = loop {
        let j: Value =
            serde_json::from_str(&ok(ctl(&w, &["list", "connections", "--format", "json"])))
                .unwrap();
        if j[0]["channels"] == 1 {
            break j[0]["name"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let t = ok(ctl(&w, &["list", "connections"]));
    assert!(t.lines().nth(1).unwrap().starts_with(&name), "{t}");
    let t = ok(ctl(&w, &["list", "channels"]));
    assert!(
        t.lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("{name} (1)  guest  1")),
        "{t}"
    );
    let t = ok(ctl(&w, &["list", "consumers"]));
    assert!(t.lines().nth(1).unwrap().starts_with("work   tag-1"), "{t}");
    ok(ctl(&w, &["close", &name, "--reason", "maintenance"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.status().connected() {
        assert!(std::time::Instant::now() < deadline, "not closed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let o = ctl(&w, &["close", &name]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn export_and_import_definitions() {
    let w = Warren::start();
    ok(ctl(&w, &["declare", "vhost", "shop"]));
    ok(ctl(
        &w,
        &[
            "-p", "shop", "declare", "exchange", "events", "--type", "topic",
        ],
    ));
    ok(ctl(&w, &["-p", "shop", "declare", "queue", "orders"]));
    ok(ctl(
        &w,
        &[
            "-p",
            "shop",
            "declare",
            "binding",
            "--source",
            "events",
            "--destination",
            "orders",
            "-k",
            "order.*",
        ],
    ));
    let file = w.dir.path().join("defs.json");
    ok(ctl(&w, &["export", file.to_str().unwrap()]));
    let first = std::fs::read_to_string(&file).unwrap();
    let stdout = ok(ctl(&w, &["export"]));
    assert_eq!(stdout, first);
    ok(ctl(&w, &["delete", "vhost", "shop"]));
    assert!(!ok(ctl(&w, &["export"])).contains("orders"));
    assert_eq!(
        ok(ctl(&w, &["import", file.to_str().unwrap()])),
        format!("imported definitions from {}\n", file.display())
    );
    assert_eq!(ok(ctl(&w, &["export"])), first);
    // From standard input, into another vhost.
    ok(ctl(&w, &["declare", "vhost", "copy"]));
    let shop = ok(ctl(&w, &["-p", "shop", "export", "--vhost-only"]));
    ok(ctl_in(
        &w,
        &["-p", "copy", "import", "-", "--vhost-only"],
        Some(&shop),
    ));
    assert_eq!(w.api("GET", "/api/queues/copy/orders", None).0, 200);
    let o = ctl(&w, &["import", "/nonexistent.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).starts_with("warrenctl: cannot read /nonexistent.json"));
}

#[test]
fn settings_come_from_a_config_file() {
    let w = Warren::start();
    let cfg = w.dir.path().join("warrenctl.toml");
    std::fs::write(
        &cfg,
        format!(
            "url = \"{}\"\nuser = \"guest\"\npassword = \"wrong\"\n",
            w.http_url()
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .args(extra)
            .args(["list", "vhosts"])
            .env("WARRENCTL_CONFIG", &cfg)
            .env_remove("WARREN_URL")
            .env_remove("WARREN_PASSWORD")
            .output()
            .unwrap()
    };
    // The file's wrong password is used...
    assert_eq!(run(&[]).status.code(), Some(1));
    // ...unless a flag overrides it.
    assert!(run(&["--password", "guest"]).status.success());
}
