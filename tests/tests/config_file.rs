//! `syncd serve --config FILE` and `syncd config --print`, as an operator
//! uses them: a file holds the settings, an environment variable overrides
//! it, a flag overrides both; an unknown key or a bad value stops the start
//! with a message naming the key and changes nothing; the printed
//! configuration never shows a secret.

use std::path::Path;
use std::process::{Command, Output};
use tests::metrics::Scrape;
use tests::syncd_bin;

/// The environment variables of `syncd serve`, cleared so the caller's own
/// environment cannot leak into a test.
const SYNCD_ENV: &[&str] = &[
    "SYNCD_CONFIG",
    "SYNCD_DATA_DIR",
    "SYNCD_STORE",
    "SYNCD_LISTEN",
    "SYNCD_METRICS_LISTEN",
    "SYNCD_SEQSVC",
];

fn syncd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(syncd_bin());
    for name in SYNCD_ENV {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running syncd")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The value `syncd config --print` shows for `key` (the text after `=`,
/// before the source comment).
fn printed(output: &Output, key: &str) -> String {
    assert!(
        output.status.success(),
        "config --print failed: {}",
        stderr(output)
    );
    let text = stdout(output);
    let table: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("not TOML ({e}): {text}"));
    table
        .get(key)
        .map(|v| v.to_string())
        .unwrap_or_else(|| panic!("{key} not printed: {text}"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("timeline.toml");
    let config = file.to_str().unwrap();
    write(&file, "listen = \"127.0.0.1:1111\"\nseq-step = 500\n");
    let flag = [
        "config",
        "--print",
        "--config",
        config,
        "--listen",
        "127.0.0.1:3333",
    ];
    let plain = ["config", "--print", "--config", config];
    let env = [("SYNCD_LISTEN", "127.0.0.1:2222")];

    assert_eq!(printed(&syncd(&flag, &env), "listen"), "\"127.0.0.1:3333\"");
    assert_eq!(
        printed(&syncd(&plain, &env), "listen"),
        "\"127.0.0.1:2222\""
    );
    assert_eq!(printed(&syncd(&plain, &[]), "listen"), "\"127.0.0.1:1111\"");
    assert_eq!(
        printed(&syncd(&["config", "--print"], &[]), "listen"),
        "\"127.0.0.1:7400\""
    );
    // The file's other key stays in force under the flag and the variable.
    assert_eq!(printed(&syncd(&flag, &env), "seq-step"), "500");
    // The file may also be named by the environment.
    let by_env = syncd(&["config", "--print"], &[("SYNCD_CONFIG", config)]);
    assert_eq!(printed(&by_env, "seq-step"), "500");
    let text = stdout(&syncd(&flag, &env));
    assert!(
        text.contains("listen = \"127.0.0.1:3333\"  # command line"),
        "{text}"
    );
    assert!(text.contains("seq-step = 500  # config file"), "{text}");
}

/// The file is what `serve` runs with: its data directory, listeners and
/// settings, with no flag but `--config`.
#[test]
fn serve_runs_with_the_file_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let file = dir.path().join("timeline.toml");
    write(
        &file,
        &format!(
            "data-dir = {:?}\nlisten = \"127.0.0.1:0\"\nmetrics-listen = \"127.0.0.1:0\"\nlarge-group-threshold = 3\n",
            data.to_str().unwrap()
        ),
    );
    let (child, announced) =
        tests::spawn_announced(&syncd_bin(), ["serve", "--config", file.to_str().unwrap()])?;
    let _server = KillOnDrop(child);
    let metrics = announced.metrics.expect("metrics-listen from the file");
    let scrape = Scrape::take(&metrics)?;
    assert_eq!(scrape.value("syncd_ready", &[]), 1.0, "{}", scrape.text);
    assert!(
        data.join("auth.key").exists(),
        "the file's data directory is used"
    );
    Ok(())
}

/// Kills the child when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn unknown_keys_and_bad_values_are_refused_by_name_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("never-created");
    for (text, key, why) in [
        ("seq-stepp = 5\n", "\"seq-stepp\"", "unknown key"),
        (
            "seq-step = \"lots\"\n",
            "\"seq-step\"",
            "invalid value 'lots'",
        ),
        ("listen = 7400\n", "\"listen\"", "invalid value '7400'"),
        ("seqsvc = { a = 1 }\n", "\"seqsvc\"", "expected a string"),
        ("node-id = [1, 2]\n", "\"node-id\"", "expected one value"),
    ] {
        let file = dir.path().join("bad.toml");
        write(
            &file,
            &format!("data-dir = {:?}\n{text}", data.to_str().unwrap()),
        );
        let output = syncd(&["serve", "--config", file.to_str().unwrap()], &[]);
        assert!(!output.status.success(), "{text:?} was accepted");
        let message = stderr(&output);
        assert!(
            message.contains(&format!("key {key}")) && message.contains(why),
            "{text:?}: {message}"
        );
        assert!(message.contains("bad.toml"), "the file is named: {message}");
        assert!(
            !data.exists(),
            "{text:?}: a refused start created the data directory"
        );
    }
}

#[test]
fn the_printed_configuration_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("timeline.toml");
    write(
        &file,
        "data-dir = \"/var/lib/timeline\"\nstore = \"scylla://ops:hunter2@10.0.0.1:9042/timeline\"\n",
    );
    let output = syncd(
        &["config", "--print", "--config", file.to_str().unwrap()],
        &[],
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!text.contains("hunter2"), "a password was printed: {text}");
    assert_eq!(
        printed(&output, "store"),
        "\"scylla://ops:<redacted>@10.0.0.1:9042/timeline\""
    );
    assert_eq!(printed(&output, "data-dir"), "\"/var/lib/timeline\"");
}
