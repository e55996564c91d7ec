//! Administration from outside AMQP: definitions import and export
//! (`definitions`) and the RabbitMQ-compatible management HTTP API (`http`).
//!
//! Owns: the JSON shapes operators and tools see. May use: every layer.

pub mod definitions;
pub mod http;
