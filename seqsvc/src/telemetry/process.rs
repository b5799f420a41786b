//! The standard process metrics (the names every Prometheus client library
//! exports), read from /proc at each scrape: `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`,
//! `process_threads`. Elsewhere than Linux nothing is rendered.

use std::fmt::Write;

/// What /proc says about this process.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
    threads: Option<u64>,
}

/// Appends the process metrics to a scrape.
pub fn render(out: &mut String) {
    if let Some(sample) = sample() {
        write_sample(out, &sample);
    }
}

fn write_sample(out: &mut String, sample: &Sample) {
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(value) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
    };
    let int = |v: Option<u64>| v.map(|v| v.to_string());
    let float = |v: Option<f64>| v.map(|v| format!("{v:.3}"));
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        int(sample.resident_bytes),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        int(sample.virtual_bytes),
    );
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        float(sample.cpu_seconds),
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        int(sample.open_fds),
    );
    metric(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        int(sample.max_fds),
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        float(sample.start_time_seconds),
    );
    metric(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        int(sample.threads),
    );
}

#[cfg(target_os = "linux")]
fn sample() -> Option<Sample> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let stat = read("/proc/self/stat")?;
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let mut sample = parse_stat(&stat, ticks as f64, page as u64);
    if let (Some(after_boot), Some(boot)) = (
        sample.start_time_seconds,
        read("/proc/stat").and_then(|s| boot_time(&s)),
    ) {
        sample.start_time_seconds = Some(boot as f64 + after_boot);
    } else {
        sample.start_time_seconds = None;
    }
    sample.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64);
    sample.max_fds = read("/proc/self/limits").and_then(|s| max_open_files(&s));
    Some(sample)
}

#[cfg(not(target_os = "linux"))]
fn sample() -> Option<Sample> {
    None
}

/// Fields of /proc/self/stat (proc(5)); `start_time_seconds` is still
/// relative to boot here.
fn parse_stat(stat: &str, ticks_per_second: f64, page_bytes: u64) -> Sample {
    // The command name is in parentheses and may hold spaces: fields are
    // counted after its closing one (field 3, the state, comes first).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Sample::default();
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = ticks_per_second.max(1.0);
    Sample {
        cpu_seconds: field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) as f64 / ticks),
        threads: field(20),
        start_time_seconds: field(22).map(|t| t as f64 / ticks),
        virtual_bytes: field(23),
        resident_bytes: field(24).map(|pages| pages * page_bytes),
        ..Sample::default()
    }
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    // "Max open files  <soft>  <hard>  files": the soft limit applies.
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_spaces_in_the_name() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194304 100 0 0 0 \
                    250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615";
        let sample = parse_stat(stat, 100.0, 4096);
        assert_eq!(sample.cpu_seconds, Some(3.0));
        assert_eq!(sample.threads, Some(7));
        assert_eq!(sample.start_time_seconds, Some(123.45));
        assert_eq!(sample.virtual_bytes, Some(104_857_600));
        assert_eq!(sample.resident_bytes, Some(2560 * 4096));
    }

    #[test]
    fn reads_boot_time_and_the_soft_fd_limit() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_memory_threads_and_fds() {
        let mut text = String::new();
        render(&mut text);
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(
                text.contains(&format!("\n{name} ")),
                "{name} missing from {text}"
            );
        }
    }
}
