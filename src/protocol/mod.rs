//! The AMQP 0-9-1 wire: frames (`codec`), method encoding (`methods`),
//! field-table checks (`table_guard`), reply codes and error texts (`error`).
//!
//! Owns: everything about bytes on the socket that does not depend on broker
//! state. May use: nothing else in warren.

pub mod codec;
pub mod error;
pub mod methods;
pub mod table_guard;
