//! What the operating system says about the broker process: memory, disk
//! space, file descriptors, and the alarms derived from them.
//!
//! Thresholds are RabbitMQ's defaults: the memory alarm goes off above 40 %
//! of physical memory (`vm_memory_high_watermark` 0.4), the disk alarm below
//! 50 MB free in the data directory (`disk_free_limit`). warren reports these
//! alarms (health checks, `/api/nodes`, metrics); it does not yet block
//! publishers when one is in effect.

use std::path::Path;

/// Fraction of physical memory above which the memory alarm is raised.
pub const MEMORY_HIGH_WATERMARK: f64 = 0.4;
/// Free bytes in the data directory below which the disk alarm is raised.
pub const DISK_FREE_LIMIT: u64 = 50_000_000;

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

fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
}

/// Resident memory of this process, in bytes.
pub fn resident_memory() -> u64 {
    proc_kb("/proc/self/status", "VmRSS:").unwrap_or(0)
}

/// Physical memory, in bytes.
pub fn total_memory() -> u64 {
    proc_kb("/proc/meminfo", "MemTotal:").unwrap_or(0)
}

/// Memory above which the memory alarm is raised.
pub fn memory_limit() -> u64 {
    (total_memory() as f64 * MEMORY_HIGH_WATERMARK) as u64
}

/// Free bytes (for unprivileged users) on the file system holding `path`;
/// its nearest existing ancestor if it does not exist yet.
pub fn disk_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
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
    pub fn now(data_dir: &Path) -> Resources {
        let mem_used = resident_memory();
        let mem_limit = memory_limit();
        let free = disk_free(data_dir);
        Resources {
            mem_used,
            mem_limit,
            mem_alarm: mem_limit > 0 && mem_used > mem_limit,
            disk_free: free.unwrap_or(0),
            disk_free_limit: DISK_FREE_LIMIT,
            disk_free_alarm: free.is_some_and(|f| f < DISK_FREE_LIMIT),
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
        assert!(resident_memory() > 0);
        assert!(total_memory() > resident_memory());
        assert!(disk_free(Path::new("/tmp/does/not/exist")).unwrap() > 0);
        assert!(open_fds() > 0);
        assert!(!hostname().is_empty());
    }
}
