//! warren's monotonic clock in milliseconds: exact (`now_ms`) and coarse
//! (`coarse_ms`, refreshed every 20 ms by a thread, for hot paths).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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

/// Milliseconds since the Unix epoch (wall clock): for times other nodes
/// read, such as when a replicated message was enqueued.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `now_ms` time at which wall-clock time `wall` (ms since the epoch)
/// falls (now, if it has passed).
pub fn local_of_wall(wall: u64) -> u64 {
    now_ms().saturating_add(wall.saturating_sub(wall_ms()))
}
