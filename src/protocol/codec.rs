//! The frame codec: splits the inbound byte stream into frames and writes
//! outbound frames.
//!
//! Frames are cut out of the read buffer as `Bytes` slices, so a body frame is
//! never copied on its way in. Method payloads are decoded by `amq-protocol`
//! (see `methods`), except the hot-path methods that are parsed by hand there.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::protocol::error::{AmqpError, code};

/// Frame type octets (spec 4.2.3).
pub const FRAME_METHOD: u8 = 1;
/// Content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Content body frame.
pub const FRAME_BODY: u8 = 3;
/// Heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// Every frame ends with this octet.
pub const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: type, channel, size and frame-end.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may negotiate, and the limit before tune.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The protocol header a client must send first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// One inbound frame; the payload is a zero-copy slice of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// Channel number.
        channel: u16,
        /// Class id, method id and arguments.
        payload: Bytes,
    },
    /// A content header frame.
    Header {
        /// Channel number.
        channel: u16,
        /// Class id, weight, body size and properties.
        payload: Bytes,
    },
    /// A content body frame.
    Body {
        /// Channel number.
        channel: u16,
        /// A slice of the message body.
        payload: Bytes,
    },
    /// A heartbeat frame.
    Heartbeat {
        /// Channel number (must be 0).
        channel: u16,
    },
}

/// The most `parse_frame` reserves ahead of bytes that have arrived.
const RESERVE_AHEAD: usize = 1 << 20;

/// Cuts the next complete frame off `buf`, if there is one.
///
/// The 7-byte frame header is checked against `frame_max` before any payload
/// is buffered, so a peer cannot make warren wait for (and buffer) a huge frame.
pub fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(AmqpError::connection(
            code::FRAME_ERROR,
            format!("unknown frame type {kind}"),
        ));
    }
    let limit = frame_max.saturating_sub(FRAME_OVERHEAD as u32);
    if frame_max != 0 && size > limit {
        return Err(AmqpError::connection(
            code::FRAME_ERROR,
            format!("frame size {size} larger than negotiated maximum payload {limit}"),
        ));
    }
    let total = 7 + size as usize + 1;
    if buf.len() < total {
        // Reserve for what is announced, but never more than RESERVE_AHEAD
        // at once: with frame_max = 0 (unlimited) a 7-byte header could
        // otherwise make warren allocate 4 GiB before any payload arrives.
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(AmqpError::connection(
            code::FRAME_ERROR,
            format!("invalid frame end octet {:#04x}", buf[total - 1]),
        ));
    }
    buf.advance(7);
    let payload = buf.split_to(size as usize).freeze();
    buf.advance(1);
    Ok(Some(match kind {
        FRAME_METHOD => Frame::Method { channel, payload },
        FRAME_HEADER => Frame::Header { channel, payload },
        FRAME_BODY => Frame::Body { channel, payload },
        _ => Frame::Heartbeat { channel },
    }))
}

/// Writes a frame header; the caller writes `size` payload bytes and then `FRAME_END`.
#[inline]
pub fn put_frame_header(out: &mut BytesMut, kind: u8, channel: u16, size: usize) {
    out.put_u8(kind);
    out.put_u16(channel);
    out.put_u32(size as u32);
}

/// Writes a complete frame with the given payload.
pub fn put_frame(out: &mut BytesMut, kind: u8, channel: u16, payload: &[u8]) {
    out.reserve(payload.len() + FRAME_OVERHEAD);
    put_frame_header(out, kind, channel, payload.len());
    out.put_slice(payload);
    out.put_u8(FRAME_END);
}

/// The heartbeat frame.
pub const HEARTBEAT: [u8; 8] = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];

/// Writes a short string (length octet + bytes); the caller guarantees len <= 255.
#[inline]
pub fn put_short_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u8(s.len() as u8);
    out.put_slice(s);
}

/// Reads a short string from a method payload cursor.
pub fn take_short_str(buf: &mut Bytes) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let len = buf[0] as usize;
    if buf.len() < 1 + len {
        return None;
    }
    buf.advance(1);
    Some(buf.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_frame_is_cut_without_copying() {
        let mut out = BytesMut::new();
        put_frame(&mut out, FRAME_BODY, 3, b"hello");
        put_frame(&mut out, FRAME_HEARTBEAT, 0, b"");
        let mut buf = out.clone();
        let f = parse_frame(&mut buf, 131072).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Body {
                channel: 3,
                payload: Bytes::from_static(b"hello")
            }
        );
        assert_eq!(
            parse_frame(&mut buf, 131072).unwrap(),
            Some(Frame::Heartbeat { channel: 0 })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_partial_frame_waits_for_more_bytes() {
        let mut out = BytesMut::new();
        put_frame(&mut out, FRAME_METHOD, 1, b"abcdef");
        for cut in 0..out.len() {
            let mut buf = BytesMut::from(&out[..cut]);
            assert_eq!(parse_frame(&mut buf, 131072).unwrap(), None);
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let mut buf = BytesMut::new();
        put_frame_header(&mut buf, FRAME_BODY, 1, 1 << 30);
        let err = parse_frame(&mut buf, 131072).unwrap_err();
        assert_eq!(err.code, code::FRAME_ERROR);
    }

    #[test]
    fn an_unlimited_frame_max_does_not_reserve_what_a_header_announces() {
        // Found by the `frames` fuzzer: with frame_max = 0 a header
        // announcing u32::MAX bytes made parse_frame reserve 4 GiB.
        let mut buf = BytesMut::new();
        put_frame_header(&mut buf, FRAME_BODY, 1, u32::MAX as usize);
        assert_eq!(parse_frame(&mut buf, 0).unwrap(), None);
        assert!(buf.capacity() <= 2 * RESERVE_AHEAD, "{}", buf.capacity());
    }

    #[test]
    fn a_bad_frame_end_is_a_frame_error() {
        let mut out = BytesMut::new();
        put_frame(&mut out, FRAME_BODY, 1, b"x");
        let n = out.len();
        out[n - 1] = 0;
        assert_eq!(
            parse_frame(&mut out, 131072).unwrap_err().code,
            code::FRAME_ERROR
        );
    }

    #[test]
    fn an_unknown_frame_type_is_a_frame_error() {
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(
            parse_frame(&mut buf, 131072).unwrap_err().code,
            code::FRAME_ERROR
        );
    }
}
