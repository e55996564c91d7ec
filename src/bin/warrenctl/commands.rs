//! What each warrenctl command asks the API and prints.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::client::{Failure, seg};
use crate::table::{self, cell, pick};
use crate::{Command, Format, HealthCheck, ListWhat, Settings};

#[derive(Subcommand, Debug)]
pub enum Declare {
    /// An exchange.
    Exchange {
        name: String,
        /// direct, fanout, topic or headers.
        #[arg(long, short = 't', default_value = "direct")]
        r#type: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        #[arg(long)]
        internal: bool,
        /// An argument, e.g. alternate-exchange=ae (values that parse as JSON are typed).
        #[arg(long = "argument", value_name = "KEY=VALUE")]
        arguments: Vec<String>,
    },
    /// A queue.
    Queue {
        name: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        /// An argument, e.g. x-max-length=1000.
        #[arg(long = "argument", value_name = "KEY=VALUE")]
        arguments: Vec<String>,
    },
    /// A binding from an exchange to a queue or exchange.
    Binding {
        #[arg(long)]
        source: String,
        #[arg(long)]
        destination: String,
        /// queue or exchange.
        #[arg(long, default_value = "queue")]
        destination_type: String,
        #[arg(long, short = 'k', default_value = "")]
        routing_key: String,
        #[arg(long = "argument", value_name = "KEY=VALUE")]
        arguments: Vec<String>,
    },
    /// A virtual host.
    Vhost { name: String },
    /// A user (created or replaced).
    User {
        name: String,
        /// The user's password (--password is the login's).
        #[arg(long, value_name = "PASSWORD")]
        new_password: Option<String>,
        /// A password hash (rabbit_password_hashing_sha256), instead of --password.
        #[arg(long)]
        password_hash: Option<String>,
        /// Comma-separated tags: administrator, monitoring, management, policymaker.
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// A user's permissions in the vhost (--vhost).
    Permission {
        #[arg(value_name = "USER")]
        username: String,
        #[arg(long, default_value = ".*")]
        configure: String,
        #[arg(long, default_value = ".*")]
        write: String,
        #[arg(long, default_value = ".*")]
        read: String,
    },
    /// A policy in the vhost (--vhost).
    Policy {
        name: String,
        #[arg(long)]
        pattern: String,
        /// The definition, a JSON object, e.g. '{"max-length": 1000}'.
        #[arg(long)]
        definition: String,
        /// queues, exchanges or all.
        #[arg(long, default_value = "all")]
        apply_to: String,
        #[arg(long, default_value_t = 0)]
        priority: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum Delete {
    /// An exchange.
    Exchange {
        name: String,
        #[arg(long)]
        if_unused: bool,
    },
    /// A queue.
    Queue {
        name: String,
        #[arg(long)]
        if_unused: bool,
        #[arg(long)]
        if_empty: bool,
    },
    /// A binding (by routing key and arguments, or by --properties-key as listed).
    Binding {
        #[arg(long)]
        source: String,
        #[arg(long)]
        destination: String,
        #[arg(long, default_value = "queue")]
        destination_type: String,
        #[arg(long, short = 'k', default_value = "")]
        routing_key: String,
        #[arg(long)]
        properties_key: Option<String>,
    },
    /// A virtual host and everything in it.
    Vhost { name: String },
    /// A user.
    User { name: String },
    /// A user's permissions in the vhost (--vhost).
    Permission {
        #[arg(value_name = "USER")]
        username: String,
    },
    /// A policy in the vhost (--vhost).
    Policy { name: String },
}

/// `key=value` pairs as a JSON object; values that parse as JSON keep their
/// type (numbers, booleans), anything else is a string.
fn pairs(items: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut m = Map::new();
    for it in items {
        let (k, v) = it
            .split_once('=')
            .ok_or_else(|| Failure::new(format!("expected KEY=VALUE, got '{it}'")))?;
        let val = serde_json::from_str::<Value>(v)
            .ok()
            .filter(|j| !j.is_string())
            .unwrap_or_else(|| Value::String(v.to_owned()));
        m.insert(k.to_owned(), val);
    }
    Ok(m)
}

fn print(s: &Settings, v: &Value, table: impl FnOnce(&Value) -> String) {
    match s.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Format::Table => print!("{}", table(v)),
    }
}

/// Prints what a change did (nothing in JSON mode but `{}`-free silence).
fn done(s: &Settings, what: String) {
    if s.format == Format::Table {
        println!("{what}");
    }
}

pub fn run(s: &Settings, cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Status => status(s),
        Command::Health { check } => health(s, check),
        Command::List { what, all_vhosts } => list(s, what, all_vhosts),
        Command::Declare { what } => declare(s, what),
        Command::Delete { what } => delete(s, what),
        Command::Close { name, reason } => close(s, &name, &reason),
        Command::Purge { queue } => purge(s, &queue),
        Command::Cluster { what } => match what {
            Cluster::Status => cluster_status(s),
            Cluster::Join { node } => cluster_join(s, &node),
            Cluster::Leave => cluster_leave(s),
            Cluster::Forget { node } => cluster_forget(s, &node),
        },
        Command::Quorum { what } => quorum(s, what),
        Command::Publish {
            exchange,
            routing_key,
            payload,
            properties,
            headers,
        } => publish(s, &exchange, &routing_key, payload, &properties, &headers),
        Command::Get {
            queue,
            count,
            requeue,
        } => get(s, &queue, count, requeue),
        Command::Export { file, vhost_only } => export(s, file, vhost_only),
        Command::Import { file, vhost_only } => import(s, &file, vhost_only),
    }
}

/// `warrenctl cluster ...`.
#[derive(clap::Subcommand, Debug)]
pub enum Cluster {
    /// Every node of the cluster: id, name, inter-node address, whether it
    /// answers, which one leads the definitions (RabbitMQ's cluster_status).
    Status,
    /// Make this node (fresh: it has not formed or joined a cluster) join
    /// the cluster of NODE (RabbitMQ's join_cluster).
    Join {
        /// A node of the cluster: ID@HOST:PORT, its id and inter-node
        /// address.
        node: String,
    },
    /// Take this node out of its cluster: its quorum queue replicas move
    /// away and the queues that live on it are deleted.
    Leave,
    /// Remove another node from the cluster, running or not (RabbitMQ's
    /// forget_cluster_node).
    Forget {
        /// The node: its name (warren-ID@HOST) or id.
        node: String,
    },
}

/// `warrenctl quorum ...`.
#[derive(clap::Subcommand, Debug)]
pub enum Quorum {
    /// Add a replica of a quorum queue (of the vhost given with --vhost)
    /// on NODE.
    AddMember {
        /// Queue name.
        queue: String,
        /// Node name (warren-ID@HOST) or id.
        node: String,
    },
    /// Remove the replica of a quorum queue on NODE.
    DeleteMember {
        /// Queue name.
        queue: String,
        /// Node name (warren-ID@HOST) or id.
        node: String,
    },
    /// Add a replica on NODE to every matching quorum queue.
    Grow {
        /// Node name (warren-ID@HOST) or id.
        node: String,
        /// all, or even: only queues with an even number of replicas.
        #[arg(long, default_value = "all")]
        strategy: String,
        /// Vhosts to grow (a regular expression).
        #[arg(long, default_value = ".*")]
        vhost_pattern: String,
        /// Queues to grow (a regular expression).
        #[arg(long, default_value = ".*")]
        queue_pattern: String,
    },
    /// Remove NODE's replica from every quorum queue that has others.
    Shrink {
        /// Node name (warren-ID@HOST) or id.
        node: String,
    },
}

fn quorum(s: &Settings, what: Quorum) -> Result<(), Failure> {
    let vh = seg(&s.vhost);
    match what {
        Quorum::AddMember { queue, node } => {
            s.client.call(
                "POST",
                &format!("/api/queues/quorum/{vh}/{}/replicas/add", seg(&queue)),
                Some(&serde_json::json!({ "node": node })),
            )?;
            done(s, format!("added a replica of {queue} on {node}"));
        }
        Quorum::DeleteMember { queue, node } => {
            s.client.call(
                "DELETE",
                &format!("/api/queues/quorum/{vh}/{}/replicas/delete", seg(&queue)),
                Some(&serde_json::json!({ "node": node })),
            )?;
            done(s, format!("removed the replica of {queue} on {node}"));
        }
        Quorum::Grow {
            node,
            strategy,
            vhost_pattern,
            queue_pattern,
        } => {
            s.client.call(
                "POST",
                &format!("/api/queues/quorum/replicas/on/{}/grow", seg(&node)),
                Some(&serde_json::json!({
                    "strategy": strategy,
                    "vhost_pattern": vhost_pattern,
                    "queue_pattern": queue_pattern,
                })),
            )?;
            done(s, format!("grew quorum queues onto {node}"));
        }
        Quorum::Shrink { node } => {
            s.client.call(
                "DELETE",
                &format!("/api/queues/quorum/replicas/on/{}/shrink", seg(&node)),
                None,
            )?;
            done(s, format!("removed quorum queue replicas from {node}"));
        }
    }
    Ok(())
}

/// `warrenctl cluster join ID@HOST:PORT`.
fn cluster_join(s: &Settings, node: &str) -> Result<(), Failure> {
    s.client.call(
        "POST",
        "/api/cluster/join",
        Some(&serde_json::json!({ "node": node })),
    )?;
    done(s, format!("joined the cluster of node {node}"));
    Ok(())
}

/// `warrenctl cluster leave`: forgets the node the command talks to.
fn cluster_leave(s: &Settings) -> Result<(), Failure> {
    let me = s.client.call("GET", "/api/overview", None)?;
    let name = me["node"].as_str().unwrap_or_default().to_owned();
    s.client.call(
        "DELETE",
        &format!("/api/cluster/nodes/{}", seg(&name)),
        None,
    )?;
    done(s, format!("node {name} left the cluster"));
    Ok(())
}

/// `warrenctl cluster forget NODE`.
fn cluster_forget(s: &Settings, node: &str) -> Result<(), Failure> {
    s.client
        .call("DELETE", &format!("/api/cluster/nodes/{}", seg(node)), None)?;
    done(s, format!("removed node {node} from the cluster"));
    Ok(())
}

/// `warrenctl cluster status`: /api/nodes as a table.
fn cluster_status(s: &Settings) -> Result<(), Failure> {
    let nodes = s.client.call("GET", "/api/nodes", None)?;
    if s.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&nodes).unwrap_or_default()
        );
        return Ok(());
    }
    print!(
        "{}",
        table::of(
            &nodes,
            &[
                ("id", "cluster_node_id"),
                ("name", "name"),
                ("address", "cluster_address"),
                ("running", "running"),
                ("leader", "definitions_leader"),
            ],
        )
    );
    Ok(())
}

/// Closes a client connection by name, checking first that it exists.
fn close(s: &Settings, name: &str, reason: &str) -> Result<(), Failure> {
    let c = &s.client;
    let path = format!("/api/connections/{}", seg(name));
    c.call("GET", &path, None)?;
    c.delete_with_reason(&path, reason)?;
    done(s, format!("closed connection {name}"));
    Ok(())
}

fn purge(s: &Settings, queue: &str) -> Result<(), Failure> {
    let vh = seg(&s.vhost);
    s.client.call(
        "DELETE",
        &format!("/api/queues/{vh}/{}/contents", seg(queue)),
        None,
    )?;
    done(s, format!("purged queue {queue}"));
    Ok(())
}

/// Publishes one message through the API; the payload is read from
/// standard input when not given.
fn publish(
    s: &Settings,
    exchange: &str,
    routing_key: &str,
    payload: Option<String>,
    properties: &[String],
    headers: &[String],
) -> Result<(), Failure> {
    let vh = seg(&s.vhost);
    let payload = match payload {
        Some(p) => p,
        None => read_stdin()?,
    };
    let mut props = pairs(properties)?;
    if !headers.is_empty() {
        props.insert("headers".into(), Value::Object(pairs(headers)?));
    }
    let x = if exchange.is_empty() {
        "amq.default"
    } else {
        exchange
    };
    let body = json!({
        "routing_key": routing_key,
        "payload": payload,
        "payload_encoding": "string",
        "properties": props,
    });
    let v = s.client.call(
        "POST",
        &format!("/api/exchanges/{vh}/{}/publish", seg(x)),
        Some(&body),
    )?;
    print(s, &v, |v| {
        if v["routed"] == true {
            "routed\n".into()
        } else {
            "not routed (no queue matched)\n".into()
        }
    });
    Ok(())
}

/// Fetches messages from a queue, requeued or removed.
fn get(s: &Settings, queue: &str, count: u32, requeue: bool) -> Result<(), Failure> {
    let vh = seg(&s.vhost);
    let body = json!({
        "count": count,
        "ackmode": if requeue { "ack_requeue_true" } else { "ack_requeue_false" },
        "encoding": "auto",
    });
    let v = s.client.call(
        "POST",
        &format!("/api/queues/{vh}/{}/get", seg(queue)),
        Some(&body),
    )?;
    print(s, &v, |v| {
        table::of(
            v,
            &[
                ("routing_key", "routing_key"),
                ("exchange", "exchange"),
                ("redelivered", "redelivered"),
                ("message_count", "message_count"),
                ("payload_bytes", "payload_bytes"),
                ("payload", "payload"),
            ],
        )
    });
    Ok(())
}

/// The definitions endpoint: the whole broker's, or the vhost's.
fn definitions_path(s: &Settings, vhost_only: bool) -> String {
    if vhost_only {
        format!("/api/definitions/{}", seg(&s.vhost))
    } else {
        "/api/definitions".into()
    }
}

/// Writes the definitions to `file`, or to standard output.
fn export(s: &Settings, file: Option<PathBuf>, vhost_only: bool) -> Result<(), Failure> {
    let v = s
        .client
        .call("GET", &definitions_path(s, vhost_only), None)?;
    let text = serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    match file.filter(|f| f.as_os_str() != "-") {
        Some(f) => {
            std::fs::write(&f, text)
                .map_err(|e| Failure::new(format!("cannot write {}: {e}", f.display())))?;
            if s.format == Format::Table {
                eprintln!("exported definitions to {}", f.display());
            }
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Reads definitions from `file` ("-": standard input) and posts them.
fn import(s: &Settings, file: &Path, vhost_only: bool) -> Result<(), Failure> {
    let text = if file.as_os_str() == "-" {
        read_stdin()?
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::new(format!("cannot read {}: {e}", file.display())))?
    };
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::new(format!("{} is not valid JSON: {e}", file.display())))?;
    s.client
        .call("POST", &definitions_path(s, vhost_only), Some(&doc))?;
    done(s, format!("imported definitions from {}", file.display()));
    Ok(())
}

fn read_stdin() -> Result<String, Failure> {
    let mut buf = String::new();
    std::io::stdin()
        .read_to_string(&mut buf)
        .map_err(|e| Failure::new(format!("cannot read standard input: {e}")))?;
    Ok(buf)
}

fn status(s: &Settings) -> Result<(), Failure> {
    let c = &s.client;
    let o = c.call("GET", "/api/overview", None)?;
    let node = c.call("GET", "/api/nodes", None).ok();
    if s.format == Format::Json {
        let v = json!({"overview": o, "node": node.as_ref().and_then(|n| n.get(0).cloned())});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    print_overview(&o);
    if let Some(n) = node.as_ref().and_then(|n| n.get(0)) {
        print_node(n);
    }
    Ok(())
}

/// The overview's lines of `status`: version, listeners, totals, rates.
fn print_overview(o: &Value) {
    let t = &o["object_totals"];
    let q = &o["queue_totals"];
    let m = &o["message_stats"];
    let rate = |k: &str| m[format!("{k}_details")]["rate"].as_f64().unwrap_or(0.0);
    println!(
        "{} {} (RabbitMQ {} compatible) on {}",
        cell(&o["product_name"]),
        cell(&o["product_version"]),
        cell(&o["rabbitmq_version"]),
        cell(&o["node"])
    );
    let listeners: Vec<String> = o["listeners"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    format!(
                        "{} {}:{}",
                        cell(&l["protocol"]),
                        cell(&l["ip_address"]),
                        cell(&l["port"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!("listeners:   {}", listeners.join(", "));
    println!(
        "objects:     {} connections, {} channels, {} consumers, {} exchanges, {} queues",
        cell(&t["connections"]),
        cell(&t["channels"]),
        cell(&t["consumers"]),
        cell(&t["exchanges"]),
        cell(&t["queues"])
    );
    println!(
        "messages:    {} ({} ready, {} unacked)",
        cell(&q["messages"]),
        cell(&q["messages_ready"]),
        cell(&q["messages_unacknowledged"])
    );
    println!(
        "rates:       publish {:.1}/s, deliver {:.1}/s, ack {:.1}/s",
        rate("publish"),
        rate("deliver_get"),
        rate("ack")
    );
}

/// The node's lines of `status`: uptime, memory, disk, alarms.
fn print_node(n: &Value) {
    let mib = |k: &str| n[k].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
    let secs = n["uptime"].as_u64().unwrap_or(0) / 1000;
    println!(
        "uptime:      {}h {}m {}s",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    println!(
        "memory:      {:.1} MiB used, alarm above {:.1} MiB",
        mib("mem_used"),
        mib("mem_limit")
    );
    println!(
        "disk:        {:.1} MiB free, alarm below {:.1} MiB",
        mib("disk_free"),
        mib("disk_free_limit")
    );
    let mut alarms = Vec::new();
    if n["mem_alarm"] == true {
        alarms.push("memory");
    }
    if n["disk_free_alarm"] == true {
        alarms.push("disk");
    }
    println!(
        "alarms:      {}",
        if alarms.is_empty() {
            "none".into()
        } else {
            alarms.join(", ")
        }
    );
}

fn health(s: &Settings, check: HealthCheck) -> Result<(), Failure> {
    let c = &s.client;
    let port = c
        .call("GET", "/api/overview", None)?
        .get("listeners")
        .and_then(|l| l.as_array().cloned())
        .and_then(|l| l.into_iter().find(|x| x["protocol"] == "amqp"))
        .and_then(|l| l["port"].as_u64())
        .unwrap_or(5672);
    let mut checks = Vec::new();
    if matches!(check, HealthCheck::All | HealthCheck::Alarms) {
        checks.push(("alarms", "/api/health/checks/alarms".to_owned()));
    }
    if matches!(check, HealthCheck::All | HealthCheck::Listener) {
        checks.push((
            "listener",
            format!("/api/health/checks/port-listener/{port}"),
        ));
    }
    if matches!(check, HealthCheck::All | HealthCheck::Vhosts) {
        checks.push(("vhosts", "/api/health/checks/virtual-hosts".to_owned()));
    }
    let mut results = Vec::new();
    let mut failed = None;
    for (name, path) in checks {
        let (status, v) = c.call_status("GET", &path, None)?;
        if status == 401 {
            return Err(Failure::new(format!(
                "access refused: {} (HTTP 401)",
                v["reason"].as_str().unwrap_or("")
            )));
        }
        let ok = status == 200 && v["status"] == "ok";
        if !ok && failed.is_none() {
            let mut reason = v["reason"].as_str().unwrap_or("failed").to_owned();
            if let Some(a) = v["alarms"].as_array() {
                let names: Vec<String> = a.iter().map(|x| cell(&x["resource"])).collect();
                reason = format!("{reason}: {}", names.join(", "));
            }
            failed = Some(format!("health check '{name}' failed: {reason}"));
        }
        results
            .push(json!({"check": name, "status": if ok { "ok" } else { "failed" }, "details": v}));
    }
    let all = Value::Array(results);
    print(s, &all, |v| {
        table::of(v, &[("check", "check"), ("status", "status")])
    });
    match failed {
        Some(f) => Err(Failure::new(f)),
        None => Ok(()),
    }
}

fn list(s: &Settings, what: ListWhat, all_vhosts: bool) -> Result<(), Failure> {
    let path = list_path(what, all_vhosts, &seg(&s.vhost));
    let mut cols = list_columns(what).to_vec();
    if all_vhosts
        && !matches!(
            what,
            ListWhat::Vhosts | ListWhat::Users | ListWhat::Permissions
        )
    {
        cols.insert(0, ("vhost", "vhost"));
        if what == ListWhat::Consumers {
            cols[0] = ("vhost", "queue.vhost");
        }
    }
    let v = s.client.call("GET", &path, None)?;
    print(s, &v, |v| table::of(v, &cols));
    Ok(())
}

/// Where a listing comes from: across all vhosts, or the vhost `vh`
/// (already a path segment); vhosts and users are never scoped.
fn list_path(what: ListWhat, all_vhosts: bool, vh: &str) -> String {
    // Most listings take the vhost after their name, a few under the vhost.
    let scoped = |base: &str| {
        if all_vhosts {
            format!("/api/{base}")
        } else {
            format!("/api/{base}/{vh}")
        }
    };
    let under_vhost = |base: &str| {
        if all_vhosts {
            format!("/api/{base}")
        } else {
            format!("/api/vhosts/{vh}/{base}")
        }
    };
    match what {
        ListWhat::Exchanges => scoped("exchanges"),
        ListWhat::Queues => scoped("queues"),
        ListWhat::Bindings => scoped("bindings"),
        ListWhat::Vhosts => "/api/vhosts".into(),
        ListWhat::Users => "/api/users".into(),
        ListWhat::Permissions => under_vhost("permissions"),
        ListWhat::Policies => scoped("policies"),
        ListWhat::Connections => under_vhost("connections"),
        ListWhat::Channels => under_vhost("channels"),
        ListWhat::Consumers => scoped("consumers"),
    }
}

/// A listing's table columns: (heading, field path).
type Columns = &'static [(&'static str, &'static str)];

const EXCHANGE_COLUMNS: Columns = &[
    ("name", "name"),
    ("type", "type"),
    ("durable", "durable"),
    ("auto_delete", "auto_delete"),
    ("internal", "internal"),
    ("arguments", "arguments"),
];

const QUEUE_COLUMNS: Columns = &[
    ("name", "name"),
    ("messages", "messages"),
    ("ready", "messages_ready"),
    ("unacked", "messages_unacknowledged"),
    ("consumers", "consumers"),
    ("durable", "durable"),
    ("auto_delete", "auto_delete"),
    ("exclusive", "exclusive"),
    ("arguments", "arguments"),
];

const BINDING_COLUMNS: Columns = &[
    ("source", "source"),
    ("destination", "destination"),
    ("destination_type", "destination_type"),
    ("routing_key", "routing_key"),
    ("arguments", "arguments"),
    ("properties_key", "properties_key"),
];

const VHOST_COLUMNS: Columns = &[
    ("name", "name"),
    ("messages", "messages"),
    ("ready", "messages_ready"),
    ("unacked", "messages_unacknowledged"),
];

const USER_COLUMNS: Columns = &[("name", "name"), ("tags", "tags")];

const PERMISSION_COLUMNS: Columns = &[
    ("user", "user"),
    ("vhost", "vhost"),
    ("configure", "configure"),
    ("write", "write"),
    ("read", "read"),
];

const POLICY_COLUMNS: Columns = &[
    ("name", "name"),
    ("pattern", "pattern"),
    ("apply-to", "apply-to"),
    ("definition", "definition"),
    ("priority", "priority"),
];

const CONNECTION_COLUMNS: Columns = &[
    ("name", "name"),
    ("user", "user"),
    ("vhost", "vhost"),
    ("channels", "channels"),
    ("state", "state"),
    ("client", "client_properties.product"),
];

const CHANNEL_COLUMNS: Columns = &[
    ("name", "name"),
    ("user", "user"),
    ("consumers", "consumer_count"),
    ("unacked", "messages_unacknowledged"),
    ("global_prefetch", "global_prefetch_count"),
];

const CONSUMER_COLUMNS: Columns = &[
    ("queue", "queue.name"),
    ("consumer_tag", "consumer_tag"),
    ("channel", "channel_details.name"),
    ("ack_required", "ack_required"),
    ("prefetch", "prefetch_count"),
    ("exclusive", "exclusive"),
];

fn list_columns(what: ListWhat) -> Columns {
    match what {
        ListWhat::Exchanges => EXCHANGE_COLUMNS,
        ListWhat::Queues => QUEUE_COLUMNS,
        ListWhat::Bindings => BINDING_COLUMNS,
        ListWhat::Vhosts => VHOST_COLUMNS,
        ListWhat::Users => USER_COLUMNS,
        ListWhat::Permissions => PERMISSION_COLUMNS,
        ListWhat::Policies => POLICY_COLUMNS,
        ListWhat::Connections => CONNECTION_COLUMNS,
        ListWhat::Channels => CHANNEL_COLUMNS,
        ListWhat::Consumers => CONSUMER_COLUMNS,
    }
}

fn declare(s: &Settings, what: Declare) -> Result<(), Failure> {
    let (method, path, what_done) = declare_target(s, &what)?;
    let body = declare_body(what)?;
    s.client.call(method, &path, Some(&body))?;
    done(s, what_done);
    Ok(())
}

/// Where a declaration goes: the method, the path, and what to print once
/// it is done.
fn declare_target(s: &Settings, what: &Declare) -> Result<(&'static str, String, String), Failure> {
    let vh = seg(&s.vhost);
    Ok(match what {
        Declare::Exchange { name, .. } => (
            "PUT",
            format!("/api/exchanges/{vh}/{}", seg(name)),
            format!("declared exchange {name}"),
        ),
        Declare::Queue { name, .. } => (
            "PUT",
            format!("/api/queues/{vh}/{}", seg(name)),
            format!("declared queue {name}"),
        ),
        Declare::Binding {
            source,
            destination,
            destination_type,
            ..
        } => {
            let k = dest_kind(destination_type)?;
            (
                "POST",
                format!(
                    "/api/bindings/{vh}/e/{}/{k}/{}",
                    seg(source),
                    seg(destination)
                ),
                format!("bound {destination_type} {destination} to exchange {source}"),
            )
        }
        Declare::Vhost { name } => (
            "PUT",
            format!("/api/vhosts/{}", seg(name)),
            format!("declared vhost {name}"),
        ),
        Declare::User { name, .. } => (
            "PUT",
            format!("/api/users/{}", seg(name)),
            format!("declared user {name}"),
        ),
        Declare::Permission { username: user, .. } => (
            "PUT",
            format!("/api/permissions/{vh}/{}", seg(user)),
            format!("set permissions of {user} in vhost {}", s.vhost),
        ),
        Declare::Policy { name, .. } => (
            "PUT",
            format!("/api/policies/{vh}/{}", seg(name)),
            format!("declared policy {name}"),
        ),
    })
}

/// What a declaration sends: the object's settings as the API takes them.
fn declare_body(what: Declare) -> Result<Value, Failure> {
    Ok(match what {
        Declare::Exchange {
            r#type,
            durable,
            auto_delete,
            internal,
            arguments,
            ..
        } => {
            json!({"type": r#type, "durable": durable, "auto_delete": auto_delete, "internal": internal, "arguments": pairs(&arguments)?})
        }
        Declare::Queue {
            durable,
            auto_delete,
            arguments,
            ..
        } => {
            json!({"durable": durable, "auto_delete": auto_delete, "arguments": pairs(&arguments)?})
        }
        Declare::Binding {
            routing_key,
            arguments,
            ..
        } => json!({"routing_key": routing_key, "arguments": pairs(&arguments)?}),
        Declare::Vhost { .. } => json!({}),
        Declare::User {
            new_password,
            password_hash,
            tags,
            ..
        } => user_body(tags, new_password, password_hash),
        Declare::Permission {
            configure,
            write,
            read,
            ..
        } => json!({"configure": configure, "write": write, "read": read}),
        Declare::Policy {
            pattern,
            definition,
            apply_to,
            priority,
            ..
        } => {
            json!({"pattern": pattern, "definition": policy_definition(&definition)?, "apply-to": apply_to, "priority": priority})
        }
    })
}

/// A user's body: its tags and its password, else its password hash.
fn user_body(tags: String, new_password: Option<String>, password_hash: Option<String>) -> Value {
    let mut body = json!({"tags": tags});
    if let Some(p) = new_password {
        body["password"] = p.into();
    } else if let Some(h) = password_hash {
        body["password_hash"] = h.into();
    }
    body
}

/// A policy's `--definition`, which must be a JSON object.
fn policy_definition(definition: &str) -> Result<Value, Failure> {
    serde_json::from_str(definition)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| Failure::new("--definition must be a JSON object"))
}

fn dest_kind(t: &str) -> Result<&'static str, Failure> {
    match t {
        "queue" | "q" => Ok("q"),
        "exchange" | "e" => Ok("e"),
        other => Err(Failure::new(format!(
            "--destination-type must be queue or exchange, not '{other}'"
        ))),
    }
}

fn delete(s: &Settings, what: Delete) -> Result<(), Failure> {
    let vh = seg(&s.vhost);
    let (path, what) = match what {
        Delete::Exchange { name, if_unused } => (
            format!(
                "/api/exchanges/{vh}/{}{}",
                seg(&name),
                if if_unused { "?if-unused=true" } else { "" }
            ),
            format!("exchange {name}"),
        ),
        Delete::Queue {
            name,
            if_unused,
            if_empty,
        } => (
            format!(
                "/api/queues/{vh}/{}{}",
                seg(&name),
                queue_delete_query(if_unused, if_empty)
            ),
            format!("queue {name}"),
        ),
        Delete::Binding {
            source,
            destination,
            destination_type,
            routing_key,
            properties_key,
        } => (
            binding_path(
                s,
                &source,
                &destination,
                &destination_type,
                &routing_key,
                properties_key,
            )?,
            format!("binding {source} -> {destination}"),
        ),
        Delete::Vhost { name } => (
            format!("/api/vhosts/{}", seg(&name)),
            format!("vhost {name}"),
        ),
        Delete::User { name } => (format!("/api/users/{}", seg(&name)), format!("user {name}")),
        Delete::Permission { username: user } => (
            format!("/api/permissions/{vh}/{}", seg(&user)),
            format!("permissions of {user} in vhost {}", s.vhost),
        ),
        Delete::Policy { name } => (
            format!("/api/policies/{vh}/{}", seg(&name)),
            format!("policy {name}"),
        ),
    };
    s.client.call("DELETE", &path, None)?;
    done(s, format!("deleted {what}"));
    Ok(())
}

/// The query string of a queue deletion's conditions ("" for none).
fn queue_delete_query(if_unused: bool, if_empty: bool) -> String {
    let mut q = Vec::new();
    if if_unused {
        q.push("if-unused=true");
    }
    if if_empty {
        q.push("if-empty=true");
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// One binding's path: by its properties key, or found by routing key in
/// the listing of the bindings between the two ends.
fn binding_path(
    s: &Settings,
    source: &str,
    destination: &str,
    destination_type: &str,
    routing_key: &str,
    properties_key: Option<String>,
) -> Result<String, Failure> {
    let vh = seg(&s.vhost);
    let k = dest_kind(destination_type)?;
    let base = format!(
        "/api/bindings/{vh}/e/{}/{k}/{}",
        seg(source),
        seg(destination)
    );
    let key = match properties_key {
        Some(p) => p,
        None => {
            let list = s.client.call("GET", &base, None)?;
            list.as_array()
                .and_then(|a| a.iter().find(|b| b["routing_key"] == routing_key))
                .map(|b| cell(pick(b, "properties_key")))
                .ok_or_else(|| Failure::new(format!(
                    "not found: no binding from {source} to {destination} with routing key '{routing_key}'"
                )))?
        }
    };
    Ok(format!("{base}/{}", seg(&key)))
}
