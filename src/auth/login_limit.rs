//! Slowing down password guessing without locking anyone out.
//!
//! A correct login is always accepted at once. Failed logins are counted per
//! client address and user name: the first `[auth] max_failed_logins` of a
//! run are refused at once, each further one is refused only after a delay
//! that doubles with every failure (from `BASE_DELAY` up to `[auth]
//! failed_login_max_delay` milliseconds). A run ends `failed_login_window`
//! seconds after its last failure, or with a successful login for that
//! address and user. So one misconfigured service behind a NAT slows down
//! only its own wrong logins; every other service, and the right password,
//! are served as before, while a guessing loop gets slower and slower.
//!
//! The map holds a hash of the user name, not the name, and never more than
//! `MAX_TRACKED` entries (stale ones are pruned, and the oldest dropped), so
//! a client cycling through addresses or names cannot grow it without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most (address, user) pairs tracked at once; beyond it the stalest is dropped.
pub const MAX_TRACKED: usize = 10_000;

/// The delay of the first failure past the free ones; it doubles from there.
pub const BASE_DELAY: Duration = Duration::from_millis(100);

/// Failed logins per client address and user name.
#[derive(Debug)]
pub struct FailedLogins {
    free: u32,
    window: Duration,
    max_delay: Duration,
    hasher: ahash::RandomState,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    by_key: HashMap<Key, Entry>,
    last_prune: Instant,
}

/// (client address, hash of the user name).
type Key = (IpAddr, u64);

#[derive(Debug)]
struct Entry {
    last: Instant,
    failures: u32,
}

/// What to do with a failed login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Failures in the current run for this address and user, this one included.
    pub failures: u32,
    /// This is the first delayed refusal of the run (the one to log).
    pub first_delayed: bool,
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl FailedLogins {
    /// `free` failures per address and user are refused at once, later
    /// ones after a growing delay of at most `max_delay_ms`; failures are
    /// forgotten `window_secs` after the last one. `free` = 0, a window of
    /// 0 or a maximum delay of 0 turns delays off.
    pub fn new(free: u32, window_secs: u64, max_delay_ms: u64) -> FailedLogins {
        FailedLogins {
            free,
            window: Duration::from_secs(window_secs),
            max_delay: Duration::from_millis(max_delay_ms),
            hasher: ahash::RandomState::new(),
            state: Mutex::new(State {
                by_key: HashMap::new(),
                last_prune: Instant::now(),
            }),
        }
    }

    /// Whether failures are slowed down at all.
    pub fn enabled(&self) -> bool {
        self.free > 0 && !self.window.is_zero() && !self.max_delay.is_zero()
    }

    fn key(&self, ip: IpAddr, user: &str) -> Key {
        (canonical(ip), self.hasher.hash_one(user))
    }

    /// Counts a failed login and says how long to wait before refusing it.
    pub fn record_failure(&self, ip: IpAddr, user: &str) -> Refusal {
        self.record_failure_at(ip, user, Instant::now())
    }

    /// A successful login ends the run of failures of its address and user.
    pub fn record_success(&self, ip: IpAddr, user: &str) {
        if !self.enabled() {
            return;
        }
        let key = self.key(ip, user);
        let mut st = self.state.lock();
        if !st.by_key.is_empty() {
            st.by_key.remove(&key);
        }
    }

    /// (address, user) pairs currently tracked.
    pub fn tracked(&self) -> usize {
        self.state.lock().by_key.len()
    }

    /// The delay for the `n`th failure of a run.
    fn delay_for(&self, n: u32) -> Duration {
        if n <= self.free {
            return Duration::ZERO;
        }
        let doublings = (n - self.free - 1).min(20);
        BASE_DELAY
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }

    fn record_failure_at(&self, ip: IpAddr, user: &str, now: Instant) -> Refusal {
        let none = Refusal {
            delay: Duration::ZERO,
            failures: 0,
            first_delayed: false,
        };
        if !self.enabled() {
            return none;
        }
        let key = self.key(ip, user);
        let window = self.window;
        let mut st = self.state.lock();
        let full = st.by_key.len() >= MAX_TRACKED && !st.by_key.contains_key(&key);
        if full || now.saturating_duration_since(st.last_prune) >= window {
            st.by_key
                .retain(|_, e| now.saturating_duration_since(e.last) < window);
            st.last_prune = now;
        }
        if st.by_key.len() >= MAX_TRACKED
            && !st.by_key.contains_key(&key)
            && let Some(stalest) = st
                .by_key
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| *k)
        {
            st.by_key.remove(&stalest);
        }
        let e = st.by_key.entry(key).or_insert(Entry {
            last: now,
            failures: 0,
        });
        if now.saturating_duration_since(e.last) >= window {
            e.failures = 0;
        }
        e.last = now;
        e.failures = e.failures.saturating_add(1);
        let failures = e.failures;
        drop(st);
        Refusal {
            delay: self.delay_for(failures),
            failures,
            first_delayed: failures == self.free + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn failures_past_the_free_ones_wait_longer_and_longer_up_to_the_maximum() {
        let l = FailedLogins::new(3, 60, 1000);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        let delays: Vec<Duration> = (0..8)
            .map(|i| l.record_failure_at(a, "bob", t0 + ms(i)).delay)
            .collect();
        assert_eq!(delays, [0, 0, 0, 100, 200, 400, 800, 1000].map(ms).to_vec());
        let r = l.record_failure_at(a, "bob", t0 + ms(10));
        assert_eq!(r.failures, 9);
        assert!(!r.first_delayed);
    }

    #[test]
    fn the_first_delayed_refusal_is_marked_for_the_log() {
        let l = FailedLogins::new(1, 60, 1000);
        let a = ip("10.0.0.1");
        assert!(!l.record_failure(a, "u").first_delayed);
        assert!(l.record_failure(a, "u").first_delayed);
        assert!(!l.record_failure(a, "u").first_delayed);
    }

    #[test]
    fn other_users_and_other_addresses_are_not_slowed() {
        let l = FailedLogins::new(1, 60, 1000);
        let a = ip("10.0.0.1");
        for _ in 0..5 {
            l.record_failure(a, "bob");
        }
        assert_eq!(l.record_failure(a, "alice").delay, Duration::ZERO);
        assert_eq!(
            l.record_failure(ip("10.0.0.2"), "bob").delay,
            Duration::ZERO
        );
    }

    #[test]
    fn a_success_or_a_quiet_window_ends_the_run() {
        let l = FailedLogins::new(1, 5, 1000);
        let t0 = Instant::now();
        let a = ip("::1");
        l.record_failure_at(a, "u", t0);
        assert!(l.record_failure_at(a, "u", t0).delay > Duration::ZERO);
        // Quiet for the whole window: a fresh run.
        assert_eq!(
            l.record_failure_at(a, "u", t0 + Duration::from_secs(6))
                .delay,
            Duration::ZERO
        );
        assert!(
            l.record_failure_at(a, "u", t0 + Duration::from_secs(6))
                .delay
                > Duration::ZERO
        );
        l.record_success(a, "u");
        assert_eq!(l.record_failure(a, "u").delay, Duration::ZERO);
    }

    #[test]
    fn ipv4_mapped_addresses_share_the_ipv4_entry() {
        let l = FailedLogins::new(1, 60, 1000);
        l.record_failure(ip("::ffff:192.0.2.7"), "u");
        assert!(l.record_failure(ip("192.0.2.7"), "u").delay > Duration::ZERO);
    }

    #[test]
    fn zero_disables() {
        for (free, window, max) in [(0, 60, 1000), (5, 0, 1000), (5, 60, 0)] {
            let l = FailedLogins::new(free, window, max);
            let a = ip("127.0.0.1");
            for _ in 0..100 {
                assert_eq!(l.record_failure(a, "u").delay, Duration::ZERO);
            }
            assert_eq!(l.tracked(), 0);
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let l = FailedLogins::new(5, 3600, 1000);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.record_failure_at(a, "u", t0 + ms(u64::from(i)));
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
        // Long user names cost no more than short ones: only a hash is kept.
        let long = "x".repeat(100_000);
        for i in 0..100u32 {
            l.record_failure_at(
                ip("10.9.9.9"),
                &format!("{long}{i}"),
                t0 + Duration::from_secs(20),
            );
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
        // The newest are kept.
        let newest = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_TRACKED as u32 + 499,
        ));
        for _ in 0..5 {
            l.record_failure_at(newest, "u", t0 + Duration::from_secs(21));
        }
        assert!(
            l.record_failure_at(newest, "u", t0 + Duration::from_secs(21))
                .delay
                > Duration::ZERO
        );
    }

    #[test]
    fn stale_entries_are_pruned() {
        let l = FailedLogins::new(5, 10, 1000);
        let t0 = Instant::now();
        for i in 0..100u32 {
            l.record_failure_at(IpAddr::from(std::net::Ipv4Addr::from(i)), "u", t0);
        }
        assert_eq!(l.tracked(), 100);
        l.record_failure_at(ip("10.9.9.9"), "u", t0 + Duration::from_secs(11));
        assert_eq!(l.tracked(), 1);
    }
}
