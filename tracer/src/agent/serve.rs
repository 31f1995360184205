//! `/metrics` over HTTP, on a thread and runtime of its own: attaching to a target, correlating its records and
//! building its report run on the agent's runtime, and however long one target's work takes, a scrape is
//! answered by a thread that does nothing else.

use std::{net::TcpListener, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;

use super::metrics;

/// A pause after a failed `accept` (out of descriptors, say): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Starts serving on `listener` (bound by the caller, so that a bad address fails the agent's start).
pub fn spawn(listener: TcpListener, registry: Registry) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, Arc::new(registry)).await,
                Err(e) => eprintln!("maptrace agent: cannot serve /metrics: {e}"),
            }
        })
    })?;
    Ok(())
}

/// Serves `GET /metrics` (OpenMetrics text, or the classic text format) and a short index on `/`.
async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    use http_body_util::Full;
    use hyper::{body::Bytes, service::service_fn, Request, Response, StatusCode};

    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move {
                    // Prometheus asks for OpenMetrics; others (curl, promtool) get the classic format.
                    let openmetrics = req
                        .headers()
                        .get(hyper::header::ACCEPT)
                        .and_then(|a| a.to_str().ok())
                        .is_some_and(|a| a.contains("application/openmetrics-text"));
                    let response = match req.uri().path() {
                        "/metrics" => {
                            let mut body = String::new();
                            match prometheus_client::encoding::text::encode(&mut body, &registry) {
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
                        "/" => {
                            Response::builder().body(Full::new(Bytes::from("maptrace agent: metrics at /metrics\n")))
                        }
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from("not found\n"))),
                    };
                    response
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
