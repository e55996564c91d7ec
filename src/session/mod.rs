//! One client's session: listeners (`server`, `tls`), the connection's
//! frame loop (`connection`), its handshake (`handshake`) and frame reader
//! (`reader`), the state every handler takes (`context`), channels with
//! publish, confirms and transactions (`channel`), AMQP method handlers
//! split by class (`handlers`), the (class, method) ids the frame loop
//! names (`method_ids`), publisher flow-control waits (`flow`), the
//! consumer side of a channel (`delivery`), and the socket writer shared by
//! the connection's tasks and the queues that deliver to it (`outbound`).
//!
//! Owns: everything per connection. May use: every layer below
//! (`broker`, `vhost`, `routing`, `queue`, `store`, `message`, `protocol`,
//! `auth`, `ops`); nothing imports it except `admin` listings.

pub mod channel;
pub mod connection;
pub mod context;
pub mod delivery;
pub mod flow;
pub mod handlers;
mod handshake;
pub mod method_ids;
pub mod outbound;
mod reader;
pub mod server;
pub mod tls;
