//! Accepting gRPC connections with a bound on how many are open and
//! TCP_NODELAY on each, for every server of the project (seqsvc's roles and
//! syncd).
//!
//! tonic's `tcp_nodelay` applies only to listeners tonic binds itself; with
//! a listener we bind (to report `127.0.0.1:0`'s real port) an accepted
//! socket keeps Nagle's algorithm, and a small reply can wait about 40 ms for
//! the peer's delayed ACK.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TCP connection holding one of the server's connection slots.
pub struct LimitedConn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
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
pub fn limited_incoming(
    listener: TcpListener,
    max_connections: usize,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<LimitedConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(max_connections));
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
                Ok((stream, _)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::warn!(%error, "cannot set TCP_NODELAY");
                    }
                    if tx
                        .send(Ok(LimitedConn {
                            stream,
                            _slot: slot,
                        }))
                        .await
                        .is_err()
                    {
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
