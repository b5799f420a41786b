//! Accepting gRPC connections with a bound on how many are open and
//! TCP_NODELAY on each, for every server of the project (seqsvc's roles and
//! syncd).
//!
//! The bound alone let one peer take every slot with connections that never
//! speak (10,000 of them lock everyone out), so each peer address also has
//! a cap ([`MAX_CONNECTIONS_PER_PEER`]), a connection that sends nothing
//! within [`HANDSHAKE_TIMEOUT`] is closed, and so is one from which nothing
//! was read for [`IDLE_TIMEOUT`]. Servers run HTTP/2 keepalive
//! ([`KEEPALIVE_INTERVAL`]): the peer's ping acks are reads, so a healthy
//! connection with no calls is never idle, only a peer that stopped
//! answering.
//!
//! tonic's `tcp_nodelay` applies only to listeners tonic binds itself; with
//! a listener we bind (to report `127.0.0.1:0`'s real port) an accepted
//! socket keeps Nagle's algorithm, and a small reply can wait about 40 ms for
//! the peer's delayed ACK.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connections one peer address may hold: enough for a NAT gateway's worth
/// of devices, a small share of a server's slots.
pub const MAX_CONNECTIONS_PER_PEER: usize = 256;
/// A client sends the HTTP/2 preface at once; one that sends nothing this
/// long is holding a slot, not connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Nothing read this long (not even a ping ack, with keepalive every
/// [`KEEPALIVE_INTERVAL`]): the peer is gone or stalling on purpose.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP/2 keepalive every server runs with these limits, and how long a
/// ping may wait for its ack.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the accept loop enforces.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_peer: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Whether 127.0.0.1 and ::1 are exempt from the per-peer cap: they
    /// are this host's own processes (a co-located proxy, which must cap
    /// its clients itself, or a benchmark driving thousands of devices).
    /// Other loopback addresses are not, so tests can act as a peer.
    pub exempt_localhost: bool,
}

impl ConnectionLimits {
    /// The named defaults with `max_connections` slots.
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections,
            max_per_peer: MAX_CONNECTIONS_PER_PEER,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            exempt_localhost: true,
        }
    }
}

fn is_localhost(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => {
            v6 == Ipv6Addr::LOCALHOST || v6.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST)
        }
    }
}

/// Open connections per peer address; an entry lives while its peer has one.
type PeerCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Counts a connection the server closed, by why (a closed set).
fn closed(reason: &'static str) {
    metrics::counter!("grpc_server_connections_closed_total", "reason" => reason).increment(1);
}

/// Keeps `grpc_server_connections_open` while the connection lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::counter!("grpc_server_connections_accepted_total").increment(1);
        metrics::gauge!("grpc_server_connections_open").increment(1.0);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("grpc_server_connections_open").decrement(1.0);
    }
}

/// One of a peer's connections; dropping it frees the place.
struct PeerSlot {
    peers: PeerCounts,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(peers: &PeerCounts, ip: IpAddr, max: usize) -> Option<Self> {
        let mut counts = peers.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self {
            peers: Arc::clone(peers),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A TCP connection holding one of the server's connection slots (and one
/// of its peer's), closed by a read error once it stays quiet too long.
pub struct LimitedConn {
    stream: TcpStream,
    _open: OpenConnection,
    _slot: OwnedSemaphorePermit,
    _peer: Option<PeerSlot>,
    /// Fires at the handshake deadline, later at most once per idle
    /// timeout: reads only note their time, the timer is moved when it
    /// fires, so a busy connection does not touch the timer per read.
    quiet: Pin<Box<Sleep>>,
    last_read: Option<Instant>,
    idle_timeout: Duration,
}

impl LimitedConn {
    /// The error that ends a connection which stayed quiet too long.
    fn poll_quiet(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        loop {
            if self.quiet.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let Some(last_read) = self.last_read else {
                closed("handshake_timeout");
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no handshake",
                ));
            };
            let deadline = last_read + self.idle_timeout;
            if deadline <= Instant::now() {
                closed("idle_timeout");
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "idle connection",
                ));
            }
            self.quiet.as_mut().reset(deadline);
        }
    }
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_read = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.poll_quiet(cx).map(Err),
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections only while a slot is free: past the limit, new
/// clients wait in the kernel's backlog instead of costing server memory.
/// The other limits are the named defaults ([`ConnectionLimits::new`]).
pub fn limited_incoming(
    listener: TcpListener,
    max_connections: usize,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<LimitedConn>> {
    limited_incoming_with(listener, ConnectionLimits::new(max_connections), stop)
}

/// [`limited_incoming`] with explicit limits. A peer at its cap has further
/// connections closed at once (they would otherwise wait for a slot that
/// the same peer holds).
pub fn limited_incoming_with(
    listener: TcpListener,
    limits: ConnectionLimits,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<LimitedConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = PeerCounts::default();
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("semaphore is never closed"),
                _ = &mut stop => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = &mut stop => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let ip = peer.ip();
                    let peer_slot = if limits.exempt_localhost && is_localhost(ip) {
                        None
                    } else if let Some(peer_slot) = PeerSlot::take(&peers, ip, limits.max_per_peer)
                    {
                        Some(peer_slot)
                    } else {
                        // Debug only: a peer at its cap may retry in a loop.
                        tracing::debug!(%ip, "peer at its connection cap; closing");
                        closed("peer_cap");
                        continue;
                    };
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::warn!(%error, "cannot set TCP_NODELAY");
                    }
                    let conn = LimitedConn {
                        stream,
                        _open: OpenConnection::new(),
                        _slot: slot,
                        _peer: peer_slot,
                        quiet: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                        last_read: None,
                        idle_timeout: limits.idle_timeout,
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    // Typically out of file descriptors: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_and_the_count_is_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let mut incoming = limited_incoming(listener, 2, stopped);

        let _first = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        let _third = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let second = incoming.next().await.unwrap().unwrap();
        // Without TCP_NODELAY small replies wait for delayed ACKs (~40 ms).
        assert!(first.stream.nodelay().unwrap());
        assert!(second.stream.nodelay().unwrap());

        // Both slots are taken: the third connection waits in the backlog.
        let waiting = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(
            waiting.is_err(),
            "a third connection was accepted past the bound"
        );

        // Closing one frees its slot, and the waiting one is accepted.
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("the waiting connection is accepted once a slot frees")
            .unwrap()
            .unwrap();
        assert!(third.stream.nodelay().unwrap());
    }

    fn strict(max_connections: usize, max_per_peer: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_per_peer,
            exempt_localhost: false,
            ..ConnectionLimits::new(max_connections)
        }
    }

    /// Connects from `source` (any 127/8 address is loopback on Linux).
    async fn connect_from(source: &str, to: std::net::SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(to).await.unwrap()
    }

    /// Whether the server closed `stream` within `wait`.
    async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(wait, stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// One peer cannot take every slot: past its cap its connections are
    /// closed, while other peers are still accepted.
    #[tokio::test]
    async fn one_peer_cannot_take_every_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let mut incoming = limited_incoming_with(listener, strict(10, 2), stopped);
        let mut held = Vec::new();
        for _ in 0..2 {
            let _client = connect_from("127.0.0.2", addr).await;
            held.push((_client, incoming.next().await.unwrap().unwrap()));
        }
        let mut third = connect_from("127.0.0.2", addr).await;
        assert!(
            closed_within(&mut third, Duration::from_secs(5)).await,
            "a third connection from one peer stayed open"
        );
        let _other = connect_from("127.0.0.3", addr).await;
        let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(accepted.is_ok(), "another peer was not accepted");
        // A closed connection gives its peer's place back.
        held.pop();
        let _again = connect_from("127.0.0.2", addr).await;
        let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(accepted.is_ok(), "the peer's freed place was not reused");
    }

    /// A connection that says nothing is closed after the handshake
    /// timeout; one that spoke and then went quiet after the idle timeout.
    #[tokio::test]
    async fn silent_and_idle_connections_are_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const HANDSHAKE: Duration = Duration::from_millis(200);
        const IDLE: Duration = Duration::from_millis(400);
        /// Under both timeouts.
        const GAP: Duration = Duration::from_millis(150);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let limits = ConnectionLimits {
            handshake_timeout: HANDSHAKE,
            idle_timeout: IDLE,
            ..strict(10, 10)
        };
        let mut incoming = limited_incoming_with(listener, limits, stopped);

        // Before connecting: the handshake timer starts at the accept, which
        // may be well before this task takes the connection on a busy machine.
        let started = std::time::Instant::now();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let mut buf = [0u8; 16];
        let error = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("a silent connection stayed open")
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "no handshake");
        assert!(started.elapsed() >= HANDSHAKE);

        let mut talker = TcpStream::connect(addr).await.unwrap();
        // The first byte at once, so it is there however late this task
        // takes the connection (a read takes waiting bytes before it looks
        // at the timer).
        talker.write_all(b"x").await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        let mut last_sent = std::time::Instant::now();
        for _ in 0..5 {
            // Steady traffic keeps it open past the idle timeout.
            tokio::time::sleep(GAP).await;
            last_sent = std::time::Instant::now();
            talker.write_all(b"x").await.unwrap();
            assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        }
        let error = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an idle connection stayed open")
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "idle connection");
        // The idle deadline counts from the last read, which is after the
        // last byte was sent.
        assert!(last_sent.elapsed() >= IDLE);
    }

    #[tokio::test]
    async fn stopping_ends_the_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let mut incoming = limited_incoming(listener, 2, stopped);
        stop.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("the accept loop stops");
        assert!(ended.is_none());
    }
}
