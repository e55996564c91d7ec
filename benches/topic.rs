//! Topic matching per routing key, with 10, 1,000 and 10,000 wildcard
//! bindings shaped as `warrenperf topic` declares them (`perf.<b>.*`,
//! `perf.<b>.#`, `*.<b>.x`): the cost should not grow with the bindings.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use warren::routing::topic::TopicTrie;

fn pattern(b: usize) -> String {
    match b % 3 {
        0 => format!("perf.{b}.*"),
        1 => format!("perf.{b}.#"),
        _ => format!("*.{b}.x"),
    }
}

fn topic(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic_match");
    g.throughput(Throughput::Elements(1));
    for n in [10usize, 1_000, 10_000] {
        let mut trie = TopicTrie::new();
        for b in 0..n {
            trie.insert(&pattern(b), b as u32);
        }
        // Extra bindings every key matches or almost matches, as real setups have.
        trie.insert("#", u32::MAX);
        trie.insert("perf.#.y", u32::MAX - 1);
        let keys: Vec<String> = (0..n).map(|b| format!("perf.{b}.x")).collect();
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("bindings", n), &n, |bch, _| {
            bch.iter(|| {
                let mut hits = 0u32;
                trie.for_each_match(black_box(&keys[i]), |_| hits += 1);
                i = (i + 1) % keys.len();
                black_box(hits)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, topic);
criterion_main!(benches);
