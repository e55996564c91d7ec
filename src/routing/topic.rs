//! Topic exchange routing: owns the word trie that maps a routing key to the
//! destinations whose binding patterns match it.
//!
//! Semantics follow RabbitMQ (`rabbit_db_topic_exchange:split_topic_key/1`):
//!
//! * Keys and patterns are split on `.` into words. The empty string is
//!   *zero* words; any other string has one more word than it has dots, so
//!   `"a..b"` is `["a", "", "b"]` and `"a."` is `["a", ""]`.
//! * In a pattern, the word `*` matches exactly one word (which may be empty)
//!   and `#` matches zero or more words. In a routing key `*` and `#` are
//!   ordinary words.
//! * So pattern `""` matches only key `""`, `#` matches every key including
//!   `""`, and `*` never matches `""` (zero words).
//!
//! The trie is keyed by pattern words, so the cost of routing grows with the
//! depth of the key and the shape of the wildcards, not with the number of
//! bindings (the NATS sublist is the model). Matching walks the trie once,
//! carrying at each node the *set* of key positions that can be there (a
//! bitset). Each node is therefore visited at most once per routed key, which
//! rules out the exponential blow-up that naive backtracking suffers on
//! patterns such as `#.#.#.#.a`, and means every matching (pattern, dest)
//! binding is reported exactly once.

use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use std::hash::Hash;

/// Keys of up to this many words (nearly all of them) are matched without
/// touching the heap, with one `u64` of positions per trie node; longer
/// ones (an AMQP shortstr key has at most 256 words) take a heap path.
/// Small on purpose: the word array is set up for every routed message.
const INLINE_WORDS: usize = 16;

/// `u64` blocks in a position bitset for an inline key: positions run from 0
/// (before the first word) to `INLINE_WORDS` (after the last) inclusive.
const INLINE_BLOCKS: usize = (INLINE_WORDS + 1).div_ceil(64);

/// A set of topic bindings, each a (pattern, destination) pair.
#[derive(Debug, Clone)]
pub struct TopicTrie<D> {
    root: Node<D>,
    len: usize,
}

/// One trie node: the pattern prefix spelled by the path from the root.
#[derive(Debug, Clone)]
struct Node<D> {
    /// Children reached by a literal word (never `*` or `#`).
    literal: HashMap<Box<str>, Node<D>>,
    /// Child reached by `*`. Wildcards get their own slots so matching never
    /// has to look them up by string.
    star: Option<Box<Node<D>>>,
    /// Child reached by `#`.
    hash: Option<Box<Node<D>>>,
    /// Destinations whose pattern ends exactly at this node.
    dests: HashSet<D>,
}

impl<D> Default for Node<D> {
    // Written by hand: `derive` would demand `D: Default` for no reason.
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            star: None,
            hash: None,
            dests: HashSet::new(),
        }
    }
}

impl<D> Default for TopicTrie<D> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

/// The words of a key or pattern, per RabbitMQ: `""` has none.
fn words(s: &str) -> impl Iterator<Item = &str> {
    (!s.is_empty()).then(|| s.split('.')).into_iter().flatten()
}

impl<D: Clone + Eq + Hash> TopicTrie<D> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a binding; returns false if this (pattern, dest) pair was already bound.
    pub fn insert(&mut self, pattern: &str, dest: D) -> bool {
        let mut node = &mut self.root;
        for word in words(pattern) {
            node = node.child_or_insert(word);
        }
        let added = node.dests.insert(dest);
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes a binding; returns false if it was not there. Prunes empty nodes.
    pub fn remove(&mut self, pattern: &str, dest: &D) -> bool {
        let removed = self.root.remove(words(pattern), dest);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` once for each destination whose pattern matches `key`.
    ///
    /// A destination bound with several matching patterns is reported once
    /// per such pattern: the caller de-duplicates. Each single (pattern,
    /// dest) binding is reported at most once.
    pub fn for_each_match(&self, key: &str, mut f: impl FnMut(&D)) {
        // Index the words on the stack so the walk can look at any position;
        // `split` alone only goes forward.
        let mut inline = [""; INLINE_WORDS];
        let mut count = 0;
        for word in words(key) {
            if count == INLINE_WORDS {
                self.for_each_match_long(key, &mut f);
                return;
            }
            inline[count] = word;
            count += 1;
        }
        let mut start = [0u64; INLINE_BLOCKS];
        set_bit(&mut start, 0);
        self.root.collect(&inline[..count], &start, &mut f);
    }

    /// The heap-backed path for keys longer than any AMQP routing key.
    #[cold]
    fn for_each_match_long(&self, key: &str, f: &mut impl FnMut(&D)) {
        let all: Vec<&str> = words(key).collect();
        let mut start = vec![0u64; (all.len() + 1).div_ceil(64)];
        set_bit(&mut start, 0);
        self.root.collect(&all, &start, f);
    }

    /// Number of (pattern, dest) bindings.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<D: Eq + Hash> Node<D> {
    fn is_empty(&self) -> bool {
        self.dests.is_empty()
            && self.literal.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    fn child_or_insert(&mut self, word: &str) -> &mut Node<D> {
        match word {
            "*" => self.star.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.literal.entry(word.into()).or_default(),
        }
    }

    /// Removes `dest` at the end of `rest`, dropping children left empty.
    /// Recursion depth is the pattern's word count (at most 256 for a
    /// shortstr binding key).
    fn remove<'a>(&mut self, mut rest: impl Iterator<Item = &'a str>, dest: &D) -> bool {
        let Some(word) = rest.next() else {
            return self.dests.remove(dest);
        };
        match word {
            "*" | "#" => {
                let slot = if word == "*" {
                    &mut self.star
                } else {
                    &mut self.hash
                };
                let Some(child) = slot.as_deref_mut() else {
                    return false;
                };
                let removed = child.remove(rest, dest);
                if removed && child.is_empty() {
                    *slot = None;
                }
                removed
            }
            _ => {
                let Some(child) = self.literal.get_mut(word) else {
                    return false;
                };
                let removed = child.remove(rest, dest);
                if removed && child.is_empty() {
                    self.literal.remove(word);
                }
                removed
            }
        }
    }

    /// Reports the bindings at and below this node that match `key`, given
    /// `here`: the set of positions in `key` (0 = before the first word,
    /// `key.len()` = after the last) at which this node's prefix can end.
    ///
    /// `here` is never empty. Each child is entered at most once, with the
    /// union of the positions it can be reached at, so a node's work is
    /// bounded by the key length whatever the wildcards above it.
    fn collect<B, F>(&self, key: &[&str], here: &B, f: &mut F)
    where
        B: AsRef<[u64]> + AsMut<[u64]> + Clone,
        F: FnMut(&D),
    {
        let end = key.len();
        let bits = here.as_ref();
        if has_bit(bits, end) {
            self.dests.iter().for_each(&mut *f);
        }

        if let Some(star) = &self.star {
            // `*` consumes exactly one word from any position short of the end.
            let mut next = empty_like(here);
            for p in positions(bits).take_while(|&p| p < end) {
                set_bit(next.as_mut(), p + 1);
            }
            if !is_empty(next.as_ref()) {
                star.collect(key, &next, f);
            }
        }

        if let Some(hash) = &self.hash {
            // `#` consumes zero or more words, so from the earliest position
            // every later one is reachable: the union is one range.
            if let Some(lo) = positions(bits).next() {
                let mut next = empty_like(here);
                for q in lo..=end {
                    set_bit(next.as_mut(), q);
                }
                hash.collect(key, &next, f);
            }
        }

        if !self.literal.is_empty() {
            // Group positions by the word found there, so that a child whose
            // word occurs several times is entered once with all of them. The
            // hash lookup per position keeps this independent of how many
            // literal children the node has.
            let mut done = empty_like(here);
            for p in positions(bits) {
                if p >= end || has_bit(done.as_ref(), p) {
                    continue;
                }
                let word = key[p];
                let Some(child) = self.literal.get(word) else {
                    continue;
                };
                let mut next = empty_like(here);
                for q in positions(bits).skip_while(|&q| q < p) {
                    if q < end && key[q] == word {
                        set_bit(done.as_mut(), q);
                        set_bit(next.as_mut(), q + 1);
                    }
                }
                child.collect(key, &next, f);
            }
        }
    }
}

// --- position bitsets -------------------------------------------------------
// Plain functions over `[u64]` so the same walk runs on a stack array for
// AMQP-sized keys and on a `Vec` for anything longer.

fn empty_like<B: AsMut<[u64]> + Clone>(template: &B) -> B {
    let mut fresh = template.clone();
    fresh.as_mut().fill(0);
    fresh
}

fn set_bit(bits: &mut [u64], i: usize) {
    if let Some(block) = bits.get_mut(i / 64) {
        *block |= 1 << (i % 64);
    }
}

fn has_bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64)
        .is_some_and(|block| block & (1 << (i % 64)) != 0)
}

fn is_empty(bits: &[u64]) -> bool {
    bits.iter().all(|&block| block == 0)
}

/// The set positions, in ascending order.
fn positions(bits: &[u64]) -> impl Iterator<Item = usize> + '_ {
    bits.iter().enumerate().flat_map(|(i, &block)| {
        let mut rest = block;
        std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let bit = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            Some(i * 64 + bit)
        })
    })
}

/// Reference matcher: does `pattern` match `key`?
///
/// A direct transcription of the semantics in the module docs, by
/// backtracking over word slices. It allocates and is exponential in the
/// number of `#`s, so it is not for routing: it is the oracle the trie is
/// tested against.
pub fn naive_match(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| go(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && go(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && go(rest, &key[1..]),
        }
    }
    let pattern: Vec<&str> = words(pattern).collect();
    let key: Vec<&str> = words(key).collect();
    go(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches_of(trie: &TopicTrie<u32>, key: &str) -> Vec<u32> {
        let mut found = Vec::new();
        trie.for_each_match(key, |d| found.push(*d));
        found.sort_unstable();
        found
    }

    fn trie_matches(pattern: &str, key: &str) -> bool {
        let mut trie = TopicTrie::new();
        trie.insert(pattern, 0u32);
        !matches_of(&trie, key).is_empty()
    }

    const LONG_KEY: &str = "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z";

    /// (pattern, key, expected), checked against both matchers.
    const CASES: &[(&str, &str, bool)] = &[
        // Literals.
        ("a.b", "a.b", true),
        ("a.b", "a.c", false),
        ("a.b", "a.b.c", false),
        ("a.b.c", "a.b", false),
        ("a", "a", true),
        // The empty key is zero words.
        ("", "", true),
        ("", "a", false),
        ("a", "", false),
        ("*", "", false),
        ("#", "", true),
        ("#.#", "", true),
        // `*` is exactly one word, possibly empty.
        ("*", "a", true),
        ("*", "a.b", false),
        ("*", ".", false),
        ("*.*", "a", false),
        ("*.*", "a.b", true),
        ("*.*", "a.b.c", false),
        ("*.*", ".", true),
        ("a.*", "a.", true),
        ("a.*", "a", false),
        ("*.b", ".b", true),
        // `#` is zero or more words.
        ("#", "a", true),
        ("#", "a.b.c", true),
        ("#", ".", true),
        ("a.#", "a", true),
        ("a.#", "a.b", true),
        ("a.#", "a.b.c", true),
        ("a.#", "b", false),
        ("a.#", "b.a", false),
        ("#.a", "a", true),
        ("#.a", "b.a", true),
        ("#.a", "b.c.a", true),
        ("#.a", "a.b", false),
        ("a.#.b", "a.b", true),
        ("a.#.b", "a.x.y.b", true),
        ("a.#.b", "a.x.y.c", false),
        ("#.#", "a", true),
        ("#.#", "a.b.c", true),
        ("#.#.a", "a", true),
        ("#.a.#", "a", true),
        ("#.a.#", "x.a.y", true),
        ("#.a.#", "x.y", false),
        ("#.*", "", false),
        ("#.*", "a", true),
        ("*.#", "a.b.c", true),
        ("a.*.#", "a", false),
        ("a.*.#", "a.b", true),
        ("a.*.#", "a.b.c.d", true),
        ("a.#.*", "a", false),
        ("a.#.*", "a.b", true),
        // Empty words are words.
        ("a..b", "a..b", true),
        ("a..b", "a.b", false),
        ("a.*.b", "a..b", true),
        ("a.#.b", "a..b", true),
        ("a.", "a.", true),
        ("a.", "a", false),
        (".", ".", true),
        // Wildcards are only wildcards in patterns.
        ("a.b", "a.*", false),
        ("a.*", "a.*", true),
        ("a.#", "a.#", true),
        ("#", "#", true),
        ("a*", "ab", false),
        ("a#", "a#", true),
        // Long keys.
        ("#.z", LONG_KEY, true),
        ("a.#.m.#.z", LONG_KEY, true),
        ("a.#.m.#.y", LONG_KEY, false),
        ("*.*.*.*.*.*.*.*", "a.b.c.d.e.f.g.h", true),
        ("*.*.*.*.*.*.*.*", "a.b.c.d.e.f.g", false),
    ];

    #[test]
    fn table_cases_hold_for_the_reference_and_the_trie() {
        for &(pattern, key, expected) in CASES {
            let context = format!("pattern {pattern:?}, key {key:?}");
            assert_eq!(naive_match(pattern, key), expected, "naive: {context}");
            assert_eq!(trie_matches(pattern, key), expected, "trie: {context}");
        }
    }

    #[test]
    fn insert_reports_whether_the_binding_is_new() {
        let mut trie = TopicTrie::new();
        assert!(trie.is_empty());
        assert!(trie.insert("a.*", 1u32));
        assert!(!trie.insert("a.*", 1));
        assert!(trie.insert("a.*", 2));
        assert!(trie.insert("a.#", 1));
        assert!(trie.insert("", 1));
        assert_eq!(trie.len(), 4);
        assert!(!trie.is_empty());
    }

    #[test]
    fn remove_reports_whether_the_binding_was_there() {
        let mut trie = TopicTrie::new();
        trie.insert("a.*.c", 1u32);
        assert!(!trie.remove("a.*.c", &2));
        assert!(!trie.remove("a.*", &1));
        assert!(!trie.remove("a.*.c.d", &1));
        assert!(!trie.remove("a.#.c", &1));
        assert!(trie.remove("a.*.c", &1));
        assert!(!trie.remove("a.*.c", &1));
        assert!(trie.is_empty());
    }

    #[test]
    fn removing_the_last_binding_prunes_every_node() {
        let mut trie = TopicTrie::new();
        let patterns = ["a.b.c", "a.*.#", "#", "", "a..b", "#.#.x"];
        for p in patterns {
            trie.insert(p, 7u32);
        }
        trie.insert("a.b", 8);
        for p in patterns {
            assert!(trie.remove(p, &7));
        }
        // The shared prefix "a.b" must survive for the remaining binding.
        assert_eq!(matches_of(&trie, "a.b"), vec![8]);
        assert!(trie.remove("a.b", &8));
        assert!(trie.root.is_empty());
        assert!(trie.is_empty());
    }

    #[test]
    fn a_destination_is_reported_once_per_matching_pattern() {
        let mut trie = TopicTrie::new();
        trie.insert("#", 1u32);
        trie.insert("#.#", 1);
        trie.insert("a.#", 1);
        trie.insert("b.#", 1);
        trie.insert("#.#.#", 2);
        // Reachable along many paths, but one binding: one report.
        trie.insert("#.a.#", 3);
        assert_eq!(matches_of(&trie, "a.a.a"), vec![1, 1, 1, 2, 3]);
        assert_eq!(matches_of(&trie, ""), vec![1, 1, 2]);
    }

    #[test]
    fn many_hashes_against_a_long_key_finish_quickly() {
        // Backtracking would take C(200, 8) steps here; the trie walk visits
        // each node once.
        let mut trie = TopicTrie::new();
        trie.insert("#.#.#.#.#.#.#.#.a", 1u32);
        trie.insert("#.b.#.b.#.b.#.b.#.b.#.b.#.c", 2);
        trie.insert("#.b.#.b.#.b.#.b.#.b.#.b.#", 3);
        let key = vec!["b"; 200].join(".");
        assert_eq!(matches_of(&trie, &key), vec![3]);
        let key_a = format!("{key}.a");
        assert_eq!(matches_of(&trie, &key_a), vec![1, 3]);
    }

    #[test]
    fn keys_longer_than_any_amqp_routing_key_still_match() {
        let mut trie = TopicTrie::new();
        trie.insert("#.z", 1u32);
        trie.insert("a.#", 2);
        trie.insert("*.#.*", 3);
        trie.insert("#.a.#.z", 4);
        trie.insert("a.*", 5);
        let key = format!("{}.z", vec!["a"; 1000].join("."));
        assert_eq!(matches_of(&trie, &key), vec![1, 2, 3, 4]);
        let empties = ".".repeat(400);
        assert_eq!(matches_of(&trie, &empties), vec![3]);
    }

    #[test]
    fn a_key_of_exactly_the_inline_limit_uses_the_last_position() {
        let mut trie = TopicTrie::new();
        let key = vec!["w"; INLINE_WORDS].join(".");
        trie.insert(&key, 1u32);
        trie.insert("#.w", 2);
        assert_eq!(matches_of(&trie, &key), vec![1, 2]);
    }

    /// xorshift64*: enough randomness for a property test, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn phrase(&mut self, alphabet: &[&str], max_words: usize) -> String {
            let n = self.below(max_words + 1);
            let words: Vec<&str> = (0..n)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect();
            words.join(".")
        }
    }

    const PATTERN_WORDS: &[&str] = &["a", "b", "", "*", "#", "#"];
    const KEY_WORDS: &[&str] = &["a", "b", "c", "", "*", "#"];

    fn assert_agrees_with_reference(trie: &TopicTrie<u32>, bound: &[(String, u32)], key: &str) {
        let mut expected: Vec<u32> = bound
            .iter()
            .filter(|(p, _)| naive_match(p, key))
            .map(|&(_, d)| d)
            .collect();
        expected.sort_unstable();
        assert_eq!(
            matches_of(trie, key),
            expected,
            "key {key:?}, bindings {bound:?}"
        );
    }

    #[test]
    fn random_bindings_route_like_the_reference_matcher_before_and_after_removals() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _round in 0..300 {
            let mut trie = TopicTrie::new();
            let mut bound: Vec<(String, u32)> = Vec::new();
            for _ in 0..30 {
                let pattern = rng.phrase(PATTERN_WORDS, 5);
                let dest = rng.below(6) as u32;
                let fresh = !bound.iter().any(|(p, d)| *p == pattern && *d == dest);
                assert_eq!(trie.insert(&pattern, dest), fresh);
                if fresh {
                    bound.push((pattern, dest));
                }
            }
            assert_eq!(trie.len(), bound.len());
            for _ in 0..30 {
                let key = rng.phrase(KEY_WORDS, 7);
                assert_agrees_with_reference(&trie, &bound, &key);
            }

            // Remove about half, plus some bindings that were never there.
            for _ in 0..20 {
                if !bound.is_empty() && rng.below(3) > 0 {
                    let (pattern, dest) = bound.swap_remove(rng.below(bound.len()));
                    assert!(trie.remove(&pattern, &dest));
                    assert!(!trie.remove(&pattern, &dest));
                } else {
                    let pattern = rng.phrase(PATTERN_WORDS, 5);
                    let dest = rng.below(8) as u32;
                    let present = bound.iter().any(|(p, d)| *p == pattern && *d == dest);
                    assert_eq!(trie.remove(&pattern, &dest), present);
                    bound.retain(|(p, d)| !(*p == pattern && *d == dest));
                }
            }
            assert_eq!(trie.len(), bound.len());
            for _ in 0..30 {
                let key = rng.phrase(KEY_WORDS, 7);
                assert_agrees_with_reference(&trie, &bound, &key);
            }

            for (pattern, dest) in bound.drain(..) {
                assert!(trie.remove(&pattern, &dest));
            }
            assert!(trie.is_empty());
            assert!(trie.root.is_empty(), "removal left nodes behind");
        }
    }
}
