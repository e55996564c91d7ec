//! The message store on a simulated disk (`disk::sim`): randomised runs of
//! publish / confirm / ack / fault / crash / recover, seeded so a failure
//! replays. After every crash, every confirmed message that was not acked
//! must come back intact, and no message whose ack was durable may come back.
//!
//! The simulated crash keeps only what was fsynced (and, with tearing, a
//! random prefix of the rest), unlike a SIGKILL, which keeps the page
//! cache: these tests fail if an fsync is removed or misplaced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::disk::sim::{Op, SimDisk};
use super::record::{self, Next, Record};
use super::{MessageStore, Recovered, StoreOptions};
use crate::message::Message;

const QUEUES: [&str; 3] = ["q0", "q1", "q2"];

/// What the test knows of one message in one queue.
#[derive(Debug, Clone)]
struct Held {
    /// Sequence number its enqueue must reach to be confirmed (0: known on disk).
    enq_seq: u64,
    /// Sequence number of its ack, once acked.
    ack_seq: Option<u64>,
}

/// What the model knows: each queue's messages, by (queue, id).
type Model = BTreeMap<(usize, u64), Held>;

/// A tiny deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn body_of(id: u64) -> Vec<u8> {
    let len = 8 + (id * 37 % 300) as usize;
    let mut b = Vec::with_capacity(len);
    while b.len() < len {
        b.extend_from_slice(&id.to_be_bytes());
    }
    b.truncate(len);
    b
}

fn header(size: usize) -> Vec<u8> {
    crate::message::content_header(&Default::default(), size as u64).expect("header")
}

struct Run {
    disk: SimDisk,
    dir: PathBuf,
    fatal: Arc<AtomicBool>,
}

impl Run {
    /// A fresh simulated disk whose torn writes are decided by `seed`.
    fn new(seed: u64) -> Run {
        Run {
            disk: SimDisk::new(seed),
            dir: PathBuf::from("/sim/messages"),
            fatal: Arc::new(AtomicBool::new(false)),
        }
    }

    fn open(&self) -> (Arc<MessageStore>, Recovered) {
        let fatal = self.fatal.clone();
        fatal.store(false, Ordering::SeqCst);
        MessageStore::open_on(
            Arc::new(self.disk.clone()),
            &self.dir,
            StoreOptions {
                fsync: true,
                on_fatal: Box::new(move |_| fatal.store(true, Ordering::SeqCst)),
                retry_delay: Duration::from_millis(1),
                segment_max: 4096,
                compact_interval: Duration::from_millis(1),
            },
        )
        .expect("open the store on the simulated disk")
    }
}

/// Checks what recovery found against the model, then makes the model what
/// the queues now hold. `durable`: the store's durable sequence before the crash.
fn check_recovery(
    seed: u64,
    round: usize,
    store: &MessageStore,
    recovered: &Recovered,
    model: &mut Model,
    durable: u64,
) {
    let mut found: BTreeSet<(usize, u64)> = BTreeSet::new();
    for (key, msgs) in recovered {
        let q = QUEUES
            .iter()
            .position(|n| *n == key.queue)
            .unwrap_or_else(|| panic!("seed {seed} round {round}: unknown queue {key:?}"));
        for m in msgs {
            assert!(
                found.insert((q, m.id)),
                "seed {seed} round {round}: message {} recovered twice for {}",
                m.id,
                key.queue
            );
            let held = model.get(&(q, m.id)).unwrap_or_else(|| {
                panic!(
                    "seed {seed} round {round}: message {} recovered for {} was never published there",
                    m.id, key.queue
                )
            });
            if let Some(a) = held.ack_seq {
                assert!(
                    a > durable,
                    "seed {seed} round {round}: message {} came back to {} although its ack was durable (ack seq {a} <= {durable})",
                    m.id,
                    key.queue
                );
            }
            // The record reads back intact, with the right body.
            let bytes = store
                .read_span(m.loc.seg, m.loc.offset, m.loc.len as usize)
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: read {}: {e}", m.id));
            match record::next(&bytes) {
                Next::Record(Record::Enqueue { id, body, .. }, _) => {
                    assert_eq!(id, m.id, "seed {seed}");
                    assert_eq!(&body[..], &body_of(id)[..], "seed {seed}: body of {id}");
                }
                other => panic!("seed {seed} round {round}: record of {} is {other:?}", m.id),
            }
        }
    }
    for (&(q, id), held) in model.iter() {
        // A message the client acked may come back or not (its ack may not
        // have reached the disk; the segment holding it may already be
        // gone): at-least-once. One confirmed and never acked must.
        let confirmed = held.enq_seq <= durable;
        if confirmed && held.ack_seq.is_none() {
            assert!(
                found.contains(&(q, id)),
                "seed {seed} round {round}: confirmed message {id} of {} was lost (enqueue seq {} <= durable {durable})",
                QUEUES[q],
                held.enq_seq
            );
        }
    }
    // What came back is what the queues hold now, on disk, not yet acked.
    model.retain(|k, _| found.contains(k));
    for h in model.values_mut() {
        h.enq_seq = 0;
        h.ack_seq = None;
    }
}

/// One seeded run: `rounds` lives of the store, each ended by a crash.
fn run_seed(seed: u64, rounds: usize, ops: usize) {
    let mut rng = Rng(seed);
    let run = Run::new(seed);
    let mut model = Model::new();
    let mut durable_before_crash = 0u64;
    for round in 0..=rounds {
        let (store, recovered) = run.open();
        check_recovery(
            seed,
            round,
            &store,
            &recovered,
            &mut model,
            durable_before_crash,
        );
        if round == rounds {
            store.close();
            break;
        }
        for _ in 0..ops {
            if run.fatal.load(Ordering::SeqCst) {
                break; // the process would have aborted: crash now
            }
            random_op(&mut rng, &run, &store, &mut model);
        }
        // Let the writer catch up sometimes, sometimes not at all.
        if rng.chance(50) {
            std::thread::sleep(Duration::from_millis(2));
        }
        durable_before_crash = store.durable_seq();
        run.disk.crash(rng.chance(70));
        store.close();
        drop(store);
        run.disk.restart();
    }
}

/// One random operation on the store (publish, ack, delivery, a wait or a
/// fault), mirrored in the model.
fn random_op(rng: &mut Rng, run: &Run, store: &MessageStore, model: &mut Model) {
    match rng.below(100) {
        // Publish to one or two queues.
        0..=49 => publish(rng, store, model),
        // Ack a few held messages of one queue.
        50..=79 => ack_some(rng, store, model),
        // Record deliveries.
        80..=84 => {
            let q = rng.below(3) as usize;
            let ids: Vec<u64> = model
                .keys()
                .filter(|(mq, _)| *mq == q)
                .take(3)
                .map(|(_, id)| *id)
                .collect();
            store.delivered("/", QUEUES[q], &ids);
        }
        // Wait a moment for the writer (a confirm round trip).
        85..=92 => std::thread::sleep(Duration::from_micros(rng.below(300))),
        // Faults.
        _ => inject_fault(rng, &run.disk),
    }
}

/// Publishes a message to one or two queues.
fn publish(rng: &mut Rng, store: &MessageStore, model: &mut Model) {
    let a = rng.below(3) as usize;
    let b = (a + 1 + rng.below(2) as usize) % 3;
    let qs: Vec<usize> = if rng.chance(30) { vec![a, b] } else { vec![a] };
    let names: Vec<(&str, &str)> = qs.iter().map(|&q| ("/", QUEUES[q])).collect();
    // The id is taken inside enqueue; the body is derived
    // from it, so peek at the next id first.
    let id = store.pending.lock().next_id;
    let body = body_of(id);
    let msg = Message::new(b"", b"rk", &header(body.len()), Bytes::from(body));
    let (got, seq) = store.enqueue(&names, &msg);
    assert_eq!(got, id);
    for q in qs {
        model.insert(
            (q, id),
            Held {
                enq_seq: seq,
                ack_seq: None,
            },
        );
    }
}

/// Acks a few held messages of one queue.
fn ack_some(rng: &mut Rng, store: &MessageStore, model: &mut Model) {
    let q = rng.below(3) as usize;
    let held: Vec<u64> = model
        .iter()
        .filter(|((mq, _), h)| *mq == q && h.ack_seq.is_none())
        .map(|((_, id), _)| *id)
        .collect();
    if held.is_empty() {
        return;
    }
    let n = 1 + rng.below(4) as usize;
    let ids: Vec<u64> = (0..n)
        .map(|_| held[rng.below(held.len() as u64) as usize])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let seq = store.ack("/", QUEUES[q], &ids);
    for id in ids {
        if let Some(h) = model.get_mut(&(q, id)) {
            h.ack_seq = Some(seq);
        }
    }
}

/// Makes the next one or two of some disk operation fail.
fn inject_fault(rng: &mut Rng, disk: &SimDisk) {
    match rng.below(6) {
        0 => disk.fail(Op::Write, 1 + rng.below(2) as u32),
        1 => disk.fail(Op::Create, 1),
        2 => disk.fail(Op::Remove, 1),
        3 => disk.fail(Op::SyncDir, 1),
        4 if rng.chance(20) => disk.fail(Op::Sync, 1),
        _ => disk.fail(Op::Truncate, 1),
    }
}

#[test]
fn after_every_crash_every_confirmed_message_comes_back_and_no_acked_one_does() {
    let seeds: u64 = std::env::var("WARREN_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let base: u64 = std::env::var("WARREN_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED);
    for seed in base..base + seeds {
        let r = std::panic::catch_unwind(|| run_seed(seed, 4, 400));
        if r.is_err() {
            panic!(
                "simulated-disk run failed; replay with WARREN_SIM_SEED={seed} WARREN_SIM_SEEDS=1"
            );
        }
    }
}

#[test]
fn a_failed_write_is_cut_back_and_retried_without_leaving_a_partial_copy() {
    let run = Run::new(7);
    let (store, _) = run.open();
    run.disk.fail(Op::Write, 3);
    let body = body_of(1);
    let msg = Message::new(b"", b"rk", &header(body.len()), Bytes::from(body));
    let (id, seq) = store.enqueue(&[("/", "q0")], &msg);
    let mut rx = store.subscribe();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while *rx.borrow_and_update() < seq {
        assert!(std::time::Instant::now() < deadline, "never confirmed");
        std::thread::sleep(Duration::from_millis(1));
    }
    store.close();
    drop(store);
    // Every byte on disk is a whole record: nothing torn, nothing doubled.
    let mut records = 0;
    for name in super::disk::Disk::list(&run.disk, Path::new("/sim/messages")).unwrap() {
        let data = Bytes::from(super::disk::Disk::read(&run.disk, &run.dir.join(&name)).unwrap());
        let mut at = 0;
        loop {
            match record::next(&data.slice(at..)) {
                Next::End => break,
                Next::Record(Record::Enqueue { id: got, .. }, n) => {
                    assert_eq!(got, id);
                    records += 1;
                    at += n;
                }
                other => panic!("unexpected {other:?} at {at} in {name}"),
            }
        }
    }
    assert_eq!(records, 1);
}

#[test]
fn an_fsync_failure_stops_confirming_and_is_reported_as_fatal() {
    let run = Run::new(9);
    let (store, _) = run.open();
    run.disk.fail(Op::Sync, 1);
    let body = body_of(1);
    let msg = Message::new(b"", b"rk", &header(body.len()), Bytes::from(body));
    let (_, seq) = store.enqueue(&[("/", "q0")], &msg);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !run.fatal.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "no fatal report");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(store.has_failed());
    assert!(store.durable_seq() < seq, "an unsynced write was confirmed");
    // A later write is not confirmed either: the writer stopped.
    let (_, seq2) = store.enqueue(&[("/", "q0")], &msg);
    std::thread::sleep(Duration::from_millis(50));
    assert!(store.durable_seq() < seq2);
}

#[test]
fn when_the_next_segment_cannot_be_created_writes_go_on_in_the_current_one() {
    let run = Run::new(11);
    let (store, _) = run.open();
    run.disk.fail(Op::Create, 1000);
    let mut last = 0;
    let mut ids = Vec::new();
    for i in 0..100u64 {
        let body = body_of(i);
        let msg = Message::new(b"", b"rk", &header(body.len()), Bytes::from(body));
        let (id, seq) = store.enqueue(&[("/", "q0")], &msg);
        ids.push(id);
        last = seq;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.durable_seq() < last {
        assert!(std::time::Instant::now() < deadline, "never confirmed");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Ack everything and let reclaim run: nothing confirmed and live may be
    // deleted by it, and after a crash all 100 come back.
    let half: Vec<u64> = ids[..50].to_vec();
    let ack = store.ack("/", "q0", &half);
    while store.durable_seq() < ack {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(150));
    run.disk.crash(false);
    store.close();
    drop(store);
    run.disk.restart();
    let (_, recovered) = run.open();
    let back: Vec<u64> = recovered
        .values()
        .flat_map(|v| v.iter().map(|m| m.id))
        .collect();
    assert_eq!(back, ids[50..].to_vec());
}

#[test]
fn one_message_never_acked_does_not_pin_the_segments_written_after_it() {
    let run = Run::new(13);
    let (store, _) = run.open();
    let publish = |q: &str, i: u64| {
        let body = body_of(i);
        let msg = Message::new(b"", b"rk", &header(body.len()), Bytes::from(body));
        store.enqueue(&[("/", q)], &msg)
    };
    let (pinned, _) = publish("q0", 0);
    // 4 MiB through another queue, acked as it goes: ~1000 segments of 4 KiB.
    let mut written = 0u64;
    let mut i = 1;
    let mut last = 0;
    while written < 4 << 20 {
        let (id, _) = publish("q1", i);
        written += body_of(i).len() as u64;
        last = store.ack("/", "q1", &[id]);
        i += 1;
    }
    // Returns the store sequence of the last ack it wrote (0: none).
    let wait_small = |what: &str, store: &MessageStore| -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut acked = 0;
        loop {
            let bytes = run.disk.total_bytes();
            if bytes <= 5 * 4096 {
                return acked;
            }
            // The segment before the current one is never compacted; on a
            // loaded machine the last group commit can be one large
            // segment, so traffic goes on (as it would) to move past it.
            let (id, _) = publish_to(store, "q1", 0);
            acked = store.ack("/", "q1", &[id]);
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {bytes} bytes still on disk; {}",
                store.debug_segments()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    last = last.max(wait_small("while the message is held", &store));
    // After a crash (once every ack is on disk) the pinned message is
    // still there, once, and nothing else is.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.durable_seq() < last {
        assert!(std::time::Instant::now() < deadline, "acks never synced");
        std::thread::sleep(Duration::from_millis(1));
    }
    run.disk.crash(false);
    store.close();
    drop(store);
    run.disk.restart();
    let (store, recovered) = run.open();
    let back: Vec<u64> = recovered
        .values()
        .flat_map(|v| v.iter().map(|m| m.id))
        .collect();
    assert_eq!(back, vec![pinned]);
    // Acked at last, everything goes.
    store.ack("/", "q0", &[pinned]);
    wait_small("after the ack", &store);
    store.close();
}

/// Waits up to 30 s for the store's durable sequence to reach `seq`.
fn wait_durable(store: &MessageStore, seq: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.durable_seq() < seq {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: durable {} < {seq}",
            store.durable_seq()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Publishes message `i` to `queue`; returns (id, confirm seq).
fn publish_to(store: &MessageStore, queue: &str, i: u64) -> (u64, u64) {
    let body = body_of(i);
    let msg = Message::new(b"", b"rk", &header(body.len()), Bytes::from(body));
    store.enqueue(&[("/", queue)], &msg)
}

/// The ids recovered for `queue`, in order.
fn recovered_ids(recovered: &Recovered, queue: &str) -> Vec<u64> {
    recovered
        .iter()
        .filter(|(k, _)| k.queue == queue)
        .flat_map(|(_, v)| v.iter().map(|m| m.id))
        .collect()
}

#[test]
fn while_the_disk_is_full_nothing_is_confirmed_and_once_space_returns_the_store_goes_on_by_itself()
{
    let run = Run::new(21);
    let (store, _) = run.open();
    let mut confirmed = Vec::new();
    let mut last = 0;
    for i in 0..20 {
        let (id, seq) = publish_to(&store, "q0", i);
        confirmed.push(id);
        last = seq;
    }
    wait_durable(&store, last, "before the disk fills");
    // Another program fills the disk.
    run.disk.set_full(true);
    let mut waiting = Vec::new();
    for i in 20..40 {
        let (id, seq) = publish_to(&store, "q0", i);
        waiting.push(id);
        last = seq;
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        store.durable_seq() < last,
        "confirmed while every write fails"
    );
    // Space comes back: the writer's retries go through, no restart.
    run.disk.set_full(false);
    wait_durable(&store, last, "after space returned");
    assert!(
        !run.fatal.load(Ordering::SeqCst),
        "a full disk is not fatal"
    );
    confirmed.extend(waiting);
    // Everything confirmed is on disk, once: a crash loses none of it.
    run.disk.crash(false);
    store.close();
    drop(store);
    run.disk.restart();
    let (store, recovered) = run.open();
    assert_eq!(recovered_ids(&recovered, "q0"), confirmed);
    store.close();
}

#[test]
fn a_disk_filled_by_the_store_itself_frees_acked_segments_and_confirms_again_without_a_restart() {
    let run = Run::new(22);
    let (store, _) = run.open();
    // A few messages that stay (q0), and a backlog that will be acked (q1).
    let mut kept = Vec::new();
    let mut backlog = Vec::new();
    let mut last = 0;
    for i in 0..10 {
        let (id, seq) = publish_to(&store, "q0", i);
        kept.push(id);
        last = seq;
    }
    wait_durable(&store, last, "the kept messages");
    // The backlog arrives over time (a write every ten messages), so it
    // fills segments of its own. (Acked messages that share a segment
    // with live ones can only be freed by writing copies of the live ones,
    // which a disk with no room at all cannot take; the disk alarm keeps a
    // margin for that in a running broker.)
    for i in 10..400 {
        let (id, seq) = publish_to(&store, "q1", i);
        backlog.push(id);
        last = seq;
        if i % 10 == 9 {
            wait_durable(&store, last, "the backlog");
        }
    }
    wait_durable(&store, last, "before the disk fills");
    // The disk has room for 4 KiB more, and the publishers go on.
    let cap = run.disk.total_bytes() + 4096;
    run.disk.set_capacity(Some(cap));
    let mut waiting = Vec::new();
    for i in 400..600 {
        let (id, seq) = publish_to(&store, "q2", i);
        waiting.push(id);
        last = seq;
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        store.durable_seq() < last,
        "confirmed beyond the disk's capacity"
    );
    assert!(run.disk.total_bytes() <= cap);
    // Consumers ack the backlog: its segments are deleted while the writer
    // is still failing, which makes the room for the waiting messages.
    let ack = store.ack("/", "q1", &backlog);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.durable_seq() < last.max(ack) {
        assert!(
            std::time::Instant::now() < deadline,
            "after the backlog was acked: durable {} < {}; {}",
            store.durable_seq(),
            last.max(ack),
            store.debug_segments()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(run.disk.total_bytes() <= cap, "over capacity");
    assert!(
        !run.fatal.load(Ordering::SeqCst),
        "a full disk is not fatal"
    );
    // Nothing confirmed was lost, and the acked backlog stays gone.
    run.disk.crash(false);
    store.close();
    drop(store);
    run.disk.restart();
    let (store, recovered) = run.open();
    assert_eq!(recovered_ids(&recovered, "q0"), kept);
    assert_eq!(recovered_ids(&recovered, "q2"), waiting);
    assert_eq!(recovered_ids(&recovered, "q1"), Vec::<u64>::new());
    store.close();
}

#[test]
fn a_returned_messages_count_and_held_state_survive_compaction_and_crashes() {
    let run = Run::new(17);
    let (store, _) = run.open();
    let (pinned, _) = publish_to(&store, "q0", 0);
    store.returned("/", "q0", &[pinned]);
    store.returned("/", "q0", &[pinned]);
    store.discarded("/", "q0", &[(pinned, 3)]);
    // 4 MiB through another queue, acked as it goes: compaction copies the
    // returned message forward and the segments holding its records go.
    let mut written = 0u64;
    let mut i = 1;
    let mut last = 0;
    while written < 4 << 20 {
        let (id, _) = publish_to(&store, "q1", i);
        written += body_of(i).len() as u64;
        last = store.ack("/", "q1", &[id]);
        i += 1;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while run.disk.total_bytes() > 5 * 4096 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} bytes still on disk; {}",
            run.disk.total_bytes(),
            store.debug_segments()
        );
        // Traffic goes on, so that the segment before the current one (never
        // compacted) is not the returned message's for good.
        let (id, _) = publish_to(&store, "q1", 0);
        last = store.ack("/", "q1", &[id]);
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_durable(&store, last, "the acks");
    let returns_of = |recovered: &Recovered| -> Vec<(u64, u32, bool, Option<u8>)> {
        recovered
            .values()
            .flat_map(|v| {
                v.iter()
                    .map(|m| (m.id, m.returns, m.delivered, m.discarded))
            })
            .collect()
    };
    run.disk.crash(false);
    store.close();
    drop(store);
    run.disk.restart();
    let (store, recovered) = run.open();
    assert_eq!(returns_of(&recovered), vec![(pinned, 2, true, Some(3))]);

    // Once more after the restart, then another crash.
    let seq = store.returned("/", "q0", &[pinned]);
    wait_durable(&store, seq, "the third return");
    run.disk.crash(false);
    store.close();
    drop(store);
    run.disk.restart();
    let (store, recovered) = run.open();
    assert_eq!(returns_of(&recovered), vec![(pinned, 3, true, Some(3))]);
    store.close();
}
