//! The AMQP 0-9-1 wire: frames (`codec`), method encoding (`methods`),
//! field-table checks (`table_guard`), reply codes and error texts (`error`),
//! and the AMQP 1.0 message format the stream protocol carries (`amqp10`,
//! converted to and from AMQP 0-9-1 by `amqp10_map`).
//!
//! Owns: everything about bytes on the socket that does not depend on broker
//! state. May use: nothing else in warren.

pub mod amqp10;
pub mod amqp10_map;
pub mod codec;
pub mod error;
pub mod fields;
pub mod methods;
pub mod table_guard;

/// The RabbitMQ version warren reports (connection.start's `version`,
/// the HTTP API's `rabbitmq_version` and `management_version`): the release whose behaviour warren follows, so
/// tools that check the version keep working. `product_name` and
/// `product_version` say what it really is.
pub const RABBITMQ_COMPAT_VERSION: &str = "3.10.8";
