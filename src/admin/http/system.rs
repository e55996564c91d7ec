//! What the operating system says about the broker process: memory, disk
//! space, file descriptors, and the alarms derived from them.
//!
//! Measurements and thresholds come from `crate::ops::alarms`, which also blocks
//! publishers while an alarm is in effect.

use crate::broker::Broker;
use crate::ops::alarms;

/// The host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    if s.is_empty() { "localhost".into() } else { s }
}

/// Open file descriptors of this process.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The file descriptor limit (soft).
pub fn max_fds() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        {
            r.rlim_cur as u64
        }
    } else {
        0
    }
}

/// Number of CPUs available.
pub fn processors() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A snapshot of resource use and the alarms it raises.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Resident memory in bytes.
    pub mem_used: u64,
    /// Memory alarm threshold.
    pub mem_limit: u64,
    /// Memory alarm in effect.
    pub mem_alarm: bool,
    /// Free disk in the data directory.
    pub disk_free: u64,
    /// Disk alarm threshold.
    pub disk_free_limit: u64,
    /// Disk alarm in effect.
    pub disk_free_alarm: bool,
    /// Open file descriptors.
    pub fd_used: u64,
    /// File descriptor limit.
    pub fd_total: u64,
}

impl Resources {
    /// Measures now.
    pub fn now(broker: &Broker) -> Resources {
        let cfg = &broker.config.alarms;
        let state = *broker.alarms.borrow();
        Resources {
            mem_used: alarms::rss_bytes(),
            mem_limit: alarms::memory_limit(cfg),
            mem_alarm: state.memory,
            disk_free: alarms::disk_free_bytes(&broker.config.data_dir).unwrap_or(0),
            disk_free_limit: cfg.disk_free_limit,
            disk_free_alarm: state.disk,
            fd_used: open_fds(),
            fd_total: max_fds(),
        }
    }

    /// The alarms in effect, by RabbitMQ's resource names.
    pub fn alarms(&self) -> Vec<&'static str> {
        let mut a = Vec::new();
        if self.mem_alarm {
            a.push("memory");
        }
        if self.disk_free_alarm {
            a.push("disk");
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_has_memory_and_the_disk_has_space() {
        assert!(alarms::rss_bytes() > 0);
        assert!(alarms::total_memory_bytes() > alarms::rss_bytes());
        assert!(alarms::disk_free_bytes(std::path::Path::new("/tmp/does/not/exist")).unwrap() > 0);
        assert!(open_fds() > 0);
        assert!(!hostname().is_empty());
    }
}
