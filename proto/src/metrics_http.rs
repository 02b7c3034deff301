//! The plain HTTP/1 server of a process's metrics (`/metrics` and
//! `/health`): the nodes and the mounts answer their own paths through it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;

/// Content type of the Prometheus text format `/metrics` answers in.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of a plain text answer.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// What a path answers.
#[derive(Debug, Clone)]
pub struct Page {
    /// HTTP status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Page {
    /// A 200 answer.
    pub fn ok(content_type: &'static str, body: String) -> Self {
        Self {
            status: 200,
            content_type,
            body,
        }
    }

    /// A plain text answer with `status`.
    pub fn text(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: TEXT,
            body,
        }
    }
}

/// Serves `answer(path)` to every request on `listener` until `stop`
/// resolves. A scraper that stalls is dropped after 30 s.
pub async fn serve<F>(listener: TcpListener, answer: F, stop: impl Future<Output = ()>)
where
    F: Fn(&str) -> Page + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let page = answer(req.uri().path());
                let mut r = Response::new(Full::new(Bytes::from(page.body)));
                *r.status_mut() =
                    StatusCode::from_u16(page.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                if let Ok(v) = page.content_type.parse() {
                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                }
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}
