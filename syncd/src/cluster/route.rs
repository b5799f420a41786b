//! Where a call to this node goes: served here (this node writes), passed
//! on unchanged to the writer node, or refused with UNAVAILABLE (no writer
//! known, or this node's lease ran out).
//!
//! Passing on happens at the HTTP/2 level, below gRPC: the request's
//! headers (the caller's token among them), its body and, for Subscribe,
//! the whole reply stream go through untouched, and nothing is decoded
//! here. A call passed on once is never passed on again (a header marks
//! it), so two nodes with different views of the lease cannot bounce a
//! call between them.

use super::lease::Role;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::NamedService;
use tonic::transport::Channel;

/// Connections a follower keeps to the writer: every call passed on,
/// Subscribe streams included, holds one HTTP/2 stream on one of them, and
/// the writer takes at most `MAX_STREAMS_PER_CONNECTION` per connection.
pub const FORWARD_CONNECTIONS: usize = 64;

/// Lazily connected channels to one writer, used in turn.
pub struct WriterChannels {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl WriterChannels {
    pub fn new(channels: Vec<Channel>) -> Self {
        Self {
            channels,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }
}

/// Marks a call another node passed on.
pub const FORWARDED_HEADER: &str = "timeline-forwarded-by";

/// Where calls of one service go now.
pub enum Target<S> {
    /// Served by this node's writer generation while its lease of `epoch`
    /// holds (checked on every call: a lease can run out between reads).
    Local {
        service: S,
        epoch: u64,
        roles: watch::Receiver<Role>,
    },
    /// Passed on to the writer node, over one of several connections.
    Remote {
        writer: String,
        channels: Arc<WriterChannels>,
        me: String,
    },
    Unavailable(String),
}

/// A service whose calls go where its [`Target`] says; cheap to clone, all
/// clones switch together.
pub struct Routed<S> {
    target: Arc<RwLock<Arc<Target<S>>>>,
}

impl<S> Clone for Routed<S> {
    fn clone(&self) -> Self {
        Self {
            target: Arc::clone(&self.target),
        }
    }
}

impl<S> Routed<S> {
    pub fn new(initial: Target<S>) -> Self {
        Self {
            target: Arc::new(RwLock::new(Arc::new(initial))),
        }
    }

    pub fn set(&self, target: Target<S>) {
        *self.target.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(target);
    }

    fn current(&self) -> Arc<Target<S>> {
        Arc::clone(&self.target.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Whether `role` is still the writer of `epoch` now.
pub(super) fn writes(role: &Role, epoch: u64) -> bool {
    matches!(role, Role::Writer { epoch: held, until } if *held == epoch && Instant::now() < *until)
}

fn unavailable(message: String) -> http::Response<Body> {
    let (parts, ()) = tonic::Status::unavailable(message)
        .into_http::<()>()
        .into_parts();
    http::Response::from_parts(parts, Body::empty())
}

impl<S> Service<http::Request<Body>> for Routed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let target = self.current();
        match &*target {
            Target::Local {
                service,
                epoch,
                roles,
            } if writes(&roles.borrow(), *epoch) => {
                let mut service = service.clone();
                Box::pin(async move {
                    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    service.call(request).await
                })
            }
            Target::Local { .. } => Box::pin(async {
                Ok(unavailable(
                    "this node's writer lease ran out; retry: another node takes over".into(),
                ))
            }),
            Target::Remote { .. } if request.headers().contains_key(FORWARDED_HEADER) => {
                let by = request.headers()[FORWARDED_HEADER].clone();
                Box::pin(async move {
                    Ok(unavailable(format!(
                        "passed on by {by:?}, but this node does not write now; retry"
                    )))
                })
            }
            Target::Remote {
                writer,
                channels,
                me,
            } => {
                let (writer, mut channel) = (writer.clone(), channels.pick());
                if let Ok(me) = http::HeaderValue::from_str(me) {
                    request.headers_mut().insert(FORWARDED_HEADER, me);
                }
                metrics::counter!("syncd_cluster_forwarded_calls_total").increment(1);
                Box::pin(async move {
                    let passed = async {
                        std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                        channel.call(request).await
                    };
                    Ok(match passed.await {
                        Ok(response) => response,
                        Err(error) => {
                            unavailable(format!("the writer node {writer} is unreachable: {error}"))
                        }
                    })
                })
            }
            Target::Unavailable(why) => {
                let why = why.clone();
                Box::pin(async move { Ok(unavailable(why)) })
            }
        }
    }
}

impl<S: NamedService> NamedService for Routed<S> {
    const NAME: &'static str = S::NAME;
}
