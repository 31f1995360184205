//! `/metrics` over HTTP, on a thread and runtime of its own: attaching to a target, correlating its records and
//! building its report run on the agent's runtime, and however long one target's work takes, a scrape is
//! answered by a thread that does nothing else.
//!
//! The endpoint has no authentication (deploy/ keeps it on loopback behind kube-rbac-proxy), but a client that
//! reaches it still cannot hold it: every connection has a deadline for its request head and a lifetime, at most
//! [`MAX_CONNECTIONS`] are served at once, and running out of descriptors slows the accept loop down instead of
//! spinning it.

use std::{net::TcpListener, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn, Request, Response, StatusCode};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::sync::Semaphore;

use super::metrics;

/// A pause after a failed `accept` (out of descriptors, say): the connection stays in the backlog and the listener
/// readable, so retrying at once would spin a core until a descriptor is freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a client has to send a request's head, on a new connection and between requests on a kept-alive one
/// (hyper starts the clock whenever it waits for a head). A scrape's head is one small packet, so this is ample on
/// any network, and a client that connects and sends nothing, or half a line, holds a connection no longer.
/// Prometheus scrapes every 15 s or more, so its idle connections are closed between scrapes and it reconnects.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; those past it are closed as soon as they are accepted (and counted). Prometheus (two
/// in an HA pair), kube-rbac-proxy's pooled connections and a person with curl need a handful; each connection can
/// hold a whole encoding of the registry (megabytes on a busy node) while its client reads it, so the cap also
/// bounds that memory.
const MAX_CONNECTIONS: usize = 16;

/// After this long a connection is closed gracefully: a response in flight is finished, then the connection is
/// closed instead of kept alive. It bounds how long a client that keeps sending requests (each within the header
/// timeout) occupies one of the [`MAX_CONNECTIONS`]; a scraper reconnects for its next request.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// How long the response in flight at the end of [`CONNECTION_LIFETIME`] has to be written: a client that does not
/// read it is cut off, so that it cannot keep its connection by never reading.
const CLOSING_GRACE: Duration = Duration::from_secs(10);

/// The endpoint's own refusals, exported with the agent's metrics.
#[derive(Clone, Default)]
struct Refusals {
    /// Connections closed at once because [`MAX_CONNECTIONS`] were being served.
    over_cap: Counter,
    /// Failed `accept` calls (each followed by [`ACCEPT_BACKOFF`]).
    accept_errors: Counter,
}

/// Starts serving on `listener` (bound by the caller, so that a bad address fails the agent's start).
pub fn spawn(listener: TcpListener, mut registry: Registry) -> std::io::Result<()> {
    let refusals = Refusals::default();
    registry.register(
        "maptrace_agent_http_refused_connections",
        format!("Connections to /metrics closed at once because {MAX_CONNECTIONS} were being served"),
        refusals.over_cap.clone(),
    );
    registry.register(
        "maptrace_agent_http_accept_errors",
        "Failed accepts on the metrics endpoint's socket (out of descriptors, for instance)",
        refusals.accept_errors.clone(),
    );
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, Arc::new(registry), refusals).await,
                Err(e) => eprintln!("maptrace agent: cannot serve /metrics: {e}"),
            }
        })
    })?;
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>, refusals: Refusals) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                refusals.accept_errors.inc();
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.over_cap.inc();
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        let connection = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            service_fn(move |req| {
                let response = respond(&req, &registry);
                async move { response }
            }),
        );
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            if tokio::time::timeout(CONNECTION_LIFETIME, connection.as_mut())
                .await
                .is_err()
            {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSING_GRACE, connection).await;
            }
        });
    }
}

/// `GET /metrics` (OpenMetrics text, or the classic text format) and a short index on `/`.
fn respond(req: &Request<hyper::body::Incoming>, registry: &Registry) -> hyper::http::Result<Response<Full<Bytes>>> {
    // Prometheus asks for OpenMetrics; others (curl, promtool) get the classic format.
    let openmetrics = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) if openmetrics => Response::builder()
                    .header(
                        "Content-Type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body))),
                Ok(()) => Response::builder()
                    .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(Full::new(Bytes::from(metrics::to_prometheus_text(&body)))),
                Err(_) => Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Full::new(Bytes::from("encoding failed\n"))),
            }
        }
        "/" => Response::builder().body(Full::new(Bytes::from("maptrace agent: metrics at /metrics\n"))),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from("not found\n"))),
    }
}
