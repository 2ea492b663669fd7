//! The `process_*` metrics, read from `/proc/self` at every scrape (Linux; elsewhere they are left
//! out): `process_resident_memory_bytes`, `process_cpu_seconds_total` and `process_open_fds`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat` (`USER_HZ`, 100 on every
/// architecture Linux runs this on).
const USER_HZ: f64 = 100.0;

/// Collects the `process_*` metrics of this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

/// Resident memory in bytes, from the `VmRSS` line of `/proc/self/status` (in kB).
fn resident_memory_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time in seconds, from `/proc/self/stat` (fields 14 and 15, counted after
/// the parenthesised command name, which may hold spaces).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `after_name` starts at field 3 (state): field 14 is at index 11.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / USER_HZ)
}

fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count())
}

/// Writes one label-less metric, if there is a value.
fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: Option<impl EncodeMetric>,
) -> Result<(), std::fmt::Error> {
    match metric {
        Some(metric) => {
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        }
        None => Ok(()),
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        encode_one(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            resident_memory_bytes(&status).map(ConstGauge::new),
        )?;
        encode_one(
            &mut encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            cpu_seconds(&stat).map(ConstCounter::new),
        )?;
        encode_one(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            open_fds().map(ConstGauge::new),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let status = "Name:\tx\nVmPeak:\t 9000 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(resident_memory_bytes(status), Some(2048 * 1024));
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
    }

    #[test]
    fn this_process_has_memory_and_open_files() {
        let status = std::fs::read_to_string("/proc/self/status").expect("proc");
        assert!(resident_memory_bytes(&status).expect("rss") > 0);
        let stat = std::fs::read_to_string("/proc/self/stat").expect("proc");
        assert!(cpu_seconds(&stat).is_some());
        assert!(open_fds().expect("fds") >= 3);
    }
}
