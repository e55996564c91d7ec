//! The broker: configuration, virtual hosts, users, permissions and live
//! connections.
//!
//! Owns: the vhosts, users and permissions, connection limits, and start-up
//! recovery (definitions then messages); definitions import and export
//! (`definitions`). May use every layer below it; `session` and `admin`
//! sit on top of it.

pub mod cluster;
pub mod definitions;
pub mod link;
pub mod quorum;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::auth::{Permissions, User, hash_password, verify_password};
use crate::ops::config::Config;
use crate::ops::stats::Stats;
use crate::schema::{PermissionDef, Tags, UserDef};
use crate::store::meta::MetaOp;
use crate::vhost::Durability;
use crate::vhost::VHost;

/// Shared broker state.
#[derive(Debug)]
pub struct Broker {
    /// Effective configuration.
    pub config: Config,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    users: RwLock<HashMap<String, User>>,
    /// user -> vhost -> permissions.
    permissions: RwLock<HashMap<String, HashMap<String, Arc<Permissions>>>>,
    /// Bumped on every user or permission change, so connections can cache.
    auth_generation: AtomicU64,
    next_connection_id: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<dyn Client>>>,
    /// Durable state: definitions log and message store (see `store`).
    pub durability: Arc<Durability>,
    /// Memory and disk alarms (see `alarms`).
    pub alarms: Arc<tokio::sync::watch::Sender<crate::ops::alarms::Alarms>>,
    /// Broker-wide counters (see `stats`).
    pub stats: Stats,
    /// When the broker started.
    pub started_at: std::time::SystemTime,
    /// Failed logins per client address and user (`[auth] max_failed_logins`).
    pub failed_logins: crate::auth::login_limit::FailedLogins,
    /// Connections accepted and not yet opened (`server::HandshakeSlot`).
    pub handshaking: std::sync::atomic::AtomicU32,
    /// This node's cluster (`[cluster]`), once joined.
    cluster: std::sync::OnceLock<cluster::Clustered>,
    /// The cluster's definitions have their defaults (cluster::Command::Init).
    cluster_initialized: std::sync::atomic::AtomicBool,
    /// In a cluster, the data links to the other nodes (`link`).
    links: std::sync::OnceLock<Arc<link::Links>>,
    /// In a cluster, each quorum queue's group: the definitions entry
    /// that declared it, by (vhost, name).
    quorum_groups: Mutex<HashMap<(String, String), quorum::Placement>>,
}

impl Broker {
    /// A broker with the default vhost and the default user (tagged
    /// administrator, with full permissions on the default vhost).
    pub fn new(config: Config) -> Arc<Broker> {
        let d = config.defaults.clone();
        let broker = Self::empty(config);
        broker.add_vhost(&d.vhost);
        broker.put_user(User {
            name: d.user.clone(),
            password_hash: hash_password(&d.password),
            tags: vec!["administrator".into()],
        });
        broker.set_permissions(&d.user, &d.vhost, Permissions::all());
        Arc::new(broker)
    }

    /// Opens the broker on its data directory: recovers durable definitions
    /// (or creates the defaults on first run) and the message store, and
    /// puts recovered messages back in their queues.
    pub fn open(config: Config) -> Result<Arc<Broker>, String> {
        Self::open_on(config, Arc::new(crate::store::disk::RealDisk))
    }

    /// `open` with the message store on `disk` (tests run the broker on a
    /// disk that is slow or fails on command).
    pub fn open_on(
        config: Config,
        disk: Arc<dyn crate::store::disk::Disk>,
    ) -> Result<Arc<Broker>, String> {
        use crate::store::meta;
        let dir = config.data_dir.clone();
        make_private_dir(&dir)?;
        let existing = meta::exists(&dir);
        let broker = if existing {
            Arc::new(Self::empty(config))
        } else {
            Self::new(config)
        };
        let started = std::time::Instant::now();
        let (store, recovered) = broker.open_store(&dir, disk)?;
        if existing {
            let logged =
                meta::read(&dir).map_err(|e| format!("cannot recover definitions: {e}"))?;
            definitions::recover(&broker, logged);
        }
        broker.remove_stream_orphans();
        let count = broker.restore_messages(&store, recovered);
        let log = meta::compact_and_open(&dir, &definitions::export(&broker))
            .map_err(|e| format!("cannot write definitions to {}: {e}", dir.display()))?;
        let weak = Arc::downgrade(&broker);
        log.set_undo(move |op, prior| {
            if let Some(broker) = weak.upgrade() {
                definitions::undo(&broker, op, prior);
            }
        });
        let _ = broker.durability.meta.set(log);
        if existing {
            tracing::info!(
                "recovered {count} persistent message(s) in {:.2} s",
                started.elapsed().as_secs_f64()
            );
        }
        Ok(broker)
    }

    /// `open` for a node of a cluster (`[cluster]`): the definitions come
    /// from the cluster's definitions group (see `cluster`) instead of the
    /// node-local definitions log; the node waits (up to `catch_up`) to
    /// hear from the group's leader and apply what it missed before stored
    /// messages go back in their queues.
    pub async fn open_clustered(
        config: Config,
        catch_up: std::time::Duration,
    ) -> Result<Arc<Broker>, String> {
        let dir = config.data_dir.clone();
        make_private_dir(&dir)?;
        let broker = Arc::new(Self::empty(config));
        let (store, recovered) = broker.open_store(&dir, Arc::new(crate::store::disk::RealDisk))?;
        broker.join_cluster().await?;
        if !recovered.is_empty() {
            broker.wait_caught_up(catch_up).await;
        }
        broker.remove_stream_orphans();
        let count = broker.restore_messages(&store, recovered);
        tracing::info!("recovered {count} persistent message(s)");
        Ok(broker)
    }

    /// Opens the message store under `dir` and sets up paging; returns the
    /// store and the messages it recovered, by queue.
    fn open_store(
        &self,
        dir: &std::path::Path,
        disk: Arc<dyn crate::store::disk::Disk>,
    ) -> Result<(Arc<crate::store::MessageStore>, crate::store::Recovered), String> {
        let (store, recovered) = crate::store::MessageStore::open_on(
            disk.clone(),
            &dir.join("messages"),
            crate::store::StoreOptions {
                fsync: self.config.storage.fsync,
                segment_max: self.config.storage.segment_size,
                ..Default::default()
            },
        )
        .map_err(|e| format!("cannot open the message store in {}: {e}", dir.display()))?;
        let _ = self.durability.store.set(store.clone());
        // Page files are scratch space from an earlier run.
        let paging_dir = dir.join("paging");
        let _ = std::fs::remove_dir_all(&paging_dir);
        let _ = self
            .durability
            .paging
            .set(crate::queue::paging::PagingConfig {
                dir: paging_dir,
                limit: self.config.storage.queue_memory_limit,
                disk: disk.clone(),
            });
        let _ = self.durability.streams.set(crate::queue::stream::Streams {
            dir: dir.join("streams"),
            disk,
            fsync: self.config.storage.fsync,
        });
        Ok((store, recovered))
    }

    /// Removes the logs of streams the definitions no longer have.
    fn remove_stream_orphans(&self) {
        let Some(streams) = self.durability.streams.get() else {
            return;
        };
        let mut keep = Vec::new();
        for v in self.vhosts() {
            for q in v.queues().iter().filter(|q| q.stream().is_some()) {
                keep.push((v.name.to_string(), q.name.clone()));
            }
        }
        streams.remove_orphans(&keep);
    }

    /// Puts recovered messages back in their queues; those of queues that
    /// no longer exist are released from the store. Returns how many were
    /// restored.
    fn restore_messages(
        &self,
        store: &crate::store::MessageStore,
        recovered: crate::store::Recovered,
    ) -> usize {
        let mut count = 0usize;
        for (key, msgs) in recovered {
            match self
                .vhost(&key.vhost)
                .and_then(|v| v.queue(&key.queue))
                .filter(|q| q.is_persistent())
            {
                Some(q) => {
                    count += msgs.len();
                    q.recover(msgs);
                }
                None if self.cluster().is_some() => {
                    // The cluster may not have told this node of the queue
                    // yet: the messages stay stored for the next start.
                    tracing::warn!(
                        "{} stored message(s) for queue '{}' in vhost '{}', which this node does not know (yet), kept on disk",
                        msgs.len(),
                        key.queue.escape_debug(),
                        key.vhost.escape_debug()
                    );
                }
                None => {
                    tracing::warn!(
                        "{} stored message(s) for queue '{}' in vhost '{}', which no longer exists, dropped",
                        msgs.len(),
                        key.queue.escape_debug(),
                        key.vhost.escape_debug()
                    );
                    let ids: Vec<u64> = msgs.iter().map(|m| m.id).collect();
                    store.ack(&key.vhost, &key.queue, &ids);
                }
            }
        }
        count
    }

    /// Closes every client connection with 320 CONNECTION_FORCED and syncs
    /// the message store (clean shutdown). Waits at most `grace`.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        for c in self.clients() {
            c.close(
                crate::protocol::error::code::CONNECTION_FORCED,
                "broker forced connection closure with reason 'shutdown'".into(),
            );
        }
        let deadline = std::time::Instant::now() + grace;
        while !self.connections.lock().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if let Some(store) = self.durability.store() {
            store.close();
        }
        for v in self.vhosts() {
            for q in v.queues() {
                if let Some(s) = q.stream() {
                    s.write_offsets_now();
                    s.log().close();
                }
            }
        }
        if let Some(meta) = self.durability.meta.get() {
            meta.close();
        }
    }

    /// A broker with no vhosts and no users (recovery fills it).
    pub fn empty(config: Config) -> Broker {
        let failed_logins = crate::auth::login_limit::FailedLogins::new(
            config.auth.max_failed_logins,
            config.auth.failed_login_window,
            config.auth.failed_login_max_delay_ms,
        );
        Broker {
            failed_logins,
            config,
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            permissions: RwLock::new(HashMap::new()),
            auth_generation: AtomicU64::new(1),
            next_connection_id: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
            durability: Arc::new(Durability::default()),
            stats: Stats::default(),
            started_at: std::time::SystemTime::now(),
            alarms: Arc::new(tokio::sync::watch::Sender::new(Default::default())),
            handshaking: std::sync::atomic::AtomicU32::new(0),
            cluster: std::sync::OnceLock::new(),
            cluster_initialized: std::sync::atomic::AtomicBool::new(false),
            links: std::sync::OnceLock::new(),
            quorum_groups: Mutex::default(),
        }
    }

    /// Whether the cluster's definitions have their defaults.
    pub fn cluster_initialized(&self) -> bool {
        self.cluster_initialized.load(Ordering::Acquire)
    }

    fn set_cluster_initialized(&self) {
        self.cluster_initialized.store(true, Ordering::Release);
    }

    /// Looks up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// All vhosts.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    /// Creates a vhost; returns false if it existed.
    pub fn add_vhost(&self, name: &str) -> bool {
        let mut v = self.vhosts.write();
        if v.contains_key(name) {
            return false;
        }
        v.insert(
            name.to_owned(),
            VHost::with_durability(name, self.durability.clone()),
        );
        self.durability.record(MetaOp::PutVhost(name.to_owned()));
        true
    }

    /// Deletes a vhost and closes its connections; returns false if missing.
    pub fn delete_vhost(&self, name: &str) -> bool {
        // Its queues go first, each the way any queue is deleted, so their
        // stored messages are released (they would pin the message store).
        if let Some(vh) = self.vhost(name) {
            for q in vh.queues() {
                vh.remove_queue(&q);
            }
        }
        let Some(vh) = self.vhosts.write().remove(name) else {
            return false;
        };
        self.durability.record(MetaOp::DeleteVhost(name.to_owned()));
        for perms in self.permissions.write().values_mut() {
            perms.remove(name);
        }
        self.bump_auth();
        for c in self.clients() {
            if c.vhost_name().as_deref() == Some(name) {
                c.close(
                    crate::protocol::error::code::CONNECTION_FORCED,
                    format!("vhost '{name}' is deleted"),
                );
            }
        }
        self.stats.retired_vhosts.add(&vh.queue_totals());
        drop(vh);
        true
    }

    /// `[limits] max_queues_per_vhost`, for a declaration of `name` over
    /// either door: 406 PRECONDITION_FAILED (RabbitMQ's vhost max-queues)
    /// when the queue is new and the vhost is full.
    pub fn check_queue_limit(
        &self,
        vhost: &VHost,
        name: &str,
    ) -> crate::protocol::error::AmqpResult<()> {
        let max = self.config.limits.max_queues_per_vhost as usize;
        if max != 0 && vhost.queue(name).is_none() && vhost.queue_count() >= max {
            return Err(crate::protocol::error::AmqpError::channel(
                crate::protocol::error::code::PRECONDITION_FAILED,
                format!(
                    "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                    vhost.name
                ),
            ));
        }
        Ok(())
    }

    /// Checks credentials (a blank password never matches); returns the
    /// user on success.
    pub fn authenticate(&self, user: &str, password: &str) -> Option<User> {
        // As RabbitMQ: a blank password never logs in, whatever is stored.
        if password.is_empty() {
            return None;
        }
        let users = self.users.read();
        let u = users.get(user)?;
        (!u.password_hash.is_empty() && verify_password(&u.password_hash, password))
            .then(|| u.clone())
    }

    /// Looks up a user.
    pub fn user(&self, name: &str) -> Option<User> {
        self.users.read().get(name).cloned()
    }

    /// All users.
    pub fn users(&self) -> Vec<User> {
        self.users.read().values().cloned().collect()
    }

    /// Creates or replaces a user.
    pub fn put_user(&self, user: User) {
        // Applied before it is logged, here and below: the undo of a failed
        // write (on the log's thread) then always comes after the change.
        let op = MetaOp::PutUser(user_def(&user));
        let prior = self.users.write().insert(user.name.clone(), user);
        self.durability
            .record_replacing(op, prior.map(|old| MetaOp::PutUser(user_def(&old))));
        self.bump_auth();
    }

    /// Deletes a user and their permissions; returns false if missing.
    pub fn delete_user(&self, name: &str) -> bool {
        let removed = self.users.write().remove(name);
        let existed = removed.is_some();
        self.durability.record_replacing(
            MetaOp::DeleteUser(name.to_owned()),
            removed.map(|old| MetaOp::PutUser(user_def(&old))),
        );
        self.permissions.write().remove(name);
        self.bump_auth();
        existed
    }

    /// A user's permissions in a vhost.
    pub fn permissions(&self, user: &str, vhost: &str) -> Option<Arc<Permissions>> {
        self.permissions.read().get(user)?.get(vhost).cloned()
    }

    /// Every (user, vhost, permissions).
    pub fn all_permissions(&self) -> Vec<(String, String, Arc<Permissions>)> {
        let p = self.permissions.read();
        let mut out = Vec::new();
        for (u, m) in p.iter() {
            for (v, perms) in m {
                out.push((u.clone(), v.clone(), perms.clone()));
            }
        }
        out
    }

    /// Sets a user's permissions in a vhost.
    pub fn set_permissions(&self, user: &str, vhost: &str, perms: Permissions) {
        let op = MetaOp::SetPermissions(permission_def(user, vhost, &perms));
        let prior = self
            .permissions
            .write()
            .entry(user.to_owned())
            .or_default()
            .insert(vhost.to_owned(), Arc::new(perms));
        self.durability.record_replacing(
            op,
            prior.map(|old| MetaOp::SetPermissions(permission_def(user, vhost, &old))),
        );
        self.bump_auth();
    }

    /// Removes a user's permissions in a vhost; returns false if none.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> bool {
        let prior = self
            .permissions
            .write()
            .get_mut(user)
            .and_then(|m| m.remove(vhost));
        let removed = prior.is_some();
        self.durability.record_replacing(
            MetaOp::ClearPermissions(user.to_owned(), vhost.to_owned()),
            prior.map(|old| MetaOp::SetPermissions(permission_def(user, vhost, &old))),
        );
        self.bump_auth();
        removed
    }

    fn bump_auth(&self) {
        self.auth_generation.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever users or permissions change.
    pub fn auth_generation(&self) -> u64 {
        self.auth_generation.load(Ordering::Acquire)
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a live connection.
    pub fn register(&self, h: Arc<dyn Client>) {
        self.stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        self.connections.lock().insert(h.id(), h);
    }

    /// Forgets a closed connection (keeping its counts in the totals).
    pub fn unregister(&self, id: u64) {
        let h = self.connections.lock().remove(&id);
        if let Some(h) = h {
            let r = &self.stats.retired_connections;
            r.add(&h.stats().snapshot());
            r.add_channels(h.stats().channels_opened.load(Ordering::Relaxed));
        }
    }

    /// A live connection by id, as the session type `T` that registered it.
    pub fn connection<T: Client>(&self, id: u64) -> Option<Arc<T>> {
        let c = self.connections.lock().get(&id).cloned()?;
        c.into_any().downcast().ok()
    }

    /// Live connections, as the session type `T` that registered them.
    pub fn connections<T: Client>(&self) -> Vec<Arc<T>> {
        self.clients()
            .into_iter()
            .filter_map(|c| c.into_any().downcast().ok())
            .collect()
    }

    /// How many connections are live.
    pub fn connection_count(&self) -> usize {
        self.connections.lock().len()
    }

    fn clients(&self) -> Vec<Arc<dyn Client>> {
        self.connections.lock().values().cloned().collect()
    }
}

/// A client connection as the broker sees it: the broker keeps the
/// registry and closes connections (shutdown, vhost deleted); the session
/// layer's `ConnectionHandle` implements it, and the layers that own that
/// type get it back with `Broker::connections::<T>()`.
pub trait Client: std::any::Any + Send + Sync + std::fmt::Debug {
    /// Broker-unique connection id.
    fn id(&self) -> u64;
    /// The vhost it opened, once its handshake is done.
    fn vhost_name(&self) -> Option<String>;
    /// Closes it with connection.close (`code`, `text`).
    fn close(&self, code: u16, text: String);
    /// Its message counters.
    fn stats(&self) -> &crate::ops::stats::ConnStats;
    /// Itself as `Any`, to get the concrete type back.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// Creates the data directory, private to the broker's user: it holds
/// password hashes and messages.
fn make_private_dir(dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!("cannot make {} private (0700): {e}", dir.display());
    }
    Ok(())
}

/// A user as the definitions log and exports write it.
pub(crate) fn user_def(user: &User) -> UserDef {
    UserDef {
        name: user.name.clone(),
        password_hash: user.password_hash.clone(),
        hashing_algorithm: crate::auth::HASHING_ALGORITHM.into(),
        password: None,
        tags: Tags::List(user.tags.clone()),
    }
}

/// Permissions as the definitions log and exports write them.
pub(crate) fn permission_def(user: &str, vhost: &str, perms: &Permissions) -> PermissionDef {
    PermissionDef {
        user: user.to_owned(),
        vhost: vhost.to_owned(),
        configure: perms.configure.clone(),
        write: perms.write.clone(),
        read: perms.read.clone(),
    }
}
