//! Definitions import and export (`rabbitmqctl export_definitions`,
//! `GET /api/definitions`, `load_definitions`), so a user can move from
//! RabbitMQ to warren with one file; the same import replays warren's own
//! durable definitions at start (`apply_logged` for the change log). The
//! data types are in `crate::schema`.

use amq_protocol::types::FieldTable;
use serde_json::{Map, Value};

use crate::auth::{HASHING_ALGORITHM, Permissions, User, hash_password};
use crate::broker::Broker;
use crate::protocol::fields::{table_from_json, table_to_json, unchecked_table_from_json};
use crate::protocol::table_guard::check_short_string;
use crate::queue::QueueConfig;
use crate::routing::exchange::{Dest, Exchange};
use crate::schema::*;
use crate::store::meta::MetaOp;
use crate::vhost::{DestName, ExchangeDeclare, Policy, VHost};

/// Exports the broker's definitions: all users, vhosts, permissions and
/// policies; durable, non-exclusive exchanges and queues (not the default or
/// `amq.*` exchanges); bindings between durable ends. Sorted, so two exports
/// of the same state are identical.
pub fn export(broker: &Broker) -> Definitions {
    let mut d = Definitions {
        rabbit_version: Some(format!("warren {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    };
    export_users(broker, &mut d.users);
    export_permissions(broker, &mut d.permissions);
    for vh in broker.vhosts() {
        export_vhost(&vh, &mut d);
    }
    sort_for_export(&mut d);
    d
}

fn export_users(broker: &Broker, users: &mut Vec<UserDef>) {
    users.extend(broker.users().iter().map(super::user_def));
}

fn export_permissions(broker: &Broker, permissions: &mut Vec<PermissionDef>) {
    for (user, vhost, p) in broker.all_permissions() {
        permissions.push(super::permission_def(&user, &vhost, &p));
    }
}

/// One vhost's part of an export: the vhost itself, its policies, its
/// durable non-exclusive queues, then its durable exchanges with their
/// bindings.
fn export_vhost(vh: &VHost, d: &mut Definitions) {
    let v = vh.name.to_string();
    d.vhosts.push(VhostDef { name: v.clone() });
    for p in vh.policies() {
        d.policies.push(vh.policy_def(&p));
    }
    for q in vh.queues() {
        if q.is_persistent() {
            d.queues.push(vh.queue_def(&q.name, &q.config));
        }
    }
    for x in vh.exchanges() {
        if x.durable && !x.name.is_empty() && !x.name.starts_with("amq.") {
            d.exchanges.push(vh.exchange_def(&x));
        }
        if !x.durable || x.name.is_empty() {
            continue;
        }
        export_bindings(&x, &v, &mut d.bindings);
    }
}

/// What a cluster replicates beyond an export: its non-durable exchanges
/// (not the default or amq.* ones) and the bindings that have one at
/// either end and a replicated destination (a durable non-exclusive queue,
/// or an exchange).
pub fn export_transient(broker: &Broker) -> (Vec<ExchangeDef>, Vec<BindingDef>) {
    let (mut exchanges, mut bindings) = (Vec::new(), Vec::new());
    for vh in broker.vhosts() {
        let v = vh.name.to_string();
        for x in vh.exchanges() {
            if x.name.is_empty() {
                continue;
            }
            if !x.durable && !x.name.starts_with("amq.") {
                exchanges.push(vh.exchange_def(&x));
            }
            let mut all = Vec::new();
            collect_bindings(&x, &v, &mut all, true);
            bindings.extend(all.into_iter().filter(|b| {
                !x.durable
                    || (b.destination_type == "exchange"
                        && vh.exchange(&b.destination).is_some_and(|d| !d.durable))
            }));
        }
    }
    (exchanges, bindings)
}

/// The bindings from one durable exchange whose destination is durable
/// too (and, for a queue, not exclusive).
fn export_bindings(x: &Exchange, vhost: &str, bindings: &mut Vec<BindingDef>) {
    collect_bindings(x, vhost, bindings, false);
}

/// The bindings from `x` to durable non-exclusive queues and to durable
/// exchanges (to any exchange with `any_exchange`).
fn collect_bindings(x: &Exchange, vhost: &str, bindings: &mut Vec<BindingDef>, any_exchange: bool) {
    for (dest, b) in x.bindings() {
        let (destination, destination_type) = match &dest {
            Dest::Queue(q) if q.config.durable && q.config.exclusive_owner.is_none() => {
                (q.name.clone(), "queue")
            }
            Dest::Exchange(x2) if x2.durable || any_exchange => (x2.name.clone(), "exchange"),
            _ => continue,
        };
        bindings.push(BindingDef {
            source: x.name.clone(),
            vhost: vhost.to_string(),
            destination,
            destination_type: destination_type.into(),
            routing_key: b.routing_key.clone(),
            arguments: table_to_json(&b.arguments),
        });
    }
}

/// Sorts every list of an export by its key, so two exports of the same
/// state are identical.
fn sort_for_export(d: &mut Definitions) {
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
    import_vhosts(broker, &d.vhosts, &mut errors);
    import_users(broker, &d.users, &mut errors);
    import_permissions(broker, &d.permissions, &mut errors);
    import_policies(broker, &d.policies, &mut errors);
    import_exchanges(broker, &d.exchanges, limits, &mut errors);
    import_queues(broker, &d.queues, limits, &mut errors);
    import_bindings(broker, &d.bindings, limits, &mut errors);
    errors
}

/// An argument table from JSON: checked against today's limits on import,
/// read back as it is when the broker restores what it stored.
fn arguments_from_json(m: &Map<String, Value>, limits: bool) -> Result<FieldTable, String> {
    if limits {
        table_from_json(m)
    } else {
        Ok(unchecked_table_from_json(m))
    }
}

fn import_vhosts(broker: &Broker, vhosts: &[VhostDef], errors: &mut Vec<String>) {
    for v in vhosts {
        if let Err(e) = check_short_string("vhost", &v.name) {
            errors.push(e);
            continue;
        }
        broker.add_vhost(&v.name);
    }
}

fn import_users(broker: &Broker, users: &[UserDef], errors: &mut Vec<String>) {
    for u in users {
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
}

fn import_permissions(broker: &Broker, permissions: &[PermissionDef], errors: &mut Vec<String>) {
    for p in permissions {
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
}

fn import_policies(broker: &Broker, policies: &[PolicyDef], errors: &mut Vec<String>) {
    for p in policies {
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
}

fn import_exchanges(
    broker: &Broker,
    exchanges: &[ExchangeDef],
    limits: bool,
    errors: &mut Vec<String>,
) {
    for x in exchanges {
        let Some(vh) = broker.vhost(&x.vhost) else {
            errors.push(format!("exchange '{}': no vhost '{}'", x.name, x.vhost));
            continue;
        };
        if let Err(e) = check_short_string("exchange", &x.name) {
            errors.push(e);
            continue;
        }
        let arguments = match arguments_from_json(&x.arguments, limits) {
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
}

fn import_queues(broker: &Broker, queues: &[QueueDef], limits: bool, errors: &mut Vec<String>) {
    for q in queues {
        let Some(vh) = broker.vhost(&q.vhost) else {
            errors.push(format!("queue '{}': no vhost '{}'", q.name, q.vhost));
            continue;
        };
        if let Err(e) = check_short_string("queue", &q.name) {
            errors.push(e);
            continue;
        }
        if limits && let Err(e) = broker.check_queue_limit(&vh, &q.name) {
            errors.push(e.text);
            continue;
        }
        let arguments = match arguments_from_json(&q.arguments, limits) {
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
}

fn import_bindings(
    broker: &Broker,
    bindings: &[BindingDef],
    limits: bool,
    errors: &mut Vec<String>,
) {
    for b in bindings {
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
        if let Err(e) = check_short_string("routing_key", &b.routing_key) {
            errors.push(format!(
                "binding '{}' -> '{}': {e}",
                b.source, b.destination
            ));
            continue;
        }
        let arguments = match arguments_from_json(&b.arguments, limits) {
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
}

/// Applies what an earlier run left on disk: the snapshot, then each
/// logged change in order. Problems are logged; recovery goes on.
pub fn recover(broker: &Broker, logged: crate::store::meta::Recovered) {
    if let Some(d) = logged.snapshot {
        for p in restore(broker, &d) {
            tracing::warn!("recovering definitions: {}", p.escape_debug());
        }
    }
    for op in logged.changes {
        apply_logged(broker, op);
    }
}

/// Applies one change from the definitions log, as at the moment it was
/// logged (start-up replays the log through this after the snapshot).
pub fn apply_logged(broker: &Broker, op: MetaOp) {
    let mut d = Definitions::default();
    match op {
        MetaOp::PutUser(u) => d.users.push(u),
        MetaOp::DeleteUser(n) => {
            broker.delete_user(&n);
        }
        MetaOp::PutVhost(v) => {
            broker.add_vhost(&v);
        }
        MetaOp::DeleteVhost(v) => {
            broker.delete_vhost(&v);
        }
        MetaOp::SetPermissions(p) => d.permissions.push(p),
        MetaOp::ClearPermissions(u, v) => {
            broker.clear_permissions(&u, &v);
        }
        MetaOp::PutPolicy(p) => d.policies.push(p),
        MetaOp::DeletePolicy(v, n) => {
            if let Some(vh) = broker.vhost(&v) {
                vh.delete_policy(&n);
            }
        }
        MetaOp::DeclareExchange(x) => d.exchanges.push(x),
        MetaOp::DeleteExchange(v, n) => {
            if let Some(vh) = broker.vhost(&v) {
                let _ = vh.delete_exchange(&n, false);
            }
        }
        MetaOp::DeclareQueue(q) => d.queues.push(q),
        MetaOp::DeleteQueue(v, n) => {
            if let Some(vh) = broker.vhost(&v) {
                let _ = vh.delete_queue(&n, false, false, 0);
            }
        }
        MetaOp::Bind(b) => d.bindings.push(b),
        MetaOp::Unbind(b) => {
            if let Some(vh) = broker.vhost(&b.vhost) {
                let dest = if b.destination_type == "exchange" {
                    crate::vhost::DestName::Exchange(&b.destination)
                } else {
                    crate::vhost::DestName::Queue(&b.destination)
                };
                if let Ok(args) = crate::protocol::fields::table_from_json(&b.arguments) {
                    let _ = vh.unbind(&b.source, dest, &b.routing_key, &args, 0);
                }
            }
        }
    }
    for p in restore(broker, &d) {
        tracing::warn!("replaying definitions log: {}", p.escape_debug());
    }
}

/// Reverts a change whose write to the definitions log failed (it never
/// reached the disk), given what it replaced: the inverse change is applied
/// as at replay. A deleted queue or exchange comes back empty and unbound
/// (its messages and bindings went with it), a deleted vhost comes back
/// empty; everything else is restored exactly.
pub fn undo(broker: &Broker, op: MetaOp, prior: Option<MetaOp>) {
    let what = format!("{op:?}");
    let inverse = match op {
        MetaOp::PutUser(u) => prior.or(Some(MetaOp::DeleteUser(u.name))),
        MetaOp::PutVhost(v) => Some(MetaOp::DeleteVhost(v)),
        MetaOp::DeleteVhost(v) => Some(MetaOp::PutVhost(v)),
        MetaOp::SetPermissions(p) => prior.or(Some(MetaOp::ClearPermissions(p.user, p.vhost))),
        MetaOp::PutPolicy(p) => prior.or(Some(MetaOp::DeletePolicy(p.vhost, p.name))),
        MetaOp::DeclareExchange(x) => Some(MetaOp::DeleteExchange(x.vhost, x.name)),
        MetaOp::DeclareQueue(q) => Some(MetaOp::DeleteQueue(q.vhost, q.name)),
        MetaOp::Bind(b) => Some(MetaOp::Unbind(b)),
        MetaOp::Unbind(b) => Some(MetaOp::Bind(b)),
        MetaOp::DeleteUser(_)
        | MetaOp::ClearPermissions(..)
        | MetaOp::DeletePolicy(..)
        | MetaOp::DeleteExchange(..)
        | MetaOp::DeleteQueue(..) => prior,
    };
    tracing::warn!("undoing a definitions change that could not be written: {what}");
    if let Some(inverse) = inverse {
        apply_logged(broker, inverse);
    }
}

/// Loads a definitions file into the broker (config `load_definitions`).
pub fn load_file(broker: &Broker, path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(import(broker, &crate::schema::parse(&text)?))
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
