//! Exchanges and their bindings: one routing table per exchange type.
//!
//! Each exchange keeps every binding (destination, routing key, arguments)
//! and a routing table built for its type: a hash map for direct, a list for
//! fanout, a word trie for topic, prepared matchers for headers. Routing
//! takes a read lock on one exchange's table; binding changes touch only the
//! exchange they concern.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::RwLock;

use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::queue::Queue;
use crate::routing::headers::HeadersBinding;
use crate::routing::topic::TopicTrie;

/// The four exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every bound destination.
    Fanout,
    /// Routing-key patterns with `*` and `#`.
    Topic,
    /// Header matching (x-match).
    Headers,
}

impl ExchangeKind {
    /// Parses a type name from exchange.declare.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            _ => None,
        }
    }

    /// The type's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone)]
pub enum Dest {
    /// A queue.
    Queue(Arc<Queue>),
    /// Another exchange (exchange-to-exchange binding).
    Exchange(Arc<Exchange>),
}

impl Dest {
    fn addr(&self) -> usize {
        match self {
            Dest::Queue(q) => Arc::as_ptr(q) as usize,
            Dest::Exchange(x) => Arc::as_ptr(x) as usize,
        }
    }
}

impl PartialEq for Dest {
    fn eq(&self, other: &Self) -> bool {
        self.addr() == other.addr()
    }
}
impl Eq for Dest {}
impl Hash for Dest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.addr().hash(state)
    }
}

/// One binding as declared.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Routing key (pattern for topic exchanges).
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

#[derive(Debug)]
enum Table {
    Direct(HashMap<String, Vec<Dest>>),
    /// Every destination once, and where each is in the list (so removing
    /// one is O(1): deleting n bound queues was O(n^2)).
    Fanout(Vec<Dest>, HashMap<Dest, usize>),
    Topic(TopicTrie<Dest>),
    Headers(Vec<(HeadersBinding, Dest, FieldTable)>),
}

/// One destination's bindings from an exchange: routing key -> the
/// argument tables bound with it (almost always one). A lookup by key makes
/// the duplicate check of a bind O(1) however many keys the destination
/// has (a list made declaring n bindings of one queue O(n^2)).
type DestBindings = HashMap<String, Vec<FieldTable>>;

#[derive(Debug)]
struct Routes {
    bindings: HashMap<Dest, DestBindings>,
    /// Number of bindings (sum over `bindings`).
    count: usize,
    table: Table,
}

/// An exchange.
#[derive(Debug)]
pub struct Exchange {
    /// Exchange name ("" is the default exchange).
    pub name: String,
    /// Its type.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Cannot be published to directly.
    pub internal: bool,
    /// Arguments as declared.
    pub arguments: FieldTable,
    routes: RwLock<Routes>,
    deleted: AtomicBool,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Arc<Self> {
        let table = match kind {
            ExchangeKind::Direct => Table::Direct(HashMap::new()),
            ExchangeKind::Fanout => Table::Fanout(Vec::new(), HashMap::new()),
            ExchangeKind::Topic => Table::Topic(TopicTrie::new()),
            ExchangeKind::Headers => Table::Headers(Vec::new()),
        };
        Arc::new(Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            routes: RwLock::new(Routes {
                bindings: HashMap::new(),
                count: 0,
                table,
            }),
            deleted: AtomicBool::new(false),
        })
    }

    /// The alternate exchange named in the arguments, if any.
    pub fn alternate_exchange(&self) -> Option<&str> {
        match self.arguments.inner().get("alternate-exchange") {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
            Some(AMQPValue::ShortString(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// Whether the exchange was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Marks it deleted.
    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    /// Adds a binding. Returns false if an identical one existed.
    pub fn bind(&self, dest: Dest, routing_key: &str, arguments: &FieldTable) -> AmqpResult<bool> {
        let headers = if self.kind == ExchangeKind::Headers {
            Some(
                HeadersBinding::from_arguments(arguments)
                    .map_err(|e| AmqpError::channel(code::PRECONDITION_FAILED, e))?,
            )
        } else {
            None
        };
        let mut routes = self.routes.write();
        let Routes {
            bindings,
            count,
            table,
        } = &mut *routes;
        let keys = bindings.entry(dest.clone()).or_default();
        let first_for_dest = keys.is_empty();
        let same_key_bound = match keys.get_mut(routing_key) {
            Some(args) if args.contains(arguments) => return Ok(false),
            Some(args) => {
                args.push(arguments.clone());
                true
            }
            None => {
                keys.insert(routing_key.to_owned(), vec![arguments.clone()]);
                false
            }
        };
        *count += 1;
        match table {
            Table::Direct(map) => {
                if !same_key_bound {
                    map.entry(routing_key.to_owned()).or_default().push(dest);
                }
            }
            Table::Fanout(list, at) => {
                if first_for_dest {
                    at.insert(dest.clone(), list.len());
                    list.push(dest);
                }
            }
            Table::Topic(trie) => {
                if !same_key_bound {
                    trie.insert(routing_key, dest);
                }
            }
            Table::Headers(list) => {
                if let Some(h) = headers {
                    list.push((h, dest, arguments.clone()));
                }
            }
        }
        Ok(true)
    }

    /// Removes a binding. Returns false if it did not exist.
    pub fn unbind(&self, dest: &Dest, routing_key: &str, arguments: &FieldTable) -> bool {
        let mut routes = self.routes.write();
        let Routes {
            bindings,
            count,
            table,
        } = &mut *routes;
        let Some(keys) = bindings.get_mut(dest) else {
            return false;
        };
        let Some(args) = keys.get_mut(routing_key) else {
            return false;
        };
        let Some(pos) = args.iter().position(|a| a == arguments) else {
            return false;
        };
        args.remove(pos);
        *count -= 1;
        let key_still_bound = !args.is_empty();
        if !key_still_bound {
            keys.remove(routing_key);
        }
        let dest_gone = keys.is_empty();
        if dest_gone {
            bindings.remove(dest);
        }
        remove_from_table(
            table,
            dest,
            routing_key,
            arguments,
            key_still_bound,
            dest_gone,
        );
        true
    }

    /// Removes every binding to `dest`; returns how many there were.
    pub fn unbind_all(&self, dest: &Dest) -> usize {
        let mut routes = self.routes.write();
        let Routes {
            bindings,
            count,
            table,
        } = &mut *routes;
        let Some(keys) = bindings.remove(dest) else {
            return 0;
        };
        let total: usize = keys.values().map(Vec::len).sum();
        let mut left = total;
        for (key, args) in &keys {
            for (i, a) in args.iter().enumerate() {
                left -= 1;
                let key_still_bound = i + 1 < args.len();
                remove_from_table(table, dest, key, a, key_still_bound, left == 0);
            }
        }
        *count -= total;
        total
    }

    /// Number of bindings from this exchange.
    pub fn binding_count(&self) -> usize {
        self.routes.read().count
    }

    /// Every binding from this exchange, with its destination.
    pub fn bindings(&self) -> Vec<(Dest, Binding)> {
        let routes = self.routes.read();
        let mut out = Vec::with_capacity(routes.count);
        for (d, keys) in &routes.bindings {
            for (key, args) in keys {
                for a in args {
                    out.push((
                        d.clone(),
                        Binding {
                            routing_key: key.clone(),
                            arguments: a.clone(),
                        },
                    ));
                }
            }
        }
        out
    }

    /// Appends the destinations matching a message to `out` (may repeat).
    pub fn route(
        &self,
        routing_key: &str,
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Dest>,
    ) {
        let routes = self.routes.read();
        match &routes.table {
            Table::Direct(map) => {
                if let Some(d) = map.get(routing_key) {
                    out.extend(d.iter().cloned());
                }
            }
            Table::Fanout(list, _) => out.extend(list.iter().cloned()),
            Table::Topic(trie) => trie.for_each_match(routing_key, |d| out.push(d.clone())),
            Table::Headers(list) => {
                if list.is_empty() {
                    return;
                }
                let h = headers();
                for (binding, d, _) in list {
                    if binding.matches(h.as_ref()) {
                        out.push(d.clone());
                    }
                }
            }
        }
    }
}

fn remove_from_table(
    table: &mut Table,
    dest: &Dest,
    routing_key: &str,
    arguments: &FieldTable,
    key_still_bound: bool,
    dest_gone: bool,
) {
    match table {
        Table::Direct(map) => {
            if !key_still_bound && let Some(v) = map.get_mut(routing_key) {
                v.retain(|d| d != dest);
                if v.is_empty() {
                    map.remove(routing_key);
                }
            }
        }
        Table::Fanout(list, at) => {
            if dest_gone && let Some(i) = at.remove(dest) {
                list.swap_remove(i);
                if let Some(moved) = list.get(i) {
                    at.insert(moved.clone(), i);
                }
            }
        }
        Table::Topic(trie) => {
            if !key_still_bound {
                trie.remove(routing_key, dest);
            }
        }
        Table::Headers(list) => {
            if let Some(pos) = list
                .iter()
                .position(|(_, d, a)| d == dest && a == arguments)
            {
                list.remove(pos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(kind: ExchangeKind) -> Arc<Exchange> {
        Exchange::new("x".into(), kind, false, false, false, FieldTable::default())
    }

    /// Seconds to bind `n` routing keys from a fresh exchange to one
    /// destination (best of three).
    fn bind_time(n: usize) -> f64 {
        (0..3)
            .map(|_| {
                let x = exchange(ExchangeKind::Direct);
                let dest = Dest::Exchange(exchange(ExchangeKind::Fanout));
                let none = FieldTable::default();
                let keys: Vec<String> = (0..n).map(|i| format!("key.{i}")).collect();
                let t = std::time::Instant::now();
                for k in &keys {
                    assert!(x.bind(dest.clone(), k, &none).unwrap());
                }
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    }

    #[test]
    fn declaring_bindings_costs_the_same_however_many_the_destination_has() {
        // Linear: 10 times the bindings take about 10 times as long. The
        // former list scan per bind made it 100 times.
        let small = bind_time(5_000);
        let large = bind_time(50_000);
        assert!(
            large < small * 40.0,
            "5,000 bindings took {small:.4}s, 50,000 took {large:.4}s"
        );
    }

    /// Seconds to unbind `n` destinations of a fanout exchange one by one
    /// (best of three).
    fn fanout_unbind_time(n: usize) -> f64 {
        (0..3)
            .map(|_| {
                let x = exchange(ExchangeKind::Fanout);
                let none = FieldTable::default();
                let dests: Vec<Dest> = (0..n)
                    .map(|_| Dest::Exchange(exchange(ExchangeKind::Fanout)))
                    .collect();
                for d in &dests {
                    x.bind(d.clone(), "", &none).unwrap();
                }
                let t = std::time::Instant::now();
                for d in &dests {
                    assert_eq!(x.unbind_all(d), 1);
                }
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    }

    #[test]
    fn removing_a_fanout_destination_costs_the_same_however_many_are_bound() {
        let small = fanout_unbind_time(5_000);
        let large = fanout_unbind_time(50_000);
        assert!(
            large < small * 40.0,
            "5,000 unbinds took {small:.4}s, 50,000 took {large:.4}s"
        );
    }

    #[test]
    fn a_fanout_exchange_routes_to_what_is_still_bound_after_removals() {
        let x = exchange(ExchangeKind::Fanout);
        let none = FieldTable::default();
        let dests: Vec<Dest> = (0..5)
            .map(|_| Dest::Exchange(exchange(ExchangeKind::Fanout)))
            .collect();
        for d in &dests {
            x.bind(d.clone(), "a", &none).unwrap();
            x.bind(d.clone(), "b", &none).unwrap();
        }
        assert!(x.unbind(&dests[0], "a", &none));
        assert_eq!(x.unbind_all(&dests[2]), 2);
        assert!(x.unbind(&dests[4], "a", &none));
        assert!(x.unbind(&dests[4], "b", &none));
        let mut out = Vec::new();
        x.route("any", &mut || None, &mut out);
        let mut got: Vec<usize> = out.iter().map(Dest::addr).collect();
        let mut want: Vec<usize> = [0, 1, 3].iter().map(|&i| dests[i].addr()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn duplicate_bindings_and_unbinds_keep_the_count_and_routes_right() {
        let x = exchange(ExchangeKind::Direct);
        let d = Dest::Exchange(exchange(ExchangeKind::Fanout));
        let none = FieldTable::default();
        let mut args = FieldTable::default();
        args.insert("a".into(), AMQPValue::LongInt(1));
        assert!(x.bind(d.clone(), "k", &none).unwrap());
        assert!(!x.bind(d.clone(), "k", &none).unwrap(), "a duplicate");
        assert!(x.bind(d.clone(), "k", &args).unwrap(), "other arguments");
        assert!(x.bind(d.clone(), "j", &none).unwrap());
        assert_eq!(x.binding_count(), 3);
        assert_eq!(x.bindings().len(), 3);
        let routed = |key: &str| {
            let mut out = Vec::new();
            x.route(key, &mut || None, &mut out);
            out.len()
        };
        assert_eq!((routed("k"), routed("j"), routed("z")), (1, 1, 0));
        assert!(x.unbind(&d, "k", &none));
        assert!(!x.unbind(&d, "k", &none));
        assert_eq!(routed("k"), 1, "still bound with other arguments");
        assert!(x.unbind(&d, "k", &args));
        assert_eq!(routed("k"), 0);
        assert_eq!(x.binding_count(), 1);
        assert_eq!(x.unbind_all(&d), 1);
        assert_eq!((x.binding_count(), routed("j")), (0, 0));
    }
}
