//! warren: an AMQP 0-9-1 message broker.
//!
//! The path of a message: `connection` reads frames (`codec`), `channel`
//! assembles content and publishes through the `vhost`'s exchanges
//! (`exchange`, `topic`, `headers_match`) into `queue`s, which deliver to
//! consumers through `delivery` and the connection's `outbound` writer.
//! See docs/architecture.md.

#![warn(missing_docs)]

pub mod alarms;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod codec;
pub mod config;
pub mod connection;
pub mod deadletter;
pub mod definitions;
pub mod delivery;
pub mod direct_reply;
pub mod error;
pub mod exchange;
pub mod handlers;
pub mod headers_match;
pub mod http;
pub mod login_limit;
pub mod message;
pub mod methods;
pub mod outbound;
pub mod paging;
pub mod priority;
pub mod queue;
pub mod queue_args;
pub mod server;
pub mod stats;
pub mod store;
pub mod table_guard;
pub mod timers;
pub mod tls;
pub mod topic;
pub mod vhost;

pub use broker::Broker;
pub use config::Config;
