//! Unit tests of the ready list and its page files. The paging I/O
//! threads are real; reads complete through a channel the tests drain
//! (`pop`), as a queue's callback would.

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::store::disk::RealDisk;
use crate::store::disk::gated::{Gate, GatedDisk};
use crate::store::disk::sim::SimDisk;

fn msg(i: u32) -> QueuedMessage {
    let mut h = vec![0, 60, 0, 0];
    let body = format!("message-{i:06}-{}", "x".repeat(200));
    h.extend_from_slice(&(body.len() as u64).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    QueuedMessage {
        msg: Message::new(b"", b"q", &h, Bytes::from(body)),
        seq: i as u64,
        redelivered: i.is_multiple_of(3),
        stored: i.is_multiple_of(2).then_some(i as u64 + 1),
        deadline: i as u64,
    }
}

/// A list paging to `dir` on `disk` beyond 64 KiB, and where its reads complete.
fn list_on(dir: &std::path::Path, disk: Arc<dyn Disk>) -> (ReadyList, mpsc::Receiver<ReadDone>) {
    let (tx, rx) = mpsc::channel();
    let tx = parking_lot::Mutex::new(tx);
    let on_read: OnRead = Arc::new(move |d| {
        let _ = tx.lock().send(d);
    });
    let cfg = PagingConfig {
        dir: dir.to_owned(),
        limit: 64 * 1024,
        disk,
    };
    (ReadyList::new(Some(cfg), on_read), rx)
}

fn list(dir: &std::path::Path) -> (ReadyList, mpsc::Receiver<ReadDone>) {
    list_on(dir, Arc::new(RealDisk))
}

fn unpaged() -> ReadyList {
    ReadyList::new(None, Arc::new(|_| {}))
}

/// The head message, waiting for it to be read back if it is loading.
fn pop(r: &mut ReadyList, rx: &mpsc::Receiver<ReadDone>) -> Option<QueuedMessage> {
    loop {
        match r.take_front(true) {
            Front::Msg(m) => return Some(m),
            Front::Empty => return None,
            Front::Dropped(_) => unreachable!("a body was asked for"),
            Front::Loading => {
                let done = rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a read back completes");
                r.install(done);
            }
        }
    }
}

/// Waits until the paging thread has written (or failed) every buffer.
fn flush(r: &mut ReadyList) {
    for _ in 0..1000 {
        let p = r.pager.as_mut().unwrap();
        p.sweep();
        if p.in_flight.iter().all(|w| w.has_failed()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("page writes did not finish");
}

#[test]
fn a_long_list_pages_out_and_comes_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, rx) = list(dir.path());
    for i in 0..5000 {
        r.push_back(msg(i));
    }
    assert!(r.paged() > 4000, "paged {}", r.paged());
    assert!(r.mem_bytes <= 64 * 1024 + 400);
    for i in 0..5000u32 {
        let m = pop(&mut r, &rx).unwrap();
        assert_eq!(m.seq, i as u64);
        assert!(
            m.msg
                .body()
                .starts_with(format!("message-{i:06}").as_bytes())
        );
        assert_eq!(m.stored, i.is_multiple_of(2).then_some(i as u64 + 1));
        assert_eq!(m.redelivered, i.is_multiple_of(3));
        assert_eq!(m.deadline, i as u64);
    }
    assert!(pop(&mut r, &rx).is_none());
    assert_eq!(r.body_bytes(), 0);
    assert_eq!(r.paged(), 0);
}

/// A paging list over `n` messages, most of them paged out and written.
fn paged_list(dir: &std::path::Path, n: u32) -> (ReadyList, mpsc::Receiver<ReadDone>) {
    let (mut r, rx) = list(dir);
    for i in 0..n {
        r.push_back(msg(i));
    }
    flush(&mut r);
    (r, rx)
}

#[test]
fn a_page_file_cut_short_costs_only_the_messages_it_held_and_counts_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, rx) = paged_list(dir.path(), 5000);
    let paged = r.paged();
    assert!(paged > 4000);
    // Everything past the middle of the paged data is gone: the later
    // page files are cut to nothing.
    let p = r.pager.as_ref().unwrap();
    let total: u64 = p.chunks.iter().map(|c| c.len).sum();
    let mut kept = 0;
    for c in &p.chunks {
        if kept + c.len > total / 2 {
            let keep = (total / 2).saturating_sub(kept);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(p.path(c.no))
                .unwrap();
            f.set_len(keep).unwrap();
        }
        kept += c.len;
    }
    let mut got = Vec::new();
    while let Some(m) = pop(&mut r, &rx) {
        got.push(m.seq);
    }
    let lost = 5000 - got.len();
    assert!(
        lost > paged / 2 - 20 && lost < paged / 2 + 20,
        "lost {lost} of {paged} paged messages, expected about half"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept");
    assert_eq!(got[..100], (0..100).collect::<Vec<_>>()[..]);
    assert_eq!(r.len(), 0);
    assert_eq!(r.paged(), 0);
    assert_eq!(r.body_bytes(), 0);
}

#[test]
fn a_missing_page_file_loses_the_paged_messages_but_never_panics_or_miscounts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, rx) = paged_list(dir.path(), 3000);
    let in_memory = 3000 - r.paged();
    // The page files are gone (deleted behind warren's back).
    let p = r.pager.as_ref().unwrap();
    for c in &p.chunks {
        std::fs::remove_file(p.path(c.no)).unwrap();
    }
    let mut n = 0;
    while pop(&mut r, &rx).is_some() {
        n += 1;
    }
    assert_eq!(n, in_memory);
    assert_eq!((r.len(), r.paged(), r.body_bytes()), (0, 0, 0));
    // The list still works afterwards.
    r.push_back(msg(9));
    assert_eq!(pop(&mut r, &rx).unwrap().seq, 9);
}

/// Bytes in the page files under `dir`.
fn paged_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            // A file the paging thread deletes meanwhile counts nothing.
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_standing_backlog_with_traffic_flowing_keeps_its_page_files_small() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, rx) = list(dir.path());
    // A backlog of 10,000 messages (about 2.6 MB, most of it paged,
    // more than one read-back batch), then 100,000 more (26 MB)
    // through it, one in, one out.
    let mut next_out = 0u32;
    for i in 0..10_000 {
        r.push_back(msg(i));
    }
    let mut peak = 0;
    for i in 10_000..110_000 {
        r.push_back(msg(i));
        let m = pop(&mut r, &rx).unwrap();
        assert_eq!(m.seq, next_out as u64, "order kept");
        next_out += 1;
        if i % 1000 == 0 {
            peak = peak.max(paged_bytes(dir.path()));
        }
    }
    // The paged backlog plus the page files being written and read
    // (64 KiB each), far below the 26 MB that went through.
    assert!(peak < 4_000_000, "page files peaked at {peak} bytes");
    while let Some(m) = pop(&mut r, &rx) {
        assert_eq!(m.seq, next_out as u64);
        next_out += 1;
    }
    assert_eq!(next_out, 110_000);
    // Deletions run on the paging thread after the reads.
    for _ in 0..200 {
        if paged_bytes(dir.path()) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        paged_bytes(dir.path()),
        0,
        "a drained queue keeps no page file"
    );
}

#[test]
fn an_oldest_stored_id_is_found_without_counting_transient_messages() {
    let mut r = unpaged();
    let mut m = msg(1);
    m.stored = None;
    r.push_back(m);
    assert_eq!(r.oldest_stored(), None);
    r.push_back(msg(2)); // stored as 3
    r.push_back(msg(4)); // stored as 5
    assert_eq!(r.oldest_stored(), Some(3));
    r.pop_front();
    r.pop_front();
    assert_eq!(r.oldest_stored(), Some(5));
    r.pop_front();
    assert_eq!(r.oldest_stored(), None);
}

#[test]
fn without_paging_everything_stays_in_memory() {
    let mut r = unpaged();
    for i in 0..100 {
        r.push_back(msg(i));
    }
    assert_eq!(r.paged(), 0);
    assert_eq!(r.len(), 100);
}

#[test]
fn a_failed_page_write_keeps_the_messages_readable_from_memory_and_stops_paging() {
    let disk = Arc::new(SimDisk::new(7));
    disk.set_full(true);
    let dir = std::path::Path::new("/sim/paging");
    let (mut r, rx) = list_on(dir, disk.clone());
    for i in 0..3000 {
        r.push_back(msg(i));
    }
    flush(&mut r);
    assert!(
        r.pager.as_mut().map(|p| {
            p.sweep();
            p.failed
        }) == Some(true)
    );
    // Nothing more is paged once a write failed.
    let paged = r.paged();
    for i in 3000..4000 {
        r.push_back(msg(i));
    }
    assert_eq!(r.paged(), paged, "paging went on after a failed write");
    for i in 0..4000u32 {
        let m = pop(&mut r, &rx).expect("no message lost");
        assert_eq!(m.seq, i as u64);
    }
    assert_eq!((r.len(), r.paged(), r.body_bytes()), (0, 0, 0));
}

#[test]
fn expiry_and_length_limits_drop_paged_messages_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, rx) = paged_list(dir.path(), 3000);
    while matches!(r.entries.front().map(|e| &e.slot), Some(Slot::Mem(_))) {
        pop(&mut r, &rx).unwrap();
    }
    let head = r.front_seq().unwrap();
    let before = r.len();
    match r.take_front(false) {
        Front::Dropped(stored) => {
            assert_eq!(stored, head.is_multiple_of(2).then_some(head + 1))
        }
        other => panic!("expected the head dropped unread, got {other:?}"),
    }
    assert_eq!(r.len(), before - 1);
    assert!(!r.is_loading(), "a dropped head was read");
    // The rest: paged ones dropped unread, the newest (in memory) taken.
    loop {
        match r.take_front(false) {
            Front::Dropped(_) | Front::Msg(_) => {}
            Front::Empty => break,
            Front::Loading => panic!("a message was read back"),
        }
    }
    assert!(!r.is_loading());
    assert_eq!((r.len(), r.paged(), r.body_bytes()), (0, 0, 0));
}

#[test]
fn a_stalled_disk_never_blocks_the_list_paging_out_or_reading_back() {
    // More than one read back (1 MiB) of paged messages.
    const N: u32 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let disk = GatedDisk {
        gate: gate.clone(),
        only: None,
    };
    let (mut r, rx) = list_on(dir.path(), Arc::new(disk));
    // Writes stall: paging out still returns at once, and the paged
    // messages are served from the buffers that wait to be written.
    gate.set_shut(true);
    let t = std::time::Instant::now();
    for i in 0..N {
        r.push_back(msg(i));
    }
    assert!(r.paged() > 15_000, "paged {}", r.paged());
    for i in 0..1500u32 {
        assert_eq!(pop(&mut r, &rx).unwrap().seq, i as u64);
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the list waited for the disk"
    );
    gate.set_shut(false);
    flush(&mut r);
    // Reads stall: the head is loading, the list answers at once, and the
    // messages arrive once the disk moves again.
    gate.set_shut(true);
    let mut next = 1500u32;
    let loading = loop {
        match r.take_front(true) {
            Front::Msg(m) => {
                assert_eq!(m.seq, next as u64);
                next += 1;
            }
            Front::Loading => break true,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(loading && r.is_loading());
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "a read got past a stalled disk"
    );
    assert!(matches!(r.take_front(true), Front::Loading));
    gate.set_shut(false);
    while let Some(m) = pop(&mut r, &rx) {
        assert_eq!(m.seq, next as u64);
        next += 1;
    }
    assert_eq!(next, N);
    assert_eq!((r.len(), r.paged(), r.body_bytes()), (0, 0, 0));
}
