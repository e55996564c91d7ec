//! The broker: configuration, virtual hosts, users and live connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::config::Config;
use crate::outbound::ConnectionHandle;
use crate::vhost::VHost;

/// Shared broker state.
#[derive(Debug)]
pub struct Broker {
    /// Effective configuration.
    pub config: Config,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    next_connection_id: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<ConnectionHandle>>>,
}

impl Broker {
    /// A broker with the default vhost.
    pub fn new(config: Config) -> Arc<Broker> {
        let mut vhosts = HashMap::new();
        let name = config.defaults.vhost.clone();
        vhosts.insert(name.clone(), VHost::new(&name));
        Arc::new(Broker {
            config,
            vhosts: RwLock::new(vhosts),
            next_connection_id: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
        })
    }

    /// Looks up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Checks a user's password.
    pub fn authenticate(&self, user: &str, password: &str) -> bool {
        let d = &self.config.defaults;
        user == d.user && password == d.password
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a live connection.
    pub fn register(&self, h: Arc<ConnectionHandle>) {
        self.connections.lock().insert(h.id, h);
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: u64) {
        self.connections.lock().remove(&id);
    }

    /// Live connections.
    pub fn connections(&self) -> Vec<Arc<ConnectionHandle>> {
        self.connections.lock().values().cloned().collect()
    }
}
