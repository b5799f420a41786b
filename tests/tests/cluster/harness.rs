//! The cluster under test: its nodes and their flags, the addresses
//! callers may use, and the calls senders, devices and the checker make
//! through whichever node answers.

use super::*;

/// What a run's server settings exercise besides the faults.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Variant {
    /// Groups of more than this many members are large (read fanout): the
    /// everyone-group of `USERS` is, the pairs are not.
    pub(crate) large_group_threshold: Option<u64>,
    /// Inboxes keep this many entries; retention trims the rest every
    /// second.
    pub(crate) retention_entries: Option<u64>,
}

pub(crate) fn node_args(store: &str, seqsvc: &[String], variant: Variant) -> Vec<String> {
    let mut args = tests::cluster_node_args(store, LEASE_MS, RENEW_MS);
    args.extend(["--seq-step".to_owned(), "64".to_owned()]);
    if !seqsvc.is_empty() {
        args.extend(["--seqsvc".to_owned(), seqsvc.join(",")]);
    }
    if let Some(threshold) = variant.large_group_threshold {
        args.extend(["--large-group-threshold".to_owned(), threshold.to_string()]);
    }
    if let Some(entries) = variant.retention_entries {
        args.extend([
            "--inbox-retention-entries".to_owned(),
            entries.to_string(),
            "--retention-interval-secs".to_owned(),
            "1".to_owned(),
        ]);
    }
    args
}

/// The nodes' URLs as callers see them now (a killed node leaves, a
/// restarted one comes back under its new port).
#[derive(Clone, Default)]
pub(crate) struct Live(Arc<Mutex<Vec<String>>>);

impl Live {
    pub(crate) fn pick(&self, rng: &Mutex<SeededRng>) -> String {
        let urls = self.0.lock().unwrap();
        let i = rng.lock().unwrap().next(urls.len() as u64) as usize;
        urls[i].clone()
    }
    pub(crate) fn set(&self, urls: Vec<String>) {
        *self.0.lock().unwrap() = urls;
    }
}

pub(crate) struct Cluster {
    pub(crate) store: String,
    pub(crate) seqsvc: Vec<String>,
    pub(crate) variant: Variant,
    pub(crate) keyspace: String,
    // Before the directories: the processes stop before their data goes.
    pub(crate) nodes: Vec<Server>,
    pub(crate) dirs: Vec<tempfile::TempDir>,
    pub(crate) live: Live,
}

impl Cluster {
    pub(crate) fn start(
        keyspace: &CqlKeyspace,
        seqsvc: Vec<String>,
        variant: Variant,
    ) -> anyhow::Result<Self> {
        let dirs: Vec<_> = (0..NODES)
            .map(|_| tempfile::tempdir())
            .collect::<Result<_, _>>()?;
        // One token key for the cluster: a token issued with any node's
        // data directory is accepted by every node.
        share_token_key(&dirs)?;
        let args = node_args(&keyspace.url, &seqsvc, variant);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let nodes = dirs
            .iter()
            .map(|dir| Server::start_with(dir.path(), &args))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let live = Live::default();
        live.set(nodes.iter().map(Server::url).collect());
        Ok(Self {
            store: keyspace.url.clone(),
            seqsvc,
            variant,
            keyspace: keyspace.name.clone(),
            nodes,
            dirs,
            live,
        })
    }

    pub(crate) fn refresh_live(&self, down: Option<usize>) {
        self.live.set(
            self.nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != down)
                .map(|(_, n)| n.url())
                .collect(),
        );
    }

    /// The node holding the writer lease now, by its advertised address.
    pub(crate) async fn writer(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(holder) = lease_holder(&self.keyspace).await?
                && let Some(i) = self.nodes.iter().position(|n| n.addr == holder)
            {
                return Ok(i);
            }
            ensure!(Instant::now() < deadline, "no writer elected in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn restart_elsewhere(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill9();
        let args = node_args(&self.store, &self.seqsvc, self.variant);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Port 0 again: the node comes back on another port.
        self.nodes[i] = Server::start_with(self.dirs[i].path(), &args)?;
        self.refresh_live(None);
        Ok(())
    }

    pub(crate) fn token(&self, user: u64, device: &str) -> anyhow::Result<String> {
        self.nodes[0].device_token(user, device)
    }
}

pub(crate) fn share_token_key(dirs: &[tempfile::TempDir]) -> anyhow::Result<()> {
    let status = std::process::Command::new(tests::syncd_bin())
        .args(["token", "--service", "setup", "--data-dir"])
        .arg(dirs[0].path())
        .stdout(std::process::Stdio::null())
        .status()?;
    ensure!(status.success(), "syncd token failed");
    let key = std::fs::read(dirs[0].path().join("auth.key")).context("the token key")?;
    for dir in &dirs[1..] {
        write_key(dir.path(), &key)?;
    }
    Ok(())
}

pub(crate) fn write_key(dir: &Path, key: &[u8]) -> anyhow::Result<()> {
    std::fs::write(dir.join("auth.key"), key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("auth.key"), std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

pub(crate) async fn lease_holder(keyspace: &str) -> anyhow::Result<Option<String>> {
    let session = tests::lease_row::session().await?;
    let lease = tests::lease_row::lease(&session, keyspace).await?;
    Ok(lease.map(|(holder, _)| holder))
}

pub(crate) async fn with_deadline<T>(
    call: impl std::future::Future<Output = Result<T, client::ClientError>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CALL_DEADLINE, call).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("no answer in {CALL_DEADLINE:?}"),
    }
}

/// The inbox after `checkpoint`: one Sync page, or every reply of a CatchUp
/// stream (an error anywhere drops the whole read, so nothing past the
/// checkpoint counts as seen).
pub(crate) async fn read_inbox(
    client: &Client,
    checkpoint: u64,
    streamed: bool,
) -> Result<Vec<pb::SyncReply>, client::ClientError> {
    if !streamed {
        return Ok(vec![client.sync_page(Some(checkpoint), 40).await?]);
    }
    let mut replies = client.catch_up(Some(checkpoint), 40).await?;
    let mut pages = Vec::new();
    while let Some(page) = replies.message().await? {
        pages.push(page);
    }
    Ok(pages)
}

/// Sends once, through whichever node answers, retrying with the same
/// client message id until acknowledged.
pub(crate) async fn send_acknowledged(
    live: &Live,
    rng: &Mutex<SeededRng>,
    token: &str,
    conversation: u64,
    text: &str,
) -> anyhow::Result<pb::SendReply> {
    let id = uuid::Uuid::new_v4();
    let started = Instant::now();
    loop {
        let url = live.pick(rng);
        let attempt = async {
            let client = with_deadline(Client::connect(&url, token)).await?;
            with_deadline(client.send(conversation, text, Some(id))).await
        };
        match attempt.await {
            Ok(reply) => return Ok(reply),
            Err(error) => {
                ensure!(
                    started.elapsed() < SEND_DEADLINE,
                    "send not acknowledged in {SEND_DEADLINE:?}: {error:#}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How long until a send goes through again after a fault (the probe is
/// an acknowledged message like any other).
pub(crate) async fn unavailable_for(
    live: &Live,
    rng: &Mutex<SeededRng>,
    token: &str,
    conversation: u64,
    acked: &Mutex<Vec<(u64, u64)>>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let reply = send_acknowledged(live, rng, token, conversation, "probe").await?;
    acked.lock().unwrap().push((conversation, reply.msg_id));
    Ok(started.elapsed())
}

/// What one device read: its inbox entries, and per large group the
/// position it started after and the entries it read from the timeline.
pub(crate) struct DeviceRead {
    pub(crate) inbox: Vec<pb::Entry>,
    pub(crate) groups: BTreeMap<u64, (u64, Vec<pb::Entry>)>,
}

/// The inbox as kept now: from the oldest entry retention left.
pub(crate) async fn read_kept_inbox(client: &Client) -> anyhow::Result<Vec<pb::Entry>> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = client.sync_page(Some(after), 1000).await?;
        if page.checkpoint_expired {
            ensure!(entries.is_empty(), "trimmed while being read");
            after = page.oldest_seq.saturating_sub(1);
            continue;
        }
        entries.extend(page.entries);
        after = page.checkpoint;
        if !page.has_more {
            return Ok(entries);
        }
    }
}

/// A conversation's timeline after `after`, whole.
pub(crate) async fn read_timeline(
    client: &Client,
    conversation: u64,
    after: u64,
) -> anyhow::Result<Vec<pb::Entry>> {
    let mut entries: Vec<pb::Entry> = Vec::new();
    let mut read = after;
    loop {
        let page = client.history(conversation, 0, Some(read), 200).await?;
        let Some(last) = page.entries.last() else {
            return Ok(entries);
        };
        read = last.conv_seq;
        let more = page.has_more;
        entries.extend(page.entries);
        if !more {
            return Ok(entries);
        }
    }
}

pub(crate) fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill {signal} {pid}");
    Ok(())
}
