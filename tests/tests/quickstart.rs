//! The README quickstart, end to end through the real `syncd` and `tl`
//! binaries, including a kill -9 and restart.

use std::collections::HashSet;
use tests::{Server, json_lines, tl, tl_add_members, tl_send};

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "tl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A failing command exits non-zero and says why on its first stderr line.
fn fails_with(output: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, got {:?}",
        output.stdout
    );
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

#[test]
fn quickstart_on_the_embedded_store() -> anyhow::Result<()> {
    quickstart_flow_survives_kill9_and_rejects_bad_input(&[])
}

#[test]
fn quickstart_on_the_scylla_store() -> anyhow::Result<()> {
    let keyspace = tests::CqlKeyspace::new("quickstart");
    quickstart_flow_survives_kill9_and_rejects_bad_input(&["--store", &keyspace.url])
}

fn quickstart_flow_survives_kill9_and_rejects_bad_input(store_args: &[&str]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start_with(dir.path(), store_args)?;
    let url = server.url();
    let alice = server.device_token(1, "phone")?;
    let bob_phone = server.device_token(2, "phone")?;
    let bob_laptop = server.device_token(2, "laptop")?;
    let stranger = server.device_token(9, "phone")?;

    let conversation = ok(&tl(
        &url,
        &alice,
        &["conversation", "create", "--members", "1,2,3"],
    ));
    let conversation: u64 = conversation.parse()?;
    let conv = conversation.to_string();

    let id = "0b5c4a36-1111-4a5e-8c1e-3f1d2c9e7a10";
    let first = json_lines(&tl_send(&url, &alice, &conv, "hi", Some(id)));
    let again = json_lines(&tl_send(&url, &alice, &conv, "hi", Some(id)));
    assert_eq!(
        first[0]["msg_id"], again[0]["msg_id"],
        "a retry returns the first result"
    );
    assert_eq!(first[0]["duplicate"], false);
    assert_eq!(again[0]["duplicate"], true);
    ok(&tl_send(&url, &alice, &conv, "second", None));

    // Two devices of one user each get every entry once.
    let state = tempfile::tempdir()?;
    let phone_state = state.path().join("phone.json");
    let laptop_state = state.path().join("laptop.json");
    let phone_sync = |token: &str, file: &std::path::Path| {
        json_lines(&tl(
            &url,
            token,
            &["sync", "--state", file.to_str().unwrap()],
        ))
    };
    let phone = phone_sync(&bob_phone, &phone_state);
    let laptop = phone_sync(&bob_laptop, &laptop_state);
    let kinds: Vec<&str> = phone.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["conversation_created", "message", "message"]);
    assert_eq!(phone, laptop);
    for entry in &phone {
        for field in [
            "seq",
            "kind",
            "conversation_id",
            "conv_seq",
            "msg_id",
            "sender_id",
            "client_msg_id",
            "text",
        ] {
            assert!(entry.get(field).is_some(), "entry lacks {field}: {entry}");
        }
    }
    assert_eq!(phone[1]["text"], "hi");
    assert_eq!(phone[1]["client_msg_id"], id);
    assert!(
        phone_sync(&bob_phone, &phone_state).is_empty(),
        "nothing new"
    );
    let last_seq = phone.last().unwrap()["seq"].as_u64().unwrap();

    // Acknowledged sends survive kill -9; sync resumes above the checkpoint.
    ok(&tl_send(&url, &alice, &conv, "before crash", None));
    server.restart_after_kill9()?;
    let url = server.url();
    ok(&tl_send(&url, &alice, &conv, "after crash", None));
    let resumed = json_lines(&tl(
        &url,
        &bob_phone,
        &["sync", "--state", phone_state.to_str().unwrap()],
    ));
    let texts: Vec<&str> = resumed
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["before crash", "after crash"]);
    let seqs: Vec<u64> = resumed.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs[0] > last_seq && seqs[1] > seqs[0],
        "seqs {seqs:?} after {last_seq}"
    );
    // The retry of the pre-crash send is still a duplicate after restart.
    let retried = json_lines(&tl_send(&url, &alice, &conv, "hi", Some(id)));
    assert_eq!(retried[0]["msg_id"], first[0]["msg_id"]);

    // History pages backwards and forwards, oldest first within a page.
    let history = json_lines(&tl(&url, &bob_phone, &["history", "--conversation", &conv]));
    assert_eq!(history.len(), 5);
    let newest_two = json_lines(&tl(
        &url,
        &bob_phone,
        &["history", "--conversation", &conv, "--limit", "2"],
    ));
    assert_eq!(newest_two, history[3..].to_vec());
    let before = history[3]["conv_seq"].as_u64().unwrap().to_string();
    let two_from = |side: &str, conv_seq: &str| {
        json_lines(&tl(
            &url,
            &bob_phone,
            &[
                "history",
                "--conversation",
                &conv,
                side,
                conv_seq,
                "--limit",
                "2",
            ],
        ))
    };
    let older = two_from("--before", &before);
    assert_eq!(older, history[1..3].to_vec());
    let after = history[0]["conv_seq"].as_u64().unwrap().to_string();
    let forward = two_from("--after", &after);
    assert_eq!(forward, history[1..3].to_vec());
    let msg_ids: HashSet<_> = history
        .iter()
        .map(|e| e["msg_id"].as_u64().unwrap())
        .collect();
    assert_eq!(msg_ids.len(), 5, "message ids are unique");

    // Bad input: a clear one-line error and a non-zero exit, nothing changed.
    fails_with(&tl_send(&url, &alice, "999999", "x", None), "not a member");
    fails_with(&tl_send(&url, &stranger, &conv, "x", None), "not a member");
    fails_with(
        &tl(&url, &stranger, &["history", "--conversation", &conv]),
        "not a member",
    );
    fails_with(
        &tl(
            &url,
            "tl1.bogus.token",
            &["history", "--conversation", &conv],
        ),
        "invalid token",
    );
    let oversized = "x".repeat(70_000);
    fails_with(&tl_send(&url, &alice, &conv, &oversized, None), "at most");
    fails_with(&tl_send(&url, &alice, &conv, "x", Some("nope")), "nope");
    fails_with(&tl_add_members(&url, &alice, &conv, "4"), "service token");
    fails_with(
        &tl_send(&url, &alice, "abc", "x", None),
        "invalid value 'abc'",
    );
    let unchanged = json_lines(&tl(&url, &bob_phone, &["history", "--conversation", &conv]));
    assert_eq!(unchanged, history, "failed calls changed nothing");

    // Services manage members and append system messages.
    let ops = server.service_token("ops")?;
    ok(&tl_add_members(&url, &ops, &conv, "9"));
    ok(&tl(
        &url,
        &ops,
        &["append", "--conversation", &conv, "--text", "welcome"],
    ));
    let newcomer = json_lines(&tl(
        &url,
        &stranger,
        &[
            "sync",
            "--state",
            state.path().join("s.json").to_str().unwrap(),
        ],
    ));
    let kinds: Vec<&str> = newcomer
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["members_added", "message"]);
    assert_eq!(newcomer[1]["sender_id"], 0);
    Ok(())
}

#[test]
fn every_command_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["conversation"],
        &["conversation", "create"],
        &["conversation", "show"],
        &["conversation", "add-members"],
        &["conversation", "remove-members"],
        &["send"],
        &["append"],
        &["sync"],
        &["watch"],
        &["history"],
    ];
    for command in commands {
        let output = std::process::Command::new(tests::tl_bin())
            .args(*command)
            .arg("--help")
            .output()
            .unwrap();
        assert!(output.status.success(), "tl {command:?} --help");
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage"));
    }
    for command in [&["serve"][..], &["token"], &[]] {
        let output = std::process::Command::new(tests::syncd_bin())
            .args(command)
            .arg("--help")
            .output()
            .unwrap();
        assert!(output.status.success(), "syncd {command:?} --help");
    }
    let missing = std::process::Command::new(tests::syncd_bin())
        .args(["token"])
        .output()
        .unwrap();
    assert!(
        !missing.status.success(),
        "syncd token without arguments fails"
    );
}

/// A failed call reads `error: <what failed>: <why>`: one `error:` prefix,
/// whatever status code the server answered with (a status the CLI has no
/// name for used to print `error: error: ...`).
#[test]
fn a_failed_call_prints_one_error_prefix() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A gRPC server that does not serve the Timeline API: every call fails
    // with UNIMPLEMENTED.
    let other = tests::Process::start(
        &tests::seqsvc_bin(),
        &["store", "--data-dir", dir.path().to_str().unwrap()],
    )?;
    let output = tl(
        &format!("http://{}", other.addr),
        "any-token",
        &["history", "--conversation", "1"],
    );
    assert!(!output.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    let reason = first
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("stderr {stderr:?} lacks the error prefix"));
    assert!(
        !reason.starts_with("error"),
        "stderr {stderr:?} repeats the error prefix"
    );
    assert!(
        reason.starts_with("unimplemented"),
        "stderr {stderr:?} does not name the status"
    );
    Ok(())
}
