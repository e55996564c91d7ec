//! Definitions in RabbitMQ's JSON format (`rabbitmqctl export_definitions`,
//! `GET /api/definitions`): users with password hashes, vhosts, permissions,
//! policies, exchanges, queues and bindings. Import and export, so a user can
//! move from RabbitMQ to warren with one file, and the format warren uses to
//! persist its own definitions.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::{HASHING_ALGORITHM, Permissions, User, hash_password};
use crate::broker::Broker;
use crate::protocol::fields::{table_from_json, table_to_json, unchecked_table_from_json};
use crate::queue::QueueConfig;
use crate::routing::exchange::Dest;
use crate::vhost::{DestName, ExchangeDeclare, Policy};

/// A whole definitions document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Definitions {
    /// Producing broker's version (RabbitMQ writes `rabbit_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbit_version: Option<String>,
    /// Users.
    #[serde(default)]
    pub users: Vec<UserDef>,
    /// Virtual hosts.
    #[serde(default)]
    pub vhosts: Vec<VhostDef>,
    /// Permissions.
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    /// Policies.
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    /// Queues.
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    /// Exchanges.
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    /// Bindings.
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
    /// Kept for RabbitMQ compatibility; not used by warren.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topic_permissions: Vec<Value>,
    /// Kept for RabbitMQ compatibility; not used by warren.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<Value>,
    /// Kept for RabbitMQ compatibility; not used by warren.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_parameters: Vec<Value>,
}

/// Tags as RabbitMQ writes them: a comma-separated string (3.x) or a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Tags {
    /// "administrator,monitoring"
    Csv(String),
    /// ["administrator", "monitoring"]
    List(Vec<String>),
}

impl Tags {
    /// The individual tags.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Tags::Csv(s) => s
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            Tags::List(v) => v.clone(),
        }
    }
}

impl Default for Tags {
    fn default() -> Self {
        Tags::List(Vec::new())
    }
}

/// A user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserDef {
    /// Name.
    pub name: String,
    /// Password hash (base64); RabbitMQ's format.
    #[serde(default)]
    pub password_hash: String,
    /// Hashing algorithm name.
    #[serde(default = "default_algorithm")]
    pub hashing_algorithm: String,
    /// Plain password (accepted on import only, hashed at once).
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
}

fn default_algorithm() -> String {
    HASHING_ALGORITHM.to_owned()
}

/// A vhost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VhostDef {
    /// Name.
    pub name: String,
}

/// A user's permissions in a vhost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PermissionDef {
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// Configure regex.
    pub configure: String,
    /// Write regex.
    pub write: String,
    /// Read regex.
    pub read: String,
}

/// A policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyDef {
    /// Vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Regex over queue/exchange names.
    pub pattern: String,
    /// "queues", "exchanges" or "all".
    #[serde(rename = "apply-to", default = "default_apply_to")]
    pub apply_to: String,
    /// Keys and values.
    #[serde(default)]
    pub definition: Map<String, Value>,
    /// Priority.
    #[serde(default)]
    pub priority: i64,
}

fn default_apply_to() -> String {
    "all".into()
}

/// A queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Vhost.
    pub vhost: String,
    /// Durable flag.
    #[serde(default = "yes")]
    pub durable: bool,
    /// Auto-delete flag.
    #[serde(default)]
    pub auto_delete: bool,
    /// x-arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// An exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExchangeDef {
    /// Name.
    pub name: String,
    /// Vhost.
    pub vhost: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Durable flag.
    #[serde(default = "yes")]
    pub durable: bool,
    /// Auto-delete flag.
    #[serde(default)]
    pub auto_delete: bool,
    /// Internal flag.
    #[serde(default)]
    pub internal: bool,
    /// Arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A binding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindingDef {
    /// Source exchange.
    pub source: String,
    /// Vhost.
    pub vhost: String,
    /// Destination name.
    pub destination: String,
    /// "queue" or "exchange".
    pub destination_type: String,
    /// Routing key.
    #[serde(default)]
    pub routing_key: String,
    /// Arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// Exports the broker's definitions: all users, vhosts, permissions and
/// policies; durable, non-exclusive exchanges and queues (not the default or
/// `amq.*` exchanges); bindings between durable ends. Sorted, so two exports
/// of the same state are identical.
pub fn export(broker: &Broker) -> Definitions {
    let mut d = Definitions {
        rabbit_version: Some(format!("warren {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    };
    for u in broker.users() {
        d.users.push(UserDef {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            hashing_algorithm: HASHING_ALGORITHM.into(),
            password: None,
            tags: Tags::List(u.tags.clone()),
        });
    }
    for (user, vhost, p) in broker.all_permissions() {
        d.permissions.push(PermissionDef {
            user,
            vhost,
            configure: p.configure.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
        });
    }
    for vh in broker.vhosts() {
        let v = vh.name.to_string();
        d.vhosts.push(VhostDef { name: v.clone() });
        for p in vh.policies() {
            d.policies.push(PolicyDef {
                vhost: v.clone(),
                name: p.name,
                pattern: p.pattern,
                apply_to: p.apply_to,
                definition: p.definition,
                priority: p.priority,
            });
        }
        for q in vh.queues() {
            if q.config.durable && q.config.exclusive_owner.is_none() {
                d.queues.push(QueueDef {
                    name: q.name.clone(),
                    vhost: v.clone(),
                    durable: true,
                    auto_delete: q.config.auto_delete,
                    arguments: table_to_json(&q.config.arguments),
                });
            }
        }
        for x in vh.exchanges() {
            if x.durable && !x.name.is_empty() && !x.name.starts_with("amq.") {
                d.exchanges.push(ExchangeDef {
                    name: x.name.clone(),
                    vhost: v.clone(),
                    kind: x.kind.as_str().into(),
                    durable: true,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: table_to_json(&x.arguments),
                });
            }
            if !x.durable || x.name.is_empty() {
                continue;
            }
            for (dest, b) in x.bindings() {
                let (destination, destination_type) = match &dest {
                    Dest::Queue(q) if q.config.durable && q.config.exclusive_owner.is_none() => {
                        (q.name.clone(), "queue")
                    }
                    Dest::Exchange(x2) if x2.durable => (x2.name.clone(), "exchange"),
                    _ => continue,
                };
                d.bindings.push(BindingDef {
                    source: x.name.clone(),
                    vhost: v.clone(),
                    destination,
                    destination_type: destination_type.into(),
                    routing_key: b.routing_key.clone(),
                    arguments: table_to_json(&b.arguments),
                });
            }
        }
    }
    d.users.sort_by(|a, b| a.name.cmp(&b.name));
    d.vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    d.permissions
        .sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
    d.policies
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    d.queues
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    d.exchanges
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    d.bindings.sort_by(|a, b| {
        (
            &a.vhost,
            &a.source,
            &a.destination_type,
            &a.destination,
            &a.routing_key,
        )
            .cmp(&(
                &b.vhost,
                &b.source,
                &b.destination_type,
                &b.destination,
                &b.routing_key,
            ))
    });
    d
}

/// Imports definitions into the broker. Entities that already exist are
/// updated (users, permissions, policies) or must be equivalent (exchanges,
/// queues); new queues count against `[limits] max_queues_per_vhost` as a
/// declaration does. Returns the problems found; everything else is applied.
pub fn import(broker: &Broker, d: &Definitions) -> Vec<String> {
    import_with(broker, d, true)
}

/// Puts back definitions the broker itself stored (recovery at start):
/// like `import`, but what was stored is never refused for a queue limit
/// lowered since, nor for argument tables deeper than today's limit (an
/// older version stored them): the store reads back whatever it wrote.
pub fn restore(broker: &Broker, d: &Definitions) -> Vec<String> {
    import_with(broker, d, false)
}

fn import_with(broker: &Broker, d: &Definitions, limits: bool) -> Vec<String> {
    // The definitions log group-commits: a bulk import costs a few syncs,
    // not one per definition.
    import_all(broker, d, limits)
}

fn import_all(broker: &Broker, d: &Definitions, limits: bool) -> Vec<String> {
    let mut errors = Vec::new();
    let table_from_json = |m: &Map<String, Value>| {
        if limits {
            table_from_json(m)
        } else {
            Ok(unchecked_table_from_json(m))
        }
    };
    let short = crate::protocol::table_guard::check_short_string;
    for v in &d.vhosts {
        if let Err(e) = short("vhost", &v.name) {
            errors.push(e);
            continue;
        }
        broker.add_vhost(&v.name);
    }
    for u in &d.users {
        if !u.hashing_algorithm.is_empty() && u.hashing_algorithm != HASHING_ALGORITHM {
            errors.push(format!(
                "user '{}': unsupported hashing algorithm '{}' (only {HASHING_ALGORITHM})",
                u.name, u.hashing_algorithm
            ));
            continue;
        }
        let password_hash = match &u.password {
            Some(p) => hash_password(p),
            None => u.password_hash.clone(),
        };
        broker.put_user(User {
            name: u.name.clone(),
            password_hash,
            tags: u.tags.to_vec(),
        });
    }
    for p in &d.permissions {
        // Stored permissions for a user or vhost that does not exist would
        // grant access to whoever creates it later.
        if broker.user(&p.user).is_none() {
            errors.push(format!("permissions of '{}': no user '{}'", p.user, p.user));
            continue;
        }
        if broker.vhost(&p.vhost).is_none() {
            errors.push(format!(
                "permissions of '{}': no vhost '{}'",
                p.user, p.vhost
            ));
            continue;
        }
        match Permissions::new(&p.configure, &p.write, &p.read) {
            Ok(perms) => broker.set_permissions(&p.user, &p.vhost, perms),
            Err(e) => errors.push(format!("permissions of '{}' in '{}': {e}", p.user, p.vhost)),
        }
    }
    for p in &d.policies {
        let Some(vh) = broker.vhost(&p.vhost) else {
            errors.push(format!("policy '{}': no vhost '{}'", p.name, p.vhost));
            continue;
        };
        if let Err(e) = vh.put_policy(Policy {
            name: p.name.clone(),
            pattern: p.pattern.clone(),
            apply_to: p.apply_to.clone(),
            definition: p.definition.clone(),
            priority: p.priority,
        }) {
            errors.push(format!("policy '{}': {e}", p.name));
        }
    }
    for x in &d.exchanges {
        let Some(vh) = broker.vhost(&x.vhost) else {
            errors.push(format!("exchange '{}': no vhost '{}'", x.name, x.vhost));
            continue;
        };
        if let Err(e) = short("exchange", &x.name) {
            errors.push(e);
            continue;
        }
        let arguments = match table_from_json(&x.arguments) {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("exchange '{}': arguments: {e}", x.name));
                continue;
            }
        };
        let decl = ExchangeDeclare {
            name: x.name.clone(),
            kind: x.kind.clone(),
            passive: false,
            durable: x.durable,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments,
        };
        if let Err(e) = vh.declare_exchange(&decl) {
            errors.push(format!("exchange '{}': {}", x.name, e.text));
        }
    }
    for q in &d.queues {
        let Some(vh) = broker.vhost(&q.vhost) else {
            errors.push(format!("queue '{}': no vhost '{}'", q.name, q.vhost));
            continue;
        };
        if let Err(e) = short("queue", &q.name) {
            errors.push(e);
            continue;
        }
        if limits && let Err(e) = broker.check_queue_limit(&vh, &q.name) {
            errors.push(e.text);
            continue;
        }
        let arguments = match table_from_json(&q.arguments) {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("queue '{}': arguments: {e}", q.name));
                continue;
            }
        };
        let config = QueueConfig {
            durable: q.durable,
            exclusive_owner: None,
            auto_delete: q.auto_delete,
            arguments,
        };
        if let Err(e) = vh.declare_queue(&q.name, true, false, config, 0) {
            errors.push(format!("queue '{}': {}", q.name, e.text));
        }
    }
    for b in &d.bindings {
        let Some(vh) = broker.vhost(&b.vhost) else {
            errors.push(format!(
                "binding from '{}': no vhost '{}'",
                b.source, b.vhost
            ));
            continue;
        };
        let dest = match b.destination_type.as_str() {
            "exchange" => DestName::Exchange(&b.destination),
            _ => DestName::Queue(&b.destination),
        };
        if let Err(e) = short("routing_key", &b.routing_key) {
            errors.push(format!(
                "binding '{}' -> '{}': {e}",
                b.source, b.destination
            ));
            continue;
        }
        let arguments = match table_from_json(&b.arguments) {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!(
                    "binding '{}' -> '{}': arguments: {e}",
                    b.source, b.destination
                ));
                continue;
            }
        };
        if let Err(e) = vh.bind(&b.source, dest, &b.routing_key, &arguments, 0) {
            errors.push(format!(
                "binding '{}' -> '{}': {}",
                b.source, b.destination, e.text
            ));
        }
    }
    errors
}

/// Parses a definitions document.
pub fn parse(text: &str) -> Result<Definitions, String> {
    serde_json::from_str(text).map_err(|e| format!("invalid definitions JSON: {e}"))
}

/// Loads a definitions file into the broker (config `load_definitions`).
pub fn load_file(broker: &Broker, path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(import(broker, &parse(&text)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::config::Config;
    use amq_protocol::types::AMQPValue;

    const RABBITMQ_EXPORT: &str = r#"{
      "rabbit_version": "3.10.8",
      "rabbitmq_version": "3.10.8",
      "product_name": "RabbitMQ",
      "users": [
        {"name": "app", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
         "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "management", "limits": {}}
      ],
      "vhosts": [{"name": "/"}, {"name": "shop", "metadata": {"description": ""}}],
      "permissions": [{"user": "app", "vhost": "shop", "configure": ".*", "write": ".*", "read": ".*"}],
      "topic_permissions": [],
      "parameters": [],
      "global_parameters": [{"name": "cluster_name", "value": "rabbit@vm"}],
      "policies": [{"vhost": "shop", "name": "ttl", "pattern": "^orders$", "apply-to": "queues",
                    "definition": {"message-ttl": 60000}, "priority": 0}],
      "queues": [{"name": "orders", "vhost": "shop", "durable": true, "auto_delete": false,
                  "arguments": {"x-queue-type": "classic", "x-max-length": 1000}}],
      "exchanges": [{"name": "events", "vhost": "shop", "type": "topic", "durable": true,
                     "auto_delete": false, "internal": false, "arguments": {}}],
      "bindings": [{"source": "events", "vhost": "shop", "destination": "orders",
                    "destination_type": "queue", "routing_key": "order.#", "arguments": {}}]
    }"#;

    #[test]
    fn a_rabbitmq_export_imports_cleanly() {
        let b = Broker::new(Config::default());
        let problems = import(&b, &parse(RABBITMQ_EXPORT).unwrap());
        assert!(problems.is_empty(), "{problems:?}");
        let shop = b.vhost("shop").unwrap();
        assert!(shop.queue("orders").is_some());
        assert_eq!(shop.exchange("events").unwrap().binding_count(), 1);
        assert!(b.user("app").unwrap().has_tag("management"));
        assert!(b.permissions("app", "shop").is_some());
        assert_eq!(shop.policies().len(), 1);
    }

    #[test]
    fn export_import_export_is_identical() {
        let b = Broker::new(Config::default());
        import(&b, &parse(RABBITMQ_EXPORT).unwrap());
        let first = export(&b);
        let b2 = Broker::new(Config::default());
        assert!(import(&b2, &first).is_empty());
        let second = export(&b2);
        // The default user's hash is salted per broker; compare the rest.
        let strip = |mut d: Definitions| {
            d.users.retain(|u| u.name != "guest");
            d
        };
        assert_eq!(strip(first.clone()), strip(second));
        assert_eq!(
            serde_json::to_string(&strip(first.clone())).unwrap(),
            serde_json::to_string(&strip(export(&b))).unwrap()
        );
    }

    #[test]
    fn json_arguments_become_rabbitmq_typed_values() {
        let m: Map<String, Value> = serde_json::from_str(
            r#"{"x-max-length": 10, "x-dead-letter-exchange": "dlx", "f": 1.5}"#,
        )
        .unwrap();
        let t = table_from_json(&m).unwrap();
        assert_eq!(
            t.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(10))
        );
        assert_eq!(table_to_json(&t), m);
    }
}
