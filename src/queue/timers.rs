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
use std::time::Duration;

use super::Queue;
use crate::ops::clock::now_ms;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The head message's deadline.
    MessageTtl,
    /// The queue's x-expires.
    QueueExpiry,
    /// A stream's tracked consumer offsets are due to be written.
    StreamOffsets,
    /// Held dead-lettered messages are tried again (at least once).
    DeadLetterRetry,
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
        // Without this thread no TTL or x-expires would ever fire again, so
        // a broker that cannot start it cannot run.
        std::thread::Builder::new()
            .name("warren-timers".into())
            .spawn(move || run.supervise())
            .expect("cannot start the timer thread");
        w
    })
}

/// Runs `job` on the timer helper thread, in order, so that the timer
/// thread itself never waits for a disk (queue deletions fsync the
/// definitions log). A panicking job is logged; the next ones still run.
pub fn run_off_timer(job: impl FnOnce() + Send + 'static) {
    type Job = Box<dyn FnOnce() + Send>;
    static HELPER: OnceLock<Option<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    let tx = HELPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("warren-timer-jobs".into())
            .spawn(move || {
                for job in rx {
                    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                        tracing::error!("a timer job panicked ({}); going on", panic_text(&*e));
                    }
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(
                    "cannot start the timer job thread ({e}); running jobs on the timer thread"
                );
                None
            }
        }
    });
    match tx {
        Some(tx) => {
            if let Err(std::sync::mpsc::SendError(job)) = tx.send(Box::new(job)) {
                job();
            }
        }
        None => job(),
    }
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
    /// Runs the timer loop for the life of the process. A panic in one
    /// queue's callback is logged and costs that callback only: the other
    /// timers due at the same time still run, and the loop goes on (before,
    /// one panic ended the thread and TTL and x-expires stopped for every
    /// queue, silently). A panic outside the callbacks restarts the loop.
    fn supervise(&self) {
        loop {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run())) {
                Ok(never) => match never {},
                Err(e) => tracing::error!(
                    "the timer thread panicked ({}); restarting it",
                    panic_text(&*e)
                ),
            }
        }
    }

    fn run(&self) -> std::convert::Infallible {
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
                if t.kind == Kind::QueueExpiry {
                    // Deleting a durable queue appends to the definitions
                    // log and fsyncs: not here, where it would hold every
                    // TTL in the broker back behind the disk.
                    let (queue, kind) = (t.queue, t.kind);
                    run_off_timer(move || {
                        if let Some(q) = queue.upgrade() {
                            q.on_timer(kind);
                        }
                    });
                    continue;
                }
                if let Some(q) = t.queue.upgrade() {
                    let fired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        q.on_timer(t.kind)
                    }));
                    if let Err(e) = fired {
                        tracing::error!(queue = %q.name, kind = ?t.kind,
                            "a queue timer panicked ({}); other timers go on", panic_text(&*e));
                    }
                }
            }
        }
    }
}

/// The message of a caught panic.
fn panic_text(e: &(dyn std::any::Any + Send)) -> &str {
    e.downcast_ref::<&str>()
        .copied()
        .or_else(|| e.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_timer_job_does_not_stop_the_jobs_after_it() {
        run_off_timer(|| panic!("a job that panics"));
        let (tx, rx) = std::sync::mpsc::channel();
        run_off_timer(move || {
            let _ = tx.send(42);
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(42));
    }
}
