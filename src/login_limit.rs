//! Failed-login rate limiting per client IP address (`[auth]
//! max_failed_logins` within `failed_login_window` seconds).
//!
//! Each address that failed a login has an entry: when its window started
//! and how many logins failed since. Once `max` failures fall in one window,
//! every further login from that address is refused, correct credentials or
//! not, until the window ends. The map is pruned of ended windows and never
//! holds more than `MAX_TRACKED` addresses, so a client cycling through
//! addresses cannot grow it without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most addresses tracked at once; beyond it the oldest window is dropped.
pub const MAX_TRACKED: usize = 10_000;

/// Failed logins per address.
#[derive(Debug)]
pub struct FailedLogins {
    max: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    by_ip: HashMap<IpAddr, Entry>,
    last_prune: Instant,
}

#[derive(Debug)]
struct Entry {
    since: Instant,
    failures: u32,
    /// The refusal was logged in this window.
    logged: bool,
}

/// A login refused because its address failed too often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// Until the window ends.
    pub retry_in: Duration,
    /// Failures counted in the window.
    pub failures: u32,
    /// The first refusal in this window (the one to log).
    pub first: bool,
}

impl Blocked {
    /// Whole seconds until logins are accepted again (rounded up, at least 1).
    pub fn retry_secs(&self) -> u64 {
        let s = self.retry_in.as_secs() + u64::from(self.retry_in.subsec_nanos() > 0);
        s.max(1)
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn key(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl FailedLogins {
    /// A limiter allowing `max` failures per `window_secs`; either 0 disables it.
    pub fn new(max: u32, window_secs: u64) -> FailedLogins {
        FailedLogins {
            max,
            window: Duration::from_secs(window_secs),
            state: Mutex::new(State {
                by_ip: HashMap::new(),
                last_prune: Instant::now(),
            }),
        }
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.max > 0 && !self.window.is_zero()
    }

    /// Whether a login from `ip` may proceed (`None`) or is refused.
    pub fn check(&self, ip: IpAddr) -> Option<Blocked> {
        self.check_at(ip, Instant::now())
    }

    /// Counts a failed login from `ip`.
    pub fn record_failure(&self, ip: IpAddr) {
        self.record_failure_at(ip, Instant::now());
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.state.lock().by_ip.len()
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Option<Blocked> {
        if !self.enabled() {
            return None;
        }
        let ip = key(ip);
        let mut st = self.state.lock();
        let e = st.by_ip.get_mut(&ip)?;
        let elapsed = now.saturating_duration_since(e.since);
        if elapsed >= self.window {
            st.by_ip.remove(&ip);
            return None;
        }
        if e.failures < self.max {
            return None;
        }
        let first = !e.logged;
        e.logged = true;
        Some(Blocked {
            retry_in: self.window - elapsed,
            failures: e.failures,
            first,
        })
    }

    fn record_failure_at(&self, ip: IpAddr, now: Instant) {
        if !self.enabled() {
            return;
        }
        let ip = key(ip);
        let window = self.window;
        let mut st = self.state.lock();
        if now.saturating_duration_since(st.last_prune) >= window
            || (st.by_ip.len() >= MAX_TRACKED && !st.by_ip.contains_key(&ip))
        {
            st.by_ip
                .retain(|_, e| now.saturating_duration_since(e.since) < window);
            st.last_prune = now;
        }
        if st.by_ip.len() >= MAX_TRACKED
            && !st.by_ip.contains_key(&ip)
            && let Some(oldest) = st
                .by_ip
                .iter()
                .min_by_key(|(_, e)| e.since)
                .map(|(k, _)| *k)
        {
            st.by_ip.remove(&oldest);
        }
        let e = st.by_ip.entry(ip).or_insert(Entry {
            since: now,
            failures: 0,
            logged: false,
        });
        if now.saturating_duration_since(e.since) >= window {
            *e = Entry {
                since: now,
                failures: 0,
                logged: false,
            };
        }
        e.failures = e.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_after_max_failures_until_the_window_ends() {
        let l = FailedLogins::new(3, 10);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for i in 0..3 {
            assert_eq!(l.check_at(a, t0), None, "attempt {i}");
            l.record_failure_at(a, t0 + Duration::from_secs(i));
        }
        let b = l.check_at(a, t0 + Duration::from_secs(4)).unwrap();
        assert!(b.first);
        assert_eq!(b.failures, 3);
        assert_eq!(b.retry_secs(), 6);
        let b = l.check_at(a, t0 + Duration::from_millis(9_500)).unwrap();
        assert!(!b.first, "logged once per window");
        assert_eq!(b.retry_secs(), 1);
        // Another address is not affected.
        assert_eq!(l.check_at(ip("10.0.0.2"), t0), None);
        // The window ends.
        assert_eq!(l.check_at(a, t0 + Duration::from_secs(10)), None);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn failures_in_an_ended_window_start_a_new_one() {
        let l = FailedLogins::new(2, 5);
        let t0 = Instant::now();
        let a = ip("::1");
        l.record_failure_at(a, t0);
        l.record_failure_at(a, t0 + Duration::from_secs(6));
        assert_eq!(l.check_at(a, t0 + Duration::from_secs(7)), None);
        l.record_failure_at(a, t0 + Duration::from_secs(8));
        assert!(l.check_at(a, t0 + Duration::from_secs(9)).is_some());
    }

    #[test]
    fn ipv4_mapped_addresses_share_the_ipv4_entry() {
        let l = FailedLogins::new(1, 60);
        l.record_failure(ip("::ffff:192.0.2.7"));
        assert!(l.check(ip("192.0.2.7")).is_some());
    }

    #[test]
    fn zero_disables() {
        for (max, window) in [(0, 60), (5, 0)] {
            let l = FailedLogins::new(max, window);
            let a = ip("127.0.0.1");
            for _ in 0..100 {
                l.record_failure(a);
            }
            assert_eq!(l.check(a), None);
            assert_eq!(l.tracked(), 0);
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let l = FailedLogins::new(5, 3600);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.record_failure_at(a, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
        // The oldest were dropped, the newest kept.
        let newest = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_TRACKED as u32 + 499,
        ));
        for _ in 0..4 {
            l.record_failure_at(newest, t0 + Duration::from_secs(20));
        }
        assert!(l.check_at(newest, t0 + Duration::from_secs(21)).is_some());
    }

    #[test]
    fn stale_entries_are_pruned() {
        let l = FailedLogins::new(5, 10);
        let t0 = Instant::now();
        for i in 0..100u32 {
            l.record_failure_at(IpAddr::from(std::net::Ipv4Addr::from(i)), t0);
        }
        assert_eq!(l.tracked(), 100);
        l.record_failure_at(ip("10.9.9.9"), t0 + Duration::from_secs(11));
        assert_eq!(l.tracked(), 1);
    }
}
