//! The inbound byte stream after the protocol header: frames are cut with
//! `codec::parse_frame`, method payloads decoded with `methods::decode`,
//! content headers checked by `table_guard` and parsed by
//! `message::parse_properties`. Nothing may panic, abort or hang.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren::codec::{Frame, parse_frame};

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose frame_max: 0 (unlimited), 4096 or 131072.
    let (frame_max, data) = match data.split_first() {
        Some((b, rest)) => (
            match b % 3 {
                0 => 0,
                1 => 4096,
                _ => 131072,
            },
            rest,
        ),
        None => return,
    };
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = parse_frame(&mut buf, frame_max) {
        match frame {
            Frame::Method { payload, .. } => {
                let _ = warren::methods::decode(payload);
            }
            Frame::Header { payload, .. } => {
                let _ = warren::table_guard::check_content_header(&payload);
                let _ = warren::message::parse_properties(&payload);
            }
            Frame::Body { .. } | Frame::Heartbeat { .. } => {}
        }
    }
});
