//! Logging of the project's server binaries (seqsvc's roles and syncd): one
//! setup, so every process reads `RUST_LOG` and writes the same format.
//! Only binaries call it; library code only emits events.

use std::io::IsTerminal;

/// Logs to stderr (colours only on a terminal) with `RUST_LOG`'s filter, or
/// `default_filter` without one.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
}
