//! What this machine has: RAM, cores, free disk. Read from the kernel, no guessing.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub ram_total_bytes: u64,
    pub ram_available_bytes: u64,
    pub cores: u32,
    pub disk_free_bytes: u64,
}

/// Reads the machine's resources; `disk` is the directory whose filesystem counts.
pub fn read(disk: &Path) -> Resources {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Resources {
        ram_total_bytes: meminfo_kib(&meminfo, "MemTotal:") * 1024,
        ram_available_bytes: meminfo_kib(&meminfo, "MemAvailable:") * 1024,
        cores: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        disk_free_bytes: disk_free(disk),
    }
}

fn meminfo_kib(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn disk_free(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return 0 };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return 0;
    }
    stat.f_bavail as u64 * stat.f_frsize as u64
}

/// How busy the disk holding `path` is: the share of `window` it spent doing I/O, in percent
/// (from the block device's `io_ticks`). `None` when the path is not on a block device.
pub fn disk_busy_percent(path: &Path, window: std::time::Duration) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let stat = format!("/sys/dev/block/{major}:{minor}/stat");
    let io_ticks = || std::fs::read_to_string(&stat).ok()?.split_whitespace().nth(9)?.parse::<u64>().ok();
    let before = io_ticks()?;
    std::thread::sleep(window);
    let after = io_ticks()?;
    Some((after.saturating_sub(before) * 100 / window.as_millis().max(1) as u64).min(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_lines_are_parsed_in_kib() {
        let text = "MemTotal:       24576000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal:"), 24_576_000);
        assert_eq!(meminfo_kib(text, "MemAvailable:"), 20_000_000);
        assert_eq!(meminfo_kib(text, "Missing:"), 0);
    }

    #[test]
    fn the_disk_holding_a_path_reports_how_busy_it_is() {
        if let Some(busy) = disk_busy_percent(Path::new("/"), std::time::Duration::from_millis(50)) {
            assert!(busy <= 100);
        }
    }

    #[test]
    fn this_machine_has_ram_cores_and_disk() {
        let r = read(Path::new("/"));
        assert!(r.ram_total_bytes > 0 && r.ram_available_bytes <= r.ram_total_bytes);
        assert!(r.cores >= 1);
        assert!(r.disk_free_bytes > 0);
    }
}
