//! The Centrifugo peer for `bench devices`: the same devices, groups and
//! sends against Centrifugo, the server teams pick to push to many
//! connections. Each device is one Centrifugo client on the unidirectional
//! gRPC transport (`uni_grpc`: one `Consume` stream per client, many
//! streams per HTTP/2 connection, as syncd's Subscribe streams are carried),
//! subscribed by the server to its user's personal channel, which keeps a
//! history and forces recovery. A send to a group is one Broadcast, over the
//! server gRPC API, to its members' personal channels (syncd's one
//! AppendMessage fans out to the members' inboxes); the publication carries
//! the tracker's message key, so delivery is measured the same way. Its
//! history lives in the memory engine: see [`DURABILITY`].

mod server;
mod wire;

use crate::delivery::Tracker;
use crate::devices::{self, DevicesArgs, Following, Measured, Opening, Sending};
use anyhow::{Context, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

pub use server::{Binary, binary};

/// What Centrifugo promises for a publication in this configuration.
pub const DURABILITY: &str = "history in process memory (memory engine; lost on restart or kill), \
     the last 100 publications of 600 s per personal channel";

/// The peer's settings for the JSON result.
pub fn settings_json(binary: &Binary) -> serde_json::Value {
    serde_json::json!({
        "version": binary.version,
        "transport": "uni_grpc",
        "engine": "memory",
        "history_size": server::HISTORY_SIZE,
        "history_ttl_secs": server::HISTORY_TTL_SECS,
        "force_recovery": true,
        "durability": DURABILITY,
    })
}

/// Runs `binary` and measures it in the phases syncd was measured in, with
/// syncd's groups (`conversations`, by id) so the load replays the very
/// same sends.
pub async fn measure(
    binary: &Binary,
    args: &DevicesArgs,
    conversations: &Arc<Vec<(u64, Vec<u64>)>>,
) -> anyhow::Result<(Measured, Arc<Recovery>)> {
    let server = server::Server::start(&binary.path).await?;
    let uni_url = format!("http://127.0.0.1:{}", server.ports.uni_grpc);
    let api_url = format!("http://127.0.0.1:{}", server.ports.grpc_api);
    let senders = [connect(&api_url).await?, connect(&api_url).await?];
    let authorization: tonic::metadata::MetadataValue<_> =
        format!("apikey {}", server.api_key).parse()?;
    let secret = server.token_secret.clone();
    let recovery = Arc::new(Recovery::default());
    let measured = devices::measure(
        args,
        server.pid(),
        conversations,
        || connect(&uni_url),
        |channel, user, device, tracker| {
            let token = server::token(&secret, user)?;
            let recovery = Arc::clone(&recovery);
            Ok(Box::pin(consume(channel, token, user, device, tracker, recovery)) as Opening)
        },
        |n, next| {
            let request = wire::BroadcastRequest {
                channels: next
                    .members
                    .iter()
                    .map(|&m| server::personal_channel(m))
                    .collect(),
                data: next.message.into_bytes(),
            };
            let mut request = tonic::Request::new(request);
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
            let channel = senders[n as usize % senders.len()].clone();
            Ok(Box::pin(broadcast(channel, request)) as Sending)
        },
    )
    .await?;
    Ok((measured, recovery))
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to Centrifugo at {url}"))
}

/// Reconnects with recovery of one run: Centrifugo disconnects a client
/// whose channel position it finds broken (code 3010, insufficient state,
/// when a publication arrives out of order under load), and a client then
/// reconnects asking for what it missed from the history, as Centrifugo's
/// client libraries do.
#[derive(Default)]
pub struct Recovery {
    pub reconnects: AtomicU64,
    /// Reconnects whose missed publications were no longer all in the
    /// history.
    pub unrecovered: AtomicU64,
}

/// Codes from here on forbid reconnecting (Centrifugo's protocol).
const NO_RECONNECT_CODES: u32 = 3_500;

/// One device: a Centrifugo client on `channel`, accepted once its Connect
/// push shows the recoverable personal channel; reconnects with recovery
/// when Centrifugo disconnects it with a code that allows it. Each
/// publication is reported once, by its offset in the channel.
async fn consume(
    channel: Channel,
    token: String,
    user: u64,
    device: u64,
    tracker: Arc<Tracker>,
    recovery: Arc<Recovery>,
) -> anyhow::Result<Following> {
    let personal = server::personal_channel(user);
    let (mut pushes, position) = connect_client(&channel, &token, &personal, None).await?;
    let (mut epoch, mut seen) = (position.epoch, position.offset);
    Ok(Box::pin(async move {
        loop {
            let ended = loop {
                let Some(push) = pushes.message().await? else {
                    bail!("connection of user {user} device {device} ended");
                };
                if let Some(publication) = &push.publication {
                    if publication.offset > seen {
                        seen = publication.offset;
                        tracker.arrived(std::str::from_utf8(&publication.data)?);
                    }
                } else if let Some(ended) = push.disconnect {
                    break ended;
                } else if let Some(ended) = &push.unsubscribe {
                    bail!(
                        "Centrifugo unsubscribed user {user} device {device} from {}: code {} {}",
                        push.channel,
                        ended.code,
                        ended.reason
                    );
                }
            };
            if ended.code >= NO_RECONNECT_CODES {
                bail!(
                    "Centrifugo disconnected user {user} device {device}: code {} {}",
                    ended.code,
                    ended.reason
                );
            }
            recovery.reconnects.fetch_add(1, Ordering::Relaxed);
            let from = wire::SubscribeRequest {
                recover: true,
                epoch: epoch.clone(),
                offset: seen,
            };
            let (again, position) = connect_client(&channel, &token, &personal, Some(from))
                .await
                .with_context(|| format!("reconnecting user {user} device {device}"))?;
            pushes = again;
            if !position.recovered {
                recovery.unrecovered.fetch_add(1, Ordering::Relaxed);
            }
            for publication in &position.publications {
                if publication.offset > seen {
                    seen = publication.offset;
                    tracker.arrived(std::str::from_utf8(&publication.data)?);
                }
            }
            epoch = position.epoch;
            seen = seen.max(position.offset);
        }
    }))
}

/// Opens one client's `Consume` stream (recovering `personal` from `from`
/// on a reconnect) and reads its connect reply: the stream, and the
/// personal channel's position with what was recovered.
async fn connect_client(
    channel: &Channel,
    token: &str,
    personal: &str,
    from: Option<wire::SubscribeRequest>,
) -> anyhow::Result<(tonic::Streaming<wire::Push>, wire::SubscribeResult)> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    let request = wire::ConnectRequest {
        token: token.to_owned(),
        subs: from
            .into_iter()
            .map(|from| (personal.to_owned(), from))
            .collect(),
        name: "bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut pushes = grpc
        .server_streaming(
            tonic::Request::new(request),
            PathAndQuery::from_static(wire::CONSUME_PATH),
            ProstCodec::<wire::ConnectRequest, wire::Push>::default(),
        )
        .await?
        .into_inner();
    let first = pushes
        .message()
        .await?
        .context("Centrifugo ended the stream before its connect reply")?;
    let position = check_connected(first, personal)?;
    Ok((pushes, position))
}

/// The first push of a stream must accept the connection with `personal`
/// subscribed and recoverable (history and recovery on); its position.
fn check_connected(first: wire::Push, personal: &str) -> anyhow::Result<wire::SubscribeResult> {
    if let Some(refused) = &first.disconnect {
        bail!(
            "Centrifugo refused the connection: code {} {}",
            refused.code,
            refused.reason
        );
    }
    let mut connect = first
        .connect
        .context("Centrifugo's first push is not a connect reply")?;
    let subscribed = connect
        .subs
        .remove(personal)
        .with_context(|| format!("Centrifugo did not subscribe the connection to {personal}"))?;
    if !subscribed.recoverable {
        bail!("{personal} is not recoverable: history and recovery are off");
    }
    Ok(subscribed)
}

async fn broadcast(
    channel: Channel,
    request: tonic::Request<wire::BroadcastRequest>,
) -> anyhow::Result<()> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let reply = grpc
        .unary(
            request,
            PathAndQuery::from_static(wire::BROADCAST_PATH),
            ProstCodec::<wire::BroadcastRequest, wire::BroadcastResponse>::default(),
        )
        .await?
        .into_inner();
    if let Some(error) = reply.first_error() {
        bail!("Centrifugo broadcast failed: {error}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn connected(personal: &str, recoverable: bool) -> wire::Push {
        wire::Push {
            connect: Some(wire::Connect {
                client: "c".into(),
                subs: HashMap::from([(
                    personal.to_owned(),
                    wire::SubscribeResult {
                        recoverable,
                        ..Default::default()
                    },
                )]),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_connection_counts_once_its_recoverable_personal_channel_is_subscribed() {
        let personal = server::personal_channel(3);
        check_connected(connected(&personal, true), &personal).unwrap();
        let error = check_connected(connected(&personal, false), &personal).unwrap_err();
        assert!(error.to_string().contains("not recoverable"), "{error}");
        let error =
            check_connected(connected(&server::personal_channel(4), true), &personal).unwrap_err();
        assert!(error.to_string().contains("did not subscribe"), "{error}");
        let refused = wire::Push {
            disconnect: Some(wire::Disconnect {
                code: 3500,
                reason: "invalid token".into(),
            }),
            ..Default::default()
        };
        let error = check_connected(refused, &personal).unwrap_err();
        assert!(error.to_string().contains("invalid token"), "{error}");
        let error = check_connected(wire::Push::default(), &personal).unwrap_err();
        assert!(error.to_string().contains("not a connect reply"), "{error}");
    }

    #[test]
    fn durability_states_the_configured_history() {
        assert!(DURABILITY.contains(&format!(
            "last {} publications of {} s",
            server::HISTORY_SIZE,
            server::HISTORY_TTL_SECS
        )));
    }
}
