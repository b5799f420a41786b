//! Raw TCP connections against a running syncd: one peer cannot take every
//! connection slot, and connections that never speak are closed, while real
//! clients keep being served. (127.0.0.2 acts as a remote peer: every 127/8
//! address is loopback on Linux, but only 127.0.0.1 is this host's own.)

use seqsvc::incoming::{HANDSHAKE_TIMEOUT, MAX_CONNECTIONS_PER_PEER};
use std::time::Duration;
use tests::Server;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(source: &str, to: std::net::SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    Ok(socket.connect(to).await?)
}

/// Whether the server closed `stream` within `wait` (what it sends first,
/// its HTTP/2 settings, is read and ignored).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, closed).await.is_ok()
}

async fn health(url: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    tokio::time::timeout(
        Duration::from_secs(5),
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await??;
    Ok(())
}

#[tokio::test]
async fn silent_connections_from_one_peer_are_capped_and_closed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let addr: std::net::SocketAddr = server.addr.parse()?;

    let mut silent = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_PEER {
        silent.push(connect_from("127.0.0.2", addr).await?);
    }
    let mut over = connect_from("127.0.0.2", addr).await?;
    assert!(
        closed_within(&mut over, Duration::from_secs(5)).await,
        "a connection past the peer's cap stayed open"
    );
    // Other peers are still served while that one holds its cap.
    health(&server.url()).await?;
    let mut other = connect_from("127.0.0.3", addr).await?;
    assert!(!closed_within(&mut other, Duration::from_millis(200)).await);

    // Connections that never send the HTTP/2 preface are closed.
    let wait = HANDSHAKE_TIMEOUT + Duration::from_secs(5);
    for stream in silent.iter_mut().take(3) {
        assert!(
            closed_within(stream, wait).await,
            "a silent connection outlived the handshake timeout"
        );
    }
    assert!(closed_within(&mut other, Duration::from_secs(5)).await);
    health(&server.url()).await?;
    Ok(())
}
