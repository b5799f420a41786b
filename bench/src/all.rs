//! `bench all`: every benchmark in one run, each as a child process of this
//! binary so one failing does not hide the others' results. `--quick` uses
//! small workloads (under three minutes in total): a smoke check that every
//! benchmark still runs end to end, not a measurement to quote (its JSON
//! files go to a scratch directory, not `bench/results/`).

use std::process::Command;

#[derive(clap::Args, Clone, Debug)]
pub struct AllArgs {
    /// Small workloads and short windows.
    #[arg(long)]
    quick: bool,
}

/// A W1 mix small enough for a smoke run.
const QUICK_W1: &[&str] = &[
    "fanout",
    "--users",
    "1000",
    "--conversations",
    "200",
    "--subscribed-share",
    "0.025",
];

pub fn run(args: AllArgs) -> anyhow::Result<()> {
    let runs: Vec<(&str, Vec<&str>)> = if args.quick {
        vec![
            ("seq", vec!["seq", "--duration-secs", "1"]),
            (
                "readstate",
                vec![
                    "readstate",
                    "--conversations",
                    "200",
                    "--large-group-members",
                    "1500",
                    "--repeats",
                    "20",
                    "--redis-peer",
                ],
            ),
            (
                "catchup",
                vec!["catchup", "--entries", "10000", "--redis-peer"],
            ),
            (
                "search",
                vec![
                    "search",
                    "--messages",
                    "20000",
                    "--conversations",
                    "500",
                    "--users",
                    "1000",
                    "--queries",
                    "20",
                    // The smoke run needs no OpenSearch node.
                    "--backends",
                    "embedded",
                    "--lag-secs",
                    "3",
                    "--lag-users",
                    "1000",
                    "--lag-conversations",
                    "200",
                    "--lag-concurrency",
                    "8",
                ],
            ),
            (
                "devices",
                vec![
                    "devices",
                    "--subscriptions",
                    "2000",
                    "--connections",
                    "200",
                    "--rate",
                    "200",
                    "--duration-secs",
                    "3",
                    "--settle-secs",
                    "1",
                ],
            ),
            (
                "fanout",
                [QUICK_W1, &["--duration-secs", "5", "--redis-peer"]].concat(),
            ),
            (
                "fanout sweep",
                [
                    QUICK_W1,
                    &[
                        "--duration-secs",
                        "2",
                        "--sweep",
                        "--sweep-start-rate",
                        "200",
                    ],
                    &[
                        "--sweep-factor",
                        "3",
                        "--sweep-retries",
                        "0",
                        "--redis-peer",
                    ],
                ]
                .concat(),
            ),
        ]
    } else {
        vec![
            ("seq", vec!["seq"]),
            ("catchup", vec!["catchup", "--redis-peer"]),
            ("search", vec!["search"]),
            (
                "devices",
                vec![
                    "devices",
                    "--subscriptions",
                    "100000",
                    "--connections",
                    "8000",
                    "--centrifugo-peer",
                ],
            ),
            ("readstate", vec!["readstate", "--redis-peer"]),
            ("fanout", vec!["fanout", "--redis-peer"]),
            (
                "fanout open loop",
                vec!["fanout", "--rate", "1500", "--redis-peer"],
            ),
            ("fanout sweep", vec!["fanout", "--sweep", "--redis-peer"]),
        ]
    };
    let exe = std::env::current_exe()?;
    // Smoke results are not measurements: keep them out of bench/results/.
    let scratch = tempfile::tempdir()?;
    let mut failed = Vec::new();
    for (name, run_args) in &runs {
        eprintln!("== bench {}", run_args.join(" "));
        let started = std::time::Instant::now();
        let mut command = Command::new(&exe);
        command.args(run_args);
        if args.quick {
            command
                .arg("--out")
                .arg(scratch.path().join(format!("{}.json", run_args[0])));
        }
        let status = command.status()?;
        eprintln!(
            "== {name}: {} in {:.0} s",
            if status.success() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if !status.success() {
            failed.push(*name);
        }
    }
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}
