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

use crate::error::{AmqpError, AmqpResult, code};
use crate::headers_match::HeadersBinding;
use crate::queue::Queue;
use crate::topic::TopicTrie;

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
    Fanout(Vec<Dest>),
    Topic(TopicTrie<Dest>),
    Headers(Vec<(HeadersBinding, Dest, FieldTable)>),
}

#[derive(Debug)]
struct Routes {
    bindings: HashMap<Dest, Vec<Binding>>,
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
            ExchangeKind::Fanout => Table::Fanout(Vec::new()),
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
        let Routes { bindings, table } = &mut *routes;
        let list = bindings.entry(dest.clone()).or_default();
        if list
            .iter()
            .any(|b| b.routing_key == routing_key && b.arguments == *arguments)
        {
            return Ok(false);
        }
        let same_key_bound = list.iter().any(|b| b.routing_key == routing_key);
        let first_for_dest = list.is_empty();
        list.push(Binding {
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        });
        match table {
            Table::Direct(map) => {
                if !same_key_bound {
                    map.entry(routing_key.to_owned()).or_default().push(dest);
                }
            }
            Table::Fanout(list) => {
                if first_for_dest {
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
        let Routes { bindings, table } = &mut *routes;
        let Some(list) = bindings.get_mut(dest) else {
            return false;
        };
        let Some(pos) = list
            .iter()
            .position(|b| b.routing_key == routing_key && b.arguments == *arguments)
        else {
            return false;
        };
        list.remove(pos);
        let key_still_bound = list.iter().any(|b| b.routing_key == routing_key);
        let dest_gone = list.is_empty();
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
        let Routes { bindings, table } = &mut *routes;
        let Some(list) = bindings.remove(dest) else {
            return 0;
        };
        for (i, b) in list.iter().enumerate() {
            let key_still_bound = list[i + 1..].iter().any(|o| o.routing_key == b.routing_key);
            let last = i + 1 == list.len();
            remove_from_table(
                table,
                dest,
                &b.routing_key,
                &b.arguments,
                key_still_bound,
                last,
            );
        }
        list.len()
    }

    /// Number of bindings from this exchange.
    pub fn binding_count(&self) -> usize {
        self.routes.read().bindings.values().map(Vec::len).sum()
    }

    /// Every binding from this exchange, with its destination.
    pub fn bindings(&self) -> Vec<(Dest, Binding)> {
        let routes = self.routes.read();
        let mut out = Vec::new();
        for (d, list) in &routes.bindings {
            for b in list {
                out.push((d.clone(), b.clone()));
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
            Table::Fanout(list) => out.extend(list.iter().cloned()),
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
        Table::Fanout(list) => {
            if dest_gone {
                list.retain(|d| d != dest);
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
