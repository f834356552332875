//! The endpoint's connections: HTTP/1.1 by hyper, accepted up to a cap. A connection must send
//! a complete request head within [`HEADER_TIMEOUT`] of opening or of its previous response
//! (this also closes idle kept-alive connections); a request must be handled within the
//! router's timeout. At the cap, the oldest connection with no request in progress is closed to
//! make room, so idle or dripping clients cannot lock others out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Notify;
use tower::ServiceExt;
use tracing::warn;

use super::State;
use crate::status::metrics::Metrics;

/// Longest wait for a complete request head: from the connection's start, or from the end of
/// its previous response (the idle time of a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (and read buffer) of a connection.
const MAX_BUF: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// One open connection, as the cap sees it.
struct Open {
    /// Requests in progress.
    busy: Arc<AtomicUsize>,
    /// Tells its task to drop the connection.
    close: Arc<Notify>,
}

/// Every open connection, oldest first.
#[derive(Default)]
struct Registry {
    next: u64,
    open: BTreeMap<u64, Open>,
}

impl Registry {
    /// Closes the oldest connection with no request in progress; false when every one is busy.
    fn evict_idle(&mut self) -> bool {
        let oldest = self
            .open
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
            .map(|(id, _)| *id);
        match oldest.and_then(|id| self.open.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Counts a request in progress while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(counter: &Arc<AtomicUsize>) -> Busy {
        counter.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(counter))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts and serves connections until the task is aborted (which closes every connection).
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    let app = super::router(Arc::clone(&state));
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_warning: Option<Instant> = None;
    // A new accept loop (a rebind) starts with no connection of its own.
    state.metrics.http_connections.set(0);
    loop {
        while tasks.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait for connections to end.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warn!("HTTP endpoint cannot accept a connection: {e}");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cap = state.endpoint.read().await.max_connections.max(1);
        state.metrics.http_connections_limit.set(cap as i64);
        let admitted = {
            let Ok(mut r) = registry.lock() else {
                continue;
            };
            let mut room = true;
            while r.open.len() >= cap && room {
                room = r.evict_idle();
                if room {
                    state.metrics.http_connections_evicted.inc();
                }
            }
            room.then(|| {
                let id = r.next;
                r.next += 1;
                let open = Open {
                    busy: Arc::default(),
                    close: Arc::default(),
                };
                let handles = (id, Arc::clone(&open.busy), Arc::clone(&open.close));
                r.open.insert(id, open);
                state.metrics.http_connections.set(r.open.len() as i64);
                handles
            })
        };
        let Some((id, busy, close)) = admitted else {
            state.metrics.http_connections_refused.inc();
            drop(stream);
            continue;
        };
        let (app, registry, metrics) = (
            app.clone(),
            Arc::clone(&registry),
            Arc::clone(&state.metrics),
        );
        tasks.spawn(async move {
            connection(stream, app, &busy, &close).await;
            forget(&registry, id, &metrics);
        });
    }
}

fn forget(registry: &Mutex<Registry>, id: u64, metrics: &Metrics) {
    if let Ok(mut r) = registry.lock() {
        r.open.remove(&id);
        metrics.http_connections.set(r.open.len() as i64);
    }
}

/// Serves one connection until it ends, times out, or is told to close.
async fn connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    busy: &Arc<AtomicUsize>,
    close: &Notify,
) {
    let _ = stream.set_nodelay(true);
    let busy = Arc::clone(busy);
    let service = hyper::service::service_fn(move |request| {
        let guard = Busy::new(&busy);
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(guard);
            response
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        // Errors here are the client's (a timeout, a malformed request, a reset): nothing to do.
        _ = conn => {}
        _ = close.notified() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(busy: usize) -> Open {
        Open {
            busy: Arc::new(AtomicUsize::new(busy)),
            close: Arc::default(),
        }
    }

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let mut r = Registry::default();
        r.open.insert(1, open(1));
        r.open.insert(2, open(0));
        r.open.insert(3, open(0));
        assert!(r.evict_idle());
        assert_eq!(r.open.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert!(r.evict_idle());
        assert_eq!(r.open.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(
            !r.evict_idle(),
            "a connection with a request in progress stays"
        );
    }

    #[test]
    fn busy_counts_while_it_lives() {
        let counter = Arc::new(AtomicUsize::new(0));
        let a = Busy::new(&counter);
        let b = Busy::new(&counter);
        assert_eq!(counter.load(Ordering::SeqCst), 2);
        drop(a);
        drop(b);
        assert_eq!(counter.load(Ordering::SeqCst), 0);
    }
}
