//! Waiting for the machine to be quiet before a timed round.
//!
//! Benchmarks often share a small machine with builds and test runs. Before each round
//! the harness (which is idle at that point: the previous runtime is gone) samples the
//! machine's CPU use from /proc/stat; while other processes keep more than
//! [`BUSY_LIMIT`] of it busy, it waits, up to [`MAX_WAIT`] per round and [`TOTAL_WAIT`]
//! per process, and says so on stderr.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Share of all CPUs others may use for the machine to count as quiet.
const BUSY_LIMIT: f64 = 0.10;
/// How long one sample lasts.
const SAMPLE: Duration = Duration::from_millis(100);
/// Longest wait before one round.
const MAX_WAIT: Duration = Duration::from_secs(15);
/// Longest wait over the whole process; past it rounds run whatever the load.
const TOTAL_WAIT: Duration = Duration::from_secs(180);

static WAITED_MS: AtomicU64 = AtomicU64::new(0);

/// (busy, total) jiffies over all CPUs, from the first line of /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?; // idle + iowait
    Some((total - idle, total))
}

/// Share of all CPUs busy over one sample, or `None` where /proc/stat is unreadable.
fn busy_share() -> Option<f64> {
    let (busy0, total0) = cpu_jiffies()?;
    std::thread::sleep(SAMPLE);
    let (busy1, total1) = cpu_jiffies()?;
    let total = total1.saturating_sub(total0);
    (total > 0).then(|| busy1.saturating_sub(busy0) as f64 / total as f64)
}

/// Returns once the machine looks quiet, or when the waiting limits are reached.
pub fn wait() {
    let start = Instant::now();
    let mut said = false;
    loop {
        let Some(busy) = busy_share() else { return };
        if busy <= BUSY_LIMIT {
            break;
        }
        let waited_total = Duration::from_millis(WAITED_MS.load(Relaxed)) + start.elapsed();
        if start.elapsed() >= MAX_WAIT || waited_total >= TOTAL_WAIT {
            eprintln!(
                "    (machine still busy: {:.0}% CPU; measuring anyway)",
                busy * 100.0
            );
            break;
        }
        if !said {
            eprintln!("    (machine busy: {:.0}% CPU; waiting)", busy * 100.0);
            said = true;
        }
    }
    WAITED_MS.fetch_add(start.elapsed().as_millis() as u64, Relaxed);
}
