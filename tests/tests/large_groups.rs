//! Large groups (read fanout) through the real server and `tl`: members see
//! one ordered stream per conversation, whether a message reached them by
//! inbox copy or from the conversation timeline, and nothing twice.

use tests::{Server, json_lines, tl, tl_add_members, tl_send};

fn texts(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|e| e["kind"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn members_read_large_groups_once_across_the_switch_from_write_fanout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), &["--large-group-threshold", "3"])?;
    let url = server.url();
    let ops = server.service_token("ops")?;
    let alice = server.device_token(1, "phone")?;
    let bob = server.device_token(2, "phone")?;
    let state = |name: &str| {
        dir.path()
            .join(format!("{name}.json"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let sync =
        |token: &str, name: &str| json_lines(&tl(&url, token, &["sync", "--state", &state(name)]));

    // Three members: write fanout.
    let created = tl(
        &url,
        &alice,
        &["conversation", "create", "--members", "2,3"],
    );
    assert!(created.status.success());
    let conv = String::from_utf8(created.stdout)?.trim().to_owned();
    let send = |token: &str, text: &str| {
        let out = tl_send(&url, token, &conv, text, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    send(&alice, "before");
    assert_eq!(texts(&sync(&bob, "bob")), ["before"]);

    // A fourth member switches the group to read fanout.
    let added = tl_add_members(&url, &ops, &conv, "4");
    assert!(added.status.success());
    let record: serde_json::Value = serde_json::from_slice(&added.stdout)?;
    // Past the threshold the record counts its members and lists none.
    assert_eq!(record["member_count"], 4);
    assert_eq!(record["read_fanout"], true);
    send(&alice, "after one");
    send(&alice, "after two");

    let bob_lines = sync(&bob, "bob");
    assert_eq!(
        texts(&bob_lines),
        ["after one", "after two"],
        "each message exactly once, in order"
    );
    assert!(sync(&bob, "bob").is_empty(), "nothing new");

    // The new member starts at the switch, not at the group's beginning.
    let dave = server.device_token(4, "phone")?;
    let dave_lines = sync(&dave, "dave");
    assert_eq!(dave_lines[0]["kind"], "members_added");
    assert_eq!(texts(&dave_lines), ["after one", "after two"]);

    // History shows the whole conversation in conv_seq order.
    let history = json_lines(&tl(&url, &bob, &["history", "--conversation", &conv]));
    assert_eq!(texts(&history), ["before", "after one", "after two"]);
    Ok(())
}
