//! warren: an AMQP 0-9-1 message broker.
//!
//! The source is laid out by responsibility, one folder per layer; see
//! docs/architecture.md for the diagram and the dependency rules.
//!
//! The path of a message: `session` reads frames (`protocol`), assembles
//! content into a `message` and publishes through the `vhost`'s exchanges
//! (`routing`) into `queue`s, which deliver to consumers through the
//! session's outbound writer; persistent messages go through the `store`.

#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod message;
pub mod ops;
pub mod protocol;
pub mod queue;
pub mod routing;
pub mod schema;
pub mod session;
pub mod store;
pub mod streamproto;
pub mod vhost;

pub use broker::Broker;
pub use ops::config::Config;
