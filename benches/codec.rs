//! Frame decode and encode per message: what the broker does to every
//! 16-byte message on the way in (basic.publish + header + body frames cut
//! from the read buffer and decoded) and on the way out (basic.deliver +
//! header + body encoded into the outbound buffer).

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use warren::message::Message;
use warren::protocol::codec::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD, Frame, parse_frame, put_frame_header,
    put_short_str,
};
use warren::protocol::methods::{self, Method};
use warren::session::delivery::write_deliver;

const MESSAGES: usize = 1000;

/// A read buffer holding `n` publishes as a lean client sends them.
fn publishes(n: usize, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    for _ in 0..n {
        let rk = b"warrenperf";
        put_frame_header(&mut out, FRAME_METHOD, 1, 4 + 2 + 1 + 1 + rk.len() + 1);
        out.put_u16(60);
        out.put_u16(40);
        out.put_u16(0);
        put_short_str(&mut out, b"");
        put_short_str(&mut out, rk);
        out.put_u8(0);
        out.put_u8(FRAME_END);
        put_frame_header(&mut out, FRAME_HEADER, 1, 14);
        out.put_u16(60);
        out.put_u16(0);
        out.put_u64(body.len() as u64);
        out.put_u16(0);
        out.put_u8(FRAME_END);
        put_frame_header(&mut out, FRAME_BODY, 1, body.len());
        out.put_slice(body);
        out.put_u8(FRAME_END);
    }
    out
}

fn decode(c: &mut Criterion) {
    let input = publishes(MESSAGES, &[7u8; 16]);
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(MESSAGES as u64));
    g.bench_function("decode_publish_16B", |b| {
        b.iter_batched(
            || input.clone(),
            |mut buf| {
                let mut n = 0;
                while let Some(f) = parse_frame(&mut buf, 131072).expect("valid frames") {
                    match f {
                        Frame::Method { payload, .. } => {
                            if let Method::Publish(p) = methods::decode(payload).expect("publish") {
                                n += p.routing_key.len();
                            }
                        }
                        Frame::Header { payload, .. } | Frame::Body { payload, .. } => {
                            n += payload.len()
                        }
                        Frame::Heartbeat { .. } => {}
                    }
                }
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    let header: [u8; 14] = [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];
    let msg = Message::new(b"", b"warrenperf", &header, Bytes::from_static(&[7u8; 16]));
    let ctag = b"amq.ctag-0000000000000000000001";
    let mut out = BytesMut::with_capacity(MESSAGES * 128);
    g.bench_function("encode_deliver_16B", |b| {
        b.iter(|| {
            out.clear();
            for tag in 0..MESSAGES as u64 {
                write_deliver(
                    &mut out,
                    1,
                    ctag,
                    tag,
                    false,
                    msg.exchange(),
                    msg.routing_key(),
                );
                msg.write_content(&mut out, 1, 131072);
            }
            black_box(out.len())
        })
    });
    g.bench_function("message_new_16B", |b| {
        b.iter(|| {
            for _ in 0..MESSAGES {
                black_box(Message::new(
                    b"",
                    black_box(b"warrenperf"),
                    &header,
                    Bytes::from_static(&[7u8; 16]),
                ));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
