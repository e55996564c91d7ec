//! Named (class, method) ids for the methods the session looks at before
//! (or without) decoding them: the frame loop's dispatch, the close
//! handshake, and the method an error is reported against.
//!
//! Owns: these constants, defined once. The full method tables belong to
//! `protocol::methods`; this is only the session's vocabulary for them.

use crate::protocol::error::AmqpError;

/// An AMQP method's (class id, method id), as `protocol::methods::ids` reads
/// it from a method frame.
pub type MethodId = (u16, u16);

/// The basic class id (content headers name it).
pub const BASIC_CLASS: u16 = 60;

/// connection.open.
pub const CONNECTION_OPEN: MethodId = (10, 40);
/// connection.close.
pub const CONNECTION_CLOSE: MethodId = (10, 50);
/// connection.close-ok.
pub const CONNECTION_CLOSE_OK: MethodId = (10, 51);
/// channel.close.
pub const CHANNEL_CLOSE: MethodId = (20, 40);
/// channel.close-ok.
pub const CHANNEL_CLOSE_OK: MethodId = (20, 41);
/// basic.publish (content header and body frames report errors against it).
pub const BASIC_PUBLISH: MethodId = (BASIC_CLASS, 40);

/// Attaches a method id to an error (`AmqpError::with_method` for a
/// `MethodId`).
pub trait InMethod {
    /// The error, reported against `id`.
    fn in_method(self, id: MethodId) -> Self;
}

impl InMethod for AmqpError {
    fn in_method(self, (class_id, method_id): MethodId) -> Self {
        self.with_method(class_id, method_id)
    }
}
