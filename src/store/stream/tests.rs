//! Stream log tests, mostly on the simulated disk (`disk::sim`), which
//! loses what was not synced at a crash and fails operations on command.
//! Every test checks entry contents (offset, timestamp, bytes), not just
//! counts.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::*;
use crate::store::disk::sim::{Op, SimDisk};
use crate::store::disk::{Disk, RealDisk};

struct Harness {
    disk: SimDisk,
    dir: PathBuf,
    /// What `on_fatal` was called with.
    fatal: Arc<Mutex<Vec<String>>>,
    /// Calls of `on_durable`.
    durable_calls: Arc<AtomicUsize>,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        Harness {
            disk: SimDisk::new(seed),
            dir: PathBuf::from("/warren-sim-no-such-dir/streams/s1"),
            fatal: Arc::default(),
            durable_calls: Arc::default(),
        }
    }

    fn options(&self, segment_max: u64) -> StreamOptions {
        let fatal = self.fatal.clone();
        StreamOptions {
            fsync: true,
            segment_max,
            max_bytes: None,
            max_age_ms: None,
            on_fatal: Box::new(move |e| fatal.lock().push(e.to_string())),
            retry_delay: Duration::from_millis(5),
            retention_interval: Duration::from_millis(20),
            tail_cache_bytes: 4 << 20,
        }
    }

    fn open(&self, opts: StreamOptions) -> Arc<StreamLog> {
        self.try_open(opts).expect("open the stream log")
    }

    fn try_open(&self, opts: StreamOptions) -> io::Result<Arc<StreamLog>> {
        let calls = self.durable_calls.clone();
        StreamLog::open(
            Arc::new(self.disk.clone()),
            self.dir.clone(),
            opts,
            Arc::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    /// The segment files on the disk, by first offset.
    fn files(&self) -> Vec<u64> {
        list_segments(&self.disk, &self.dir).expect("list")
    }

    /// Appends offsets 60..200 (with `append`) in seven runs without
    /// syncing, then crashes: the crash tears them at random places, in the
    /// segment being written and in the ones rolled to after it.
    fn append_torn(&self, append: fn(&StreamLog, u64, u64)) {
        let log = self.open(StreamOptions {
            fsync: false,
            ..self.options(1024)
        });
        for k in 0..7 {
            append(&log, 60 + 20 * k, 80 + 20 * k);
            wait_durable(&log, 80 + 20 * k);
        }
        self.disk.crash(true);
        log.close();
        self.disk.restart();
    }

    /// Makes the writer stall on a failing write of entry `offset`, so that
    /// what is appended next piles up and becomes one group commit.
    fn jam(&self, log: &StreamLog, offset: u64) {
        self.disk.set_full(true);
        append_range(log, offset, offset + 1);
        wait_until("the writer to take the jammed entry", || {
            log.backlog_bytes() == 0
        });
    }
}

/// The contents of entry `i` (varied lengths, distinct bytes).
fn body(i: u64) -> Vec<u8> {
    let len = 8 + (i * 7919 % 300) as usize;
    let mut b = i.to_be_bytes().to_vec();
    b.extend((0..len - 8).map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8)));
    b
}

fn ts_of(i: u64) -> u64 {
    1_000_000 + i * 10
}

fn append_range(log: &StreamLog, from: u64, upto: u64) {
    for i in from..upto {
        assert_eq!(log.append(&body(i), ts_of(i)), i, "offset of entry {i}");
    }
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_durable(log: &StreamLog, upto: u64) {
    wait_until(&format!("durable offset {upto}"), || {
        log.durable_offset() >= upto
    });
}

/// Every durable entry from `from`, read in pieces.
fn read_all(log: &StreamLog, from: u64) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut at = from;
    loop {
        let v = log.read(at, 16 * 1024).expect("read");
        let Some(last) = v.last() else {
            return out;
        };
        at = last.offset + 1;
        out.extend(v);
    }
}

/// `entries` are exactly offsets `from..upto`, each with its contents.
fn check_entries(entries: &[Entry], from: u64, upto: u64) {
    assert_eq!(
        entries.len() as u64,
        upto - from,
        "entries {from}..{upto}: got {:?}..{:?}",
        entries.first().map(|e| e.offset),
        entries.last().map(|e| e.offset)
    );
    for (k, e) in entries.iter().enumerate() {
        let i = from + k as u64;
        assert_eq!(e.offset, i);
        assert_eq!(e.timestamp, ts_of(i), "timestamp of {i}");
        assert_eq!(&e.data[..], &body(i)[..], "contents of {i}");
    }
}

/// Chunk sizes in entries, from the chunk index.
fn chunk_counts(log: &StreamLog) -> Vec<u64> {
    let firsts = log.chunk_firsts();
    let mut counts: Vec<u64> = firsts.windows(2).map(|w| w[1] - w[0]).collect();
    if let Some(last) = firsts.last() {
        counts.push(log.durable_offset() - last);
    }
    counts
}

#[test]
fn round_trip_across_chunks_and_segments() {
    let h = Harness::new(1);
    let log = h.open(h.options(4096));
    for k in 0..6 {
        append_range(&log, 50 * k, 50 * (k + 1));
        if k % 2 == 0 {
            wait_durable(&log, 50 * (k + 1));
        }
    }
    wait_durable(&log, 300);
    check_entries(&read_all(&log, 0), 0, 300);
    // Served from the tail cache: the disk is not read.
    assert_eq!(log.disk_reads(), 0);
    assert!(log.segments() >= 4, "segments: {}", log.segments());
    assert!(log.chunk_firsts().len() > 1);
    assert_eq!(
        (log.first_offset(), log.next_offset(), log.len()),
        (0, 300, 300)
    );
    // Every segment file starts at a chunk, and they are what the log counts.
    let firsts = log.chunk_firsts();
    let files = h.files();
    assert_eq!(files.len(), log.segments());
    assert!(files.iter().all(|b| firsts.contains(b)), "{files:?}");
    assert_eq!(log.bytes(), h.disk.total_bytes());
    // A small budget still returns one entry; nothing past the end.
    let one = log.read(10, 1).expect("read");
    check_entries(&one, 10, 11);
    assert!(log.read(300, 1 << 20).expect("read").is_empty());
    assert!(log.read(1000, 1 << 20).expect("read").is_empty());
    assert!(h.durable_calls.load(Ordering::SeqCst) > 0);
    log.close();
}

#[test]
fn group_commit_caps_chunks_and_reads_start_mid_chunk() {
    let h = Harness::new(2);
    let log = h.open(h.options(64 << 20));
    h.jam(&log, 0);
    append_range(&log, 1, 5000);
    h.disk.set_full(false);
    wait_durable(&log, 5000);
    // Everything appended while the writer was stuck is one group commit,
    // cut into chunks of at most 4096 entries.
    assert_eq!(log.chunk_firsts(), vec![0, 1, 4097]);
    let mid = log.read(2000, 10_000).expect("read");
    assert!(!mid.is_empty());
    check_entries(&mid, 2000, 2000 + mid.len() as u64);
    check_entries(&read_all(&log, 0), 0, 5000);

    // A chunk takes no more entries once its data reaches 1 MiB.
    let big = |i: u64| vec![i as u8; 600 << 10];
    h.jam(&log, 5000);
    for i in 5001..5004 {
        assert_eq!(log.append(&big(i), 7), i);
    }
    h.disk.set_full(false);
    wait_durable(&log, 5004);
    assert_eq!(log.chunk_firsts()[3..], [5000, 5001, 5003]);
    let got = log.read(5002, 1).expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].offset, got[0].timestamp), (5002, 7));
    assert_eq!(got[0].data, big(5002));
    log.close();
}

#[test]
fn timestamps_and_last_chunk_offset() {
    let h = Harness::new(3);
    let log = h.open(h.options(1 << 20));
    assert_eq!(
        (
            log.first_offset(),
            log.durable_offset(),
            log.last_chunk_offset()
        ),
        (0, 0, 0)
    );
    assert_eq!(log.offset_at_timestamp(5), 0);
    assert!(log.read(0, 100).expect("read").is_empty());
    assert!(log.is_empty());
    for k in 0..5u64 {
        for i in 10 * k..10 * (k + 1) {
            assert_eq!(log.append(&body(i), 1000 * (k + 1)), i);
        }
        wait_durable(&log, 10 * (k + 1));
    }
    assert_eq!(log.append(&body(50), 9000), 50);
    wait_durable(&log, 51);
    for (ts, want) in [
        (0, 0),
        (1000, 0),
        (1001, 10),
        (2000, 10),
        (2500, 20),
        (5000, 40),
        (5001, 50),
        (9000, 50),
        (9001, 51),
    ] {
        assert_eq!(log.offset_at_timestamp(ts), want, "offset at {ts}");
    }
    assert_eq!(log.last_chunk_offset(), 50);
    let all = log.read(0, usize::MAX).expect("read");
    assert_eq!(all.len(), 51);
    for e in &all {
        let want_ts = if e.offset == 50 {
            9000
        } else {
            1000 * (e.offset / 10 + 1)
        };
        assert_eq!((e.timestamp, &e.data[..]), (want_ts, &body(e.offset)[..]));
    }
    log.close();
}

#[test]
fn restart_keeps_offsets_and_numbering() {
    let h = Harness::new(4);
    let log = h.open(h.options(2048));
    append_range(&log, 0, 200);
    wait_durable(&log, 200);
    let (firsts, segments, bytes) = (log.chunk_firsts(), log.segments(), log.bytes());
    log.close();

    let log = h.open(h.options(2048));
    assert_eq!((log.first_offset(), log.durable_offset()), (0, 200));
    assert_eq!(log.next_offset(), 200);
    assert_eq!(log.chunk_firsts(), firsts);
    assert_eq!((log.segments(), log.bytes()), (segments, bytes));
    check_entries(&read_all(&log, 0), 0, 200);
    assert!(log.disk_reads() > 0, "a reopened log reads from disk");
    append_range(&log, 200, 250);
    wait_durable(&log, 250);
    log.close();

    let log = h.open(h.options(2048));
    check_entries(&read_all(&log, 0), 0, 250);
    assert_eq!(log.next_offset(), 250);
    log.close();
}

/// A tiny deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// The contents of offset `i` written in `round` (offsets lost in a crash
/// are reused, with different contents).
fn round_body(round: u64, i: u64) -> Vec<u8> {
    let mut b = body(i);
    b.extend_from_slice(&round.to_be_bytes());
    b
}

fn check_model(seed: u64, log: &StreamLog, model: &[Vec<u8>], upto: u64) {
    let got = log.read(0, usize::MAX).expect("read");
    assert_eq!(got.len() as u64, upto, "seed {seed}: entries recovered");
    for e in &got {
        assert_eq!(
            &e.data[..],
            &model[e.offset as usize][..],
            "seed {seed}: contents of {}",
            e.offset
        );
    }
}

#[test]
fn crash_keeps_every_durable_entry() {
    for seed in 0..12 {
        let h = Harness::new(seed);
        let mut rng = Rng(seed);
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut durable_before = 0;
        for round in 0..4u64 {
            let log = h.open(h.options(2048));
            let recovered = log.durable_offset();
            assert!(
                recovered >= durable_before,
                "seed {seed} round {round}: durable {durable_before} before the crash, {recovered} after"
            );
            assert_eq!(log.next_offset(), recovered, "seed {seed}");
            check_model(seed, &log, &model, recovered);
            model.truncate(recovered as usize);
            if round == 3 {
                log.close();
                break;
            }
            for _ in 0..20 + rng.below(100) {
                let i = model.len() as u64;
                model.push(round_body(round, i));
                assert_eq!(log.append(&model[i as usize], ts_of(i)), i, "seed {seed}");
                if rng.below(10) == 0 {
                    wait_durable(&log, i + 1);
                }
            }
            durable_before = log.durable_offset();
            h.disk.crash(true);
            log.close();
            h.disk.restart();
        }
    }
}

#[test]
fn torn_tail_is_cut_and_numbering_continues() {
    let mut partial = 0;
    for seed in 0..24 {
        let h = Harness::new(seed);
        let log = h.open(h.options(1024));
        append_range(&log, 0, 60);
        wait_durable(&log, 60);
        log.close();
        h.append_torn(append_range);

        let log = h.open(h.options(1024));
        let d = log.durable_offset();
        assert!((60..=200).contains(&d), "seed {seed}: recovered up to {d}");
        if d < 200 {
            partial += 1;
        }
        check_entries(&read_all(&log, 0), 0, d);
        // What is left on disk is one contiguous run: later segments went.
        let files = h.files();
        assert_eq!(files.len(), log.segments(), "seed {seed}");
        assert!(
            files.iter().all(|&b| b <= d),
            "seed {seed}: {files:?} past {d}"
        );
        assert_eq!(log.bytes(), h.disk.total_bytes(), "seed {seed}");
        assert_eq!(log.next_offset(), d);
        append_range(&log, d, d + 10);
        wait_durable(&log, d + 10);
        log.close();
        let log = h.open(h.options(1024));
        check_entries(&read_all(&log, 0), 0, d + 10);
        log.close();
    }
    assert!(partial > 0, "no seed tore the log");
}

#[test]
fn garbage_tail_and_stray_segments_are_cleaned() {
    let h = Harness::new(5);
    let log = h.open(h.options(1024));
    for k in 0..8 {
        append_range(&log, 5 * k, 5 * (k + 1));
        wait_durable(&log, 5 * (k + 1));
    }
    log.close();
    let files = h.files();
    assert!(files.len() >= 3, "{files:?}");
    let last = *files.last().expect("a segment");

    // An empty stray segment (a roll that failed) in the middle is removed
    // and cuts nothing.
    let stray = files[0] + 1;
    h.disk
        .open_append(&segment_path(&h.dir, stray))
        .expect("create");
    // A chunk header whose data never made it, then zeros.
    let mut f = h
        .disk
        .open_append(&segment_path(&h.dir, last))
        .expect("open");
    let header = Header {
        first: 40,
        count: 1,
        trailer_len: 0,
        flags: 0,
        bloom: [0; FILTER_BYTES],
        ts: 0,
        data_len: 100,
        data_crc: 0,
    };
    f.write_all(&header.encode()).expect("write");
    f.write_all(&[0; 100]).expect("write");
    f.sync_data().expect("sync");
    h.disk.sync_dir(&h.dir).expect("sync dir");

    let log = h.open(h.options(1024));
    assert_eq!(log.durable_offset(), 40);
    check_entries(&read_all(&log, 0), 0, 40);
    assert_eq!(h.files(), files);
    assert_eq!(log.bytes(), h.disk.total_bytes());
    append_range(&log, 40, 45);
    wait_durable(&log, 45);
    log.close();
    let log = h.open(h.options(1024));
    check_entries(&read_all(&log, 0), 0, 45);
    log.close();

    // A chunk in a format from the future: refuse to open rather than cut.
    let last = *h.files().last().expect("a segment");
    let mut b = Header {
        first: 45,
        count: 1,
        trailer_len: 0,
        flags: 0,
        bloom: [0; FILTER_BYTES],
        ts: 0,
        data_len: 12,
        data_crc: 0,
    }
    .encode();
    b[4] = VERSION + 1;
    let crc = crc32fast::hash(&b[..60]);
    b[60..].copy_from_slice(&crc.to_be_bytes());
    let mut f = h
        .disk
        .open_append(&segment_path(&h.dir, last))
        .expect("open");
    f.write_all(&b).expect("write");
    f.sync_data().expect("sync");
    let before = h.disk.total_bytes();
    let err = h.try_open(h.options(1024)).expect_err("a newer format");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(h.disk.total_bytes(), before, "nothing was cut");
}

#[test]
fn retention_by_bytes_deletes_whole_oldest_segments() {
    let h = Harness::new(6);
    let log = h.open(StreamOptions {
        max_bytes: Some(4096),
        ..h.options(1024)
    });
    for k in 0..60 {
        append_range(&log, 5 * k, 5 * (k + 1));
        wait_durable(&log, 5 * (k + 1));
    }
    // Closing waits for the writer, and so for its last retention pass.
    log.close();
    let first = log.first_offset();
    assert!(first > 0);
    assert!(log.bytes() <= 4096, "bytes {}", log.bytes());
    // Only what had to go went: one more segment would have fitted.
    assert!(log.bytes() + 1024 + 2000 > 4096, "bytes {}", log.bytes());
    // The log starts at a segment boundary, the oldest file left.
    assert_eq!(h.files()[0], first);
    assert_eq!(log.chunk_firsts()[0], first);
    assert_eq!(h.files().len(), log.segments());
    assert_eq!(log.bytes(), h.disk.total_bytes());
    assert_eq!(log.len(), 300 - first);
    // Reads from before the start begin at it.
    check_entries(&read_all(&log, 0), first, 300);

    // The segment being written always stays.
    log.set_retention(Some(0), None);
    assert_eq!(log.segments(), 1);
    let first = log.first_offset();
    assert_eq!(h.files(), vec![first]);
    assert!(first < 300);
    check_entries(&read_all(&log, 0), first, 300);

    let log = h.open(StreamOptions {
        max_bytes: Some(0),
        ..h.options(1024)
    });
    assert_eq!(log.first_offset(), first);
    check_entries(&read_all(&log, 0), first, 300);
    log.close();
}

#[test]
fn retention_by_age_deletes_old_segments() {
    let h = Harness::new(7);
    let log = h.open(StreamOptions {
        max_age_ms: Some(60_000),
        ..h.options(1024)
    });
    let old = wall_ms() - 3_600_000;
    for i in 0..100 {
        assert_eq!(log.append(&body(i), old + i), i);
        if i % 10 == 9 {
            wait_durable(&log, i + 1);
        }
    }
    let now = wall_ms();
    for i in 100..110 {
        assert_eq!(log.append(&body(i), now), i);
    }
    wait_durable(&log, 110);
    log.close();
    let first = log.first_offset();
    assert!(first > 0 && first <= 100, "first {first}");
    // The oldest segment left holds the first recent entry.
    let files = h.files();
    assert_eq!(files[0], first);
    assert!(files.get(1).is_none_or(|&b| b > 100), "{files:?}");
    let got = read_all(&log, 0);
    assert_eq!(got.len() as u64, 110 - first);
    for (k, e) in got.iter().enumerate() {
        let i = first + k as u64;
        let ts = if i < 100 { old + i } else { now };
        assert_eq!((e.offset, e.timestamp), (i, ts));
        assert_eq!(&e.data[..], &body(i)[..]);
    }
}

#[test]
fn retention_by_age_runs_while_idle() {
    let h = Harness::new(8);
    let log = h.open(h.options(512));
    // Stamped 1.5 s ahead: they age past a max age of 0 only then.
    let ts = wall_ms() + 1500;
    for i in 0..60 {
        assert_eq!(log.append(&body(i), ts), i);
        if i % 5 == 4 {
            wait_durable(&log, i + 1);
        }
    }
    assert!(log.segments() >= 3);
    // Nothing is old enough yet, and no append follows: only the writer's
    // periodic check can delete the segments once they age.
    log.set_retention(None, Some(0));
    assert!(log.segments() >= 3);
    wait_until("old segments to go", || log.segments() == 1);
    let first = log.first_offset();
    wait_until("their files to go", || h.files() == vec![first]);
    let got = read_all(&log, 0);
    assert_eq!(got.len() as u64, 60 - first);
    for (k, e) in got.iter().enumerate() {
        assert_eq!(e.offset, first + k as u64);
        assert_eq!(&e.data[..], &body(e.offset)[..]);
    }
    log.close();
}

#[test]
fn failed_writes_are_retried_without_loss_or_duplicates() {
    let h = Harness::new(9);
    let log = h.open(StreamOptions {
        tail_cache_bytes: 0,
        ..h.options(2048)
    });
    append_range(&log, 0, 20);
    wait_durable(&log, 20);
    h.disk.set_full(true);
    append_range(&log, 20, 50);
    std::thread::sleep(Duration::from_millis(50));
    append_range(&log, 50, 80);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        log.durable_offset(),
        20,
        "nothing counts durable on a full disk"
    );
    // Failed writes leave part of their buffer behind; cutting it back
    // fails too for a while.
    h.disk.fail(Op::Write, 5);
    h.disk.fail(Op::Truncate, 2);
    h.disk.set_full(false);
    wait_durable(&log, 80);
    check_entries(&read_all(&log, 0), 0, 80);
    assert!(log.disk_reads() > 0, "with no cache, reads go to disk");
    assert_eq!(log.bytes(), h.disk.total_bytes());
    assert!(h.fatal.lock().is_empty());
    log.close();

    // On disk: every chunk once, whole.
    let log = h.open(h.options(2048));
    assert_eq!((log.durable_offset(), log.next_offset()), (80, 80));
    check_entries(&read_all(&log, 0), 0, 80);
    assert_eq!(chunk_counts(&log).iter().sum::<u64>(), 80);
    log.close();
}

#[test]
fn failed_roll_keeps_writing_the_current_segment() {
    let h = Harness::new(10);
    let log = h.open(h.options(512));
    h.disk.fail(Op::SyncDir, 2);
    h.disk.fail(Op::Create, 1);
    for k in 0..10 {
        append_range(&log, 10 * k, 10 * (k + 1));
        wait_durable(&log, 10 * (k + 1));
    }
    check_entries(&read_all(&log, 0), 0, 100);
    let firsts = log.chunk_firsts();
    let files = h.files();
    assert_eq!(files.len(), log.segments());
    assert!(
        files.iter().all(|b| firsts.contains(b)),
        "stray files {files:?}"
    );
    log.close();
    let log = h.open(h.options(512));
    check_entries(&read_all(&log, 0), 0, 100);
    log.close();
}

#[test]
fn fsync_failure_is_fatal_and_stops_durability() {
    let h = Harness::new(11);
    let log = h.open(h.options(1 << 20));
    append_range(&log, 0, 5);
    wait_durable(&log, 5);
    h.disk.fail(Op::Sync, 1);
    append_range(&log, 5, 6);
    wait_until("on_fatal", || !h.fatal.lock().is_empty());
    append_range(&log, 6, 10);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(log.durable_offset(), 5);
    assert_eq!(h.fatal.lock().len(), 1);
    check_entries(&read_all(&log, 0), 0, 5);
    log.close();
}

#[test]
fn delete_removes_every_file() {
    let h = Harness::new(12);
    let log = h.open(h.options(512));
    for k in 0..10 {
        append_range(&log, 5 * k, 5 * (k + 1));
        wait_durable(&log, 5 * (k + 1));
    }
    assert!(h.files().len() > 1);
    log.delete().expect("delete");
    assert!(h.disk.list(&h.dir).expect("list").is_empty());
    assert_eq!(h.disk.total_bytes(), 0);
    assert!(log.read(0, 1 << 20).expect("read").is_empty());
    assert_eq!(log.bytes(), 0);
}

#[test]
fn real_disk_round_trip_and_delete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("stream");
    let open = || {
        StreamLog::open(
            Arc::new(RealDisk),
            dir.clone(),
            StreamOptions {
                segment_max: 8192,
                tail_cache_bytes: 0,
                ..StreamOptions::default()
            },
            Arc::new(|| {}),
        )
        .expect("open")
    };
    let log = open();
    for k in 0..10 {
        append_range(&log, 50 * k, 50 * (k + 1));
        wait_durable(&log, 50 * (k + 1));
    }
    check_entries(&read_all(&log, 0), 0, 500);
    log.close();
    let log = open();
    check_entries(&read_all(&log, 0), 0, 500);
    append_range(&log, 500, 510);
    wait_durable(&log, 510);
    check_entries(&read_all(&log, 490), 490, 510);
    assert!(log.segments() > 2);
    log.delete().expect("delete");
    assert!(!dir.exists());
}

#[test]
fn filtered_reads_skip_chunks_without_the_wanted_values_unread() {
    let h = Harness::new(11);
    let log = h.open(StreamOptions {
        tail_cache_bytes: 0,
        ..h.options(1 << 20)
    });
    // One chunk per group (each waits for the last to be durable).
    type Group<'a> = (&'a [u8], Option<&'a [u8]>, u64);
    let groups: [Group; 4] = [
        (b"b", Some(b"blue"), 3),
        (b"r", Some(b"red"), 2),
        (b"u", None, 2),
        (b"b", Some(b"blue"), 1),
    ];
    let mut n = 0;
    for (data, filter, count) in groups {
        for _ in 0..count {
            log.append_filtered(data, 0, filter);
        }
        n += count;
        wait_durable(&log, n);
    }
    let offsets = |f: &ReadFilter| {
        let before = log.disk_reads();
        let (e, scanned) = log.read_filtered(0, 1 << 20, Some(f)).expect("read");
        let got: Vec<(u64, Bytes)> = e.into_iter().map(|e| (e.offset, e.data)).collect();
        (got, scanned, log.disk_reads() - before)
    };
    let red = ReadFilter::new([&b"red"[..]], false);
    let (got, scanned, reads) = offsets(&red);
    assert_eq!(
        got,
        vec![(3, Bytes::from_static(b"r")), (4, Bytes::from_static(b"r"))]
    );
    assert_eq!(scanned, 8, "the read looked through the whole log");
    assert_eq!(reads, 1, "only the matching chunk was read");
    let red_or_none = ReadFilter::new([&b"red"[..]], true);
    let (got, _, _) = offsets(&red_or_none);
    assert_eq!(
        got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    let blue = ReadFilter::new([&b"blue"[..], &b"green"[..]], false);
    let (got, _, _) = offsets(&blue);
    assert_eq!(
        got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![0, 1, 2, 7]
    );
    let (got, scanned, reads) = offsets(&ReadFilter::new([&b"green"[..]], false));
    assert!(got.is_empty() && reads == 0, "nothing green: {got:?}");
    assert_eq!(scanned, 8);
    // Unfiltered reads see everything, and filters survive a restart.
    assert_eq!(read_all(&log, 0).len(), 8);
    log.close();
    let log = h.open(h.options(1 << 20));
    let (e, _) = log.read_filtered(0, 1 << 20, Some(&red)).expect("read");
    assert_eq!(e.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![3, 4]);
    log.close();
}

/// The writer sequence recovery should report for entries below `d`:
/// entry i was written by writer i % 3 (none for 2) with sequence i + 1.
fn expected_writers(d: u64) -> std::collections::HashMap<String, u64> {
    let mut m = std::collections::HashMap::new();
    for i in 0..d {
        if let Some(w) = writer_of(i) {
            m.insert(w.to_owned(), i + 1);
        }
    }
    m
}

fn writer_of(i: u64) -> Option<&'static str> {
    match i % 3 {
        0 => Some("publisher-a"),
        1 => Some("publisher-b"),
        _ => None,
    }
}

fn append_by_writers(log: &StreamLog, from: u64, upto: u64) {
    for i in from..upto {
        let w = writer_of(i).map(|w| (w, i + 1));
        assert_eq!(log.append_entry(&body(i), ts_of(i), None, w), i);
    }
}

#[test]
fn writer_sequences_are_recovered_exactly_with_the_entries_that_survive_a_crash() {
    let mut partial = 0;
    for seed in 0..24 {
        let h = Harness::new(seed);
        let log = h.open(h.options(1024));
        append_by_writers(&log, 0, 60);
        wait_durable(&log, 60);
        log.close();
        let log = h.open(h.options(1024));
        assert_eq!(log.writer_sequences(), &expected_writers(60), "seed {seed}");
        log.close();
        h.append_torn(append_by_writers);

        let log = h.open(h.options(1024));
        let d = log.durable_offset();
        if d < 200 {
            partial += 1;
        }
        // Exactly the sequences of the entries that survived: a higher one
        // would make a publisher's resend of a lost message a "duplicate".
        assert_eq!(
            log.writer_sequences(),
            &expected_writers(d),
            "seed {seed}, d {d}"
        );
        check_entries(&read_all(&log, 0), 0, d);
        log.close();
    }
    assert!(partial > 0, "no seed tore the log");
}

#[test]
fn many_writers_split_chunks_and_reads_never_see_trailers() {
    let h = Harness::new(9);
    let log = h.open(h.options(64 << 20));
    h.jam(&log, 0);
    // 400 writers with 200-byte names in one group commit: their trailers
    // would pass TRAILER_MAX in one chunk.
    let names: Vec<String> = (0..400).map(|k| format!("{k:0>200}")).collect();
    for (i, n) in names.iter().enumerate() {
        let i = i as u64 + 1;
        assert_eq!(log.append_entry(&body(i), ts_of(i), None, Some((n, i))), i);
    }
    h.disk.set_full(false);
    wait_durable(&log, 401);
    assert!(
        chunk_counts(&log).len() >= 3,
        "chunks {:?}",
        chunk_counts(&log)
    );
    check_entries(&read_all(&log, 0), 0, 401);
    log.close();
    let log = h.open(h.options(64 << 20));
    check_entries(&read_all(&log, 0), 0, 401);
    let got = log.writer_sequences();
    assert_eq!(got.len(), 400);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(got.get(n), Some(&(i as u64 + 1)));
    }
    log.close();
}

#[test]
fn chunk_reads_return_whole_chunks_read_at_once_into_reused_memory_and_refuse_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("stream");
    let log = StreamLog::open(
        Arc::new(RealDisk),
        dir.clone(),
        StreamOptions {
            tail_cache_bytes: 0,
            ..StreamOptions::default()
        },
        Arc::new(|| {}),
    )
    .expect("open");
    for k in 0..10 {
        append_range(&log, 50 * k, 50 * (k + 1));
        wait_durable(&log, 50 * (k + 1));
    }
    let all = log.chunk_firsts();
    assert!(all.len() >= 10, "{all:?}");

    // The whole log, with one read of the segment.
    let before = log.disk_reads();
    let whole = log.read_chunks(0, 1 << 20, None, None).expect("read");
    assert_eq!(log.disk_reads() - before, 1, "one read for the run");
    assert_eq!(whole.chunks.len(), all.len());
    assert_eq!(whole.scanned, 500);

    // Once its chunks are gone, its buffer is read into again.
    let buffer = whole.buffer.expect("read from disk");
    drop(whole.chunks);
    let reuse = buffer.try_into_mut().expect("no chunk holds it");
    let at = reuse.as_ptr();

    // From the middle of a chunk: that whole chunk first, then the ones
    // after it.
    let read = log
        .read_chunks(120, 20_000, None, Some(reuse))
        .expect("read");
    assert_eq!(read.buffer.as_ref().map(|b| b.as_ptr()), Some(at));
    let firsts: Vec<u64> = read.chunks.iter().map(|c| c.first).collect();
    let holding = all.iter().rposition(|&f| f <= 120).unwrap();
    assert_eq!(firsts[..], all[holding..holding + firsts.len()]);
    assert!(firsts.len() > 1 && read.scanned < 500, "{firsts:?}");
    assert_eq!(read.scanned, read.chunks.last().unwrap().end());
    let mut got = Vec::new();
    for c in &read.chunks {
        c.entries_from(120, |offset, ts, data| {
            got.push(Entry {
                offset,
                timestamp: ts,
                data: Bytes::copy_from_slice(data),
            });
            true
        })
        .expect("entries");
    }
    check_entries(&got, 120, read.scanned);

    // A byte changed on disk: the read fails rather than return it.
    let seg = dir.join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&seg).expect("segment");
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&seg, bytes).expect("write");
    let err = log
        .read_chunks(0, 1 << 20, None, None)
        .expect_err("corrupt");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    log.close();
}
