//! The legacy HTTP+SSE transport (protocol 2024-11-05), written against rmcp's [`Transport`].
//!
//! rmcp dropped this transport on purpose, but many deployed servers (Cloudflare's `/sse`
//! endpoints among them) still serve only it. Shape: `GET <url>` opens an event stream whose first
//! event is `endpoint` (a URI, often relative, to resolve against the stream URL); every client
//! message is a `POST` to that URI (answered `202`), every server message — responses included —
//! arrives as an `event: message` on the GET stream.

use std::{borrow::Cow, sync::Arc};

use futures_util::StreamExt;
use rmcp::{
    RoleClient,
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::Transport,
};
use sse_stream::SseStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// An error of the legacy SSE transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP request failed before a response.
    #[error("HTTP request to {url} failed: {source}")]
    Request {
        /// The URL requested.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status that is not success.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The event stream ended or broke before the `endpoint` event.
    #[error("the SSE stream of {url} did not start with an `endpoint` event ({reason})")]
    NoEndpoint {
        /// The SSE URL.
        url: String,
        /// How the stream ended or broke.
        reason: String,
    },
    /// The endpoint URI does not resolve to a URL on the stream's origin.
    #[error("invalid endpoint {endpoint:?} announced by {url}: {reason}")]
    BadEndpoint {
        /// The SSE URL.
        url: String,
        /// The endpoint as announced.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// The stream is closed; nothing more can be sent.
    #[error("the SSE connection is closed")]
    Closed,
}

/// A connected legacy SSE transport: the GET stream is read by a background task.
pub struct SseClientTransport {
    client: reqwest::Client,
    post_url: Arc<str>,
    auth_header: Option<Arc<str>>,
    inbound: mpsc::Receiver<RxJsonRpcMessage<RoleClient>>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SseClientTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the auth header: it carries a token.
        f.debug_struct("SseClientTransport")
            .field("post_url", &self.post_url)
            .finish_non_exhaustive()
    }
}

impl SseClientTransport {
    /// Opens `GET url` and waits for the `endpoint` event. `auth_header` is a bearer token sent
    /// on the GET and on every POST.
    pub async fn connect(
        client: reqwest::Client,
        url: &str,
        auth_header: Option<String>,
    ) -> Result<Self, Error> {
        let base = url::Url::parse(url).map_err(|e| Error::BadEndpoint {
            url: url.to_owned(),
            endpoint: url.to_owned(),
            reason: e.to_string(),
        })?;
        let mut request = client
            .get(url)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(token) = &auth_header {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|source| Error::Request {
            url: url.to_owned(),
            source,
        })?;
        if !response.status().is_success() {
            return Err(Error::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let mut events = SseStream::from_bytes_stream(response.bytes_stream());
        let endpoint = loop {
            match events.next().await {
                Some(Ok(event)) if event.event.as_deref() == Some("endpoint") => {
                    break event.data.unwrap_or_default();
                }
                // Comments, keep-alives and anything before the endpoint are skipped.
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(Error::NoEndpoint {
                        url: url.to_owned(),
                        reason: e.to_string(),
                    });
                }
                None => {
                    return Err(Error::NoEndpoint {
                        url: url.to_owned(),
                        reason: "stream ended".into(),
                    });
                }
            }
        };
        let post_url = base.join(endpoint.trim()).map_err(|e| Error::BadEndpoint {
            url: url.to_owned(),
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        })?;
        // A server must not redirect our messages (and our token) to another origin.
        if post_url.origin() != base.origin() {
            return Err(Error::BadEndpoint {
                url: url.to_owned(),
                endpoint,
                reason: "the endpoint is on another origin".into(),
            });
        }
        debug!(%post_url, "legacy SSE endpoint announced");
        let (tx, inbound) = mpsc::channel(64);
        let stream_url = url.to_owned();
        let reader = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        warn!(url = %stream_url, error = %e, "legacy SSE stream broke");
                        break;
                    }
                };
                if !matches!(event.event.as_deref(), None | Some("message")) {
                    continue;
                }
                let Some(data) = event.data else { continue };
                match serde_json::from_str::<RxJsonRpcMessage<RoleClient>>(&data) {
                    Ok(message) => {
                        if tx.send(message).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!(url = %stream_url, error = %e, "ignoring an SSE message that is not JSON-RPC")
                    }
                }
            }
            // Dropping `tx` ends `receive()`, which tells rmcp the connection is gone.
        });
        Ok(SseClientTransport {
            client,
            post_url: post_url.as_str().into(),
            auth_header: auth_header.map(Into::into),
            inbound,
            reader,
        })
    }
}

impl Transport<RoleClient> for SseClientTransport {
    type Error = Error;

    fn name() -> Cow<'static, str> {
        "legacy-sse".into()
    }

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let client = self.client.clone();
        let url = self.post_url.clone();
        let auth = self.auth_header.clone();
        let closed = self.reader.is_finished();
        async move {
            if closed {
                return Err(Error::Closed);
            }
            let mut request = client.post(url.as_ref()).json(&item);
            if let Some(token) = auth {
                request = request.bearer_auth(token.as_ref());
            }
            let response = request.send().await.map_err(|source| Error::Request {
                url: url.to_string(),
                source,
            })?;
            if !response.status().is_success() {
                return Err(Error::Status {
                    url: url.to_string(),
                    status: response.status().as_u16(),
                });
            }
            Ok(())
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.inbound.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.reader.abort();
        self.inbound.close();
        Ok(())
    }
}

impl Drop for SseClientTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
