//! Retention through the real server and `tl`: old inbox entries are
//! trimmed, a device whose checkpoint fell below them is told so (never a
//! silent gap), and `--resync` continues from the oldest kept entry.

use std::time::{Duration, Instant};
use tests::{Server, json_lines, tl};

#[test]
fn expired_checkpoints_are_reported_and_resync_continues() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let args = [
        "--inbox-retention-entries",
        "5",
        "--retention-interval-secs",
        "1",
    ];
    let server = Server::start_with(dir.path(), &args)?;
    let url = server.url();
    let alice = server.device_token(1, "phone")?;
    let bob = server.device_token(2, "phone")?;
    let state = dir.path().join("bob.json");
    let state = state.to_str().unwrap();
    let created = tl(&url, &alice, &["conversation", "create", "--members", "2"]);
    assert!(created.status.success());
    let conv = String::from_utf8(created.stdout)?.trim().to_owned();
    assert_eq!(
        json_lines(&tl(&url, &bob, &["sync", "--state", state])).len(),
        1
    );
    for i in 0..20 {
        let sent = tests::tl_send(&url, &alice, &conv, &format!("m{i}"), None);
        assert!(sent.status.success());
    }

    // Wait for a retention pass to trim bob's inbox, probing with copies of
    // his state so that his own checkpoint stays where it was.
    let probe = dir.path().join("probe.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let expired = loop {
        std::fs::copy(state, &probe)?;
        let out = tl(&url, &bob, &["sync", "--state", probe.to_str().unwrap()]);
        if !out.status.success() {
            break String::from_utf8(out.stderr)?;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no retention pass trimmed the inbox"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let again = tl(&url, &bob, &["sync", "--state", state]);
    assert!(
        !again.status.success(),
        "the same answer for the device itself"
    );
    assert!(
        expired.starts_with("error: checkpoint 1 expired"),
        "{expired}"
    );

    let resynced = tl(&url, &bob, &["sync", "--state", state, "--resync"]);
    assert!(resynced.status.success());
    assert!(String::from_utf8_lossy(&resynced.stderr).contains("warning: checkpoint 1 expired"));
    let texts: Vec<String> = json_lines(&resynced)
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        ["m15", "m16", "m17", "m18", "m19"],
        "the newest 5 are kept"
    );
    // History still holds every message.
    let history = json_lines(&tl(
        &url,
        &bob,
        &["history", "--conversation", &conv, "--limit", "100"],
    ));
    assert_eq!(history.len(), 21);
    Ok(())
}
