//! One frame payload, without the framing: decoded as a method (with the
//! table guard in front of amq-protocol's recursive decoder) and as a
//! content header. Nothing may panic, abort or overflow the stack.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = warren::table_guard::check_method(data);
    let _ = warren::methods::decode(Bytes::copy_from_slice(data));
    let _ = warren::table_guard::check_content_header(data);
    let _ = warren::message::parse_properties(data);
});
