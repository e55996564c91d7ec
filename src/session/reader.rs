//! The connection's frame reader: buffered reads of whole frames, the
//! handshake's "next connection method", and the two ways a closing
//! connection reads what the client still sends (waiting for close-ok,
//! lingering until the client lets go of the socket).
//!
//! Owns: the read half of a client's socket. The frame loop and the
//! handshake read through it; nothing here writes except close-ok replies.

use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection as conn_m};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::codec::{FRAME_MIN_SIZE, Frame, parse_frame};
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::protocol::methods::{Method, decode, ids, write_method};
use crate::session::method_ids::{CONNECTION_CLOSE, CONNECTION_CLOSE_OK};
use crate::session::outbound::ConnectionHandle;

/// How long warren waits for connection.close-ok after sending connection.close.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);

/// connection.close-ok.
pub(super) fn close_ok_method() -> AMQPClass {
    AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(conn_m::CloseOk {}))
}

/// Buffered frame reader.
pub(super) struct Reader<R> {
    rd: R,
    buf: BytesMut,
    /// The negotiated frame_max (0: none); frames above it are errors.
    pub(super) frame_max: u32,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader for a connection still in its handshake (frames up to the
    /// spec's minimum frame_max).
    pub(super) fn new(rd: R) -> Reader<R> {
        Reader {
            rd,
            buf: BytesMut::with_capacity(64 * 1024),
            frame_max: FRAME_MIN_SIZE,
        }
    }

    /// Reads more bytes; returns false on end of stream or error.
    pub(super) async fn fill(&mut self) -> bool {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 * 1024);
        }
        matches!(self.rd.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }

    /// Parses the next frame already buffered, if complete.
    pub(super) fn next_buffered(&mut self) -> AmqpResult<Option<Frame>> {
        parse_frame(&mut self.buf, self.frame_max)
    }

    /// Reads the next frame, waiting for bytes as needed.
    pub(super) async fn next(&mut self) -> AmqpResult<Option<Frame>> {
        loop {
            if let Some(f) = self.next_buffered()? {
                return Ok(Some(f));
            }
            if !self.fill().await {
                return Ok(None);
            }
        }
    }

    /// After a close: reads and drops whatever arrives until the peer
    /// closes its side (or the socket fails), answering connection.close
    /// with close-ok.
    pub(super) async fn linger(&mut self, handle: &ConnectionHandle) {
        loop {
            match self.next().await {
                Ok(Some(Frame::Method {
                    channel: 0,
                    payload,
                })) if ids(&payload) == CONNECTION_CLOSE => {
                    handle.write(|out| write_method(out, 0, &close_ok_method()));
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => break,
            }
        }
        // Unparseable bytes: keep reading them away until the client closes.
        loop {
            self.buf.clear();
            if !self.fill().await {
                return;
            }
        }
    }

    /// After warren sent connection.close: reads until the client's
    /// close-ok, discarding everything else (spec 4.2.2), for at most
    /// `CLOSE_OK_TIMEOUT`. A connection.close crossing ours is answered with
    /// close-ok. Returns whether the socket is worth lingering on: not once
    /// the client sent close-ok (it sends nothing more; RabbitMQ closes at
    /// once too), nor when it is silent or gone.
    pub(super) async fn await_close_ok(&mut self, handle: &ConnectionHandle) -> bool {
        let wait = async {
            loop {
                match self.next().await {
                    Ok(Some(Frame::Method {
                        channel: 0,
                        payload,
                    })) if ids(&payload) == CONNECTION_CLOSE_OK => return false,
                    Ok(Some(Frame::Method {
                        channel: 0,
                        payload,
                    })) if ids(&payload) == CONNECTION_CLOSE => {
                        handle.write(|out| write_method(out, 0, &close_ok_method()));
                        return true;
                    }
                    Ok(Some(_)) => continue,
                    _ => return false,
                }
            }
        };
        tokio::time::timeout(CLOSE_OK_TIMEOUT, wait)
            .await
            .unwrap_or(false)
    }

    /// Reads the next method on channel 0 during the handshake.
    pub(super) async fn expect_method(&mut self) -> AmqpResult<Option<AMQPClass>> {
        loop {
            match self.next().await? {
                None => return Ok(None),
                Some(Frame::Heartbeat { .. }) => continue,
                Some(Frame::Method {
                    channel: 0,
                    payload,
                }) => {
                    return match decode(payload)? {
                        Method::Other(c) => Ok(Some(c)),
                        _ => Err(AmqpError::connection(
                            code::COMMAND_INVALID,
                            "expected a connection method during the handshake",
                        )),
                    };
                }
                Some(_) => {
                    return Err(AmqpError::connection(
                        code::UNEXPECTED_FRAME,
                        "expected a connection method on channel 0 during the handshake",
                    ));
                }
            }
        }
    }
}
