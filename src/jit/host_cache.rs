//! The host's cache sizes, for the plans whose blocking depends on them: the CPU under
//! cnnc changes (Zen 2 with 512 KB of L2 per core, Zen 5 and recent Xeons with 1-2 MB),
//! and a working set sized for one spills on the other.

use std::sync::OnceLock;

/// L2 per core where the host does not say (`/sys` absent): the larger caches of the
/// hosts the plans were first tuned on, so that nothing changes there.
const DEFAULT_L2_BYTES: usize = 1 << 20;

/// Bytes of L2 per core: `CNNC_L2_KB` (a measuring knob), else cpu0's unified level-2 cache
/// from `/sys/devices/system/cpu/cpu0/cache`, else [`DEFAULT_L2_BYTES`].
pub(crate) fn l2_bytes() -> usize {
    static FROM_SYS: OnceLock<Option<usize>> = OnceLock::new();
    crate::knobs::number::<usize>("CNNC_L2_KB")
        .map(|kb| kb * 1024)
        .or_else(|| *FROM_SYS.get_or_init(|| sysfs_cache_bytes(2)))
        .unwrap_or(DEFAULT_L2_BYTES)
}

/// The size of cpu0's data or unified cache of `level`, if sysfs lists one.
fn sysfs_cache_bytes(level: u32) -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.flatten().find_map(|entry| {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok();
        let is_level = read("level")?.trim().parse::<u32>().ok()? == level;
        let holds_data = matches!(read("type")?.trim(), "Data" | "Unified");
        (is_level && holds_data).then(|| parse_size(&read("size")?))?
    })
}

/// `512K`, `1M`, `1024` (bytes) as sysfs writes them.
fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let (digits, unit) = match t.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1 << 10),
        None => match t.strip_suffix(['M', 'm']) {
            Some(d) => (d, 1 << 20),
            None => (t, 1),
        },
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sizes_parse() {
        assert_eq!(parse_size("512K\n"), Some(512 * 1024));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn the_l2_is_a_plausible_size() {
        let l2 = l2_bytes();
        assert!((64 << 10..=64 << 20).contains(&l2), "L2 {l2} bytes");
    }
}
