//! Unit tests of the ready list and its page files.

use bytes::Bytes;

use super::*;

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

#[test]
fn a_long_list_pages_out_and_comes_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = ReadyList::new(Some(PagingConfig {
        dir: dir.path().to_owned(),
        limit: 64 * 1024,
    }));
    for i in 0..5000 {
        r.push_back(msg(i));
    }
    assert!(r.paged() > 4000, "paged {}", r.paged());
    assert!(r.mem_bytes <= 64 * 1024 + 400);
    for i in 0..5000u32 {
        let m = r.pop_front().unwrap();
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
    assert!(r.pop_front().is_none());
    assert_eq!(r.body_bytes(), 0);
    assert_eq!(r.paged(), 0);
}

/// A paging list over `n` messages, most of them paged out.
fn paged_list(dir: &std::path::Path, n: u32) -> ReadyList {
    let mut r = ReadyList::new(Some(PagingConfig {
        dir: dir.to_owned(),
        limit: 64 * 1024,
    }));
    for i in 0..n {
        r.push_back(msg(i));
    }
    r
}

#[test]
fn a_page_file_cut_short_costs_only_the_messages_it_held_and_counts_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = paged_list(dir.path(), 5000);
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
            c.file.as_ref().unwrap().set_len(keep).unwrap();
        }
        kept += c.len;
    }
    let mut got = Vec::new();
    while let Some(m) = r.pop_front() {
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
    let mut r = paged_list(dir.path(), 3000);
    let in_memory = 3000 - r.paged();
    // The file handles are gone (as after a failed reset or reopen).
    for c in &mut r.pager.as_mut().unwrap().chunks {
        c.file = None;
    }
    let mut n = 0;
    while r.pop_front().is_some() {
        n += 1;
    }
    assert_eq!(n, in_memory);
    assert_eq!((r.len(), r.paged(), r.body_bytes()), (0, 0, 0));
    // The list still works afterwards.
    r.push_back(msg(9));
    assert_eq!(r.pop_front().unwrap().seq, 9);
}

/// Bytes in the page files under `dir`.
fn paged_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().metadata().unwrap().len()).sum())
        .unwrap_or(0)
}

#[test]
fn a_standing_backlog_with_traffic_flowing_keeps_its_page_files_small() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = ReadyList::new(Some(PagingConfig {
        dir: dir.path().to_owned(),
        limit: 64 * 1024,
    }));
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
        let m = r.pop_front().unwrap();
        assert_eq!(m.seq, next_out as u64, "order kept");
        next_out += 1;
        if i % 1000 == 0 {
            peak = peak.max(paged_bytes(dir.path()));
        }
    }
    // The paged backlog plus the page files being written and read
    // (64 KiB each), far below the 26 MB that went through.
    assert!(peak < 4_000_000, "page files peaked at {peak} bytes");
    while let Some(m) = r.pop_front() {
        assert_eq!(m.seq, next_out as u64);
        next_out += 1;
    }
    assert_eq!(next_out, 110_000);
    assert_eq!(
        paged_bytes(dir.path()),
        0,
        "a drained queue keeps no page file"
    );
}

#[test]
fn an_oldest_stored_id_is_found_without_counting_transient_messages() {
    let mut r = ReadyList::new(None);
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
    let mut r = ReadyList::new(None);
    for i in 0..100 {
        r.push_back(msg(i));
    }
    assert_eq!(r.paged(), 0);
    assert_eq!(r.len(), 100);
}
