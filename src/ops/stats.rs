//! Message counters for the management API and Prometheus metrics.
//!
//! Counting must cost next to nothing on the message path, so every counter
//! is a relaxed `AtomicU64` that lives next to the thing it counts and is
//! written by the task that already owns it: each queue counts what it
//! enqueues, delivers and has acked (`QueueStats`, bumped under the queue's
//! own lock or by the acking connection); each connection counts what it
//! publishes (`ConnStats`). Totals for a vhost or the whole broker are summed
//! when someone asks. When a queue or connection goes away its counts are
//! added to a "retired" total (per vhost for queues, per broker for
//! connections), so totals only ever grow, as Prometheus counters must.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

const R: Ordering = Ordering::Relaxed;

/// A snapshot of message counts (RabbitMQ's `message_stats` fields).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MsgTotals {
    /// Messages published (by clients, or into a queue).
    pub publish: u64,
    /// Deliveries to consumers that must ack.
    pub deliver: u64,
    /// Deliveries to consumers in no-ack mode.
    pub deliver_no_ack: u64,
    /// basic.get deliveries that must be acked.
    pub get: u64,
    /// basic.get deliveries in no-ack mode.
    pub get_no_ack: u64,
    /// basic.get on an empty queue.
    pub get_empty: u64,
    /// Deliveries of messages that had been delivered before.
    pub redeliver: u64,
    /// Acknowledgements.
    pub ack: u64,
    /// Mandatory messages returned as unroutable.
    pub return_unroutable: u64,
    /// Messages dropped as unroutable.
    pub drop_unroutable: u64,
    /// Publisher confirms sent.
    pub confirm: u64,
    /// Messages dead-lettered (warren has no dead-lettering yet: always 0).
    pub dead_lettered: u64,
}

impl MsgTotals {
    /// Adds another snapshot.
    pub fn add(&mut self, o: &MsgTotals) {
        self.publish += o.publish;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.get_empty += o.get_empty;
        self.redeliver += o.redeliver;
        self.ack += o.ack;
        self.return_unroutable += o.return_unroutable;
        self.drop_unroutable += o.drop_unroutable;
        self.confirm += o.confirm;
        self.dead_lettered += o.dead_lettered;
    }

    /// deliver + deliver_no_ack + get + get_no_ack (RabbitMQ's `deliver_get`).
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }
}

/// Counters of one queue.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Messages enqueued.
    pub publish: AtomicU64,
    /// Deliveries to consumers that ack.
    pub deliver: AtomicU64,
    /// Deliveries to no-ack consumers.
    pub deliver_no_ack: AtomicU64,
    /// basic.get with ack.
    pub get: AtomicU64,
    /// basic.get without ack.
    pub get_no_ack: AtomicU64,
    /// basic.get on the empty queue.
    pub get_empty: AtomicU64,
    /// Redeliveries.
    pub redeliver: AtomicU64,
    /// Acks.
    pub ack: AtomicU64,
    /// Delivered, not yet acked, nacked, rejected or requeued (a gauge).
    pub unacked: AtomicU64,
    /// Messages dead-lettered (rejected, expired or over a length limit,
    /// with a dead-letter exchange set).
    pub dead_lettered: AtomicU64,
    /// Messages dropped on expiry without a dead-letter exchange.
    pub expired: AtomicU64,
}

impl QueueStats {
    /// Counts one delivery (`get`: basic.get; `no_ack`: needs no ack).
    #[inline]
    pub fn delivered(&self, get: bool, no_ack: bool, redelivered: bool) {
        let c = match (get, no_ack) {
            (false, false) => &self.deliver,
            (false, true) => &self.deliver_no_ack,
            (true, false) => &self.get,
            (true, true) => &self.get_no_ack,
        };
        c.fetch_add(1, R);
        if !no_ack {
            self.unacked.fetch_add(1, R);
        }
        if redelivered {
            self.redeliver.fetch_add(1, R);
        }
    }

    /// An unacked delivery left the channel (acked, nacked, requeued).
    #[inline]
    pub fn settled(&self) {
        self.unacked.fetch_sub(1, R);
    }

    /// Messages delivered and not settled yet.
    pub fn unacked(&self) -> u64 {
        // Read as signed: a settle racing its delivery's count never shows
        // as a huge number.
        (self.unacked.load(R) as i64).max(0) as u64
    }

    /// The counts now.
    pub fn snapshot(&self) -> MsgTotals {
        MsgTotals {
            publish: self.publish.load(R),
            deliver: self.deliver.load(R),
            deliver_no_ack: self.deliver_no_ack.load(R),
            get: self.get.load(R),
            get_no_ack: self.get_no_ack.load(R),
            get_empty: self.get_empty.load(R),
            redeliver: self.redeliver.load(R),
            ack: self.ack.load(R),
            dead_lettered: self.dead_lettered.load(R),
            ..MsgTotals::default()
        }
    }
}

/// Counters of one connection (what its channels publish).
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Messages published.
    pub publish: AtomicU64,
    /// Mandatory messages returned unroutable.
    pub return_unroutable: AtomicU64,
    /// Messages dropped unroutable.
    pub drop_unroutable: AtomicU64,
    /// Channels opened on the connection.
    pub channels_opened: AtomicU64,
}

impl ConnStats {
    /// The counts now.
    pub fn snapshot(&self) -> MsgTotals {
        MsgTotals {
            publish: self.publish.load(R),
            return_unroutable: self.return_unroutable.load(R),
            drop_unroutable: self.drop_unroutable.load(R),
            ..MsgTotals::default()
        }
    }
}

/// Totals of things that no longer exist, kept so sums never go down.
#[derive(Debug, Default)]
pub struct Retired {
    totals: Mutex<MsgTotals>,
    channels_opened: AtomicU64,
}

impl Retired {
    /// Adds a queue's or connection's final counts.
    pub fn add(&self, t: &MsgTotals) {
        self.totals.lock().add(t);
    }

    /// Adds a closed connection's channel count.
    pub fn add_channels(&self, n: u64) {
        self.channels_opened.fetch_add(n, R);
    }

    /// The retired totals.
    pub fn totals(&self) -> MsgTotals {
        *self.totals.lock()
    }

    /// Channels opened on connections that have closed.
    pub fn channels_opened(&self) -> u64 {
        self.channels_opened.load(R)
    }
}

/// Broker-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections that completed the handshake.
    pub connections_opened: AtomicU64,
    /// Counts of closed connections.
    pub retired_connections: Retired,
    /// Queue counts of deleted vhosts.
    pub retired_vhosts: Retired,
    /// Messages published through the HTTP API.
    pub http_published: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_and_settles_keep_the_unacked_gauge() {
        let q = QueueStats::default();
        q.delivered(false, false, false);
        q.delivered(true, false, true);
        q.delivered(false, true, false);
        assert_eq!(q.unacked(), 2);
        q.settled();
        q.settled();
        q.settled();
        assert_eq!(q.unacked(), 0);
        let s = q.snapshot();
        assert_eq!(
            (s.deliver, s.get, s.deliver_no_ack, s.redeliver),
            (1, 1, 1, 1)
        );
        assert_eq!(s.deliver_get(), 3);
    }
}
