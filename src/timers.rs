//! One thread that wakes queues when something in them falls due: the head
//! message's TTL, or the queue's own expiry (x-expires).
//!
//! Queues keep at most one message timer armed at a time (for their head),
//! so the heap holds about one entry per queue with expiring messages. A
//! timer that fires for a queue that has since changed is harmless: the
//! queue looks at its state and re-arms as needed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::queue::Queue;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The head message's deadline.
    MessageTtl,
    /// The queue's x-expires.
    QueueExpiry,
}

struct Timer {
    at: u64,
    kind: Kind,
    queue: Weak<Queue>,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.at.cmp(&o.at)
    }
}

struct Wheel {
    heap: Mutex<BinaryHeap<Reverse<Timer>>>,
    wake: Condvar,
}

fn wheel() -> &'static Arc<Wheel> {
    static WHEEL: OnceLock<Arc<Wheel>> = OnceLock::new();
    WHEEL.get_or_init(|| {
        let w = Arc::new(Wheel {
            heap: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
        });
        let run = w.clone();
        std::thread::Builder::new()
            .name("warren-timers".into())
            .spawn(move || run.run())
            .expect("cannot start the timer thread");
        w
    })
}

/// Milliseconds on warren's monotonic clock (starts at 1, so 0 can mean
/// "no deadline").
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// `now_ms`, read from a clock another thread refreshes every 20 ms: a
/// relaxed atomic load, cheap enough for every delivery (consumer timeouts
/// need no better precision).
pub fn coarse_ms() -> u64 {
    static CLOCK: OnceLock<Arc<std::sync::atomic::AtomicU64>> = OnceLock::new();
    let c = CLOCK.get_or_init(|| {
        let c = Arc::new(std::sync::atomic::AtomicU64::new(now_ms()));
        let tick = c.clone();
        let spawned = std::thread::Builder::new()
            .name("warren-clock".into())
            .spawn(move || {
                loop {
                    tick.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the clock thread: {e}");
        }
        c
    });
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// Calls the queue back at `at` (a `now_ms` time).
pub fn schedule(at: u64, kind: Kind, queue: Weak<Queue>) {
    let w = wheel();
    let mut heap = w.heap.lock().unwrap_or_else(|e| e.into_inner());
    let earliest = heap.peek().is_none_or(|Reverse(t)| at < t.at);
    heap.push(Reverse(Timer { at, kind, queue }));
    drop(heap);
    if earliest {
        w.wake.notify_one();
    }
}

impl Wheel {
    fn run(&self) {
        let mut due = Vec::new();
        loop {
            {
                let mut heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let now = now_ms();
                    while heap.peek().is_some_and(|Reverse(t)| t.at <= now) {
                        let Some(Reverse(t)) = heap.pop() else { break };
                        due.push(t);
                    }
                    if !due.is_empty() {
                        break;
                    }
                    let wait = heap.peek().map_or(Duration::from_secs(3600), |Reverse(t)| {
                        Duration::from_millis(t.at - now)
                    });
                    heap = self
                        .wake
                        .wait_timeout(heap, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            for t in due.drain(..) {
                if let Some(q) = t.queue.upgrade() {
                    q.on_timer(t.kind);
                }
            }
        }
    }
}
