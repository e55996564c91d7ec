//! `ConnCtx`: the per-connection state every method handler takes (the
//! broker, the connection's outbound handle, its vhost and user, cached
//! permissions, and what the frame loop must act on after a frame: due
//! confirms, flow control, direct-reply backpressure).
//!
//! Owns: the handler-facing view of one open connection. The connection's
//! frame loop (`connection`) creates it after connection.open and is the
//! only one that keeps it; channels and handlers borrow it per frame.

use std::sync::Arc;

use amq_protocol::protocol::AMQPClass;

use crate::broker::Broker;
use crate::protocol::error::AmqpResult;
use crate::protocol::methods::write_method;
use crate::queue::Queue;
use crate::session::outbound::ConnectionHandle;
use crate::vhost::VHost;

/// What a channel does once its definitions change is made (the reply,
/// or the error the change ended in).
pub type AfterDefine = Box<
    dyn FnOnce(
            &mut crate::session::channel::Channel,
            &mut ConnCtx,
            AmqpResult<u32>,
        ) -> AmqpResult<()>
        + Send,
>;

/// A definitions change a channel waits for (in a cluster, until the
/// cluster has committed it): nothing more from the client is handled
/// until it is done, so replies keep their order.
pub struct PendingDefine {
    /// The channel it came on.
    pub channel: u16,
    /// The method that asked for it (set by the frame loop).
    pub method: Option<crate::session::method_ids::MethodId>,
    /// Its outcome, once made.
    pub rx: tokio::sync::oneshot::Receiver<AmqpResult<u32>>,
    /// The outcome, once received.
    pub done: Option<AmqpResult<u32>>,
    /// What the channel does with it.
    pub then: AfterDefine,
}

/// What a channel does with the outcome of work it waited for
/// (`ConnCtx::wait_on`).
pub trait Then:
    FnOnce(&mut crate::session::channel::Channel, &mut ConnCtx, AmqpResult<u32>) -> AmqpResult<()>
    + Send
    + 'static
{
}

impl<F> Then for F where
    F: FnOnce(
            &mut crate::session::channel::Channel,
            &mut ConnCtx,
            AmqpResult<u32>,
        ) -> AmqpResult<()>
        + Send
        + 'static
{
}

/// A basic.get waiting for its queue's head to be read back from disk.
pub struct PendingGet {
    /// The queue.
    pub queue: Arc<Queue>,
    /// The channel it came on.
    pub channel: u16,
    /// Its no-ack flag.
    pub no_ack: bool,
}

/// Per-connection state the method handlers need.
pub struct ConnCtx {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The outbound side.
    pub handle: Arc<ConnectionHandle>,
    /// The vhost opened by connection.open.
    pub vhost: Arc<VHost>,
    /// The authenticated user.
    pub user: String,
    /// Exclusive queues declared by this connection, deleted when it closes.
    pub exclusive_queues: Vec<Arc<Queue>>,
    /// Channels with publisher confirms waiting to be sent.
    pub confirms_due: Vec<u16>,
    /// A queue that asked this connection's publishers to slow down.
    pub flow_wait: Option<Arc<Queue>>,
    /// A connection this one's direct replies filled beyond its outbound
    /// cap: nothing more is read until it drains.
    pub reply_wait: Option<Arc<ConnectionHandle>>,
    /// A basic.get whose message is being read back from disk: nothing
    /// more is handled until it is answered.
    pub get_wait: Option<PendingGet>,
    /// A definitions change being made in the cluster: nothing more is
    /// handled until it is done.
    pub define_wait: Option<PendingDefine>,
    /// The connection has published (alarms block only publishers).
    pub published: bool,
    perms: Option<Arc<crate::auth::Permissions>>,
    perms_generation: u64,
}

impl ConnCtx {
    /// The context of a connection just opened by `user` on `vhost`.
    pub fn new(
        broker: Arc<Broker>,
        handle: Arc<ConnectionHandle>,
        vhost: Arc<VHost>,
        user: String,
    ) -> ConnCtx {
        ConnCtx {
            broker,
            handle,
            vhost,
            user,
            exclusive_queues: Vec::new(),
            confirms_due: Vec::new(),
            flow_wait: None,
            reply_wait: None,
            get_wait: None,
            define_wait: None,
            published: false,
            perms: None,
            perms_generation: 0,
        }
    }

    /// Whether definitions changes go through the cluster (`define`).
    pub fn clustered(&self) -> bool {
        self.broker.cluster().is_some()
    }

    /// Makes a definitions change through the cluster; `then` runs on
    /// `channel` with its outcome, and nothing more from the client is
    /// handled before.
    pub fn define(&mut self, channel: u16, cmd: crate::broker::cluster::Command, then: impl Then) {
        let broker = self.broker.clone();
        self.wait_on(channel, async move { broker.define(cmd).await }, then);
    }

    /// Runs `work` (something another node or the cluster answers); `then`
    /// runs on `channel` with its outcome, and nothing more from the client
    /// is handled before.
    pub fn wait_on(
        &mut self,
        channel: u16,
        work: impl std::future::Future<Output = AmqpResult<u32>> + Send + 'static,
        then: impl Then,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(work.await);
        });
        self.define_wait = Some(PendingDefine {
            channel,
            method: None,
            rx,
            done: None,
            then: Box::new(then),
        });
    }

    /// The connection id.
    pub fn id(&self) -> u64 {
        self.handle.id
    }

    /// Checks the user's permission for an operation (RabbitMQ's rules).
    pub fn check(
        &mut self,
        access: crate::auth::Access,
        resource: crate::auth::Resource<'_>,
    ) -> AmqpResult<()> {
        self.refresh_permissions();
        crate::auth::check(
            self.perms.as_deref(),
            &self.user,
            &self.vhost.name,
            access,
            resource,
        )
    }

    /// Checks the read and write permissions a declaration naming a
    /// dead-letter or alternate exchange needs (`auth::check_exchange_argument`).
    pub fn check_exchange_argument(
        &mut self,
        declared: crate::auth::Resource<'_>,
        arguments: &amq_protocol::types::FieldTable,
    ) -> AmqpResult<()> {
        self.refresh_permissions();
        crate::auth::check_exchange_argument(
            self.perms.as_deref(),
            &self.user,
            &self.vhost.name,
            declared,
            arguments,
        )
    }

    /// Reloads the cached permissions if users or permissions changed;
    /// returns the generation they are current for.
    pub fn refresh_permissions(&mut self) -> u64 {
        let generation = self.broker.auth_generation();
        if generation != self.perms_generation {
            self.perms = self.broker.permissions(&self.user, &self.vhost.name);
            self.perms_generation = generation;
        }
        generation
    }

    /// Appends a method frame to the outbound buffer.
    pub fn send(&self, channel: u16, class: AMQPClass) {
        self.handle.write(|out| write_method(out, channel, &class));
    }
}
