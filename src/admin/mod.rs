//! Administration from outside AMQP: the RabbitMQ-compatible management
//! HTTP API (`http`), definitions import and export included.
//!
//! Owns: the JSON shapes operators and tools see. May use: every layer.

pub mod http;
