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

use crate::limits::MAX_STREAMS_PER_CONNECTION;

/// Connections a follower keeps to the writer: every call passed on,
/// Subscribe streams included, holds one HTTP/2 stream on one of them, and
/// the writer takes at most `MAX_STREAMS_PER_CONNECTION` per connection.
pub const FORWARD_CONNECTIONS: usize = 64;

/// Calls one follower passes on at once: a stream on each connection the
/// writer allows. Past it a call is refused (UNAVAILABLE: retry, or go to
/// another node) instead of waiting, with no deadline, for a long-lived
/// stream to end.
pub const MAX_FORWARDED_CALLS: usize = FORWARD_CONNECTIONS * MAX_STREAMS_PER_CONNECTION as usize;

/// Lazily connected channels to one writer, each with the calls passed on
/// over it now.
pub struct WriterChannels {
    channels: Vec<(Channel, Arc<AtomicUsize>)>,
    next: AtomicUsize,
}

impl WriterChannels {
    pub fn new(channels: Vec<Channel>) -> Self {
        Self {
            channels: channels.into_iter().map(|c| (c, Arc::default())).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A connection with a stream free (taken in turn), and the slot the
    /// call holds until its reply ends; none when every one is full.
    fn pick(&self) -> Option<(Channel, StreamSlot)> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.channels.len()).find_map(|k| {
            let (channel, open) = &self.channels[(start + k) % self.channels.len()];
            if open.fetch_add(1, Ordering::AcqRel) < MAX_STREAMS_PER_CONNECTION as usize {
                Some((channel.clone(), StreamSlot(Arc::clone(open))))
            } else {
                open.fetch_sub(1, Ordering::AcqRel);
                None
            }
        })
    }
}

/// One stream of a connection to the writer, given back when the reply
/// passed on ends (or is dropped).
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reply passed on, holding its stream's slot to its last frame.
struct SlotBody {
    inner: Body,
    _slot: StreamSlot,
}

impl http_body::Body for SlotBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
                let Some((mut channel, slot)) = channels.pick() else {
                    metrics::counter!("syncd_cluster_forward_refused_total").increment(1);
                    // UNAVAILABLE, as every other refusal here: clients
                    // retry it, elsewhere when they can.
                    return Box::pin(async {
                        Ok(unavailable(format!(
                            "this node passes on at most {MAX_FORWARDED_CALLS} calls at once; \
                             retry, or connect to another node"
                        )))
                    });
                };
                let writer = writer.clone();
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
                        Ok(response) => {
                            response.map(|inner| Body::new(SlotBody { inner, _slot: slot }))
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_follower_passes_on_no_more_calls_than_its_connections_carry() {
        let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:9");
        let channels = WriterChannels::new((0..2).map(|_| endpoint.connect_lazy()).collect());
        let per_connection = MAX_STREAMS_PER_CONNECTION as usize;
        let mut held: Vec<_> = (0..2 * per_connection)
            .map(|_| channels.pick().expect("a free stream"))
            .collect();
        assert!(
            channels
                .channels
                .iter()
                .all(|(_, open)| open.load(Ordering::SeqCst) == per_connection),
            "each connection carries its share"
        );
        assert!(channels.pick().is_none(), "every stream is taken");
        // A reply that ends gives its stream back.
        let (_, slot) = held.pop().unwrap();
        drop(SlotBody {
            inner: Body::empty(),
            _slot: slot,
        });
        let again = channels.pick();
        assert!(again.is_some());
        assert!(channels.pick().is_none());
    }
}
