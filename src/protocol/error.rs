//! AMQP errors: one place that builds reply codes and reply texts.
//!
//! Every failure a client can cause ends in a `channel.close` (soft errors) or a
//! `connection.close` (hard errors) carrying a reply code from the spec and a
//! text in RabbitMQ's style: `"NOT_FOUND - no queue 'orders' in vhost '/'"`.

use std::fmt;

/// AMQP reply codes used by warren (spec section 1.4 "Constants").
#[allow(missing_docs)]
pub mod code {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const NO_CONSUMERS: u16 = 313;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// The symbolic name of a reply code, as RabbitMQ prints it in reply texts.
pub fn code_name(reply_code: u16) -> &'static str {
    match reply_code {
        200 => "REPLY_SUCCESS",
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        541 => "INTERNAL_ERROR",
        _ => "UNKNOWN",
    }
}

/// Whether an error closes only the channel or the whole connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A soft error: `channel.close`.
    Channel,
    /// A hard error: `connection.close`.
    Connection,
}

/// A protocol error on its way to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// Reply code from the spec.
    pub code: u16,
    /// Full reply text, already prefixed with the code's name.
    pub text: String,
    /// Class of the method that caused the error (0 if none).
    pub class_id: u16,
    /// Method that caused the error (0 if none).
    pub method_id: u16,
    /// Channel or connection error.
    pub scope: Scope,
}

impl AmqpError {
    fn new(scope: Scope, code: u16, detail: impl fmt::Display) -> Self {
        let mut text = format!("{} - {}", code_name(code), detail);
        // A reply-text is a short string: at most 255 bytes, cut on a char boundary.
        if text.len() > 255 {
            let mut end = 255;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        AmqpError {
            code,
            text,
            class_id: 0,
            method_id: 0,
            scope,
        }
    }

    /// A channel-level (soft) error.
    pub fn channel(code: u16, detail: impl fmt::Display) -> Self {
        Self::new(Scope::Channel, code, detail)
    }

    /// A connection-level (hard) error.
    pub fn connection(code: u16, detail: impl fmt::Display) -> Self {
        Self::new(Scope::Connection, code, detail)
    }

    /// Records which method caused the error, unless one is already set.
    pub fn with_method(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// 404 NOT_FOUND for a missing queue.
    pub fn no_queue(name: &str, vhost: &str) -> Self {
        Self::channel(
            code::NOT_FOUND,
            format!("no queue '{name}' in vhost '{vhost}'"),
        )
    }

    /// 404 NOT_FOUND for a missing exchange.
    pub fn no_exchange(name: &str, vhost: &str) -> Self {
        Self::channel(
            code::NOT_FOUND,
            format!("no exchange '{name}' in vhost '{vhost}'"),
        )
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text, self.code)
    }
}

impl std::error::Error for AmqpError {}

/// Result of a handler that may fail with a protocol error.
pub type AmqpResult<T> = Result<T, AmqpError>;
