//! The age of each queue's oldest stored message (warren-specific, for
//! GET /api/queues and /metrics): an operator sees a message that pins the
//! message store. Nothing is kept per message for it: a listing takes each
//! queue's oldest ready store id, the channels' oldest unacked ones, and
//! asks the store when that message was written (to the second).

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::Broker;
use crate::queue::Queue;
use crate::store::wall_ms;

/// What a listing needs to date each queue's oldest stored message.
pub struct StoreAges {
    /// Lowest unacked store id per queue (by `Arc::as_ptr`).
    unacked: HashMap<usize, u64>,
    now: u64,
}

impl StoreAges {
    /// One pass over every channel's unacked deliveries.
    pub fn collect(b: &Broker) -> StoreAges {
        let mut unacked = HashMap::new();
        for c in b.connections::<crate::session::outbound::ConnectionHandle>() {
            for ch in c.channels() {
                ch.oldest_unacked_stored(&mut unacked);
            }
        }
        StoreAges {
            unacked,
            now: wall_ms(),
        }
    }

    /// Seconds since the oldest message `q` still holds in the store
    /// (ready or unacked) was written; `None` when it holds none.
    pub fn queue_age_seconds(&self, q: &Arc<Queue>) -> Option<u64> {
        let store = q.store()?;
        let unacked = self.unacked.get(&(Arc::as_ptr(q) as usize)).copied();
        let id = match (q.oldest_ready_stored(), unacked) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        // Still in the writer's buffer: written a moment from now.
        let at = store.stored_at_ms(id).unwrap_or(self.now);
        Some(self.now.saturating_sub(at) / 1000)
    }
}
