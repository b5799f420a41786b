//! Latency summaries, process resource readings and the JSON result file.

use hdrhistogram::Histogram;
use std::path::PathBuf;

/// Microsecond histogram from 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// CPU seconds (user + system) this process has used so far.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_at("/proc/self/stat")
}

/// CPU seconds from a `/proc/<pid>/stat` file.
pub fn cpu_seconds_at(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory in MiB from a `/proc/<pid>/status` file.
pub fn peak_rss_mib_at(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Writes `value` to `bench/results/<name>-<unix time>.json` (or `path`).
pub fn write_json(
    name: &str,
    path: Option<PathBuf>,
    value: &serde_json::Value,
) -> anyhow::Result<PathBuf> {
    let path = match path {
        Some(path) => path,
        None => {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
            std::fs::create_dir_all(&dir)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            dir.join(format!("{name}-{now}.json"))
        }
    };
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

/// Shows how far a measured window has run, on stderr: a redrawn bar on a
/// terminal, a line per tenth otherwise (logs). Stops when dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(label: &str, total: std::time::Duration) -> Self {
        use std::io::{IsTerminal, Write};
        let label = label.to_owned();
        let terminal = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            const WIDTH: usize = 30;
            let start = tokio::time::Instant::now();
            let mut last_tenth = 0;
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let done = (start.elapsed().as_secs_f64() / total.as_secs_f64()).min(1.0);
                let filled = (done * WIDTH as f64) as usize;
                if terminal {
                    eprint!(
                        "\r[{}{}] {:>5.1}/{:.0} s {label}",
                        "=".repeat(filled),
                        " ".repeat(WIDTH - filled),
                        start.elapsed().as_secs_f64().min(total.as_secs_f64()),
                        total.as_secs_f64()
                    );
                    let _ = std::io::stderr().flush();
                } else if (done * 10.0) as usize > last_tenth {
                    last_tenth = (done * 10.0) as usize;
                    eprintln!("{label}: {}%", last_tenth * 10);
                }
                if done >= 1.0 {
                    if terminal {
                        eprintln!();
                    }
                    return;
                }
            }
        });
        Self { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
